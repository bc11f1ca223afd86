"""Open-vocabulary names for segments (DiffCut's way): CLIP mask classification.

Given a segmentation and class names:

1. :func:`mask_pool`: masked average pooling of a CLIP image encoder's dense features (before its
   head) over each segment, its mask resized to the feature grid with ``nearest-exact`` as in
   DiffCut's ``MaskPooling`` (a segment smaller than a cell falls back to the cells it touches).
2. ``head``: the encoder's head and projection applied to the pooled features (an injected
   callable; for open_clip ConvNeXt: ``visual.trunk.head`` then ``visual.head``).
3. :func:`build_text_classifier`: one text embedding per class (per synonym: "person, people"),
   the mean of its normalised embeddings over the 14 ViLD templates, normalised again.
4. :func:`classify_pooled`: cosine similarity of each pooled embedding with each class (max over
   a class's synonyms), argmax per segment. :func:`merge_named_segments` then merges segments
   with the same class.

Steps 1-4 are pure (tensors in, tensors out). :func:`diffuseg.labels.clip_model.load_clip`
loads open_clip's ConvNeXt CLIP and exposes ``dense`` / ``head`` / ``encode_text`` for them;
:func:`name_with_classes` runs the whole step on an image.

As in DiffCut's code every class can win: its FC-CLIP-derived logits append a duplicate of the
last column as "void" and the argmax drops only that duplicate. Logit scale and softmax are
omitted: they do not change the argmax.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diffuseg.labels.templates import VILD_TEMPLATES, expand_templates, split_synonyms

__all__ = [
    "TextClassifier",
    "build_text_classifier",
    "classify_pooled",
    "classify_segments",
    "mask_pool",
    "merge_named_segments",
    "name_with_classes",
]


def _labels_tensor(labels: Any) -> torch.Tensor:
    lab = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.asarray(labels))
    if lab.ndim != 2:
        raise ValueError(f"labels must be (H, W), got {tuple(lab.shape)}")
    lab = lab.to(torch.long)
    if lab.numel() == 0 or int(lab.min()) < 0:
        raise ValueError("labels must be a non-empty map of values >= 0")
    return lab


def _nearest_index(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """torch's ``nearest-exact`` source index for each output index: floor((j + 0.5) * in/out)."""
    idx = ((torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * (n_in / n_out))
    return idx.floor().long().clamp_(max=n_in - 1)


def mask_pool(features: torch.Tensor, labels: Any, mode: str = "nearest") -> torch.Tensor:
    """Masked average pooling of dense features over each segment.

    Args:
        features: (C, h, w) or (1, C, h, w) float dense features.
        labels: (H, W) int labels 0..K-1, any size (typically the image's).
        mode: how a segment's mask reaches the (h, w) grid. "nearest" (DiffCut's MaskPooling):
            resized with ``nearest-exact``, so a cell belongs to the segment at its centre; a
            segment that covers no cell centre (smaller than a cell) falls back to "touch"
            instead of pooling nothing. "touch": every cell whose pixels the segment overlaps
            counts (adaptive average pooling > 0), so cells are shared at boundaries.
    Returns:
        float32 (K, C) on the features' device: row k is the mean feature over segment k's
        cells. A label absent from the map gets a zero row.
    """
    if features.ndim == 4:
        if features.shape[0] != 1:
            raise ValueError("mask_pool takes the features of one image")
        features = features[0]
    if features.ndim != 3:
        raise ValueError(f"features must be (C, h, w), got {tuple(features.shape)}")
    if mode not in ("nearest", "touch"):
        raise ValueError(f"mode must be 'nearest' or 'touch', got {mode!r}")
    lab = _labels_tensor(labels).to(features.device)
    k = int(lab.max()) + 1
    c, h, w = features.shape
    flat = features.to(torch.float32).reshape(c, h * w).t()  # (h*w, C)
    masks = torch.zeros(k, h * w, device=features.device)
    if mode == "nearest":
        rows = _nearest_index(lab.shape[0], h, lab.device)
        cols = _nearest_index(lab.shape[1], w, lab.device)
        centre = lab[rows][:, cols].reshape(-1)  # the label at each cell's centre
        masks[centre, torch.arange(h * w, device=lab.device)] = 1.0
    missing = masks.sum(1) == 0
    if bool(missing.any()):
        touched = F.one_hot(lab, k).permute(2, 0, 1).to(torch.float32)[missing]  # (M, H, W)
        if tuple(touched.shape[1:]) != (h, w):  # share of each cell's pixel bin covered
            touched = F.adaptive_avg_pool2d(touched[None], (h, w))[0]
        masks[missing] = (touched > 0).to(torch.float32).reshape(-1, h * w)
    return (masks / masks.sum(1, keepdim=True).clamp_min(1.0)) @ flat


@dataclass
class TextClassifier:
    """Text embeddings of the classes.

    Attributes:
        names: the class names as given (synonyms still comma-joined), index = class id.
        embeddings: float32 (S, D), one unit vector per synonym.
        class_of: int64 (S,), the class id of each row.
    """

    names: tuple[str, ...]
    embeddings: torch.Tensor
    class_of: torch.Tensor

    @property
    def num_classes(self) -> int:
        return len(self.names)


def build_text_classifier(
    encode_text: Callable[[list[str]], torch.Tensor],
    class_names: Sequence[str],
    templates: Sequence[str] = VILD_TEMPLATES,
    batch_size: int = 128,
) -> TextClassifier:
    """Template-averaged text embeddings of ``class_names``.

    Args:
        encode_text: prompts (n strings) -> (n, D) float embeddings (unnormalised is fine).
        class_names: N names; "a, b" gives the class two synonyms (scored by their maximum).
        templates: prompt templates with one ``{}`` (default the 14 ViLD templates).
        batch_size: prompts per ``encode_text`` call.
    Returns:
        A :class:`TextClassifier`: per synonym, the mean over templates of the L2-normalised
        embeddings, L2-normalised again (FC-CLIP / DiffCut).
    """
    names = tuple(str(n) for n in class_names)
    if not names:
        raise ValueError("no class names")
    if len(set(names)) != len(names):
        raise ValueError("class names must be distinct")
    synonyms = [(i, s) for i, n in enumerate(names) for s in split_synonyms(n)]
    prompts = [p for _, s in synonyms for p in expand_templates(s, templates)]
    chunks = [encode_text(prompts[i : i + batch_size]) for i in range(0, len(prompts), batch_size)]
    emb = torch.cat([c.detach().to(torch.float32) for c in chunks])
    if emb.shape[0] != len(prompts):
        raise ValueError(f"encode_text returned {emb.shape[0]} rows for {len(prompts)} prompts")
    emb = F.normalize(emb, dim=-1).reshape(len(synonyms), len(templates), -1).mean(1)
    return TextClassifier(
        names=names,
        embeddings=F.normalize(emb, dim=-1),
        class_of=torch.tensor([i for i, _ in synonyms], dtype=torch.long),
    )


def classify_pooled(
    pooled: torch.Tensor,
    classifier: TextClassifier,
    head: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class of each pooled feature.

    Args:
        pooled: (K, C) pooled dense features (:func:`mask_pool`).
        classifier: the classes' text embeddings (D-dimensional).
        head: (K, C) -> (K, D), the image encoder's head and projection; None if ``pooled`` is
            already in the text embedding space (C = D).
    Returns:
        (classes int64 (K,), similarities float32 (K, N) in [-1, 1]: per class, the maximum
        cosine over its synonyms). Ties go to the lower class id.
    """
    x = head(pooled) if head is not None else pooled
    x = F.normalize(x.to(torch.float32), dim=-1)
    emb = classifier.embeddings.to(x.device)
    if x.shape[-1] != emb.shape[-1]:
        raise ValueError(f"embedding sizes differ: image {x.shape[-1]}, text {emb.shape[-1]}")
    cos = x @ emb.t()  # (K, S)
    sims = torch.full((x.shape[0], classifier.num_classes), -2.0, device=x.device)
    index = classifier.class_of.to(x.device)[None].expand_as(cos)
    sims = sims.scatter_reduce(1, index, cos, reduce="amax")
    return sims.argmax(1), sims


def merge_named_segments(labels: Any, classes: Sequence[int] | torch.Tensor | np.ndarray
                         ) -> tuple[np.ndarray, np.ndarray]:
    """Merge segments that got the same class.

    Args:
        labels: (H, W) int labels 0..K-1.
        classes: (K,) class id of each label (labels absent from the map may hold anything).
    Returns:
        (merged int32 (H, W) labels 0..M-1, numbered by first appearance in label order of the
        present labels; int64 (M,) class id of each merged label).
    """
    lab = _labels_tensor(labels).cpu().numpy()
    cls = np.asarray(classes.cpu() if isinstance(classes, torch.Tensor) else classes)
    cls = cls.astype(np.int64)
    present = np.unique(lab)
    if present.max() >= cls.shape[0]:
        raise ValueError(f"{cls.shape[0]} classes for labels up to {present.max()}")
    merged_classes: list[int] = []
    remap = np.zeros(cls.shape[0], dtype=np.int32)
    for k in present:
        c = int(cls[k])
        if c not in merged_classes:
            merged_classes.append(c)
        remap[k] = merged_classes.index(c)
    return remap[lab], np.asarray(merged_classes, dtype=np.int64)


def classify_segments(
    features: torch.Tensor,
    labels: Any,
    classifier: TextClassifier,
    head: Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    merge: bool = True,
) -> tuple[np.ndarray, list[str], torch.Tensor]:
    """Pool, classify and (by default) merge: the whole open-vocabulary step.

    Args:
        features: (C, h, w) dense CLIP features of the image.
        labels: (H, W) int labels 0..K-1.
        classifier, head: see :func:`classify_pooled`.
        merge: merge segments of the same class.
    Returns:
        (labels int32 (H, W) - merged if ``merge`` -, the class name of each of its labels,
        similarities (K, N) of the original segments).
    """
    lab = _labels_tensor(labels)
    classes, sims = classify_pooled(mask_pool(features, lab), classifier, head)
    if merge:
        out, merged = merge_named_segments(lab, classes)
        return out, [classifier.names[int(c)] for c in merged], sims
    return lab.numpy().astype(np.int32), [classifier.names[int(c)] for c in classes], sims


def name_with_classes(
    clip: Any,
    image: np.ndarray,
    labels: Any,
    classes: TextClassifier | Sequence[str],
    *,
    size: int | tuple[int, int] = 1024,
    merge: bool = True,
) -> tuple[np.ndarray, list[str], torch.Tensor]:
    """Name the segments of one image with class names (DiffCut's open-vocabulary step).

    Args:
        clip: a model with ``dense(image, size)``, ``head`` and ``encode_text``
            (:func:`diffuseg.labels.clip_model.load_clip`).
        image: (H, W, 3) uint8, the image the labels describe.
        labels: (H', W') int labels 0..K-1 (any size; pooled on CLIP's grid).
        classes: class names, or a :class:`TextClassifier` built once for many images.
        size: CLIP's input size (DiffCut: 1024, the diffusion input; 2048 on COCO-Object).
        merge: merge segments that got the same class.
    Returns:
        As :func:`classify_segments`: labels, the class name of each label, similarities (K, N).
    """
    if not isinstance(classes, TextClassifier):
        classes = build_text_classifier(clip.encode_text, classes)
    return classify_segments(clip.dense(image, size), labels, classes, clip.head, merge=merge)
