"""Shared fixtures for backbone tests: tiny SD 1.x / SDXL pipelines saved to disk and loaded back
through ``load_backbone`` (offline), plus helpers to build test images."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiny_models import make_tiny_pipeline  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every backbone test runs on one torch thread (see tests/conftest.py)."""


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {fam: make_tiny_pipeline(root / fam, fam) for fam in ("sd1", "sdxl")}


@pytest.fixture(scope="session")
def backbones(tiny_dirs):
    from diffuseg.backbones import load_backbone

    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        loaded = {fam: load_backbone(path) for fam, path in tiny_dirs.items()}
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old
    return loaded


@pytest.fixture(params=["sd1", "sdxl"])
def family(request) -> str:
    return request.param


@pytest.fixture
def backbone(backbones, family):
    return backbones[family]


def _random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth random RGB uint8 image of (height, width) (blobs, not white noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(max(2, height // 16), max(2, width // 16), 3))
    img = Image.fromarray(small.astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(img)


@pytest.fixture
def make_image():
    return _random_image
