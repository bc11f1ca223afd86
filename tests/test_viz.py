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
