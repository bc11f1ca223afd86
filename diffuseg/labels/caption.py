"""Caption labels (DiffSeg's way): name each segment with a word of the image's caption.

The UNet is run once conditioned on the caption; its cross-attention (``attn2``) gives, at every
location of every query grid, a probability over the prompt tokens
(:meth:`~diffuseg.backbones.diffusion.Backbone.cross_attention`). Then, all pure:

1. :func:`aggregate_cross_attention`: the token maps of each grid resized bilinearly to one grid
   and summed with DiffSeg's resolution weights (``methods.diffseg.aggregation_weights``, the
   same weights as the self-attention aggregation; ``aggregate_attention`` itself does not
   apply: it tiles a query axis, and here the grid *is* the query axis).
2. :func:`word_maps`: one map per word, the mean of its tokens' maps (a word may span several BPE
   tokens: :func:`~diffuseg.labels.tokens.word_token_indices`), each L2-normalised over space
   (DiffSeg normalises every noun's map by its spatial norm, so that frequent tokens do not win
   everywhere).
3. :func:`vote_words`: each segment takes the word with the highest mean normalised map over its
   pixels (``voting="mean"``), or the most frequent per-pixel winner (``"majority"``: a true mode;
   the official DiffSeg code takes the median of the winners' indices instead, which can elect a
   word that wins no pixel).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diffuseg.labels.tokens import word_token_indices

__all__ = [
    "CaptionNames",
    "aggregate_cross_attention",
    "caption_names",
    "name_segments_from_caption",
    "vote_words",
    "word_maps",
]

Grid = tuple[int, int]
VOTING = ("mean", "majority")


def aggregate_cross_attention(
    maps: Mapping[Grid, torch.Tensor],
    weights: Sequence[float] | Mapping[Grid, float] | None = None,
    target: Grid | None = None,
) -> torch.Tensor:
    """Aggregate cross-attention of several query grids onto one grid.

    Args:
        maps: query grid (h, w) -> float tensor (T, h, w), ``[k]`` the map of prompt token k (as
            returned by ``Backbone.cross_attention``). Every grid must have the same T.
        weights: per-grid weights, see :func:`diffuseg.methods.diffseg.aggregation_weights`;
            None = proportional to the grid's resolution (DiffSeg's default).
        target: output grid (H, W); default the finest grid.
    Returns:
        float32 tensor (T, H, W): each grid's maps resized bilinearly (``align_corners=False``)
        and summed with the normalised weights; at each location the T values sum to 1 when
        the inputs do.
    """
    from diffuseg.methods.diffseg import aggregation_weights

    if not maps:
        raise ValueError("no cross-attention maps to aggregate")
    wts = aggregation_weights(list(maps), weights)
    grids = list(wts)  # finest first
    height, width = (int(target[0]), int(target[1])) if target is not None else grids[0]
    tokens = {int(maps[g].shape[0]) for g in grids}
    if len(tokens) != 1:
        raise ValueError(f"cross-attention grids disagree on the prompt length: {sorted(tokens)}")
    out = None
    for grid in grids:
        h, w = grid
        m = maps[grid]
        if m.ndim != 3 or tuple(m.shape[1:]) != (h, w):
            raise ValueError(f"cross-attention for grid {grid} must be (T, {h}, {w}), got "
                             f"{tuple(m.shape)}")
        m = m.to(torch.float32)
        if (h, w) != (height, width):
            m = F.interpolate(m[None], size=(height, width), mode="bilinear",
                              align_corners=False)[0]
        term = m * wts[grid]
        out = term if out is None else out + term
    assert out is not None
    return out


def word_maps(cross: torch.Tensor, indices: Mapping[str, Sequence[int]]) -> torch.Tensor:
    """One L2-normalised spatial map per word.

    Args:
        cross: (T, H, W) aggregated cross-attention (:func:`aggregate_cross_attention`).
        indices: word -> token positions (start token at 0), e.g. from ``word_token_indices``.
    Returns:
        float32 (K, H, W), K = len(indices) in its order: the mean of the word's token maps
        divided by its L2 norm over the H x W locations (all zeros stays zeros).
    """
    if not indices:
        raise ValueError("no words")
    t = cross.shape[0]
    rows = []
    for word, idx in indices.items():
        idx = [int(i) for i in idx]
        if not idx or min(idx) < 0 or max(idx) >= t:
            raise ValueError(f"token positions {idx} of {word!r} outside the {t} prompt tokens")
        rows.append(cross[idx].to(torch.float32).mean(0))
    out = torch.stack(rows)
    norm = out.flatten(1).norm(dim=1).clamp_min(torch.finfo(torch.float32).tiny)
    return out / norm[:, None, None]


def _as_labels(labels: Any) -> torch.Tensor:
    lab = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.asarray(labels))
    if lab.ndim != 2:
        raise ValueError(f"labels must be (H, W), got {tuple(lab.shape)}")
    lab = lab.to(torch.long)
    if lab.numel() and int(lab.min()) < 0:
        raise ValueError("labels must be >= 0")
    return lab


def vote_words(
    labels: Any, maps: torch.Tensor, voting: str = "mean"
) -> tuple[np.ndarray, np.ndarray]:
    """The word of each segment.

    Args:
        labels: (H, W) int labels 0..L-1 (numpy or torch).
        maps: (K, h, w) word maps (:func:`word_maps`); resized bilinearly to (H, W) if needed.
        voting: ``"mean"``: the word with the highest mean map value over the segment's pixels;
            ``"majority"``: the word that wins (argmax over words) at the most pixels of the
            segment (ties: the earlier word).
    Returns:
        (word index per label, int64 (L,); scores float64 (L, K): mean map values for "mean",
        pixel-win fractions for "majority"). Labels with no pixel get index -1 and zero scores.
    """
    if voting not in VOTING:
        raise ValueError(f"voting must be one of {VOTING}, got {voting!r}")
    lab = _as_labels(labels)
    height, width = lab.shape
    k = maps.shape[0]
    m = maps.to(torch.float32)
    if tuple(m.shape[1:]) != (height, width):
        m = F.interpolate(m[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    flat_lab = lab.reshape(-1)
    n_labels = int(flat_lab.max()) + 1 if flat_lab.numel() else 0
    counts = torch.bincount(flat_lab, minlength=n_labels).to(torch.float64)
    if voting == "mean":
        sums = torch.zeros(n_labels, k, dtype=torch.float64)
        sums.index_add_(0, flat_lab, m.reshape(k, -1).t().to(torch.float64))
    else:
        win = m.reshape(k, -1).argmax(0)
        sums = torch.bincount(flat_lab * k + win, minlength=n_labels * k).reshape(n_labels, k)
        sums = sums.to(torch.float64)
    scores = sums / counts.clamp_min(1)[:, None]
    best = scores.argmax(1)  # first maximum on ties
    best[counts == 0] = -1
    return best.numpy().astype(np.int64), scores.numpy()


@dataclass
class CaptionNames:
    """The caption words given to the segments.

    Attributes:
        names: one word per label (index = label value); None for a label with no pixel.
        words: the candidate words, in order.
        tokens: word -> token positions used.
        scores: (L, K) float64, the voting scores (see :func:`vote_words`).
    """

    names: list[str | None]
    words: list[str]
    tokens: dict[str, list[int]]
    scores: np.ndarray


def caption_names(
    labels: Any,
    cross_attention: Mapping[Grid, torch.Tensor],
    tokenizer: Any,
    caption: str,
    words: Sequence[str] | None = None,
    *,
    voting: str = "mean",
    weights: Sequence[float] | Mapping[Grid, float] | None = None,
) -> CaptionNames:
    """Name the segments of ``labels`` with words of ``caption`` (pure: no model).

    Args:
        labels: (H, W) int labels 0..L-1.
        cross_attention: {(h, w): (T, h, w)} of one image, conditioned on ``caption``.
        tokenizer: the backbone's CLIP tokenizer (``Backbone.tokenizer``).
        caption: the prompt the cross-attention was computed with.
        words: the words to label with (None: the caption's words minus stopwords).
        voting: "mean" or "majority" (:func:`vote_words`).
        weights: per-grid aggregation weights (None: DiffSeg's, proportional to resolution).
    """
    tokens = word_token_indices(tokenizer, caption, words)
    cross = aggregate_cross_attention(cross_attention, weights)
    maps = word_maps(cross, tokens)
    best, scores = vote_words(labels, maps, voting)
    names = list(tokens)
    return CaptionNames(
        names=[None if b < 0 else names[b] for b in best],
        words=names,
        tokens=tokens,
        scores=scores,
    )


def name_segments_from_caption(
    backbone: Any,
    encoding: Any,
    labels: Any,
    caption: str,
    words: Sequence[str] | None = None,
    *,
    voting: str = "mean",
    timestep: int | None = None,
) -> CaptionNames:
    """Run the captioned UNet pass on an encoded image and name the segments of ``labels``.

    Args:
        backbone: a loaded :class:`~diffuseg.backbones.diffusion.Backbone`.
        encoding: the image's :class:`~diffuseg.types.Encoding` (its processed ``image`` is
            encoded again with the caption as conditioning).
        labels: (H, W) int labels 0..L-1 of any size (e.g. ``Segmentation.labels``).
        caption, words, voting: see :func:`caption_names`.
        timestep: the attention pass's timestep (default the encoding's, else 300).
    """
    if encoding.image is None:
        raise ValueError("the Encoding holds no processed image: encode it again")
    t = timestep if timestep is not None else encoding.meta.get("attention_timestep", 300)
    if isinstance(t, list):  # attention averaged over several timesteps: caption at the first
        t = t[0]
    latents = backbone.latents(encoding.image[None])
    cross = backbone.cross_attention(latents, caption, timestep=int(t))[0]
    return caption_names(labels, cross, backbone.tokenizer, caption, words, voting=voting)
