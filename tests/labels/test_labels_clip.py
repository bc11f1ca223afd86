"""Open-vocabulary mask classification on synthetic features where each segment's class is
planted; the text classifier on hand-made embeddings; the whole step on a stand-in model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffuseg.labels.clip import (
    build_text_classifier,
    classify_pooled,
    classify_segments,
    mask_pool,
    merge_named_segments,
    name_with_classes,
)
from diffuseg.labels.templates import VILD_TEMPLATES

CLASSES = ["cat", "dog", "grass, lawn", "sky"]
D = 8


def _fake_text_encoder(calls: list[int]):
    """Prompt -> embedding: the class word's axis (cat 0, dog 1, grass 2, lawn 3, sky 4) with a
    template-dependent offset on axis 7 and a length-dependent scale (not normalised)."""
    axes = {"cat": 0, "dog": 1, "grass": 2, "lawn": 3, "sky": 4}

    def encode(prompts: list[str]) -> torch.Tensor:
        calls.append(len(prompts))
        out = torch.zeros(len(prompts), D)
        for i, p in enumerate(prompts):
            word = next(w for w in axes if f" {w}" in f" {p}")
            out[i, axes[word]] = 2.0 + len(p) / 10
            out[i, 7] = 0.3 * (len(p) % 5)
        return out

    return encode


def test_text_classifier_averages_14_templates_and_normalises():
    calls: list[int] = []
    clf = build_text_classifier(_fake_text_encoder(calls), CLASSES, batch_size=20)
    assert len(VILD_TEMPLATES) == 14
    assert sum(calls) == 5 * 14 and max(calls) <= 20  # 5 synonyms x 14 templates, batched
    assert clf.embeddings.shape == (5, D)
    assert clf.class_of.tolist() == [0, 1, 2, 2, 3]
    torch.testing.assert_close(clf.embeddings.norm(dim=1), torch.ones(5))
    # reference: mean of the 14 unit vectors of "cat", normalised
    enc = _fake_text_encoder([])
    ref = torch.nn.functional.normalize(enc([t.format("cat") for t in VILD_TEMPLATES]), dim=1)
    ref = torch.nn.functional.normalize(ref.mean(0), dim=0)
    torch.testing.assert_close(clf.embeddings[0], ref)
    with pytest.raises(ValueError, match="distinct"):
        build_text_classifier(enc, ["cat", "cat"])


def test_mask_pool_known_means():
    feats = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4)
    labels = np.zeros((4, 4), dtype=int)
    labels[:, 2:] = 1
    for mode in ("nearest", "touch"):
        pooled = mask_pool(feats, labels, mode=mode)
        torch.testing.assert_close(pooled[0], feats[:, :, :2].reshape(2, -1).mean(1))
        torch.testing.assert_close(pooled[1], feats[:, :, 2:].reshape(2, -1).mean(1))
    # labels finer than the features: column 5 of 8 lies in feature column 2
    fine = np.zeros((8, 8), dtype=int)
    fine[:, 5:] = 1
    # nearest (DiffCut): a cell belongs to the label at its centre (pixel columns 1, 3, 5, 7)
    pooled = mask_pool(feats[None], fine)
    torch.testing.assert_close(pooled[0], feats[:, :, :2].reshape(2, -1).mean(1))
    torch.testing.assert_close(pooled[1], feats[:, :, 2:].reshape(2, -1).mean(1))
    # touch (FC-CLIP): a cell counts for every segment touching it
    pooled = mask_pool(feats[None], fine, mode="touch")
    torch.testing.assert_close(pooled[0], feats[:, :, :3].reshape(2, -1).mean(1))
    torch.testing.assert_close(pooled[1], feats[:, :, 2:].reshape(2, -1).mean(1))
    with pytest.raises(ValueError, match="mode"):
        mask_pool(feats, labels, mode="bilinear")


@pytest.mark.parametrize("shape", [(37, 53), (128, 128), (9, 200)])
def test_nearest_mask_pool_equals_diffcuts_interpolation(shape):
    """Parity with DiffCut's MaskPooling: masks resized with F.interpolate(nearest-exact), > 0,
    mean over the cells; and a segment smaller than a cell still gets the cells it touches."""
    rng = np.random.default_rng(0)
    feats = torch.from_numpy(rng.normal(size=(5, 6, 7))).float()
    labels = rng.integers(0, 4, size=shape)
    labels[:3, :3] = 4  # a speck: covers no cell centre on a 6 x 7 grid
    masks = torch.nn.functional.one_hot(torch.from_numpy(labels), 5).permute(2, 0, 1).float()
    ref = torch.nn.functional.interpolate(masks[None], size=(6, 7), mode="nearest-exact")[0]
    ref = (ref > 0).float()
    want = torch.einsum("chw,khw->kc", feats, ref / (ref.sum((1, 2), keepdim=True) + 1e-8))
    got = mask_pool(feats, labels)
    covered = ref.sum((1, 2)) > 0
    torch.testing.assert_close(got[covered], want[covered])
    assert not covered[4]
    # the speck falls back to the cells whose pixel bins it overlaps (rows 0-2, columns 0-2)
    H, W = shape
    cells = [(i, j) for i in range(6) for j in range(7)
             if i * H // 6 < 3 and j * W // 7 < 3]  # bin start inside the speck
    want4 = torch.stack([feats[:, i, j] for i, j in cells]).mean(0)
    torch.testing.assert_close(got[4], want4)


def _planted_scene(seed=0, noise=0.3):
    """Labels 16 x 16 with 5 segments; features (C=6, 8, 8) whose cells carry their segment's
    planted class direction in the text space (through a known linear head) plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((16, 16), dtype=np.int64)
    labels[:8, :8] = 0
    labels[:8, 8:] = 1
    labels[8:, :8] = 2
    labels[8:, 8:12] = 3
    labels[8:, 12:] = 4
    planted = [0, 3, 2, 1, 2]  # segment -> class: cat, sky, grass (via "lawn"), dog, grass
    directions = {0: 0, 1: 1, 2: 3, 3: 4}  # class -> text axis ("grass" planted as "lawn")
    c = 6
    head_w = torch.from_numpy(rng.normal(size=(D, c))).float()  # pooled (C) -> text (D)
    targets = torch.zeros(5, D)
    for seg, cls in enumerate(planted):
        targets[seg, directions[cls]] = 3.0
    # features in C space whose head output is the target: least-squares preimage
    pre = torch.linalg.lstsq(head_w, targets.t()).solution.t()  # (5, C)
    cells = torch.from_numpy(labels[::2, ::2].copy())
    feats = pre[cells].permute(2, 0, 1).contiguous()
    feats += noise * torch.from_numpy(rng.normal(size=feats.shape)).float()
    return labels, feats, planted, (lambda x: x @ head_w.t())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_classes_are_recovered_and_merged(seed):
    labels, feats, planted, head = _planted_scene(seed)
    clf = build_text_classifier(_fake_text_encoder([]), CLASSES)
    classes, sims = classify_pooled(mask_pool(feats, labels), clf, head)
    assert classes.tolist() == planted
    assert sims.shape == (5, 4) and float(sims.max()) <= 1.0 + 1e-6
    merged, names, _ = classify_segments(feats, labels, clf, head)
    assert names == ["cat", "sky", "grass, lawn", "dog"]
    expect = np.array([0, 1, 2, 3, 2])[labels]  # segments 2 and 4 (both grass) merged
    np.testing.assert_array_equal(merged, expect)
    unmerged, names, _ = classify_segments(feats, labels, clf, head, merge=False)
    np.testing.assert_array_equal(unmerged, labels)
    assert names == ["cat", "sky", "grass, lawn", "dog", "grass, lawn"]


def test_synonym_max_and_no_head():
    clf = build_text_classifier(_fake_text_encoder([]), CLASSES)
    pooled = clf.embeddings[[3, 4]] * 5  # exactly the "lawn" synonym, then "sky"
    classes, sims = classify_pooled(pooled, clf)
    assert classes.tolist() == [2, 3]
    assert sims[0, 2] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="embedding sizes"):
        classify_pooled(torch.ones(2, D + 1), clf)


def test_merge_named_segments_numbering():
    labels = np.array([[3, 0, 1], [2, 2, 1]])
    merged, cls = merge_named_segments(labels, [5, 7, 5, 9])
    # present labels in order 0,1,2,3 -> classes 5,7,5,9 -> merged ids 0,1,0,2
    np.testing.assert_array_equal(merged, [[2, 0, 1], [0, 0, 1]])
    assert cls.tolist() == [5, 7, 9]


class _PlantedClip:
    """A CLIP stand-in with the loader's interface, returning a planted scene."""

    def __init__(self, feats, head):
        self.feats, self.head, self.sizes = feats, head, []
        self.encode_text = _fake_text_encoder([])

    def dense(self, image, size):
        assert image.dtype == np.uint8 and image.ndim == 3
        self.sizes.append(size)
        return self.feats


def test_name_with_classes_runs_the_whole_step():
    labels, feats, planted, head = _planted_scene(0)
    clip = _PlantedClip(feats, head)
    image = np.zeros((32, 32, 3), np.uint8)
    merged, names, sims = name_with_classes(clip, image, labels, CLASSES, size=2048)
    assert clip.sizes == [2048]
    assert names == ["cat", "sky", "grass, lawn", "dog"]
    np.testing.assert_array_equal(merged, np.array([0, 1, 2, 3, 2])[labels])
    # a classifier built once gives the same answer (what evaluation does for many images)
    clf = build_text_classifier(clip.encode_text, CLASSES)
    again = name_with_classes(clip, image, labels, clf, merge=False)
    assert again[1] == ["cat", "sky", "grass, lawn", "dog", "grass, lawn"]
    torch.testing.assert_close(again[2], sims)
