"""Refining a label map with the image: PAMR, then a median filter.

Pure: tensors (or arrays) in, tensors (or arrays) out; no I/O; runs on whatever device the inputs
are on. :func:`refine_labels` is the one entry point methods call.

PAMR (Pixel-Adaptive Mask Refinement; Araslanov & Roth, "Single-Stage Semantic Segmentation from
Image Labels", CVPR 2020), as DiffCut uses it (METHODS.md section 3 step 5). The arithmetic
follows the reference implementation (visinf/1-stage-wseg, ``models/mods/pamr.py``; DiffCut ships
an unchanged copy as ``tools/pamr.py``), which we read and re-implemented:

* Neighbours: for each dilation d, the 8 pixels at offsets (+-d, +-d), (+-d, 0), (0, +-d);
  replicate padding at the borders (a neighbour outside the image is the nearest border pixel).
  The centre pixel is *not* a neighbour: the update has no self term.
* Local scale: sigma_i is the standard deviation, per channel, of the 9 * len(dilations) values
  formed by the 3x3 dilated neighbourhood (centre included) of *every* dilation taken together
  (the centre counted once per dilation), with the unbiased (n - 1) denominator (``torch.std``).
  Note: this is one sigma over all dilations jointly, not one sigma per dilation.
* Affinity logits: -|I_i - I_j| / (1e-8 + 0.1 * sigma_i) per channel, then averaged over the
  channels; softmax over all 8 * len(dilations) neighbours jointly.
* Update, ``iterations`` times: m_i <- sum_j a_ij m_j (every class channel with the same a).
* Masks whose size differs from the image's are first resized bilinearly with
  ``align_corners=True``, as the reference does.

Where we differ from the reference: nothing in the arithmetic. The shifts are slices of a padded
tensor instead of a fixed 3x3 convolution, and the mask update accumulates one neighbour at a time
(memory O(K H W) per step instead of the reference's O(8 * len(dilations) * K H W) tensor).

Median filter: DiffCut's evaluation (``eval_diffcut.py``, ``Benchmark_Segmentation.pamr``) takes
the argmax after PAMR and applies ``scipy.ndimage.median_filter(labels, 3)`` to the (1, H, W)
label map: a size-3 window over a length-1 batch axis with scipy's default ``mode="reflect"``
repeats the single slice three times, which is exactly a 3x3 median of the label *ids* (numeric
median, not the majority vote) with half-sample symmetric borders. :func:`median_filter_labels`
computes exactly that (scipy for numpy input, an equivalent torch path for tensors).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

__all__ = ["pamr", "median_filter_labels", "refine_labels", "relabel_consecutive"]

# The 8 neighbour directions (row, col), in the reference's kernel order.
_DIRECTIONS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _shifted(padded: torch.Tensor, d: int, dy: int, dx: int, h: int, w: int) -> torch.Tensor:
    """View of the neighbour at offset (dy*d, dx*d) for every pixel, from a tensor padded by d."""
    y0, x0 = d + dy * d, d + dx * d
    return padded[..., y0 : y0 + h, x0 : x0 + w]


def _local_affinity(image: torch.Tensor, dilations: Sequence[int]) -> torch.Tensor:
    """PAMR affinities: (B, C, H, W) image -> (B, 8 * len(dilations), H, W), softmax-normalised
    over dim 1 (rows sum to 1)."""
    b, c, h, w = image.shape
    padded = [F.pad(image, [d] * 4, mode="replicate") for d in dilations]
    # Joint local statistics over the 3x3 neighbourhoods of all dilations, centre included.
    n = 9 * len(dilations)
    total = image * len(dilations)
    for d, xp in zip(dilations, padded, strict=True):
        for dy, dx in _DIRECTIONS:
            total = total + _shifted(xp, d, dy, dx, h, w)
    mean = total / n
    sq = (image - mean).square() * len(dilations)
    for d, xp in zip(dilations, padded, strict=True):
        for dy, dx in _DIRECTIONS:
            sq = sq + (_shifted(xp, d, dy, dx, h, w) - mean).square()
    std = (sq / (n - 1)).sqrt()
    denom = 1e-8 + 0.1 * std  # (B, C, H, W)

    logits = image.new_empty((b, 8 * len(dilations), h, w))
    p = 0
    for d, xp in zip(dilations, padded, strict=True):
        for dy, dx in _DIRECTIONS:
            diff = (image - _shifted(xp, d, dy, dx, h, w)).abs()
            logits[:, p] = -(diff / denom).mean(dim=1)
            p += 1
    return torch.softmax(logits, dim=1)


def pamr(
    image: torch.Tensor,
    masks: torch.Tensor,
    iterations: int = 10,
    dilations: Sequence[int] = (1, 2, 4, 8),
) -> torch.Tensor:
    """Pixel-adaptive mask refinement (Araslanov & Roth 2020), the reference arithmetic.

    Args:
        image: (C, H, W) or (B, C, H, W) float tensor, usually RGB (C = 3). Any value range: the
            affinities are invariant to scaling the image (up to the 1e-8 in the denominator).
            Integer tensors are cast to float.
        masks: (K, h, w) or (B, K, h, w) float tensor, soft or one-hot class masks; resized to
            (H, W) bilinearly (``align_corners=True``) if (h, w) != (H, W).
        iterations: number of propagation steps (10 in DiffCut's evaluation); 0 only resizes.
        dilations: neighbour distances in pixels, each >= 1 ((1, 2, 4, 8) in DiffCut).
    Returns:
        refined masks, (K, H, W) or (B, K, H, W) as given, float (masks' float dtype, float32 if
        the masks are not floating), on the masks' device. Each step is a convex combination of
        neighbours, so one-hot inputs stay non-negative and sum to 1 per pixel.
    """
    dilations = tuple(int(d) for d in dilations)
    if not dilations or min(dilations) < 1:
        raise ValueError(f"dilations must be positive integers, got {dilations}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    unbatched = masks.ndim == 3
    if unbatched:
        if image.ndim != 3:
            raise ValueError("unbatched masks (K, H, W) need an unbatched image (C, H, W)")
        image, masks = image[None], masks[None]
    if image.ndim != 4 or masks.ndim != 4:
        raise ValueError(
            f"expected image (B, C, H, W) and masks (B, K, H, W), got {tuple(image.shape)} and "
            f"{tuple(masks.shape)}"
        )
    if image.shape[0] != masks.shape[0]:
        raise ValueError(f"batch sizes differ: image {image.shape[0]}, masks {masks.shape[0]}")
    dtype = masks.dtype if masks.is_floating_point() else torch.float32
    masks = masks.to(dtype)
    image = image.to(device=masks.device, dtype=dtype)
    h, w = image.shape[-2:]
    if masks.shape[-2:] != (h, w):
        masks = F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=True)
    if iterations > 0:
        aff = _local_affinity(image, dilations)  # (B, P, H, W)
        for _ in range(iterations):
            out = torch.zeros_like(masks)
            p = 0
            for d in dilations:
                mp = F.pad(masks, [d] * 4, mode="replicate")
                for dy, dx in _DIRECTIONS:
                    out.addcmul_(aff[:, p : p + 1], _shifted(mp, d, dy, dx, h, w))
                    p += 1
            masks = out
    return masks[0] if unbatched else masks


def relabel_consecutive(labels: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Map the distinct values of an integer label map to 0..K-1, keeping their order.

    Args:
        labels: integer array or tensor, any shape.
    Returns:
        int32 array (numpy in, numpy out) or int32 tensor (on the same device), same shape.
    """
    if isinstance(labels, torch.Tensor):
        _, inverse = torch.unique(labels, return_inverse=True)
        return inverse.to(torch.int32).reshape(labels.shape)
    arr = np.asarray(labels)
    _, inverse = np.unique(arr, return_inverse=True)
    return inverse.reshape(arr.shape).astype(np.int32)


def _symmetric_index(n: int, r: int, device: torch.device) -> torch.Tensor:
    """Indices 0..n-1 extended by r on each side with half-sample symmetric reflection
    (scipy.ndimage mode "reflect": d c b a | a b c d | d c b a)."""
    idx = torch.arange(-r, n + r, device=device) % (2 * n)
    return torch.where(idx >= n, 2 * n - 1 - idx, idx)


def median_filter_labels(
    labels: np.ndarray | torch.Tensor, size: int = 3
) -> np.ndarray | torch.Tensor:
    """Median filter of a label map, as DiffCut's evaluation applies it after PAMR.

    The median of the label *ids* in a size x size window (scipy.ndimage.median_filter, borders
    mode "reflect"): an isolated pixel takes its surroundings' label. With three or more labels in
    a window the numeric median need not be the most frequent label; this reproduces DiffCut.

    Args:
        labels: (H, W) integer array or tensor.
        size: odd window side (3 in DiffCut); 1 returns a copy.
    Returns:
        same type, dtype and shape as ``labels`` (tensors stay on their device).
    """
    if size < 1 or size % 2 == 0:
        raise ValueError(f"median filter size must be a positive odd integer, got {size}")
    if isinstance(labels, torch.Tensor):
        if labels.ndim != 2:
            raise ValueError(f"labels must be (H, W), got shape {tuple(labels.shape)}")
        if size == 1:
            return labels.clone()
        r = size // 2
        h, w = labels.shape
        rows = _symmetric_index(h, r, labels.device)
        cols = _symmetric_index(w, r, labels.device)
        padded = labels[rows][:, cols]
        windows = padded.unfold(0, size, 1).unfold(1, size, 1)  # (H, W, size, size)
        return windows.reshape(h, w, size * size).median(dim=-1).values
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {arr.shape}")
    if size == 1:
        return arr.copy()
    return ndimage.median_filter(arr, size=size, mode="reflect")


def _from_numpy(arr: np.ndarray) -> torch.Tensor:
    """torch.from_numpy that accepts read-only and non-contiguous arrays (copying only then)."""
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr)


def _image_tensor(image: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """(H, W, 3) uint8 or (3, H, W) float -> (3, H, W) float32 tensor on device."""
    if isinstance(image, torch.Tensor):
        t = image.to(device)
    else:
        t = _from_numpy(np.asarray(image)).to(device)
    if t.ndim != 3:
        raise ValueError(f"image must be (H, W, 3) or (3, H, W), got shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        if t.shape[-1] != 3:
            raise ValueError(f"a uint8 image must be (H, W, 3), got shape {tuple(t.shape)}")
        return t.permute(2, 0, 1).to(torch.float32) / 255.0
    if t.shape[0] != 3:
        raise ValueError(f"a float image must be (3, H, W), got shape {tuple(t.shape)}")
    return t.to(torch.float32)


def refine_labels(
    image: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    iterations: int = 10,
    dilations: Sequence[int] = (1, 2, 4, 8),
    median: int | None = 3,
) -> np.ndarray | torch.Tensor:
    """Refine a label map with the image: one-hot -> PAMR -> argmax -> median filter.

    This is DiffCut's post-processing (``eval_diffcut.py``): one-hot masks of the labels
    present, PAMR (``iterations``, ``dilations``), per-pixel argmax (ties go to the lower label),
    3x3 median filter of the label ids (taken on the consecutive ranks of the ids, so the median
    does not depend on how the ids are spaced). The output keeps the input's ids, so a caller
    still knows which segment each label is (a hierarchy's leaf); a segment can vanish.

    Args:
        image: (H0, W0, 3) uint8 RGB, or (3, H0, W0) float (any range); numpy or torch. If
            (H0, W0) != (H, W) it is resized to the labels' size bilinearly (align_corners=False,
            no antialiasing: DiffCut's ``F.interpolate(image, size=(128, 128), mode="bilinear")``).
        labels: (H, W) integer label map, numpy or torch.
        iterations: PAMR steps; 0 skips PAMR.
        dilations: PAMR neighbour distances.
        median: median filter window (odd), or None / 1 for none.
    Returns:
        (H, W) int32 labels, a subset of the input's values: numpy if ``labels`` is numpy, else
        a tensor on ``labels``' device.
    """
    as_tensor = isinstance(labels, torch.Tensor)
    lab = labels if as_tensor else _from_numpy(np.asarray(labels))
    if lab.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {tuple(lab.shape)}")
    if lab.is_floating_point() or lab.dtype == torch.bool:
        raise ValueError(f"labels must have an integer dtype, got {lab.dtype}")
    device = lab.device
    h, w = lab.shape
    ids, lab = torch.unique(lab, return_inverse=True)
    k = int(ids.numel())
    if k > 1 and iterations > 0:
        img = _image_tensor(image, device)
        if img.shape[-2:] != (h, w):
            img = F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        onehot = F.one_hot(lab, k).permute(2, 0, 1).to(torch.float32)  # (K, H, W)
        refined = pamr(img, onehot, iterations=iterations, dilations=dilations)
        lab = refined.argmax(dim=0)
    if median is not None and median > 1:
        lab = median_filter_labels(lab, median)
    out = ids[lab].to(torch.int32)
    return out if as_tensor else out.cpu().numpy()
