"""Pictures of segmentations: a palette for many segments, boundaries, overlays.

Everything here works on numpy arrays (torch tensors are accepted and moved to the CPU) and
returns numpy arrays; nothing here reads or writes files (see :mod:`diffuseg.io`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

__all__ = [
    "TITLE_HEIGHT",
    "boundaries",
    "colorize",
    "compare_figure",
    "hierarchy_figure",
    "hierarchy_levels",
    "overlay",
    "palette",
    "segment_cutouts",
]

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


# ----------------------------------------------------------------------------------------------
# Figures: hierarchy levels, method comparisons, per-segment cut-outs
# ----------------------------------------------------------------------------------------------

#: Height in pixels of the title strip above each panel of :func:`compare_figure` and of each
#: row of :func:`hierarchy_figure`.
TITLE_HEIGHT = 18


def _title_strip(text: str, width: int, height: int = TITLE_HEIGHT) -> np.ndarray:
    """(height, width, 3) uint8: ``text`` in black on white, PIL's default font, clipped."""
    from PIL import ImageDraw, ImageFont

    strip = Image.new("RGB", (width, height), (255, 255, 255))
    if height > 0 and width > 0 and text:
        draw = ImageDraw.Draw(strip)
        font = ImageFont.load_default()
        top = max(0, (height - 11) // 2)
        draw.text((4, top), text, fill=(0, 0, 0), font=font)
    return np.asarray(strip, dtype=np.uint8)


def _resize_labels(labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w) label map to (height, width)."""
    if labels.shape == (height, width):
        return labels
    ys = (np.arange(height) * labels.shape[0]) // height
    xs = (np.arange(width) * labels.shape[1]) // width
    return labels[ys[:, None], xs[None, :]]


def hierarchy_levels(segmentation, max_levels: int = 8) -> list[tuple[int | None, np.ndarray]]:
    """[(depth, labels)] for the depths :func:`hierarchy_figure` shows.

    Depth 0 (one segment) to D (the leaves) when ``D + 1 <= max_levels``, else ``max_levels``
    depths evenly spaced from 0 to D; ``[(None, labels)]`` for a segmentation without hierarchy.
    Each region is labelled with the smallest final label inside it (not renumbered per depth),
    so a segment keeps its colour from level to level and a split shows as one new colour.
    """
    leaves = _as_numpy(segmentation.labels)
    if segmentation.hierarchy is None:
        return [(None, leaves)]
    depths = _depths_to_show(segmentation.hierarchy.depth, max_levels)
    levels = []
    for d in depths:
        merged = segmentation.labels_at_depth(d)
        first = np.full(int(merged.max()) + 1, np.iinfo(np.int32).max, dtype=np.int64)
        np.minimum.at(first, merged.ravel(), leaves.ravel())
        levels.append((d, first[merged].astype(np.int32)))
    return levels


def _depths_to_show(depth: int, max_levels: int) -> list[int]:
    if max_levels < 1:
        raise ValueError(f"max_levels must be >= 1, got {max_levels}")
    if depth + 1 <= max_levels:
        return list(range(depth + 1))
    if max_levels == 1:
        return [depth]
    return sorted({int(round(x)) for x in np.linspace(0, depth, max_levels)})


def hierarchy_figure(
    image,
    segmentation,
    max_levels: int = 8,
    alpha: float = 0.5,
    titles: bool = True,
) -> np.ndarray:
    """The hierarchy of a recursive cut, one overlay row per depth.

    Args:
        image: (H0, W0, 3) uint8 RGB (resized to the labels' size if it differs).
        segmentation: a :class:`diffuseg.types.Segmentation`; with a hierarchy of depth D the
            rows show depth 0 (one segment) to D (the leaves); without one, a single row of its
            labels.
        max_levels: at most this many rows; deeper trees show ``max_levels`` depths evenly
            spaced from 0 to D (both included).
        alpha: segment colour weight of each overlay.
        titles: put a :data:`TITLE_HEIGHT`-pixel strip ("depth d: k segments") above each row.
    Returns:
        (n_rows * (H + t), W, 3) uint8 where (H, W) is the labels' size and t is
        :data:`TITLE_HEIGHT` (0 without titles).
    """
    w = _as_numpy(segmentation.labels).shape[1]
    rows = []
    for depth, lab in hierarchy_levels(segmentation, max_levels):
        k = len(np.unique(lab))
        if titles:
            name = "segments" if depth is None else f"depth {depth}"
            rows.append(_title_strip(f"{name}: {k} segment{'s' if k != 1 else ''}", w))
        rows.append(overlay(image, lab, alpha=alpha))
    return np.concatenate(rows, axis=0)


def compare_figure(
    image,
    labels_by_method: dict[str, object],
    titles: dict[str, str] | list[str] | None = None,
    panel_width: int | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Several segmentations of one image side by side, each titled.

    Args:
        image: (H0, W0, 3) uint8 RGB.
        labels_by_method: method name -> (h, w) label map (any size; nearest-neighbour resized).
        titles: per panel title (a dict keyed like ``labels_by_method`` or a list in its order);
            default the keys. Rendered with PIL's default font on a white strip.
        panel_width: width of each panel (default W0); the panel height keeps the image's
            aspect ratio: ``Hp = round(H0 * panel_width / W0)``.
        alpha: segment colour weight of each overlay.
    Returns:
        (TITLE_HEIGHT + Hp, n * panel_width, 3) uint8, panels in the dict's order.
    """
    img = _as_numpy(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
    if not labels_by_method:
        raise ValueError("nothing to compare: labels_by_method is empty")
    names = list(labels_by_method)
    if titles is None:
        title_list = names
    elif isinstance(titles, dict):
        title_list = [str(titles.get(n, n)) for n in names]
    else:
        title_list = [str(t) for t in titles]
        if len(title_list) != len(names):
            raise ValueError(f"{len(title_list)} titles for {len(names)} panels")
    pw = int(panel_width or img.shape[1])
    ph = max(1, int(round(img.shape[0] * pw / img.shape[1])))
    small = np.asarray(Image.fromarray(img).resize((pw, ph), Image.Resampling.BILINEAR))
    panels = []
    for name, title in zip(names, title_list, strict=True):
        lab = _resize_labels(_as_numpy(labels_by_method[name]), ph, pw)
        panels.append(np.concatenate([_title_strip(title, pw), overlay(small, lab, alpha)], 0))
    return np.concatenate(panels, axis=1)


def segment_cutouts(
    image,
    labels,
    max_segments: int = 64,
    pad: int = 4,
    dim: float = 0.25,
) -> list[tuple[int, np.ndarray]]:
    """One picture per segment: its bounding box (plus ``pad``) with other pixels dimmed.

    Args:
        image: (H0, W0, 3) uint8 (resized to the labels' size if it differs).
        labels: (H, W) non-negative int labels.
        max_segments: keep the largest this many segments.
        pad: pixels of context around each bounding box.
        dim: brightness factor of pixels outside the segment (0: black, 1: unchanged).
    Returns:
        [(label, (h_k, w_k, 3) uint8)], largest segment first.
    """
    lab = _as_numpy(labels)
    img = _as_numpy(image)
    h, w = lab.shape
    if img.shape[:2] != (h, w):
        img = np.asarray(Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR))
    areas = np.bincount(lab.ravel())
    order = [int(k) for k in np.argsort(-areas, kind="stable") if areas[k] > 0][:max_segments]
    out = []
    for k in order:
        mask = lab == k
        ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        y0, y1 = max(0, ys[0] - pad), min(h, ys[-1] + 1 + pad)
        x0, x1 = max(0, xs[0] - pad), min(w, xs[-1] + 1 + pad)
        crop = img[y0:y1, x0:x1].astype(np.float32)
        inside = mask[y0:y1, x0:x1, None]
        crop = np.where(inside, crop, crop * dim)
        out.append((k, np.round(crop).astype(np.uint8)))
    return out
