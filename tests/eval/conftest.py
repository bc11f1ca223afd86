"""Fixtures shared by the evaluation tests."""

import pytest
from eval_fakes import band_dataset


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """A five-image COCO-Stuff-27 fake (bands of fine classes, an unlabeled strip), one per
    test module."""
    return band_dataset(tmp_path_factory.mktemp("coco"), n=5)
