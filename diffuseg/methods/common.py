"""Steps every method ends with: choosing the output size, optional refinement, packaging."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from diffuseg.types import Encoding, Hierarchy, Segmentation, segment_records


def output_size_for(encoding: Encoding, requested: tuple[int, int] | None) -> tuple[int, int]:
    """(H, W) to label: ``requested``, else the original image's size, else the processed one."""
    if requested is not None:
        h, w = requested
    elif "original_size" in encoding.meta:
        h, w = encoding.meta["original_size"]
    else:
        h, w = encoding.image_size
    if int(h) < 1 or int(w) < 1:
        raise ValueError(f"output size must be positive, got {(h, w)}")
    return int(h), int(w)


def working_size(output_size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """``output_size`` scaled down (aspect kept) so its long side is at most ``max_side``."""
    h, w = output_size
    if max_side is None or max(h, w) <= max_side:
        return h, w
    scale = max_side / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def refine_as_configured(image: Any, labels: Any, config: Any) -> Any:
    """PAMR + median filter with a method config's ``refine_iterations``, ``refine_dilations``
    and ``median`` (:func:`diffuseg.refine.refine_labels`: the image is resized to the labels as
    DiffCut does, bilinear without antialiasing; ids are kept).

    Args:
        image: (H0, W0, 3) uint8 RGB (numpy or torch).
        labels: (H, W) integer labels, numpy or torch.
        config: a method config with the three refinement fields.
    Returns:
        (H, W) int32 labels, numpy or torch like ``labels``.
    """
    from diffuseg.refine import refine_labels

    return refine_labels(image, labels, iterations=config.refine_iterations,
                         dilations=config.refine_dilations, median=config.median)


def finish(
    labels: torch.Tensor,
    encoding: Encoding,
    output_size: tuple[int, int],
    config: Any,
    method: str,
    *,
    hierarchy: Hierarchy | None = None,
    token_labels: torch.Tensor | None = None,
) -> Segmentation:
    """Refine (PAMR + median filter, needs ``encoding.image``), upsample, package.

    Args:
        labels: (h', w') int labels at the working size (<= output size).
        encoding: the Encoding the labels came from (its image guides refinement).
        output_size: (H, W) of the final label map; labels are upsampled nearest if smaller.
        config: the method's frozen config dataclass (recorded in the result). Its fields
            ``refine``, ``refine_iterations``, ``refine_dilations`` and ``median``, where present,
            control refinement (absent: no refinement).
        method: the method's registered name.
    Returns:
        A :class:`Segmentation` with consecutive labels 0..K-1 of shape ``output_size``.
    """
    labels = labels.to("cpu")
    if getattr(config, "refine", False):
        if encoding.image is None:
            raise ValueError(
                "refinement needs the image: this Encoding has none (encode with the image, "
                "or pass refine=False)"
            )
        labels = refine_as_configured(encoding.image, labels, config).long()
    if tuple(labels.shape) != tuple(output_size):
        labels = F.interpolate(labels[None, None].float(), size=tuple(output_size),
                               mode="nearest")[0, 0].long()
    # Consecutive labels; each remembers the leaf (hierarchy) id it came from, since refinement
    # may remove a segment.
    leaf_ids, inverse = np.unique(labels.numpy(), return_inverse=True)
    labels_np = inverse.reshape(labels.shape).astype(np.int32)
    segments = segment_records(labels_np)
    for record in segments:
        record["leaf"] = int(leaf_ids[record["label"]])
    cfg = {"method": method, **asdict(config)}
    cfg["output_size"] = list(output_size)
    for key in ("backbone", "repo", "family", "timestep", "attention_timestep"):
        if key in encoding.meta:
            cfg.setdefault(key, encoding.meta[key])
    return Segmentation(
        labels=labels_np,
        hierarchy=hierarchy,
        segments=segments,
        config=cfg,
        token_labels=None if token_labels is None else token_labels.cpu().numpy().astype(np.int32),
    )


@contextlib.contextmanager
def exact_fp32(device: torch.device | str) -> Iterator[None]:
    """Within the block, float32 matmuls on ``device`` run in full IEEE precision (no TF32 on
    CUDA, no bf16 on oneDNN CPU), whatever the global setting; the setting is restored after.
    """
    device = torch.device(device)
    if device.type == "cuda":
        backend = torch.backends.cuda.matmul
    elif device.type == "cpu":
        backend = getattr(torch.backends.mkldnn, "matmul", None)
    else:
        backend = None
    if backend is not None and hasattr(backend, "fp32_precision"):
        old = backend.fp32_precision
        backend.fp32_precision = "ieee"
        try:
            yield
        finally:
            backend.fp32_precision = old
    elif device.type == "cuda":  # older torch: the legacy switch
        old_tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = old_tf32
    else:
        yield
