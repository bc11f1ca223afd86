"""K-means in torch: k-means++ seeds and Lloyd iterations (pure functions, any device).

Shared by the k-means baselines (``methods/baselines.py``) and DiffSeg's optional refinement
(``methods/diffseg.py``), which both import it from here, downward.
"""

from __future__ import annotations

import torch

from diffuseg.methods.common import exact_fp32


def _sq_dist_to(x: torch.Tensor, x_sq: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (N,) from every row of x to one point c (D,), >= 0."""
    return (x_sq - 2.0 * (x @ c) + c.square().sum()).clamp_min_(0.0)


def kmeans_pp_init(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007), one candidate per step.

    Args:
        x: (N, D) float points.
        k: number of centres wanted (>= 1).
        generator: a CPU ``torch.Generator`` (the randomness; the same seed gives the same seeds).
    Returns:
        (k', D) centres, rows of x, k' = min(k, number of distinct points): seeding stops early
        when every point already coincides with a centre.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n = x.shape[0]
    if n == 0:
        raise ValueError("k-means needs at least one point")
    with exact_fp32(x.device):
        x_sq = torch.linalg.vector_norm(x, dim=1).square_()
        first = int(torch.randint(n, (1,), generator=generator).item())
        chosen = [first]
        d2 = _sq_dist_to(x, x_sq, x[first])
        d2[first] = 0.0
        for _ in range(1, min(k, n)):
            weights = d2.to("cpu", torch.float64)
            total = float(weights.sum())
            if not total > 0:
                break
            nxt = int(torch.multinomial(weights / total, 1, generator=generator).item())
            chosen.append(nxt)
            d2 = torch.minimum(d2, _sq_dist_to(x, x_sq, x[nxt]))
            d2[chosen] = 0.0
    return x[chosen].clone()


def lloyd_kmeans(
    x: torch.Tensor, init: torch.Tensor, iterations: int = 300
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means from given centres (one init).

    Each iteration assigns every point to its nearest centre (squared Euclidean; ties to the
    lowest index) and moves each centre to the mean of its points; a centre left with no point
    stays where it was. Stops when the assignment no longer changes or after ``iterations``.

    Args:
        x: (N, D) float points (any device).
        init: (K, D) initial centres.
        iterations: max number of assignment steps (>= 1).
    Returns:
        labels: int64 (N,) cluster of each point, in [0, K).
        centres: (K, D) float32 (float64 if x is float64): the mean of each non-empty cluster of
            ``labels``; an empty cluster's last centre.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if x.ndim != 2 or init.ndim != 2 or x.shape[1] != init.shape[1]:
        raise ValueError(f"need x (N, D) and init (K, D), got {tuple(x.shape)}, "
                         f"{tuple(init.shape)}")
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(dtype)
    centres = init.to(device=x.device, dtype=dtype).clone()
    k = centres.shape[0]
    labels: torch.Tensor | None = None
    with exact_fp32(x.device):
        for _ in range(iterations):
            # ||x||^2 is the same for every centre: argmin over ||c||^2 - 2 x.c
            dist = torch.addmm(centres.square().sum(1).unsqueeze(0), x, centres.T, alpha=-2.0)
            new = dist.argmin(1)
            if labels is not None and torch.equal(new, labels):
                break
            labels = new
            sums = torch.zeros_like(centres).index_add_(0, labels, x)
            counts = torch.bincount(labels, minlength=k)
            nonempty = counts > 0
            centres[nonempty] = sums[nonempty] / counts[nonempty].unsqueeze(1).to(dtype)
    assert labels is not None
    return labels, centres


def kmeans(
    x: torch.Tensor, k: int, seed: int = 0, iterations: int = 300
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means++ seeds from ``torch.Generator().manual_seed(seed)``, then :func:`lloyd_kmeans`.

    Returns:
        labels int64 (N,) in [0, k'), centres (k', D); k' = min(k, distinct points).
    """
    generator = torch.Generator().manual_seed(int(seed))
    init = kmeans_pp_init(x, k, generator)
    return lloyd_kmeans(x, init, iterations)


__all__ = ["kmeans", "kmeans_pp_init", "lloyd_kmeans"]
