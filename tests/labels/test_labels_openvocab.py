"""The open-vocabulary metric on hand-made predictions with known Jaccard values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffuseg.eval.openvocab import OPEN_VOCAB_CLASSES, OpenVocabScores, image_jaccard


def test_class_lists():
    assert len(OPEN_VOCAB_CLASSES["voc"]) == 21
    assert len(OPEN_VOCAB_CLASSES["context-59"]) == 60
    assert len(OPEN_VOCAB_CLASSES["coco-object"]) == 81
    assert OPEN_VOCAB_CLASSES["coco-object"][:2] == ("background", "person")


def test_image_jaccard_known_values():
    gt = np.array([[0, 0, 1, 1]])
    assert image_jaccard(gt, gt, 5) == 1.0  # classes 2..4 absent from both: left out
    pred = np.array([[0, 1, 1, 1]])
    # class 0: 1/2, class 1: 2/3
    assert image_jaccard(gt, pred, 5) == pytest.approx((1 / 2 + 2 / 3) / 2)
    pred = np.array([[0, 0, 1, 3]])
    # class 0: 1, class 1: 1/2, class 3 (predicted only): 0
    assert image_jaccard(gt, pred, 5) == pytest.approx((1 + 0.5 + 0) / 3)


def test_ignore_index():
    gt = np.array([[0, 255, 1, 1]])
    pred = np.array([[0, 1, 1, 1]])
    assert image_jaccard(gt, pred, 2) == 1.0
    assert math.isnan(image_jaccard(np.full((2, 2), 255), np.zeros((2, 2), int), 2))
    with pytest.raises(ValueError, match="outside"):
        image_jaccard(np.array([[0, 255]]), np.array([[0, 1]]), 2, ignore_index=None)


def test_per_image_mean_differs_from_dataset_miou():
    s = OpenVocabScores(num_classes=3)
    # image 1: perfect on a single class; image 2: half right over two classes
    assert s.add(np.zeros((2, 2), int), np.zeros((2, 2), int)) == 1.0
    v = s.add(np.array([[1, 1, 2, 2]]), np.array([[1, 2, 2, 2]]))
    assert v == pytest.approx((1 / 2 + 2 / 3) / 2)
    s.add(np.full((1, 2), 255), np.zeros((1, 2), int))  # nothing scored: skipped in the mean
    assert s.miou == pytest.approx((1 + 7 / 12) / 2)
    # dataset: class 0 4/4, class 1 1/2, class 2 2/3
    assert s.dataset_miou == pytest.approx((1 + 1 / 2 + 2 / 3) / 3)
    d = s.to_dict()
    assert d["images"] == 3 and d["miou_per_image"] == pytest.approx(s.miou)
