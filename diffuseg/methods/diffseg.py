"""DiffSeg: unsupervised segmentation by iteratively merging self-attention maps.

Tian et al., "Diffuse, Attend, and Segment", CVPR 2024; official code google/diffseg (TensorFlow).
See METHODS.md section 2. The pipeline, each step a pure function here:

1. :func:`aggregate_attention` - one key map per query token on the finest grid, the query grids
   weighted by resolution.
2. :func:`anchor_indices` - an M x M grid of anchor queries.
3. :func:`merge_attention` - iteration 1 groups every map with each anchor by symmetric KL
   (:func:`symmetric_kl`), iterations 2..N greedily merge the proposals.
4. optional K-means refinement (:func:`refine_proposals`, off by default).
5. :func:`label_proposals` - bilinear upsampling of the proposals and a per-pixel argmax.

Differences from the official code (deliberate, documented):

- The official iteration 1 computes the KL in float16 with no epsilon. Attention values that
  underflow to 0 in float16 give ``0 * log 0 = NaN`` and ``NaN < tau`` is False, so such pairs
  silently never merge. Here everything is float32 (float64 if the attention is float64), with
  ``kl_epsilon`` added before every log, so no NaN arises and such pairs are compared on their
  values. TF32 / reduced-precision matmuls are switched off locally (:func:`exact_fp32`).
- The official code is hard-wired to a 64 x 64 grid and square images; here any grid works,
  including non-square ones. Anchor positions generalise the official formula, see
  :func:`anchor_positions`.
- An anchor (iteration 1) and a proposal (iterations 2..N) always belong to their own group. The
  official code gets this from ``D(p, p) = 0 < tau``; the fast matrix form computes ``D(p, p)`` only
  up to rounding (~1e-6), so it is set explicitly. ``tau`` must be > 0.
- Aggregation weights given by the user are normalised to sum 1 (so every aggregated row stays a
  probability distribution); the official code uses a user ``weight_ratio`` as given.
- K-means refinement: Lloyd iterations from the merged maps (one init) until the assignment stops
  changing or ``refine_iterations``; clusters left empty are dropped. (The official code uses
  sklearn's ``KMeans`` and then indexes clusters ``0..n_nonempty-1``, which mislabels if a
  cluster in the middle were empty.)
- Labels are made consecutive: label ``k`` is the ``k``-th proposal (in merge order) that wins at
  least one output pixel; proposals winning no pixel are removed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from diffuseg.methods import MethodSpec, register
from diffuseg.methods.assign import upsample_argmax
from diffuseg.methods.common import exact_fp32, finish, output_size_for
from diffuseg.methods.config import MethodConfig, setting
from diffuseg.methods.kmeans import lloyd_kmeans
from diffuseg.types import Encoding, Segmentation

Grid = tuple[int, int]

#: tau per evaluation dataset, as used for the published numbers (the paper recommends 1.0).
DIFFSEG_PRESETS: dict[str, float] = {"coco-stuff-27": 1.1, "cityscapes": 0.9}

# Working-set budgets (number of float elements per temporary) for the chunked loops.
_FAST_CHUNK_ELEMS = 1 << 22  # 16 MiB of fp32 per chunk of log-maps in the fast KL
_REFERENCE_CHUNK_ELEMS = 1 << 24  # 64 MiB of fp32 per (anchors x maps x keys) block


# --------------------------------------------------------------------------------------------
# numerics helpers
# --------------------------------------------------------------------------------------------


def _work_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (never half precision)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


# --------------------------------------------------------------------------------------------
# 1. aggregation
# --------------------------------------------------------------------------------------------


def _finest_first(grids: Sequence[Grid] | Mapping[Grid, Any]) -> list[Grid]:
    return sorted((tuple(g) for g in grids), key=lambda g: (g[0] * g[1], g[0]), reverse=True)


def aggregation_weights(
    grids: Sequence[Grid],
    weights: Sequence[float] | Mapping[Grid, float] | None = None,
) -> dict[Grid, float]:
    """The weight of each query grid in the aggregation, normalised to sum 1.

    Args:
        grids: the query grids (h, w), any order.
        weights: None for the default, proportional to the grid's resolution ``sqrt(h * w)``
            (= h for square grids; SD1.x at 512: [64, 32, 16, 8] / 120, as the official code's
            ``sqrt(number of queries)``); or one non-negative weight per grid, either as a
            mapping grid -> weight (missing grids get 0) or as a sequence ordered from the
            finest grid to the coarsest.
    Returns:
        grid -> weight (floats >= 0 summing to 1), finest grid first.
    """
    order = _finest_first(grids)
    if weights is None:
        raw = [math.sqrt(h * w) for h, w in order]
    elif isinstance(weights, Mapping):
        unknown = {tuple(g) for g in weights} - set(order)
        if unknown:
            raise ValueError(f"weights given for grids {sorted(unknown)} not in {order}")
        raw = [float(weights.get(g, 0.0)) for g in order]
    else:
        raw = [float(x) for x in weights]
        if len(raw) != len(order):
            raise ValueError(
                f"{len(raw)} aggregation weights for {len(order)} grids {order} "
                "(give one per grid, finest first)"
            )
    if any(not math.isfinite(x) or x < 0 for x in raw) or sum(raw) <= 0:
        raise ValueError(f"aggregation weights must be >= 0 with a positive sum, got {raw}")
    total = sum(raw)
    return {g: x / total for g, x in zip(order, raw, strict=True)}


def aggregate_attention(
    attention: Mapping[Grid, torch.Tensor],
    weights: Sequence[float] | Mapping[Grid, float] | None = None,
    target: Grid | None = None,
) -> torch.Tensor:
    """Aggregate self-attention of several query grids onto one grid (DiffSeg step 1).

    For every query grid (h, w): each key map (h, w) is resized bilinearly (half-pixel centres,
    ``align_corners=False``, as Keras' ``UpSampling2D``) to the target grid and renormalised to
    sum 1; the query axes are tiled by nearest neighbour (target row r takes source row
    ``r * h // H``; for integer ratios this is the official ``repeat``); the grids are summed with
    :func:`aggregation_weights`. Non-square grids work.

    Every grid's maps are checked first (:func:`diffuseg.graph.affinity.check_attention`, shared
    with DWC and the k-means baseline, which aggregate here): finite, non-negative, each key map
    summing to 1 within 1e-3 (float16 3.9e-3, bfloat16 3.1e-2); anything else is a ``ValueError``
    naming the grid and the fault. The renormalisation after resizing is DiffSeg's own rule
    (bilinear resizing does not keep a map's sum): it absorbs rounding and interpolation, it
    never turns arbitrary non-negative maps into distributions.

    Args:
        attention: query grid (h, w) -> float tensor (h*w, h, w), row q a probability map over
            the keys of query q (an ``Encoding.attention``). Any float dtype, any device.
        weights: see :func:`aggregation_weights`; None = proportional to resolution.
        target: output grid (H, W); default the finest grid.
    Returns:
        float32 tensor (H*W, H, W) on the attention's device (float64 if the finest grid's
        attention is float64); row q (query ``q = i * W + j``) is a probability map over the
        H x W keys (sums to 1). At 64 x 64 this is 64 MiB; it is built in place (one full copy
        at most in flight plus one source grid).
    Raises:
        ValueError: no attention, a grid that is not (h*w, h, w), NaN / inf / negative entries,
            a key map summing to zero or away from 1, bad weights or target.
    """
    from diffuseg.graph.affinity import check_attention

    if not attention:
        raise ValueError("no attention maps to aggregate")
    for grid, maps in attention.items():
        if not (isinstance(grid, tuple) and len(grid) == 2
                and all(isinstance(x, int) and not isinstance(x, bool) for x in grid)):
            raise ValueError(f"attention grids must be (h, w) pairs of ints, got {grid!r}")
        if not isinstance(maps, torch.Tensor):
            raise ValueError(f"attention for grid {grid} must be a tensor, got "
                             f"{type(maps).__name__}")
        check_attention(maps, (grid[0], grid[1]))
    grids = _finest_first(attention)
    if target is not None and (len(target) != 2 or min(int(target[0]), int(target[1])) < 1):
        raise ValueError(f"target grid must be (H, W) >= 1, got {tuple(target)}")
    height, width = (int(target[0]), int(target[1])) if target is not None else grids[0]
    n = height * width
    wts = aggregation_weights(grids, weights)
    finest = attention[grids[0]]
    dtype = _work_dtype(finest)
    device = finest.device
    # Process the grid equal to the target first: it initialises the output without a copy.
    grids.sort(key=lambda g: g != (height, width))

    out: torch.Tensor | None = None
    for grid in grids:
        weight = wts[grid]
        if weight == 0.0:
            continue
        h, w = grid
        maps = attention[grid]
        fresh = maps.dtype != dtype or maps.device != device
        maps = maps.to(device=device, dtype=dtype)
        if (h, w) == (height, width):
            keys = maps.reshape(n, n)
            scale = weight / keys.sum(1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
            keys = keys.mul_(scale) if fresh else keys * scale
            if out is None:
                out = keys
            else:
                out += keys
            continue
        keys = F.interpolate(
            maps.reshape(h * w, 1, h, w), size=(height, width), mode="bilinear",
            align_corners=False,
        ).reshape(h * w, n)
        keys.mul_(weight / keys.sum(1, keepdim=True).clamp_min(torch.finfo(dtype).tiny))
        if out is None:
            out = torch.zeros(n, n, dtype=dtype, device=device)
        cols = (torch.arange(width, device=device) * w) // width
        out3 = out.view(height, width, n)
        keys3 = keys.view(h, w, n)
        for r in range(height):
            out3[r] += keys3[(r * h) // height].index_select(0, cols)
        del keys, keys3
    if out is None:  # every weight zero is rejected by aggregation_weights
        raise AssertionError("unreachable")
    return out.view(n, height, width)


# --------------------------------------------------------------------------------------------
# 2. anchors
# --------------------------------------------------------------------------------------------


def anchor_positions(n: int, m: int) -> list[int]:
    """Positions of ``m`` anchors along an axis of length ``n`` (ints in [0, n-1], increasing).

    The official code (64 tokens) uses stride ``s = 63 // (m - 1)``, span ``t = s * (m - 1)`` and
    start ``(63 - t) // 2``: for m = 16 the positions 1, 5, ..., 61. We generalise 63 to
    ``n - 1``; that gives e.g. 0, 2, ..., 30 at n = 32 and 1, 4, ..., 46 at n = 48, the official
    values at n = 64. Our additions: when the integer stride leaves at least one stride of the
    axis uncovered (``(n-1) - t >= s``, e.g. n = 24, m = 16 would put all anchors in rows 4..19),
    we spread them as ``floor(i * (n-1) / (m-1))`` instead; ``m >= n`` gives every position;
    ``m = 1`` gives the centre ``(n - 1) // 2``.
    """
    if n < 1 or m < 1:
        raise ValueError(f"anchor_positions needs n >= 1 and m >= 1, got n={n}, m={m}")
    if m == 1:
        return [(n - 1) // 2]
    if m >= n:
        return list(range(n))
    stride = (n - 1) // (m - 1)
    span = stride * (m - 1)
    margin = (n - 1) - span
    if margin < stride:
        start = margin // 2
        return [start + stride * i for i in range(m)]
    return [(i * (n - 1)) // (m - 1) for i in range(m)]


def anchor_indices(grid: Grid, m: int = 16, device: torch.device | str = "cpu") -> torch.Tensor:
    """Flat query indices (row * w + col) of the M x M anchor grid on a (h, w) token grid.

    Returns:
        int64 tensor (Mh * Mw,), row-major (the official ``meshgrid(indexing="ij")`` order),
        with Mh = len(anchor_positions(h, m)), Mw likewise (= m unless the axis is shorter).
    """
    h, w = grid
    rows = anchor_positions(h, m)
    cols = anchor_positions(w, m)
    return torch.tensor([r * w + c for r in rows for c in cols], dtype=torch.long, device=device)


# --------------------------------------------------------------------------------------------
# 3. symmetric KL and merging
# --------------------------------------------------------------------------------------------


def symmetric_kl(
    p: torch.Tensor,
    q: torch.Tensor,
    epsilon: float = 1e-8,
    mode: str = "fast",
    chunk: int | None = None,
) -> torch.Tensor:
    """Symmetric KL divergence between every row of ``p`` and every row of ``q``.

    ``D(a, b) = 1/2 KL(a||b) + 1/2 KL(b||a)
    = 1/2 sum_k (a_k - b_k) (log(a_k + eps) - log(b_k + eps))``

    Args:
        p: (A, K) float, rows probability distributions (not checked).
        q: (B, K) float, same.
        epsilon: added before every log (> 0 keeps zeros finite).
        mode: "fast" - two matrix products,
            ``D = 1/2 [sum a log a' + sum b log b' - a . log b' - log a' . b]`` (a' = a + eps),
            q processed in chunks of ``chunk`` rows; "reference" - the direct formula, ``chunk``
            rows of ``p`` at a time against all of ``q`` (as the official code, minus float16).
        chunk: rows per chunk; None picks a memory-bounded size (16 MiB / 64 MiB temporaries).
    Returns:
        (A, B) float32 on p's device (float64 if an input is float64); values >= 0 up to
        rounding (the fast form may give ~ -1e-6 on identical rows).
    """
    if p.ndim != 2 or q.ndim != 2 or p.shape[1] != q.shape[1]:
        raise ValueError(f"symmetric_kl needs (A, K) and (B, K), got {tuple(p.shape)}, "
                         f"{tuple(q.shape)}")
    if not epsilon >= 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    dtype = _work_dtype(p, q)
    p = p.to(dtype)
    q = q.to(device=p.device, dtype=dtype)
    if mode == "fast":
        return _symmetric_kl_fast(p, q, epsilon, chunk)
    if mode == "reference":
        return _symmetric_kl_reference(p, q, epsilon, chunk)
    raise ValueError(f"mode must be 'fast' or 'reference', got {mode!r}")


def _symmetric_kl_fast(
    p: torch.Tensor, q: torch.Tensor, epsilon: float, chunk: int | None
) -> torch.Tensor:
    num_p, k = p.shape
    num_q = q.shape[0]
    step = chunk or max(1, _FAST_CHUNK_ELEMS // max(k, 1))
    out = p.new_empty(num_p, num_q)
    with exact_fp32(p.device):
        log_p = (p + epsilon).log_()
        self_p = (p * log_p).sum(1, keepdim=True)  # (A, 1)
        for s in range(0, num_q, step):
            qc = q[s : s + step]
            log_q = (qc + epsilon).log_()
            self_q = (qc * log_q).sum(1)  # (c,)
            cross = torch.addmm(p @ log_q.T, log_p, qc.T)  # a . log b' + log a' . b
            out[:, s : s + step] = (self_p + self_q - cross).mul_(0.5)
    return out


def _symmetric_kl_reference(
    p: torch.Tensor, q: torch.Tensor, epsilon: float, chunk: int | None
) -> torch.Tensor:
    num_p, k = p.shape
    num_q = q.shape[0]
    step = chunk or max(1, _REFERENCE_CHUNK_ELEMS // max(num_q * k, 1))
    out = p.new_empty(num_p, num_q)
    for s in range(0, num_p, step):
        pc = p[s : s + step].unsqueeze(1)  # (c, 1, K)
        quotient = torch.log(pc + epsilon) - torch.log(q + epsilon)  # (c, B, K)
        kl_1 = (pc * quotient).sum(-1) / 2
        kl_2 = -(q * quotient).sum(-1) / 2
        out[s : s + step] = kl_1 + kl_2
    return out


def _check_taus(taus: Sequence[float]) -> list[float]:
    taus = [float(t) for t in taus]
    if not taus or any(not t > 0 for t in taus):
        raise ValueError(f"taus must be a non-empty list of thresholds > 0, got {taus}")
    return taus


def merge_attention(
    maps: torch.Tensor,
    taus: Sequence[float] = (0.9, 0.9, 0.9),
    anchor_grid: int = 16,
    epsilon: float = 1e-8,
    mode: str = "fast",
) -> torch.Tensor:
    """DiffSeg's iterative attention merging (steps 2-4 of METHODS.md section 2).

    Iteration 1: for each anchor (:func:`anchor_indices`), the group of every map q with
    ``D(anchor, q) < taus[0]`` (strict; the anchor itself always included); each group's mean is
    a proposal (groups may overlap or coincide). Iterations 2..N (one per further tau): the
    symmetric KL between all proposals is computed once; walking the proposals in order, an
    unabsorbed proposal i takes every proposal j with ``D(i, j) < tau`` (already absorbed ones
    included, i itself always), marks them absorbed and emits their mean.

    Args:
        maps: (N, h, w) float, N = h*w: row q is query q's probability map over the keys (the
            output of :func:`aggregate_attention`).
        taus: one threshold > 0 per iteration.
        anchor_grid: M, anchors per axis.
        epsilon: see :func:`symmetric_kl`.
        mode: "fast" or "reference" KL (:func:`symmetric_kl`); both give the same groups up to
            rounding at ``D == tau``.
    Returns:
        (P, h, w) float32 proposals (each sums to 1), in emission order.
    """
    if maps.ndim != 3 or maps.shape[0] != maps.shape[1] * maps.shape[2]:
        raise ValueError(f"maps must be (h*w, h, w), got {tuple(maps.shape)}")
    taus = _check_taus(taus)
    n, h, w = maps.shape
    flat = maps.reshape(n, h * w).to(_work_dtype(maps))
    anchors = anchor_indices((h, w), anchor_grid, device=flat.device)
    dist = symmetric_kl(flat[anchors], flat, epsilon, mode)  # (A, N)
    member = dist < taus[0]
    del dist
    member[torch.arange(anchors.numel(), device=flat.device), anchors] = True
    proposals = _group_means(member, flat)
    for tau in taus[1:]:
        proposals = merge_proposals(proposals, tau, epsilon, mode)
    return proposals.reshape(-1, h, w)


def _group_means(member: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """Mean of the rows of ``flat`` selected by each row of the boolean ``member`` matrix.

    Anchors inside one region select the same group: each distinct group is averaged once (a
    product with a handful of rows instead of one per anchor) and the means are handed back in
    anchor order; the result is the same."""
    groups, which = torch.unique(member, dim=0, return_inverse=True)
    sel = groups.to(flat.dtype)
    with exact_fp32(flat.device):
        means = (sel @ flat).div_(sel.sum(1, keepdim=True))
    return means[which]


def merge_proposals(
    proposals: torch.Tensor, tau: float, epsilon: float = 1e-8, mode: str = "fast"
) -> torch.Tensor:
    """One greedy merging iteration (iterations 2..N of :func:`merge_attention`).

    The symmetric KL between all proposals is computed once; walking the proposals in order, an
    unabsorbed proposal i takes every j with ``D(i, j) < tau`` (absorbed ones included, i
    itself always), marks them absorbed and emits their mean.

    Args:
        proposals: (P, K) float, rows probability distributions.
    Returns:
        (P', K) merged proposals, P' <= P, in emission order.
    """
    num = proposals.shape[0]
    member = symmetric_kl(proposals, proposals, epsilon, mode) < tau
    member.fill_diagonal_(True)
    member_cpu = member.cpu()
    absorbed = torch.zeros(num, dtype=torch.bool)
    groups = []
    for i in range(num):
        if absorbed[i]:
            continue
        groups.append(member_cpu[i])
        absorbed |= member_cpu[i]
    return _group_means(torch.stack(groups).to(proposals.device), proposals)


def refine_proposals(
    maps: torch.Tensor, proposals: torch.Tensor, iterations: int = 300
) -> torch.Tensor:
    """Optional K-means refinement: Lloyd iterations on the attention rows, one init = the
    proposals; returns the means of the non-empty clusters (in proposal order).

    Args:
        maps: (N, h, w) aggregated attention (rows = points).
        proposals: (P, h, w) initial centres.
        iterations: at most this many Lloyd iterations (stops when assignments stop changing).
    Returns:
        (P', h, w) float32, P' <= P.
    """

    n, h, w = maps.shape
    flat = maps.reshape(n, h * w)
    labels, centres = lloyd_kmeans(flat, proposals.reshape(proposals.shape[0], h * w), iterations)
    counts = torch.bincount(labels, minlength=centres.shape[0])
    return centres[counts > 0].reshape(-1, h, w)


# --------------------------------------------------------------------------------------------
# 5. labelling
# --------------------------------------------------------------------------------------------


def relabel_consecutive(labels: torch.Tensor, num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Map the label values present in ``labels`` (ints in [0, num)) to 0..K-1 in increasing
    order of the old value.

    Returns:
        (new labels int64 of the same shape, kept: int64 (K,) old value of each new label).
    """
    present = torch.bincount(labels.reshape(-1), minlength=num) > 0
    kept = torch.nonzero(present).reshape(-1)
    lookup = torch.full((num,), -1, dtype=torch.long, device=labels.device)
    lookup[kept] = torch.arange(kept.numel(), device=labels.device)
    return lookup[labels], kept


def label_proposals(
    proposals: torch.Tensor, output_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Label every output pixel with the proposal of largest (bilinearly upsampled) value.

    Args:
        proposals: (P, h, w) float merged maps.
        output_size: (H, W).
    Returns:
        labels: int64 (H, W), values 0..K-1 all present; label k = the k-th proposal (in
            proposal order) that wins at least one pixel.
        token_labels: int64 (h, w), argmax over the same K proposals on the token grid (values
            in 0..K-1, not necessarily all present).
        kept: int64 (K,), proposal index of each label.
    """
    raw = upsample_argmax(proposals, output_size)
    labels, kept = relabel_consecutive(raw, proposals.shape[0])
    token_labels = proposals[kept].argmax(0)
    return labels, token_labels, kept


# --------------------------------------------------------------------------------------------
# config, pipeline, registration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DiffSegConfig(MethodConfig):
    """DiffSeg settings; defaults = the official demo / Cityscapes setting.

    Attributes:
        tau: KL merging threshold (> 0) for every iteration. 0.9 (demo, Cityscapes); 1.1 for
            COCO-Stuff-27 (see ``DIFFSEG_PRESETS``); the paper recommends 1.0. Larger tau ->
            fewer segments.
        iterations: number of merging iterations (each with ``tau``).
        taus: per-iteration thresholds; overrides ``tau`` and ``iterations`` when given.
        anchor_grid: anchors per axis (M; M x M anchors).
        weights: aggregation weight per attention grid, finest first (normalised to sum 1);
            None = proportional to resolution.
        kl_epsilon: added before every log in the KL (> 0). 1e-8 keeps logs of zeros finite
            (the official float16 code gets NaN there and never merges such pairs) while
            staying far below the values that matter (a uniform map over 64 x 64 keys is 2.4e-4).
        refine_kmeans: K-means refinement of the proposals (off in the paper's benchmarks, on
            in the official demo).
        refine_iterations: max Lloyd iterations of that refinement (sklearn's default 300).
        mode: "fast" (matrix-product KL) or "reference" (direct chunked formula).
        output_size: (H, W) of the label map; None = the run's ``output_size`` argument, else
            ``encoding.meta["original_size"]``, else the processed image size.
    """

    tau: float = setting(0.9, gt=0)
    iterations: int = setting(3, ge=1)
    taus: tuple[float, ...] | None = setting(None, gt=0)
    anchor_grid: int = setting(16, ge=1)
    weights: tuple[float, ...] | None = setting(None, ge=0)
    kl_epsilon: float = setting(1e-8, gt=0)
    refine_kmeans: bool = False
    refine_iterations: int = setting(300, ge=1)
    mode: str = setting("fast", choices=("fast", "reference"))
    output_size: tuple[int, int] | None = setting(None, ge=1)

    def resolved_taus(self) -> tuple[float, ...]:
        """The threshold of each merging iteration."""
        if self.taus is not None:
            return tuple(float(t) for t in self.taus)
        return (float(self.tau),) * self.iterations


class DiffSegOutput(NamedTuple):
    """Result of :func:`segment_aggregated`.

    labels: int64 (H, W), 0..K-1 all present. token_labels: int64 (h, w) on the aggregated grid.
    proposals: (K, h, w) float32, the merged map of each label (each sums to 1).
    """

    labels: torch.Tensor
    token_labels: torch.Tensor
    proposals: torch.Tensor


def segment_aggregated(
    aggregated: torch.Tensor,
    config: DiffSegConfig | None = None,
    output_size: tuple[int, int] | None = None,
) -> DiffSegOutput:
    """DiffSeg steps 2-6 on already aggregated attention.

    Args:
        aggregated: (h*w, h, w) float from :func:`aggregate_attention`.
        config: settings (default :class:`DiffSegConfig`).
        output_size: (H, W); default ``config.output_size``, else the token grid (h, w).
    Raises:
        ValueError: ``aggregated`` is not attention (:func:`diffuseg.graph.affinity.
            check_attention`: shape, NaN / inf, negative entries, key maps not summing to 1).
    """
    from diffuseg.graph.affinity import check_attention

    config = config or DiffSegConfig()
    check_attention(aggregated)
    _, h, w = aggregated.shape
    size = output_size or config.output_size or (h, w)
    proposals = merge_attention(
        aggregated, config.resolved_taus(), config.anchor_grid, config.kl_epsilon, config.mode
    )
    if config.refine_kmeans:
        proposals = refine_proposals(aggregated, proposals, config.refine_iterations)
    labels, token_labels, kept = label_proposals(proposals, (int(size[0]), int(size[1])))
    return DiffSegOutput(labels, token_labels, proposals[kept])


def run_diffseg(
    encoding: Encoding,
    config: DiffSegConfig | None = None,
    output_size: tuple[int, int] | None = None,
) -> Segmentation:
    """Run DiffSeg on an Encoding's self-attention.

    Args:
        encoding: needs ``attention`` (query grid -> (h*w, h, w)); runs on its device.
        config: settings (default :class:`DiffSegConfig`).
        output_size: (H, W) of the labels; default ``config.output_size``, else
            ``encoding.meta["original_size"]``, else ``encoding.image_size``
            (:func:`diffuseg.methods.common.output_size_for`).
    Returns:
        Segmentation (packaged by :func:`diffuseg.methods.common.finish`) with labels (H, W)
        int32 (0..K-1), token_labels (h, w) int32 on the aggregated (finest) grid, config =
        ``{"method": "diffseg", **asdict(config)}`` plus the resolved output size and the
        backbone facts from ``encoding.meta``; hierarchy None.
    Raises:
        ValueError: no attention, or attention that is not one probability map per query
            (NaN / inf, negative, a map summing to zero or away from 1; see
            :func:`aggregate_attention`), the message naming the grid.
    """
    config = config or DiffSegConfig()
    if not encoding.attention:
        raise ValueError("DiffSeg needs self-attention maps: encode with attention capture on")
    size = output_size_for(encoding, output_size or config.output_size)
    aggregated = aggregate_attention(encoding.attention, config.weights)
    result = segment_aggregated(aggregated, config, size)
    del aggregated
    return finish(result.labels, encoding, size, config, "diffseg",
                  token_labels=result.token_labels)


register(
    MethodSpec(
        name="diffseg",
        config_cls=DiffSegConfig,
        run=run_diffseg,
        needs=frozenset({"attention"}),
        summary="DiffSeg (Tian et al. CVPR 2024): merge self-attention maps by symmetric KL",
        default_backbone="sd14",
    )
)

__all__ = [
    "DIFFSEG_PRESETS",
    "DiffSegConfig",
    "DiffSegOutput",
    "aggregate_attention",
    "aggregation_weights",
    "anchor_indices",
    "anchor_positions",
    "exact_fp32",
    "label_proposals",
    "merge_attention",
    "merge_proposals",
    "refine_proposals",
    "relabel_consecutive",
    "run_diffseg",
    "segment_aggregated",
    "symmetric_kl",
]
