"""Scoring as the official evaluation code does: hand-checked cases per rule, then many random
images against a literal transcription of the rules (tests/eval/official_protocol.py)."""

from __future__ import annotations

import numpy as np
import pytest
from official_protocol import official_counts

from diffuseg.eval.matching import (
    Scores,
    cluster_histogram,
    dataset_scores,
    image_scores,
    merge_background,
    official_histogram,
    official_layout,
)


def counts(s: Scores) -> tuple[list[int], list[int], list[int]]:
    return s.tp.tolist(), s.fp.tolist(), s.fn.tolist()


# --- rule 1-2: the histogram's layout decides the ties ------------------------------------------


def test_raw_ids_and_padding_decide_which_absent_class_takes_a_leftover_segment():
    # every pixel is class 0; segments of 3 and 2 pixels
    gt = np.zeros((1, 5), dtype=np.int64)
    dense = np.array([[0, 0, 0, 1, 1]])
    sparse = np.array([[0, 0, 0, 2, 2]])
    # dense ids: hist [[3, 2], [0, 0]] has one optimum: class 1 takes segment 1, 2 false pixels
    assert counts(image_scores(gt, dense, 2)) == ([3, 0], [0, 2], [2, 0])
    # raw id 2: hist [[3, 0, 2], [0, 0, 0]]; scipy gives class 1 the empty column 1 (a tie):
    # no false pixels, as the official code counts it
    assert official_histogram(gt, sparse, 2).tolist() == [[3, 0, 2], [0, 0, 0]]
    assert counts(image_scores(gt, sparse, 2)) == ([3, 0], [0, 0], [2, 0])
    # fewer segments than classes: padded to 3 columns; [[0,0,0],[3,2,0],[0,0,0]] -> class 0 takes
    # the 2-pixel segment (a tie with the empty column that scipy breaks that way)
    gt1 = np.ones((1, 5), dtype=np.int64)
    assert counts(image_scores(gt1, dense, 3)) == ([0, 3, 0], [2, 0, 0], [0, 2, 0])
    np.testing.assert_array_equal(official_counts(dense, gt1, 3, False), [[0, 3, 0], [2, 0, 0],
                                                                          [0, 2, 0]])


def test_ignored_pixels_count_for_the_columns_but_not_the_rows():
    gt = np.array([[0, 0, 1, 1, 255, 255]])
    pred = np.array([[0, 0, 1, 1, 3, 3]])  # id 3 only where the label is ignored
    hist = official_histogram(official_layout(gt, 2)[0], pred, 2)
    assert hist.tolist() == [[2, 0, 0, 0], [0, 2, 0, 0]]
    assert counts(image_scores(gt, pred, 2)) == ([2, 2], [0, 0], [0, 0])
    assert image_scores(gt, pred, 2).pixel_accuracy == 1.0


def test_counts_per_class_by_hand():
    #                  class 0       class 1      class 2
    gt = np.array([[0] * 12 + [1] * 11 + [2]])
    pred = np.array([[0] * 10 + [1] * 2 + [1] * 8 + [2] * 3 + [0]])
    # hist [[10, 2, 0], [0, 8, 3], [1, 0, 0]]: 0->0, 1->1, 2->2 (18 matched pixels)
    s = image_scores(gt, pred, 3)
    assert counts(s) == ([10, 8, 0], [1, 2, 3], [2, 3, 1])
    np.testing.assert_allclose(s.iou, [10 / 13, 8 / 13, 0.0])
    assert s.pixel_accuracy == pytest.approx(18 / 24)


# --- rule 3: the background rule -----------------------------------------------------------------


def test_background_rule_by_hand():
    # our ids: 0 background, 1 = A, 2 = B (official: A 0, B 1, background 2)
    gt = np.array([[0, 0, 0, 0, 1, 1, 1, 2, 2, 0]])
    pred = np.array([[0, 0, 1, 1, 1, 1, 2, 3, 3, 4]])
    # first matching over A, B without background pixels: A [0,2,1,0,0] -> 1, B [0,0,0,2,0] -> 3;
    # ids 0, 2, 4 are left over and become id 5 (pred.max() + 1)
    merged = merge_background(gt, pred, 3, background=0)
    assert merged.tolist() == [[5, 5, 1, 1, 1, 1, 5, 3, 3, 5]]
    # final: A [0,2,0,0,0,1] -> 1, B -> 3, background [0,2,0,0,0,3] -> 5; in our order (bg, A, B)
    assert counts(image_scores(gt, pred, 3, background=0)) == ([3, 2, 2], [1, 2, 0], [2, 1, 0])


def test_background_rule_keeps_every_id_when_all_are_matched_and_handles_no_foreground():
    gt = np.array([[1, 1, 2, 2]])
    pred = np.array([[0, 0, 1, 1]])
    assert merge_background(gt, pred, 3, background=0).tolist() == pred.tolist()
    only_bg = np.zeros((1, 5), dtype=np.int64)
    pred = np.array([[0, 1, 2, 1, 0]])
    assert merge_background(only_bg, pred, 3, background=0).tolist() == [[3] * 5]
    s = image_scores(only_bg, pred, 3, background=0)
    assert counts(s) == ([5, 0, 0], [0, 0, 0], [0, 0, 0]) and s.miou == 1.0


def test_layout_maps_background_last_and_ignore_out():
    gt = np.array([[0, 1, 2, 255]])
    off, ours = official_layout(gt, 3, 255, background=0)
    assert off.tolist() == [2, 0, 1, -1] and ours.tolist() == [1, 2, 0]
    with pytest.raises(ValueError, match="outside"):
        official_layout(np.array([[3]]), 3)
    with pytest.raises(ValueError, match="negative"):
        image_scores(np.array([[0]]), np.array([[-1]]), 2)


# --- random images against the transcription of the rules --------------------------------------


def random_case(rng, n_class: int, background: bool):
    """(our gt, official gt, prediction): blobs of classes with ignore pixels (or background),
    2-40 segments with dense or sparse ids."""
    h, w = int(rng.integers(8, 40)), int(rng.integers(8, 40))
    present = rng.choice(n_class, size=int(rng.integers(1, min(n_class, 8) + 1)), replace=False)
    coarse = rng.choice(present, size=(h // 4 + 1, w // 4 + 1))
    ours = np.kron(coarse, np.ones((4, 4), dtype=np.int64))[:h, :w]
    noise = rng.random((h, w)) < 0.1
    ours[noise] = rng.choice(present, size=int(noise.sum()))
    k = int(rng.integers(2, 41))
    ids = np.arange(k) if rng.random() < 0.5 else np.sort(rng.choice(3 * k, size=k, replace=False))
    seg_coarse = rng.integers(0, k, size=(h // 3 + 1, w // 3 + 1))
    pred = ids[np.kron(seg_coarse, np.ones((3, 3), dtype=np.int64))[:h, :w]]
    # correlate the prediction with the classes so that matchings are not trivial
    follow = rng.random((h, w)) < 0.5
    pred[follow] = ids[(ours[follow] * 7) % k]
    if background:  # ours: background 0, void already background; official: -1 then n - 1
        official = np.where(ours == 0, -1, ours - 1)
    else:
        ignore = rng.random((h, w)) < 0.15
        ours[ignore] = 255
        official = np.where(ignore, -1, ours)
    return ours, official, pred


@pytest.mark.parametrize("n_class, background", [(27, False), (21, True), (3, False), (5, True)])
def test_counts_equal_the_official_rules_on_random_images(n_class, background):
    rng = np.random.default_rng(n_class)
    for _ in range(150):
        ours, official, pred = random_case(rng, n_class, background)
        s = image_scores(ours, pred, n_class, 255, 0 if background else None)
        tp, fp, fn = official_counts(pred, official, n_class, background)
        perm = np.r_[1:n_class, 0] if background else np.arange(n_class)  # official -> ours
        assert s.tp[perm].tolist() == tp.tolist()
        assert s.fp[perm].tolist() == fp.tolist()
        assert s.fn[perm].tolist() == fn.tolist()
        # invariants: TP + FN = the labelled pixels of each class; TP + FP never exceeds them all
        labelled = ours != 255
        per_class = np.bincount(ours[labelled], minlength=n_class)
        assert (s.tp + s.fn).tolist() == per_class.tolist()
        assert int((s.tp + s.fp).sum()) <= int(labelled.sum())


def test_merge_counts_every_segment_once():
    rng = np.random.default_rng(5)
    for _ in range(100):
        ours, _, pred = random_case(rng, 21, True)
        merged = merge_background(ours, pred, 21, background=0)
        new = int(pred.max()) + 1
        kept = merged != new
        assert np.array_equal(merged[kept], pred[kept])  # matched segments keep their ids
        # a segment is either kept whole or merged whole
        for seg in np.unique(pred):
            assert len(np.unique(merged[pred == seg])) == 1


# --- dataset-level matching ------------------------------------------------------------------


def pixels_from_hist(hist: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(gt, pred) 1-row images whose confusion histogram is ``hist``."""
    gt, pred = [], []
    for c, row in enumerate(hist):
        for s, count in enumerate(row):
            gt += [c] * count
            pred += [s] * count
    return np.array([gt]), np.array([pred])


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
    assert counts(s) == ([5, 6], [6, 4], [4, 6])
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
