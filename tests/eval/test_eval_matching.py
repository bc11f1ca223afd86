"""Matching on hand-made confusion cases with known TP / FP / FN."""

from __future__ import annotations

import numpy as np
import pytest

from diffuseg.eval.matching import (
    Scores,
    background_assignment,
    cluster_histogram,
    confusion,
    dataset_scores,
    image_scores,
)


def pixels_from_hist(hist: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(gt, pred) 1-row images whose confusion histogram is ``hist``."""
    gt, pred = [], []
    for c, row in enumerate(hist):
        for s, count in enumerate(row):
            gt += [c] * count
            pred += [s] * count
    return np.array([gt]), np.array([pred])


def test_per_image_hungarian_counts():
    hist = [[10, 2, 0], [0, 8, 3], [1, 0, 0]]
    gt, pred = pixels_from_hist(hist)
    assert confusion(gt, pred, 3).tolist() == hist
    s = image_scores(gt, pred, 3)
    assert s.tp.tolist() == [10, 8, 0]
    assert s.fp.tolist() == [1, 2, 3]
    assert s.fn.tolist() == [2, 3, 1]
    np.testing.assert_allclose(s.iou, [10 / 13, 8 / 13, 0.0])
    assert s.pixel_accuracy == pytest.approx(18 / 24)


def test_background_rule_merges_unassigned_segments():
    #         s0  s1  s2  s3
    hist = [[50, 5, 20, 0],   # background
            [2, 30, 0, 0],    # class 1
            [0, 0, 3, 6]]     # class 2
    assert background_assignment(np.array(hist), 0).tolist() == [0, 1, 0, 2]
    gt, pred = pixels_from_hist(hist)
    s = image_scores(gt, pred, 3, background=0)
    assert s.tp.tolist() == [70, 30, 6]
    assert s.fp.tolist() == [5, 5, 0]
    assert s.fn.tolist() == [5, 2, 3]
    plain = image_scores(gt, pred, 3)  # one-to-one: s2 stays unmatched
    assert plain.tp.tolist() == [50, 30, 6] and plain.fn.tolist() == [25, 2, 3]


def test_background_rule_final_assignment_can_reassign():
    # class 1 first takes s0 (its only overlap); the final assignment over all classes gives s0
    # to background (40 px) and the merged rest (s1) to class 1.
    hist = np.array([[40, 10], [1, 0]])
    assert background_assignment(hist, 0).tolist() == [0, 1]
    gt, pred = pixels_from_hist(hist.tolist())
    s = image_scores(gt, pred, 2, background=0)
    assert (s.tp.tolist(), s.fp.tolist(), s.fn.tolist()) == ([40, 0], [1, 10], [10, 1])


def test_background_rule_without_foreground_and_ignore_pixels():
    gt = np.array([[0, 0, 0, 255, 255]])
    pred = np.array([[0, 1, 2, 1, 0]])
    s = image_scores(gt, pred, 3, ignore_index=255, background=0)
    assert s.tp.tolist() == [3, 0, 0] and s.fp.sum() == 0 and s.fn.sum() == 0
    assert s.miou == 1.0  # classes 1, 2 never seen nor predicted: nan, left out


def test_dataset_level_matching_differs_from_per_image():
    img1 = [[5, 1], [0, 4]]
    img2 = [[0, 3], [6, 2]]  # cluster ids swapped in this image
    hists = []
    for h in (img1, img2):
        gt, pred = pixels_from_hist(h)
        hists.append(cluster_histogram(gt, pred, 2, num_clusters=2))
    total = hists[0] + hists[1]
    assert total.tolist() == [[5, 4], [6, 6]]
    s = dataset_scores(total)
    assert (s.tp.tolist(), s.fp.tolist(), s.fn.tolist()) == ([5, 6], [6, 4], [4, 6])
    per_image = Scores.zeros(2)
    for h in (img1, img2):
        per_image.add(image_scores(*pixels_from_hist(h), 2))
    assert per_image.tp.tolist() == [8, 10]  # per image, the swap is undone
    with pytest.raises(ValueError, match="3 clusters"):
        cluster_histogram(np.array([[0, 1]]), np.array([[0, 3]]), 2, num_clusters=3)


def test_scores_roundtrip_and_class_iou():
    s = Scores(np.array([1, 0]), np.array([1, 0]), np.array([0, 0]))
    assert Scores.from_dict(s.to_dict()).to_dict() == s.to_dict()
    assert s.class_iou(["a", "b"]) == {"a": 0.5, "b": None}
