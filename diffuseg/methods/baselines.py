"""Baselines beside the methods (METHODS.md section 5): K-Means on aggregated self-attention.

- **K-Means-C**: a fixed K for every image (default 6): the ``kmeans`` method as registered.
- **K-Means-S**: K from the ground truth of each image: the same method with
  ``get_method("kmeans").make_config({"k": k_image})`` per image (or :func:`kmeans_attention`).

The points are the rows of DiffSeg's aggregated attention (:func:`aggregate_attention`): one
probability map over the h x w keys per query token (4096-d at SD1.x 512). Clustering is plain
Lloyd iterations in torch (:func:`diffuseg.methods.kmeans.lloyd_kmeans`, also used by DiffSeg's
optional refinement) from
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
from diffuseg.methods.diffseg import aggregate_attention, relabel_consecutive
from diffuseg.methods.kmeans import kmeans, kmeans_pp_init, lloyd_kmeans  # noqa: F401 (re-exported)
from diffuseg.types import Encoding, Segmentation

#: K of K-Means-C (DiffSeg's baseline with a constant number of clusters).
KMEANS_C_K = 6


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
