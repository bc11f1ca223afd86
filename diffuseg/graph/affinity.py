"""Affinity matrices built from token features (shared by DiffCut and DWC's feature graph), and
the checks their inputs get: :func:`check_features` for feature maps, :func:`check_attention`
for self-attention maps (shared by DiffSeg's aggregation, hence by the k-means baseline and DWC).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Largest tolerated |sum - 1| of a self-attention key map stored in float32/float64 (the value
#: DWC's ``transition_matrix`` uses, graph/walk.py ``ROW_SUM_ATOL``). Captured attention is an fp32
#: softmax averaged over heads and layers: its maps sum to 1 within ~1e-6.
ATTENTION_SUM_ATOL = 1e-3


def attention_sum_atol(dtype: torch.dtype) -> float:
    """The tolerance :func:`check_attention` uses for maps stored in ``dtype``:
    :data:`ATTENTION_SUM_ATOL`, widened to 4 machine epsilons for half precision (float16:
    3.9e-3, bfloat16: 3.1e-2), whose rounding alone can move a sum by more than 1e-3."""
    return max(ATTENTION_SUM_ATOL, 4 * torch.finfo(dtype).eps)


def check_attention(
    maps: torch.Tensor, grid: tuple[int, int] | None = None, atol: float | None = None
) -> None:
    """Raise a ``ValueError`` naming the grid and the fault unless ``maps`` is self-attention:
    one probability map over the keys per query.

    Checked, in this order: a floating-point tensor of shape (h*w, h, w) (``grid`` = (h, w) when
    given, else read from the shape; h, w >= 1); every entry finite; none negative; no key map
    summing to zero; every key map summing to 1 within ``atol``. Nothing is modified: a caller
    that renormalises (DiffSeg's aggregation does, after upsampling) only ever renormalises maps
    that already were distributions up to rounding.

    Args:
        maps: (h*w, h, w) float (an ``Encoding.attention`` value or aggregated attention), any
            device.
        grid: the query grid (h, w) the maps belong to (checked against the shape).
        atol: largest tolerated |sum - 1|; None: :func:`attention_sum_atol` of the dtype.
    """
    shape = tuple(maps.shape)
    if grid is None:
        grid = (int(shape[1]), int(shape[2])) if len(shape) == 3 else (-1, -1)
    h, w = int(grid[0]), int(grid[1])
    name = f"attention for grid {h}x{w}"
    if not torch.is_floating_point(maps):
        raise ValueError(f"{name} must be a floating-point tensor, got {maps.dtype}")
    if h < 1 or w < 1 or shape != (h * w, h, w):
        raise ValueError(
            f"{name} must be (h*w, h, w) = ({h * w}, {h}, {w}) with h, w >= 1, got {shape}"
            if h >= 1 and w >= 1
            else f"attention maps must be (h*w, h, w) with h, w >= 1, got {shape}"
        )
    flat = maps.reshape(h * w, h * w)
    # Two passes on good maps (sums, minimum; NaN and inf reach both): 5 ms for a 64x64 grid on
    # 2 CPU cores. The element-wise diagnosis below (~0.1 s) runs only when one of them is off.
    sums = flat.sum(1, dtype=torch.float64 if flat.dtype == torch.float64 else torch.float32)
    if not (bool(torch.isfinite(sums).all()) and float(flat.amin()) >= 0):
        finite = torch.isfinite(flat)
        if not bool(finite.all()):
            bad = ~finite
            count = int(bad.sum())
            query = int(bad.any(1).nonzero()[0, 0])
            nan = int(torch.isnan(flat).sum())
            raise ValueError(
                f"{name} holds NaN or inf entries ({nan} NaN, {count - nan} inf of "
                f"{flat.numel()}; first in the key map of query {query} = row {query // w}, "
                f"column {query % w})"
            )
        negative = flat < 0
        if bool(negative.any()):
            query = int(negative.any(1).nonzero()[0, 0])
            raise ValueError(
                f"{name} holds negative entries ({int(negative.sum())} of {flat.numel()}, min "
                f"{float(flat.min()):.3g}; first in the key map of query {query}): attention "
                "maps are probabilities"
            )
    zero = (sums <= 0).nonzero()
    if zero.numel():
        raise ValueError(
            f"{name}: {zero.numel()} key map(s) sum to zero (first: query {int(zero[0, 0])}): "
            "attention maps are probabilities"
        )
    tol = attention_sum_atol(maps.dtype) if atol is None else float(atol)
    deviation = (sums - 1).abs()
    worst = int(deviation.argmax())
    if not float(deviation[worst]) <= tol:
        raise ValueError(
            f"{name}: key maps must sum to 1 (query {worst} sums to {float(sums[worst]):.6g}, "
            f"tolerance {tol:.3g}): attention maps are probabilities"
        )


def check_features(features: torch.Tensor) -> None:
    """Raise a ``ValueError`` unless ``features`` is a non-empty, finite (C, h, w) feature map or
    (N, C) token matrix (C >= 1 channels, at least one token)."""
    shape = tuple(features.shape)
    if features.ndim == 3:
        channels, tokens = shape[0], shape[1] * shape[2]
    elif features.ndim == 2:
        tokens, channels = shape
    else:
        raise ValueError(f"features must be (C, h, w) or (N, C), got {shape}")
    if channels < 1:
        raise ValueError(f"features have 0 channels (shape {shape}): nothing to compare")
    if tokens < 1:
        raise ValueError(f"features hold an empty token grid (shape {shape})")
    if torch.is_floating_point(features) and not bool(torch.isfinite(features).all()):
        nan = int(torch.isnan(features).sum())
        inf = int(torch.isinf(features).sum())
        raise ValueError(
            f"non-finite features: {nan} NaN and {inf} inf value(s) of {features.numel()} "
            f"(shape {shape})"
        )


def max_abs_scaled(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x`` divided by its largest absolute value along ``dim`` (slices of zeros stay zero).

    Each token's direction is unchanged, so its cosine similarities are too, but the values land in
    [-1, 1]: squaring them can neither overflow (features x 1e37) nor underflow (x 1e-30) as the
    L2 norm of the raw values does in float32. Computed in float64 if ``x`` is float64, else in
    float32 (half precision upcast exactly); returns that dtype.
    """
    work = x if x.dtype in (torch.float32, torch.float64) else x.float()
    peak = work.abs().amax(dim=dim, keepdim=True)
    return work / torch.where(peak > 0, peak, torch.ones_like(peak))


def cosine_affinity(features: torch.Tensor, alpha: float = 10.0) -> torch.Tensor:
    """DiffCut's affinity: min-max normalised cosine similarity raised to the power alpha.

    Invariant to the scale of each token: every token is divided by its largest absolute value
    (:func:`max_abs_scaled`, in float64 for float64 input) before the L2 normalisation, so
    features x 1e-30 or x 1e37 give the affinity of the features themselves (the raw L2 norm would
    underflow to 0 or overflow to inf in float32). All-zero tokens have similarity 0 with
    everything.

    Args:
        features: (C, h, w) feature map or (N, C) token features, float, any device; finite,
            C >= 1, N >= 1 (:func:`check_features`).
        alpha: exponent (DiffCut: 10); larger values sharpen the graph.
    Returns:
        (N, N) float32 symmetric affinity in [0, 1], N = h * w; its minimum is exactly 0 and
        its maximum 1 (unless all similarities are equal, then all ones).
    Raises:
        ValueError: wrong rank, 0 channels, no token, NaN or inf values ("non-finite features").
    """
    check_features(features)
    tokens = features.flatten(1).T if features.ndim == 3 else features
    if not alpha > 0:
        raise ValueError("alpha must be positive")
    tokens = F.normalize(max_abs_scaled(tokens, dim=1), dim=1).float()
    sim = tokens @ tokens.T
    lo, hi = sim.min(), sim.max()
    if hi - lo <= 0:
        return torch.ones_like(sim)
    sim = (sim - lo) / (hi - lo)
    return sim.pow_(alpha)
