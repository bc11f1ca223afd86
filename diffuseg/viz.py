"""Pictures of segmentations: a palette for many segments, boundaries, overlays.

Everything here works on numpy arrays (torch tensors are accepted and moved to the CPU) and
returns numpy arrays; nothing here reads or writes files (see :mod:`diffuseg.io`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

__all__ = ["palette", "boundaries", "overlay", "colorize"]

# 1/phi: stepping the hue by this fraction of the circle puts every new colour in the largest
# gap left by the previous ones (the "golden angle", 137.5 degrees), so consecutive labels are
# never close in hue and the first few labels are spread over the whole circle.
_GOLDEN = 0.6180339887498949
# Saturation and value cycle with periods 3 and 4 (coprime): labels that end up with similar hues
# after many golden steps usually still differ in brightness or saturation.
_SATURATIONS = (0.95, 0.65, 0.80)
_VALUES = (0.95, 0.80, 0.65, 0.90)


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all inputs in [0, 1]; returns float (n, 3) in [0, 1]."""
    h6 = (h % 1.0) * 6.0
    sector = np.floor(h6).astype(np.int64) % 6
    f = h6 - np.floor(h6)
    p = v * (1.0 - s)
    q = v * (1.0 - s * f)
    t = v * (1.0 - s * (1.0 - f))
    table = np.stack(
        [
            np.stack([v, t, p], -1),
            np.stack([q, v, p], -1),
            np.stack([p, v, t], -1),
            np.stack([p, q, v], -1),
            np.stack([t, p, v], -1),
            np.stack([v, p, q], -1),
        ],
        0,
    )
    return table[sector, np.arange(h.size)]


@lru_cache(maxsize=16)
def _palette_cached(n: int) -> np.ndarray:
    i = np.arange(n, dtype=np.float64)
    h = (0.02 + i * _GOLDEN) % 1.0
    s = np.asarray(_SATURATIONS)[np.arange(n) % len(_SATURATIONS)]
    v = np.asarray(_VALUES)[np.arange(n) % len(_VALUES)]
    rgb = np.round(_hsv_to_rgb(h, s, v) * 255.0).astype(np.uint8)
    rgb.setflags(write=False)
    return rgb


def palette(n: int) -> np.ndarray:
    """``n`` distinct colours for label maps, deterministic.

    Colour ``i`` has hue ``0.02 + i / phi`` (golden-angle stepping: consecutive labels are at least
    137 degrees apart in hue) and cycles saturation and value with coprime periods 3 and 4.
    All colours are distinct for ``n <= 4096``.

    Args:
        n: number of colours (>= 0).
    Returns:
        (n, 3) uint8 array of RGB colours (a fresh, writable copy).
    """
    if n < 0:
        raise ValueError(f"palette size must be >= 0, got {n}")
    return _palette_cached(int(n)).copy()


def boundaries(labels, thick: bool = False) -> np.ndarray:
    """Pixels on the border between two segments.

    Args:
        labels: (H, W) integer label map (numpy or torch).
        thick: False marks, for every pair of 4-neighbours with different labels, the pixel on the
            top/left side (a 1-pixel line); True marks both pixels (a 2-pixel line).
    Returns:
        (H, W) bool array.
    """
    lab = _as_numpy(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {lab.shape}")
    out = np.zeros(lab.shape, dtype=bool)
    dy = lab[1:, :] != lab[:-1, :]
    dx = lab[:, 1:] != lab[:, :-1]
    out[:-1, :] |= dy
    out[:, :-1] |= dx
    if thick:
        out[1:, :] |= dy
        out[:, 1:] |= dx
    return out


def colorize(labels) -> np.ndarray:
    """(H, W) non-negative int labels -> (H, W, 3) uint8 RGB using :func:`palette`."""
    lab = _as_numpy(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {lab.shape}")
    if lab.size and lab.min() < 0:
        raise ValueError("labels must be non-negative")
    n = int(lab.max()) + 1 if lab.size else 1
    return palette(n)[lab]


def overlay(
    image,
    labels,
    alpha: float = 0.5,
    boundary_color: tuple[int, int, int] | None = (255, 255, 255),
) -> np.ndarray:
    """Blend segment colours over an image, with the segment borders drawn on top.

    Args:
        image: (H0, W0, 3) uint8 RGB. If (H0, W0) differs from the labels' (H, W) it is resized
            to (H, W) (bilinear) first.
        labels: (H, W) non-negative int label map (numpy or torch).
        alpha: weight of the segment colour, in [0, 1] (0: the image, 1: the colours only).
        boundary_color: RGB of the border pixels (see :func:`boundaries`), or None for none.
    Returns:
        (H, W, 3) uint8.
    """
    img = _as_numpy(image)
    lab = _as_numpy(labels)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colours = colorize(lab)
    h, w = lab.shape
    if img.shape[:2] != (h, w):
        img = np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR))
    out = (1.0 - alpha) * img.astype(np.float32) + alpha * colours.astype(np.float32)
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    if boundary_color is not None:
        out[boundaries(lab)] = np.asarray(boundary_color, dtype=np.uint8)
    return out
