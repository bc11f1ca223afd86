import os

import pytest
import torch

# Deterministic, single-threaded-enough numerics for reproducible assertions on 2 cores.
torch.manual_seed(0)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test: tiny models run faster and steadier with it on a
    shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_sd1(tmp_path_factory):
    """A tiny random SD 1.x-family pipeline saved to disk (read-only: tests must not change it)."""
    from tiny_models import make_tiny_pipeline

    return make_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "sd1", family="sd1")


@pytest.fixture(scope="session")
def small_photo(tmp_path_factory):
    """The bundled example photo at 160x120 as a PNG (a real image with many segments, fast)."""
    from pathlib import Path

    from PIL import Image

    import diffuseg

    src = Path(diffuseg.__file__).parent / "assets" / "example.jpg"
    path = tmp_path_factory.mktemp("img") / "photo.png"
    Image.open(src).convert("RGB").resize((160, 120)).save(path)
    return path


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
