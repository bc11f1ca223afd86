"""diffuseg.viz: palette, boundaries, overlay."""

from __future__ import annotations

import numpy as np
import pytest

from diffuseg.viz import boundaries, colorize, overlay, palette


def test_palette_distinct_and_deterministic():
    for n in (1, 2, 20, 256, 4096):
        p = palette(n)
        assert p.shape == (n, 3) and p.dtype == np.uint8
        assert len({tuple(c) for c in p}) == n
    np.testing.assert_array_equal(palette(30)[:10], palette(10))  # a prefix of the bigger one
    assert palette(0).shape == (0, 3)
    with pytest.raises(ValueError):
        palette(-1)


def test_palette_adjacent_labels_far_apart():
    p = palette(1000).astype(int)
    # consecutive labels differ by at least ~100 levels summed over RGB
    assert np.abs(np.diff(p, axis=0)).sum(axis=1).min() >= 100
    # the first 20 colours are pairwise clearly different
    q = p[:20]
    d = np.abs(q[:, None] - q[None]).sum(-1) + np.eye(20, dtype=int) * 10**6
    assert d.min() >= 40


def test_palette_returns_a_copy():
    p = palette(5)
    p[:] = 0
    assert palette(5).any()


def test_boundaries():
    labels = np.zeros((6, 8), np.int64)
    labels[:, 4:] = 1
    b = boundaries(labels)
    assert b.dtype == bool and b.shape == (6, 8)
    expected = np.zeros((6, 8), bool)
    expected[:, 3] = True
    np.testing.assert_array_equal(b, expected)
    thick = boundaries(labels, thick=True)
    expected[:, 4] = True
    np.testing.assert_array_equal(thick, expected)
    assert not boundaries(np.zeros((5, 5), int)).any()


def test_overlay_shapes_and_values():
    image = np.full((10, 12, 3), 100, np.uint8)
    labels = np.zeros((10, 12), np.int64)
    labels[5:] = 1
    out = overlay(image, labels, alpha=0.5, boundary_color=(255, 255, 255))
    assert out.shape == (10, 12, 3) and out.dtype == np.uint8
    colour = palette(2)[0].astype(float)
    np.testing.assert_array_equal(out[0, 0], np.round(0.5 * 100 + 0.5 * colour).astype(np.uint8))
    assert (out[4] == 255).all()  # boundary row
    np.testing.assert_array_equal(overlay(image, labels, alpha=0.0, boundary_color=None), image)
    np.testing.assert_array_equal(
        overlay(image, labels, alpha=1.0, boundary_color=None), colorize(labels)
    )


def test_overlay_resizes_image_to_labels():
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    labels = np.zeros((20, 30), np.int64)
    out = overlay(image, labels)
    assert out.shape == (20, 30, 3)
    torch = pytest.importorskip("torch")
    out_t = overlay(image, torch.from_numpy(labels))
    np.testing.assert_array_equal(out, out_t)
    with pytest.raises(ValueError):
        overlay(image.astype(np.float32), labels)


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------

from diffuseg.types import Hierarchy, HierarchyNode, Segmentation  # noqa: E402
from diffuseg.viz import (  # noqa: E402
    TITLE_HEIGHT,
    compare_figure,
    hierarchy_figure,
    hierarchy_levels,
    segment_cutouts,
)


def stripes_segmentation(h=30, w=60) -> Segmentation:
    """Three vertical stripes; the tree splits {0,1,2} into {0,1} and {2}, then {0,1} into 0, 1."""
    labels = np.zeros((h, w), np.int32)
    labels[:, w // 3 : 2 * w // 3] = 1
    labels[:, 2 * w // 3 :] = 2
    nodes = [
        HierarchyNode(0, None, (1, 2), 0, 9, 0.1, (0, 1, 2)),
        HierarchyNode(1, 0, (3, 4), 1, 6, 0.2, (0, 1)),
        HierarchyNode(2, 0, (), 1, 3, None, (2,)),
        HierarchyNode(3, 1, (), 2, 3, None, (0,)),
        HierarchyNode(4, 1, (), 2, 3, None, (1,)),
    ]
    return Segmentation(labels=labels, hierarchy=Hierarchy(nodes))


def gray_image(h=30, w=60) -> np.ndarray:
    return np.full((h, w, 3), 128, np.uint8)


def test_hierarchy_figure_one_row_per_level_exact_sizes():
    seg = stripes_segmentation()
    fig = hierarchy_figure(gray_image(), seg, alpha=1.0)
    row = 30 + TITLE_HEIGHT
    assert fig.shape == (3 * row, 60, 3) and fig.dtype == np.uint8
    for depth, k in enumerate((1, 2, 3)):
        title = fig[depth * row : depth * row + TITLE_HEIGHT]
        assert (title.min(axis=2) < 100).sum() > 20  # text drawn in black on the white strip
        assert (title == 255).all(axis=2).mean() > 0.5
        body = fig[depth * row + TITLE_HEIGHT : (depth + 1) * row].reshape(-1, 3)
        colours = {tuple(c) for c in body} - {(255, 255, 255)}  # minus the boundary colour
        assert len(colours) == k, (depth, colours)
    # each row is exactly the overlay of the labels cut at that depth, every region labelled by
    # its smallest leaf so that colours persist from level to level
    levels = hierarchy_levels(seg)
    for depth in range(3):
        body = fig[depth * row + TITLE_HEIGHT : (depth + 1) * row]
        np.testing.assert_array_equal(body, overlay(gray_image(), levels[depth][1], alpha=1.0))
        merged = seg.labels_at_depth(depth)
        for k in np.unique(merged):
            assert np.unique(levels[depth][1][merged == k]).tolist() == [
                int(seg.labels[merged == k].min())]
    leaves = fig[2 * row + TITLE_HEIGHT :]
    assert len({tuple(leaves[5, x]) for x in (0, 30, 59)}) == 3  # three stripes, three colours
    no_titles = hierarchy_figure(gray_image(), seg, titles=False, alpha=1.0)
    assert no_titles.shape == (3 * 30, 60, 3)
    np.testing.assert_array_equal(no_titles[60:], leaves)


def test_hierarchy_figure_caps_levels_and_handles_flat_segmentations():
    seg = stripes_segmentation()
    assert [d for d, _ in hierarchy_levels(seg, max_levels=2)] == [0, 2]
    assert hierarchy_figure(gray_image(), seg, max_levels=2).shape == (2 * (30 + TITLE_HEIGHT),
                                                                       60, 3)
    flat = Segmentation(labels=seg.labels)
    fig = hierarchy_figure(gray_image(), flat)
    assert fig.shape == (30 + TITLE_HEIGHT, 60, 3)
    # a label map at another size than the image: the image is resized to the labels
    small = Segmentation(labels=seg.labels[::2, ::2])
    assert hierarchy_figure(gray_image(), small).shape == (15 + TITLE_HEIGHT, 30, 3)
    with pytest.raises(ValueError):
        hierarchy_levels(seg, max_levels=0)


def test_compare_figure_panels_side_by_side():
    image = gray_image(40, 80)
    a = np.zeros((40, 80), np.int32)
    a[:, 40:] = 1
    b = np.zeros((20, 40), np.int32)  # another size: resized (nearest) to the panel
    b[10:] = 1
    b[10:, 20:] = 2
    fig = compare_figure(image, {"ncut": a, "kmeans": b}, titles={"ncut": "N-cut"},
                         panel_width=50, alpha=1.0)
    ph = round(40 * 50 / 80)
    assert fig.shape == (TITLE_HEIGHT + ph, 2 * 50, 3)
    left, right = fig[TITLE_HEIGHT:, :50], fig[TITLE_HEIGHT:, 50:]
    # distinct segments get distinct colours, exactly the palette's
    np.testing.assert_array_equal(left[10, 5], palette(2)[0])
    np.testing.assert_array_equal(left[10, 45], palette(2)[1])
    assert tuple(left[10, 5]) != tuple(left[10, 45])
    pal = palette(3)
    np.testing.assert_array_equal(right[2, 5], pal[0])
    np.testing.assert_array_equal(right[ph - 2, 5], pal[1])
    np.testing.assert_array_equal(right[ph - 2, 45], pal[2])
    assert len({tuple(right[2, 5]), tuple(right[ph - 2, 5]), tuple(right[ph - 2, 45])}) == 3
    # each panel's title strip holds text
    for panel in (0, 1):
        strip = fig[:TITLE_HEIGHT, panel * 50 : (panel + 1) * 50]
        assert (strip.min(axis=2) < 100).sum() > 10
    default = compare_figure(image, {"a": a, "b": a, "c": a})
    assert default.shape == (TITLE_HEIGHT + 40, 3 * 80, 3)
    with pytest.raises(ValueError):
        compare_figure(image, {})
    with pytest.raises(ValueError):
        compare_figure(image, {"a": a}, titles=["x", "y"])


def test_compare_figure_many_segments_stay_distinct():
    labels = np.arange(64, dtype=np.int32).reshape(8, 8).repeat(4, 0).repeat(4, 1)
    fig = compare_figure(gray_image(32, 32), {"m": labels}, alpha=1.0)
    body = fig[TITLE_HEIGHT:]
    centres = {tuple(body[4 * i + 2, 4 * j + 2]) for i in range(8) for j in range(8)}
    assert len(centres) == 64


def test_segment_cutouts():
    image = np.full((30, 60, 3), 200, np.uint8)
    seg = stripes_segmentation()
    cut = segment_cutouts(image, seg.labels, pad=2, dim=0.5)
    assert [k for k, _ in cut] == [0, 1, 2] or sorted(k for k, _ in cut) == [0, 1, 2]
    sizes = {k: c.shape for k, c in cut}
    assert sizes[0] == (30, 22, 3)  # 20 columns + 2 of padding on the right only
    assert sizes[1] == (30, 24, 3)
    crop = dict(cut)[1]
    assert (crop[:, 2:22] == 200).all() and (crop[:, :2] == 100).all()
    assert len(segment_cutouts(image, seg.labels, max_segments=2)) == 2
