"""Planted partitions for algorithm tests: a known label map, and features / self-attention built
from it plus noise, where the right segmentation is known exactly.

Import from a test (pytest puts this folder on ``sys.path``): ``from planted import ...``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def planted_labels(
    h: int, w: int, k: int, seed: int = 0, block: int | None = None, relax: int = 3
) -> np.ndarray:
    """A (h, w) map of ``k`` blocky regions of similar size.

    A Voronoi partition of a coarse lattice of ``block`` x ``block`` cells (default
    ``max(1, min(h, w) // 8)``) around ``k`` distinct random seed cells, relaxed ``relax`` times
    (Lloyd: each seed moves to its region's centroid, so regions become compact and of similar
    size), then each cell repeated to its pixels. Every label 0..k-1 is present; regions are
    unions of whole blocks.

    Returns:
        int64 array (h, w), values 0..k-1.
    """
    block = block or max(1, min(h, w) // 8)
    ch, cw = -(-h // block), -(-w // block)
    if k < 1 or k > ch * cw:
        raise ValueError(f"k={k} regions do not fit in a {ch}x{cw} lattice of blocks")
    rng = np.random.default_rng(seed)
    cells = rng.choice(ch * cw, size=k, replace=False)
    sy, sx = (c.astype(np.float64) for c in np.divmod(cells, cw))
    yy, xx = np.mgrid[0:ch, 0:cw]

    def voronoi(sy: np.ndarray, sx: np.ndarray) -> np.ndarray:
        dist = (yy[None] - sy[:, None, None]) ** 2 + (xx[None] - sx[:, None, None]) ** 2
        return dist.argmin(0)

    coarse = voronoi(sy, sx)
    for _ in range(relax):
        counts = np.bincount(coarse.ravel(), minlength=k)
        cy = np.bincount(coarse.ravel(), weights=yy.ravel(), minlength=k) / counts
        cx = np.bincount(coarse.ravel(), weights=xx.ravel(), minlength=k) / counts
        relaxed = voronoi(cy, cx)
        if np.unique(relaxed).size < k:  # a region vanished: keep the last complete partition
            break
        coarse = relaxed
    full = np.repeat(np.repeat(coarse, block, axis=0), block, axis=1)
    return full[:h, :w].astype(np.int64)


def planted_features(
    labels: np.ndarray | torch.Tensor,
    noise: float = 0.1,
    seed: int = 0,
    dim: int | None = None,
) -> torch.Tensor:
    """Token features of a label map: region r's one-hot vector e_r (in ``dim`` >= k dimensions,
    default k) plus i.i.d. Gaussian noise of std ``noise``.

    Returns:
        float32 tensor (C, h, w), C = dim or k (the ``Encoding.features`` layout).
    """
    lab = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    k = int(lab.max()) + 1
    dim = dim or k
    if dim < k:
        raise ValueError(f"dim={dim} < k={k}")
    gen = torch.Generator().manual_seed(seed)
    f = F.one_hot(lab, dim).to(torch.float32)  # (h, w, C)
    f = f + noise * torch.randn(f.shape, generator=gen)
    return f.permute(2, 0, 1).contiguous()


def smooth_planted_features(
    side: int, regions: int = 8, dim: int = 1280, smooth: float = 0.5, white: float = 0.1,
    seed: int = 0,
) -> tuple[torch.Tensor, np.ndarray]:
    """Features that behave like a diffusion UNet's under DiffCut's affinity: each region a unit
    prototype (all sharing a common direction, so regions are similar but distinct), plus a
    spatially smooth random field (bicubic from 4x4) and a little white noise. With DiffCut's
    defaults (alpha 10, tau 0.5, self-loops) they give a dozen or two segments and a
    well-separated spectrum, unlike one-hot features whose regions are nearly disconnected (then
    rounding decides the Fiedler vector) or noisy ones (the cut shatters into single tokens).

    Returns:
        (dim, side, side) float32 features and the (side, side) planted label map.
    """
    gen = torch.Generator().manual_seed(seed)
    labels = planted_labels(side, side, regions, seed=seed)
    base = torch.randn(dim, generator=gen)
    prototypes = F.normalize(base + torch.randn(regions, dim, generator=gen), dim=1)
    f = prototypes[torch.as_tensor(labels)].permute(2, 0, 1)
    field = torch.randn(1, dim, 4, 4, generator=gen)
    field = F.interpolate(field, size=(side, side), mode="bicubic", align_corners=False)[0]
    f = f + smooth * field / field.std() / dim**0.5
    f = f + white * torch.randn(f.shape, generator=gen) / dim**0.5
    return f.contiguous(), labels


def planted_attention(
    labels: np.ndarray | torch.Tensor,
    temperature: float = 0.1,
    noise: float = 0.05,
    seed: int = 0,
    factors: tuple[int, ...] = (1, 2, 4, 8),
) -> dict[tuple[int, int], torch.Tensor]:
    """Self-attention of a label map, ``Encoding.attention``-style.

    Features f = :func:`planted_features` (one-hot region + noise) on the label grid; for each
    pooling factor s (kept only if it divides both sides and leaves at least 2 x 2 tokens) the
    features are average-pooled by s and the attention of that query grid is
    ``softmax_j(f_i . f_j / temperature)``.

    Returns:
        {(h/s, w/s): float32 (h*w/s^2, h/s, w/s)}, rows summing to 1.
    """
    return attention_pyramid(planted_features(labels, noise, seed), temperature, factors)


def attention_pyramid(
    features: torch.Tensor, temperature: float, factors: tuple[int, ...] = (1, 2, 4, 8)
) -> dict[tuple[int, int], torch.Tensor]:
    """``softmax_j(f_i . f_j / temperature)`` of (C, h, w) features average-pooled by each factor
    s that divides both sides and leaves at least 2 x 2 tokens: {(h/s, w/s): (h*w/s^2, h/s, w/s)}.
    """
    _, h, w = features.shape
    out: dict[tuple[int, int], torch.Tensor] = {}
    for s in factors:
        if h % s or w % s or h // s < 2 or w // s < 2:
            continue
        f = F.avg_pool2d(features[None], s)[0] if s > 1 else features
        gh, gw = f.shape[1:]
        tok = f.reshape(f.shape[0], gh * gw).T
        out[(gh, gw)] = torch.softmax(tok @ tok.T / temperature, dim=1).reshape(gh * gw, gh, gw)
    return out


def planted_hierarchy_attention(
    h: int,
    w: int,
    coarse: int = 2,
    fine: int = 3,
    seed: int = 0,
    coarse_scale: float = 1.0,
    fine_scale: float = 0.6,
    noise: float = 0.1,
    temperature: float = 0.1,
    factors: tuple[int, ...] = (1, 2, 4),
) -> tuple[dict[tuple[int, int], torch.Tensor], np.ndarray, np.ndarray]:
    """Self-attention of a two-level planted hierarchy, ``Encoding.attention``-style.

    ``coarse * fine`` blocky regions (:func:`planted_labels`); region r belongs to coarse group
    ``r // fine``. Token features: ``coarse_scale`` x one-hot(coarse group) + ``fine_scale`` x
    one-hot(region) + Gaussian noise of std ``noise``; per pooling factor s (as
    :func:`planted_attention`), attention = softmax(f_i . f_j / temperature) of the s-pooled
    features. Same region: logit (1 + 0.36) / 0.1 = 13.6; same group, other region: 10; other
    group: 0 - a walker stays in its region for a few steps and in its group for thousands.

    Returns:
        (attention, fine labels (h, w), coarse labels (h, w)).
    """
    fine_labels = planted_labels(h, w, coarse * fine, seed=seed)
    coarse_labels = fine_labels // fine
    gen = torch.Generator().manual_seed(seed)
    f = torch.cat([
        coarse_scale * F.one_hot(torch.as_tensor(coarse_labels), coarse).float(),
        fine_scale * F.one_hot(torch.as_tensor(fine_labels), coarse * fine).float(),
    ], dim=-1)
    f = (f + noise * torch.randn(f.shape, generator=gen)).permute(2, 0, 1)
    return attention_pyramid(f, temperature, factors), fine_labels, coarse_labels


def adjusted_rand_index(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985) of two labelings of the same pixels: 1 for
    identical partitions (up to renaming), ~0 for independent ones."""
    a = np.asarray(a).reshape(-1)
    b = np.asarray(b).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"labelings differ in size: {a.shape} vs {b.shape}")
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1), dtype=np.int64)
    np.add.at(table, (ai, bi), 1)

    def pairs(x: np.ndarray) -> float:
        x = x.astype(np.float64)
        return float((x * (x - 1) / 2).sum())

    n = a.size
    index = pairs(table)
    sum_a = pairs(table.sum(1))
    sum_b = pairs(table.sum(0))
    expected = sum_a * sum_b / (n * (n - 1) / 2) if n > 1 else 0.0
    maximum = (sum_a + sum_b) / 2
    if maximum == expected:  # both trivial (all one cluster or all singletons)
        return 1.0
    return (index - expected) / (maximum - expected)
