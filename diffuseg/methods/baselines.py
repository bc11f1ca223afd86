"""Baselines beside the methods (METHODS.md section 5): K-Means on aggregated self-attention.

- **K-Means-C**: a fixed K for every image (default 6): the ``kmeans`` method as registered.
- **K-Means-S**: K from the ground truth of each image: the same method with
  ``get_method("kmeans").make_config({"k": k_image})`` per image (or :func:`kmeans_attention`).

The points are the rows of DiffSeg's aggregated attention (:func:`aggregate_attention`): one
probability map over the h x w keys per query token (4096-d at SD1.x 512). Clustering is plain
Lloyd iterations in torch (:func:`lloyd_kmeans`, also used by DiffSeg's optional refinement) from
k-means++ seeds drawn with a seeded generator: deterministic for a seed on a given device.

Labelling at the output size: the K cluster indicator maps (one-hot on the token grid) are resized
bilinearly and each pixel takes the argmax (:func:`upsample_argmax`, as DiffSeg labels its
proposals): nearest-neighbour inside tokens, a smooth majority vote across token boundaries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffuseg.methods import MethodSpec, register
from diffuseg.methods.assign import upsample_argmax
from diffuseg.methods.common import finish, output_size_for
from diffuseg.methods.config import MethodConfig, setting
from diffuseg.methods.diffseg import aggregate_attention, exact_fp32, relabel_consecutive
from diffuseg.types import Encoding, Segmentation

#: K of K-Means-C (DiffSeg's baseline with a constant number of clusters).
KMEANS_C_K = 6


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


def kmeans_attention(
    aggregated: torch.Tensor, k: int, seed: int = 0, iterations: int = 300
) -> torch.Tensor:
    """K-means of the rows of aggregated attention.

    Args:
        aggregated: (h*w, h, w) float from :func:`aggregate_attention`.
    Returns:
        int64 (h, w) cluster of each token, in [0, k) (cluster ids as k-means made them).
    Raises:
        ValueError: ``aggregated`` is not attention (:func:`diffuseg.graph.affinity.
            check_attention`: shape, NaN / inf, negative entries, rows not summing to 1).
    """
    from diffuseg.graph.affinity import check_attention

    check_attention(aggregated)
    n, h, w = aggregated.shape
    labels, _ = kmeans(aggregated.reshape(n, h * w), k, seed, iterations)
    return labels.reshape(h, w)


@dataclass(frozen=True)
class KMeansConfig(MethodConfig):
    """K-means baseline settings.

    Attributes:
        k: number of clusters (K-Means-C: 6; K-Means-S: the image's ground-truth count).
        seed: seed of the k-means++ initialisation.
        iterations: max Lloyd iterations (stops at convergence).
        weights: aggregation weight per attention grid, finest first; None = by resolution.
        output_size: (H, W) of the labels; None = as DiffSeg (meta original size, image size).
    """

    k: int = setting(KMEANS_C_K, ge=1)
    seed: int = setting(0, ge=0)
    iterations: int = setting(300, ge=1)
    weights: tuple[float, ...] | None = setting(None, ge=0)
    output_size: tuple[int, int] | None = setting(None, ge=1)


def run_kmeans(
    encoding: Encoding,
    config: KMeansConfig | None = None,
    output_size: tuple[int, int] | None = None,
) -> Segmentation:
    """K-means baseline on an Encoding's aggregated self-attention.

    Returns:
        Segmentation: labels (H, W) int32 0..K-1 (clusters renumbered in cluster order, those
        winning no output pixel removed); token_labels (h, w) int32 = each token's cluster under
        the same numbering (a removed cluster's tokens take the output label at the token
        centre); config ``{"method": "kmeans", **asdict(config)}`` plus the resolved output
        size and backbone facts (packaged by :func:`diffuseg.methods.common.finish`).
    Raises:
        ValueError: no attention, or attention that is not one probability map per query
            (checked by :func:`aggregate_attention`; the message names the grid).
    """
    config = config or KMeansConfig()
    if not encoding.attention:
        raise ValueError("the k-means baseline needs self-attention maps")
    size = output_size_for(encoding, output_size or config.output_size)
    aggregated = aggregate_attention(encoding.attention, config.weights)
    _, h, w = aggregated.shape
    tokens = kmeans_attention(aggregated, config.k, config.seed, config.iterations)
    del aggregated
    num = int(tokens.max()) + 1
    onehot = torch.nn.functional.one_hot(tokens, num).permute(2, 0, 1).to(torch.float32)
    labels, kept = relabel_consecutive(upsample_argmax(onehot, size), num)
    lookup = torch.full((num,), -1, dtype=torch.long, device=tokens.device)
    lookup[kept] = torch.arange(kept.numel(), device=tokens.device)
    token_labels = lookup[tokens]
    if bool((token_labels < 0).any()):
        height, width = size
        rows = ((torch.arange(h, device=tokens.device) * 2 + 1) * height) // (2 * h)
        cols = ((torch.arange(w, device=tokens.device) * 2 + 1) * width) // (2 * w)
        centre_labels = labels[rows][:, cols]
        token_labels = torch.where(token_labels < 0, centre_labels, token_labels)
    return finish(labels, encoding, size, config, "kmeans", token_labels=token_labels)


register(
    MethodSpec(
        name="kmeans",
        config_cls=KMeansConfig,
        run=run_kmeans,
        needs=frozenset({"attention"}),
        summary="K-means baseline (K-Means-C / -S) on aggregated self-attention rows",
        default_backbone="sd14",
    )
)

__all__ = [
    "KMEANS_C_K",
    "KMeansConfig",
    "kmeans",
    "kmeans_attention",
    "kmeans_pp_init",
    "lloyd_kmeans",
    "run_kmeans",
]
