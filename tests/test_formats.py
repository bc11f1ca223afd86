"""`diffuseg segment --format png|coco|npz`: the files open in PIL, pycocotools and numpy (without
pickles) and give back exactly the same label map."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from diffuseg.cli import app
from diffuseg.io import (
    MASKS_FORMAT,
    NPZ_FORMAT,
    coco_rle_to_mask,
    read_label_png,
    write_masks_json,
    write_npz,
)

runner = CliRunner()
EXAMPLE = "diffuseg/assets/example.jpg"



def labels_from_masks(doc) -> np.ndarray:
    h, w = doc["image"]["height"], doc["image"]["width"]
    out = np.full((h, w), -1, np.int64)
    for ann in doc["annotations"]:
        mask = coco_rle_to_mask(ann)
        assert (out[mask] == -1).all()  # masks do not overlap
        out[mask] = ann["label"]
    return out


def test_all_formats_round_trip_through_the_cli(tmp_path, small_photo):
    out = tmp_path / "out"
    result = runner.invoke(app, ["segment", str(small_photo), "--method", "ncut",
                                 "--param", "tau=0.3", "--format", "png,coco,npz",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["photo.labels.png", "photo.overlay.png", "photo.json", "photo.masks.json", "photo.npz",
         "manifest.json", ".diffuseg"])
    labels = read_label_png(out / "photo.labels.png")
    assert labels.shape == (120, 160)
    k = len(np.unique(labels))
    assert k >= 5  # a real photo: many segments, so the round trip is not trivial
    with Image.open(out / "photo.overlay.png") as im:
        assert im.size == (160, 120) and im.mode == "RGB"

    # COCO RLE masks: our decoder and pycocotools both give the label map back exactly
    doc = json.loads((out / "photo.masks.json").read_text())
    assert doc["format"] == MASKS_FORMAT and doc["image"] == {"height": 120, "width": 160}
    assert doc["config"]["method"] == "ncut" and doc["config"]["tau"] == 0.3
    assert doc["input"].endswith("photo.png")
    assert [a["label"] for a in doc["annotations"]] == list(range(k))
    np.testing.assert_array_equal(labels_from_masks(doc), labels)
    mask_utils = pytest.importorskip("pycocotools.mask")
    for ann in doc["annotations"]:
        rle = {"size": ann["segmentation"]["size"],
               "counts": ann["segmentation"]["counts"].encode("ascii")}
        mask = mask_utils.decode(rle).astype(bool)
        np.testing.assert_array_equal(mask, labels == ann["label"])
        assert ann["area"] == int(mask.sum()) == int(mask_utils.area(rle))
        np.testing.assert_array_equal(ann["bbox"], mask_utils.toBbox(rle))  # XYWH, same as COCO
    assert sum(a["area"] for a in doc["annotations"]) == 120 * 160

    # npz: no pickles needed, labels int32 equal, meta JSON with segments and config
    with np.load(out / "photo.npz", allow_pickle=False) as f:
        assert sorted(f.files) == ["labels", "meta"]
        assert f["labels"].dtype == np.int32
        np.testing.assert_array_equal(f["labels"], labels)
        meta = json.loads(str(f["meta"]))
    assert meta["format"] == NPZ_FORMAT and meta["config"]["method"] == "ncut"
    assert meta["num_segments"] == k == len(meta["segments"])
    assert meta["hierarchy"][0]["depth"] == 0


def test_single_formats_write_only_their_files(tmp_path, small_photo):
    for fmt, names in (("coco", ["photo.masks.json"]), ("npz", ["photo.npz"]),
                       ("png", ["photo.json", "photo.labels.png", "photo.overlay.png"])):
        out = tmp_path / fmt
        result = runner.invoke(app, ["segment", str(small_photo), "--method", "ncut",
                                     "--param", "grid=16", "--format", fmt, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in out.iterdir()) == sorted([*names, "manifest.json",
                                                                ".diffuseg"])
        files = json.loads((out / "manifest.json").read_text())["outputs"][0]["files"]
        assert sorted(files) == names


def test_unknown_format_is_one_clear_line(tmp_path, small_photo):
    result = runner.invoke(app, ["segment", str(small_photo), "--method", "ncut",
                                 "--format", "png,tiff", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "tiff" in errors[0] and "coco" in errors[0]
    assert not (tmp_path / "out").exists()


def test_writers_directly(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 300, size=(37, 53))  # > 255 labels, odd sizes
    write_npz(tmp_path / "a.npz", labels, {"note": "x", "value": np.float32(0.5)})
    with np.load(tmp_path / "a.npz", allow_pickle=False) as f:
        np.testing.assert_array_equal(f["labels"], labels)
        assert json.loads(str(f["meta"])) == {"format": NPZ_FORMAT, "note": "x", "value": 0.5}
    write_masks_json(tmp_path / "a.masks.json", labels, {"method": "m"})
    doc = json.loads((tmp_path / "a.masks.json").read_text())
    assert len(doc["annotations"]) == len(np.unique(labels))
    np.testing.assert_array_equal(labels_from_masks(doc), labels)
    with pytest.raises(ValueError):
        write_npz(tmp_path / "b.npz", np.full((3, 3), -1))
    assert not (tmp_path / "b.npz").exists()
