"""Opt-in: the real naming models. Set DIFFUSEG_CLIP_DIR to a folder of open_clip's
``convnext_large_d_320`` files (``hf download
laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup open_clip_config.json
open_clip_model.safetensors --local-dir ...``) and/or DIFFUSEG_CAPTIONER_DIR to a BLIP folder
(``hf download Salesforce/blip-image-captioning-base --local-dir ...``), then run
``pytest -m weights tests/labels``."""

import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.weights

CLIP_DIR = os.environ.get("DIFFUSEG_CLIP_DIR", "")
CAPTIONER_DIR = os.environ.get("DIFFUSEG_CAPTIONER_DIR", "")


def _scene():
    """Left half sky blue above green grass, right half a red square on white."""
    img = np.full((256, 256, 3), 255, np.uint8)
    img[:128, :128] = (90, 160, 235)
    img[128:, :128] = (40, 150, 40)
    img[64:192, 160:240] = (220, 20, 20)
    labels = np.zeros((256, 256), np.int64)
    labels[128:, :128] = 1
    labels[:, 128:] = 2
    labels[64:192, 160:240] = 3
    return img, labels


@pytest.mark.skipif(not (Path(CLIP_DIR) / "open_clip_model.safetensors").is_file(),
                    reason="set DIFFUSEG_CLIP_DIR to an open_clip ConvNeXt CLIP folder")
def test_real_clip_names_a_simple_scene():
    from diffuseg.labels import load_clip, name_with_classes

    clip = load_clip(CLIP_DIR)
    img, labels = _scene()
    classes = ["sky", "grass", "wall", "red square", "dog"]
    _, names, sims = name_with_classes(clip, img, labels, classes, size=512, merge=False)
    assert names[0] == "sky" and names[1] == "grass" and names[3] == "red square"
    assert sims.shape == (4, 5)


@pytest.mark.skipif(not (Path(CAPTIONER_DIR) / "config.json").is_file(),
                    reason="set DIFFUSEG_CAPTIONER_DIR to a BLIP captioning model folder")
def test_real_captioner_describes_the_example_photo():
    import diffuseg
    from diffuseg.io import load_image
    from diffuseg.labels.captioner import load_captioner

    photo = load_image(Path(diffuseg.__file__).parent / "assets" / "example.jpg")
    caption = load_captioner(CAPTIONER_DIR).caption(photo)
    assert 2 <= len(caption.split()) <= 19
    assert caption == caption.strip().lower()
