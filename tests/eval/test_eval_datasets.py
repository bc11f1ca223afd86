"""Loaders read the standard layouts; label maps checked against hand-verified entries."""

from __future__ import annotations

import numpy as np
import pytest
from eval_fakes import blocks, make_ade, make_cityscapes, make_coco, make_voc

from diffuseg.eval import labelmaps as lm
from diffuseg.eval.datasets import DATASETS, get_dataset


def _const(h, w, value):
    img, _ = blocks(h, w, [0])
    return img, np.full((h, w), value, dtype=np.int64)


def test_coco_stuff_27_reads_the_curated_list_in_order(tmp_path):
    img_a, _ = blocks(20, 30, [0])
    # fine ids: person 0, car 2, sky-other 156, road 148, unlabeled 255
    lab_a = np.array([[0, 2, 156, 148, 255]], dtype=np.int64).repeat(20, 0).repeat(6, 1)
    img_b, lab_b = _const(24, 18, 168)  # tree
    make_coco(tmp_path, {"000000000139": (img_a, lab_a), "000000000285": (img_b, lab_b),
                         "000000000632": _const(8, 8, 1)},
              listed=["000000000285", "000000000139"])
    ds = get_dataset("coco-stuff-27", tmp_path)
    assert len(ds) == 2 and ds.image_ids() == ["000000000285", "000000000139"]
    image_id, image, label = ds[1]
    assert image_id == "000000000139" and image.shape == (20, 30, 3) and image.dtype == np.uint8
    assert label.dtype == np.int64 and label.shape == (20, 30)
    # person -> 9 person, car -> 11 vehicle, sky-other -> 23 sky, road -> 21 ground, 255 kept
    assert label[0, ::6].tolist() == [9, 11, 23, 21, 255]
    assert [ds.class_names[c] for c in (9, 11, 23, 21)] == ["person", "vehicle", "sky", "ground"]
    assert np.all(ds[0][2] == 22)  # tree -> plant
    assert ds.num_classes == 27 and not ds.has_background and ds.ignore_index == 255


def test_coco_fine_to_coarse_entries():
    t = lm.coco_stuff27_table()
    # hand-checked against STEGO's Coco.fine_to_coarse: fine id -> coarse id
    expected = {0: 9, 1: 11, 9: 8, 15: 7, 25: 6, 33: 10, 43: 5, 51: 2, 61: 3, 71: 0, 77: 1,
                83: 4, 95: 20, 100: 13, 105: 23, 119: 26, 120: 14, 147: 26, 156: 23, 168: 22,
                170: 18, 176: 18, 181: 24, 255: 255}
    assert {k: int(t[k]) for k in expected} == expected
    assert sorted(set(lm.COCO_FINE_TO_COARSE27)) == list(range(27))
    assert (t[182:] == 255).all()


def test_coco_object_maps_things_and_stuff_to_background(tmp_path):
    lab = np.array([[0, 2, 43, 89, 156, 255]], dtype=np.int64).repeat(5, 0).repeat(4, 1)
    img, _ = blocks(5, 24, [0])
    make_coco(tmp_path, {"1": (img, lab)})
    ds = get_dataset("coco-object", tmp_path)
    assert ds.num_classes == 81 and ds.has_background
    row = ds[0][2][0, ::4].tolist()
    assert row == [1, 3, 40, 80, 0, 0]  # person, car, bottle, toothbrush, sky -> bg, 255 -> bg
    assert [ds.class_names[c] for c in row[:4]] == ["person", "car", "bottle", "toothbrush"]
    assert (lm.coco_object_table()[:91] > 0).sum() == 80


def test_cityscapes_27(tmp_path):
    ids = np.array([[0, 6, 7, 8, 24, 26, 33, 34, 255]], dtype=np.int64).repeat(4, 0)
    img, _ = blocks(4, 9, [0])
    make_cityscapes(tmp_path, {("lindau", "lindau_000000_000019"): (img, ids),
                               ("frankfurt", "frankfurt_000000_000294"): _const(4, 9, 23)})
    ds = get_dataset("cityscapes-27", tmp_path)
    assert ds.image_ids() == ["frankfurt_000000_000294", "lindau_000000_000019"]
    label = ds[1][2]
    assert label[0].tolist() == [255, 255, 0, 1, 17, 19, 26, 255, 255]
    assert [ds.class_names[c] for c in (0, 17, 19, 26)] == ["road", "person", "car", "bicycle"]
    assert np.all(ds[0][2] == 16) and ds.class_names[16] == "sky"


def test_voc_reads_palette_indices_and_void_to_background(tmp_path):
    lab = np.array([[0, 15, 255, 20]], dtype=np.int64).repeat(3, 0).repeat(2, 1)
    img, _ = blocks(3, 8, [0])
    make_voc(tmp_path, {"2007_000033": (img, lab)})
    ds = get_dataset("voc", tmp_path)
    assert ds[0][2][0, ::2].tolist() == [0, 15, 0, 20]
    assert ds.class_names[15] == "person" and ds.num_classes == 21 and ds.has_background


def test_context_59(tmp_path):
    lab = np.array([[0, 1, 37, 59]], dtype=np.int64).repeat(3, 0)
    img, _ = blocks(3, 4, [0])
    make_voc(tmp_path, {"2008_000002": (img, lab)}, context=True)
    ds = get_dataset("context-59", tmp_path)
    assert ds[0][2][0].tolist() == [0, 1, 37, 59]
    assert ds.class_names[37] == "person" and ds.class_names[59] == "wood"
    assert ds.num_classes == 60 and ds.class_names[1] == "aeroplane"


def test_ade20k_and_the_diffcut_compat_flag(tmp_path):
    lab = np.array([[0, 1, 13, 150]], dtype=np.int64).repeat(3, 0)
    img, _ = blocks(3, 4, [0])
    make_ade(tmp_path, {"ADE_val_00000001": (img, lab)})
    ds = get_dataset("ade20k-150", tmp_path)
    assert ds[0][2][0].tolist() == [255, 0, 12, 149]
    assert ds.class_names[0] == "wall" and ds.class_names[12] == "person"
    compat = get_dataset("ade20k-150", tmp_path, diffcut_compat=True)
    assert compat[0][2][0].tolist() == [0, 1, 13, 255]


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_missing_or_wrong_root_names_the_layout(tmp_path, name):
    with pytest.raises(ValueError, match="Expected under --root"):
        get_dataset(name, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=DATASETS[name].layout.split()[0].split("/")[0]):
        get_dataset(name, tmp_path / "empty")


def test_listed_image_missing_and_unknown_name(tmp_path):
    make_coco(tmp_path, {"1": _const(4, 4, 0)}, listed=["1", "2"])
    with pytest.raises(ValueError, match="'2'"):
        get_dataset("coco-stuff-27", tmp_path)
    with pytest.raises(ValueError, match="unknown dataset"):
        get_dataset("imagenet", tmp_path)
