"""Hostile inputs to the evaluation: damaged run.json / results files, damaged images, records of
other settings, output paths that cannot be folders, degenerate option values. Each is one clear
error (exit code 2 from the CLI, no traceback) or, for a damaged image, a failed image listed in
the results while the run goes on (exit code 1)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from diffuseg.eval.cli import eval_app
from diffuseg.eval.datasets import SampleError, get_dataset
from diffuseg.eval.runner import (
    EvalSettings,
    Protocol,
    evaluate,
    get_protocol,
    load_result,
    read_records,
    record_line,
    results_markdown,
    run_digest,
)
from diffuseg.io import ensure_folder

FAST = {"grid": 16}


def settings(root, **kw):
    base = dict(dataset="coco-stuff-27", root=str(root), method="ncut", params=dict(FAST),
                protocol="diffcut", input_size=128)
    return EvalSettings(**{**base, **kw})


def base_args(root) -> list[str]:
    return ["--dataset", "coco-stuff-27", "--root", str(root), "--method", "ncut", "--param",
            "grid=16", "--input-size", "128", "--no-progress"]


def invoke(args):
    return CliRunner().invoke(eval_app, [str(a) for a in args])


def error_lines(res) -> list[str]:
    """stderr's lines, after checking that nothing escaped as a traceback."""
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    assert "Traceback" not in res.output
    return [line for line in res.stderr.splitlines() if line.strip()]


def assert_one_error(res, line: str) -> None:
    assert res.exit_code == 2, res.output
    assert error_lines(res) == [line]


@pytest.fixture(scope="module")
def reference(coco, tmp_path_factory):
    """An uninterrupted run of the five images: its records by index."""
    out = tmp_path_factory.mktemp("ref")
    evaluate(settings(coco), out, progress=False)
    return read_records(out / "records.jsonl")


def summed(records: list[dict]) -> dict:
    return {k: np.sum([r[k] for r in records], axis=0).tolist() for k in ("tp", "fp", "fn")}


# -- 1. run.json and method_config.json ---------------------------------------------------------
RUN_HINT = (": it should hold the settings of the records in this folder; remove it (records "
            "carry their settings' digest) or choose a new --out")


@pytest.mark.parametrize("content, problem", [
    (b"[1, 2]", "expected a JSON object, found a list"),
    (b"3", "expected a JSON object, found a number"),
    (b"null", "expected a JSON object, found null"),
    (b'"settings"', "expected a JSON object, found a string"),
    (b"{nope", "damaged, not a JSON object (JSONDecodeError: Expecting property name enclosed "
               "in double quotes: line 1 column 2 (char 1))"),
    (b"\xff\xfe{}", "damaged, not a JSON object (UnicodeDecodeError: 'utf-8' codec can't decode "
                    "byte 0xff in position 0: invalid start byte)"),
])
def test_unexpected_run_json_is_one_error_naming_it(coco, tmp_path, content, problem):
    out = tmp_path / "out"
    out.mkdir()
    run = out / "run.json"
    run.write_bytes(content)
    res = invoke([*base_args(coco), "--limit", "1", "--out", out])
    assert_one_error(res, f"error: {run}: {problem}{RUN_HINT}")
    with pytest.raises(ValueError) as info:
        evaluate(settings(coco, limit=1), out, progress=False, resume=True)
    assert str(info.value) == f"{run}: {problem}{RUN_HINT}"
    assert run.read_bytes() == content  # left for the user to look at
    assert not (out / "records.jsonl").exists()


def test_run_json_that_is_a_folder_and_a_damaged_method_config(coco, tmp_path):
    (tmp_path / "a" / "run.json").mkdir(parents=True)
    res = invoke([*base_args(coco), "--limit", "1", "--out", tmp_path / "a"])
    assert_one_error(res, f"error: {tmp_path / 'a' / 'run.json'}: not a file (it should hold the "
                          "settings of the records in this folder); remove it or choose a new "
                          "--out")
    evaluate(settings(coco, limit=1), tmp_path / "b", progress=False)
    config = tmp_path / "b" / "method_config.json"
    config.write_text("[]")
    res = invoke([*base_args(coco), "--limit", "2", "--resume", "--out", tmp_path / "b"])
    assert_one_error(res, f"error: {config}: expected a JSON object, found a list: remove it (it "
                          "is written again from the method's settings) or choose a new --out")


# -- 2. eval compare on files that are not results ---------------------------------------------
GOOD = {"dataset": "voc", "method": "ncut", "backbone": None, "protocol": "diffcut",
        "score_resolution": [128, 128], "num_images": 3, "matching": "hungarian+background",
        "miou": 0.5, "pixel_accuracy": None, "published": []}
ALL_KEYS = ("'dataset', 'method', 'backbone', 'protocol', 'score_resolution', 'num_images', "
            "'matching', 'miou', 'pixel_accuracy'")


@pytest.mark.parametrize("payload, problem", [
    ([], " (expected a JSON object, found a list)"),
    (7, " (expected a JSON object, found a number)"),
    (None, " (expected a JSON object, found null)"),
    ({}, f": missing keys {ALL_KEYS}"),
    ({**GOOD, "miou": "abc"}, ": 'miou' must be a number or null, found a string 'abc'"),
    ({k: v for k, v in GOOD.items() if k != "score_resolution"},
     ": missing key 'score_resolution'"),
    ({**GOOD, "num_images": True, "dataset": 3},
     ": 'dataset' must be a string, found a number 3; 'num_images' must be an integer, found a "
     "boolean True"),
    ({**GOOD, "published": [{"value": 50.1}]},
     ": 'published' must be a list of objects with 'metric' and 'value'"),
    ({**GOOD, "open_vocab": {"miou_per_image": "x"}},
     ": 'open_vocab.miou_per_image' must be a number or null, found a string"),
    ({**GOOD, "failed": 2}, ": 'failed' must be a list, found a number"),
])
def test_compare_names_the_bad_file_and_key(tmp_path, payload, problem):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(payload))
    res = invoke(["compare", path])
    assert_one_error(res, f"error: {path}: not an evaluation result{problem}")
    assert res.stdout == ""
    with pytest.raises(ValueError) as info:
        load_result(tmp_path)
    assert str(info.value) == f"{path}: not an evaluation result{problem}"


def test_compare_reports_every_bad_file_once_and_reads_good_ones(tmp_path):
    paths = {name: tmp_path / f"{name}.json" for name in ("good", "list", "text", "nomiou")}
    paths["good"].write_text(json.dumps(GOOD))
    paths["list"].write_text("[]")
    paths["text"].write_text("not json")
    paths["nomiou"].write_text(json.dumps({k: v for k, v in GOOD.items() if k != "miou"}))
    folder = tmp_path / "empty"
    folder.mkdir()
    res = invoke(["compare", paths["good"], paths["list"], paths["text"], folder,
                  paths["nomiou"]])
    assert res.exit_code == 2 and res.stdout == ""
    assert error_lines(res) == [
        f"error: {paths['list']}: not an evaluation result (expected a JSON object, found a "
        "list)",
        f"error: {paths['text']}: not a JSON results file (JSONDecodeError: Expecting value: "
        "line 1 column 1 (char 0))",
        f"error: no results.json at {folder / 'results.json'}",
        f"error: {paths['nomiou']}: not an evaluation result: missing key 'miou'",
    ]
    res = invoke(["compare", paths["good"]])
    assert res.exit_code == 0, res.output
    assert "| voc | ncut | – | diffcut | 128x128 | 3 | hungarian+background | 50.0 | – |" in \
        res.stdout


# -- 3. a damaged image in the dataset ---------------------------------------------------------
def test_damaged_image_fails_alone_and_resume_retries_it(coco, reference, tmp_path):
    root = Path(shutil.copytree(coco, tmp_path / "coco"))
    bad = root / "images/val2017/000000000002.jpg"
    original = bad.read_bytes()
    bad.write_bytes(original[: len(original) // 2])  # a truncated JPEG
    with pytest.raises(OSError) as info, Image.open(bad) as im:
        im.convert("RGB")
    cause = f"OSError: {info.value}"
    out = tmp_path / "out"
    args = [*base_args(root), "--batch-size", "4", "--out", out]
    summary = ("error: 1 of 5 images could not be read and are not scored; fix them and run "
               "again with --resume")

    res = invoke(args)
    assert res.exit_code == 1, res.output
    assert error_lines(res) == [f"error: image '000000000002' ({bad}): {cause}", summary]
    assert "| coco-stuff-27 | ncut | – | diffcut | 128x128 | 4 (1 failed) |" in res.stdout
    # the images before it in its batch (0, 1) and after it (3, 4) are scored and recorded
    assert sorted(read_records(out / "records.jsonl")) == [0, 1, 3, 4]
    failure = {"i": 2, "id": "000000000002", "path": str(bad), "error": cause}
    result = json.loads((out / "results.json").read_text())
    assert result["failed"] == [failure] and result["num_images"] == 4
    assert result["counts"] == summed([reference[i] for i in (0, 1, 3, 4)])
    md = (out / "results.md").read_text()
    assert "| 4 (1 failed) |" in md
    assert (f"Failed images: 1 could not be read and are not scored (fix them and run again "
            f"with --resume to score them):\n\n- 000000000002 ({bad}): {cause}\n") in md
    logged = read_records(out / "failures.jsonl")
    assert {k: logged[2][k] for k in failure} == failure

    # resume retries it: still damaged, it fails again, nothing else is redone
    res = invoke([*args, "--resume"])
    assert res.exit_code == 1 and error_lines(res)[-1] == summary
    assert len((out / "records.jsonl").read_bytes().splitlines()) == 4
    assert len((out / "failures.jsonl").read_bytes().splitlines()) == 2
    # repaired, it is scored: the numbers are the uninterrupted run's
    bad.write_bytes(original)
    res = invoke([*args, "--resume"])
    assert res.exit_code == 0, res.output
    assert error_lines(res) == []
    result = json.loads((out / "results.json").read_text())
    assert result["failed"] == [] and result["num_images"] == 5
    assert result["counts"] == summed(list(reference.values()))
    assert "failed" not in (out / "results.md").read_text().split("Published")[0]


def test_damaged_label_names_the_label_file(coco, tmp_path):
    root = Path(shutil.copytree(coco, tmp_path / "coco"))
    label = root / "annotations/val2017/000000000000.png"
    label.write_bytes(b"not a png")
    with pytest.raises(SampleError) as info:
        get_dataset("coco-stuff-27", root)[0]
    cause = f"UnidentifiedImageError: cannot identify image file {str(label)!r}"
    assert str(info.value) == f"image '000000000000' ({label}): {cause}"
    result = evaluate(settings(root, limit=2), tmp_path / "out", progress=False)
    assert result["failed"] == [{"i": 0, "id": "000000000000", "path": str(label),
                                 "error": cause}]
    assert result["num_images"] == 1
    assert sorted(read_records(tmp_path / "out" / "records.jsonl")) == [1]


def test_failed_image_of_another_rank_is_listed(coco, tmp_path):
    from test_eval_distributed import _launch

    root = Path(shutil.copytree(coco, tmp_path / "coco"))
    (root / "images/val2017/000000000003.jpg").write_bytes(b"")  # rank 1's image
    spec = dict(dataset="coco-stuff-27", root=str(root), method="ncut", params=dict(FAST),
                protocol="diffcut", input_size=128)
    _launch(spec, tmp_path / "dist")
    result = json.loads((tmp_path / "dist" / "results.json").read_text())
    assert result["failed"] == [{
        "i": 3, "id": "000000000003", "path": str(root / "images/val2017/000000000003.jpg"),
        "error": "UnidentifiedImageError: cannot identify image file "
                 f"{str(root / 'images/val2017/000000000003.jpg')!r}"}]
    assert result["num_images"] == 4
    assert sorted(read_records(tmp_path / "dist" / "failures.rank1.jsonl")) == [3]
    assert not (tmp_path / "dist" / "failures.rank0.jsonl").exists()


# -- 4. records carry the digest of their settings ---------------------------------------------
def test_resume_without_run_json_refuses_records_of_other_settings(coco, tmp_path):
    made = settings(coco, limit=2, params={"grid": 12})
    evaluate(made, tmp_path, progress=False)
    records = read_records(tmp_path / "records.jsonl")
    assert {r["run"] for r in records.values()} == {run_digest(made)}
    (tmp_path / "run.json").unlink()
    now = settings(coco)
    message = (f"{tmp_path} holds records of other settings (2 record(s), e.g. image "
               f"'000000000000' made with settings digest {run_digest(made)}, this run's is "
               f"{run_digest(now)}); choose a new --out")
    with pytest.raises(ValueError) as info:
        evaluate(now, tmp_path, progress=False, resume=True)
    assert str(info.value) == message
    assert not (tmp_path / "run.json").exists()  # a refused run writes nothing
    res = invoke([*base_args(coco), "--resume", "--out", tmp_path])
    assert_one_error(res, f"error: {message}")
    # the records' own settings resume them without run.json
    redone = []
    result = evaluate(settings(coco, params={"grid": 12}), tmp_path, progress=False,
                      resume=True, on_record=lambda i, r: redone.append(i))
    assert redone == [2, 3, 4] and result["num_images"] == 5


def test_records_without_a_digest_need_a_matching_run_json(coco, reference, tmp_path):
    made = settings(coco, limit=2)
    evaluate(made, tmp_path, progress=False)
    identity = (tmp_path / "run.json").read_text()
    old = b"".join(record_line({k: v for k, v in rec.items() if k != "run"})
                   for rec in read_records(tmp_path / "records.jsonl").values())
    (tmp_path / "records.jsonl").write_bytes(old)  # as written before records had a digest
    (tmp_path / "run.json").unlink()
    message = (f"{tmp_path} holds 2 record(s) without a settings digest (made before records "
               "carried one) and no run.json with this run's settings to vouch for them: they "
               "may be records of other settings; choose a new --out")
    with pytest.raises(ValueError) as info:
        evaluate(settings(coco), tmp_path, progress=False, resume=True)
    assert str(info.value) == message
    assert not (tmp_path / "run.json").exists()
    # run.json of other settings: refused by it
    (tmp_path / "run.json").write_text(json.dumps(settings(coco, params={"grid": 12}).identity()))
    with pytest.raises(ValueError, match=r"other settings \(params\)"):
        evaluate(settings(coco), tmp_path, progress=False, resume=True)
    # run.json of these settings vouches for them
    (tmp_path / "run.json").write_text(identity)
    redone = []
    result = evaluate(settings(coco), tmp_path, progress=False, resume=True,
                      on_record=lambda i, r: redone.append(i))
    assert redone == [2, 3, 4]
    assert result["counts"] == summed(list(reference.values()))


def test_a_record_without_index_or_id_is_damaged(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_bytes(record_line({"i": 0, "id": "a"}) + record_line({"id": "b"}))
    assert list(read_records(path)) == [0]  # a damaged last line is dropped
    path.write_bytes(record_line({"i": "1", "id": "b"}) + record_line({"i": 0, "id": "a"}))
    with pytest.raises(ValueError, match="line 1"):
        read_records(path)


# -- 5. output folders --------------------------------------------------------------------------
def test_output_paths_that_cannot_be_folders(coco, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [
        (afile, f"output folder {afile} is a file, not a folder"),
        (afile / "sub", f"output folder {afile / 'sub'} cannot be created: {afile} is a file, "
                        "not a folder"),
    ]
    if Path("/proc/self").is_dir():
        cases += [(Path("/proc/diffuseg-out"), "output folder /proc/diffuseg-out cannot be "
                                               "created: No such file or directory"),
                  (Path("/proc"), "output folder /proc is not writable: No such file or "
                                  "directory")]
    for out, message in cases:
        res = invoke([*base_args(coco), "--limit", "1", "--out", out])
        assert_one_error(res, f"error: {message}")
        with pytest.raises(ValueError) as info:
            evaluate(settings(coco, limit=1), out, progress=False)
        assert str(info.value) == message
    res = invoke([*base_args(coco), "--limit", "1", "--out", tmp_path / "out", "--encodings",
                  afile])
    assert_one_error(res, f"error: encodings folder {afile} is a file, not a folder")
    with pytest.raises(ValueError) as info:
        ensure_folder(afile / "cache", "encodings folder")
    assert str(info.value) == (f"encodings folder {afile / 'cache'} cannot be created: {afile} "
                               "is a file, not a folder")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_output_folder_without_permission(coco, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        res = invoke([*base_args(coco), "--limit", "1", "--out", locked])
        assert_one_error(res, f"error: output folder {locked} is not writable: Permission denied")
        res = invoke([*base_args(coco), "--limit", "1", "--out", locked / "sub"])
        assert_one_error(res, f"error: output folder {locked / 'sub'} cannot be created: "
                              "Permission denied")
    finally:
        locked.chmod(0o755)


# -- 6. degenerate option values -----------------------------------------------------------------
@pytest.mark.parametrize("options, message", [
    (["--score-size", "0"], "score_size must be an integer >= 1 or None, got 0"),
    (["--input-size", "0"], "input_size must be an integer >= 1 or None, got 0"),
    (["--input-size", "-3"], "input_size must be an integer >= 1 or None, got -3"),
    (["--batch-size", "-5"], "batch_size must be an integer >= 1, got -5"),
    (["--batch-size", "0"], "batch_size must be an integer >= 1, got 0"),
    (["--limit", "-1"], "limit must be an integer >= 1 or None, got -1"),
    (["--limit", "0"], "limit must be an integer >= 1 or None, got 0"),
    (["--matching", "dataset", "--num-clusters", "0"],
     "num_clusters must be an integer >= 1 or None, got 0"),
    (["--matching", "dataset"], "dataset-level matching needs num_clusters (an integer >= 1: a "
                                "fixed number of clusters whose ids mean the same in every "
                                "image)"),
    (["--matching", "best"], "matching must be 'hungarian' or 'dataset', got 'best'"),
])
def test_degenerate_option_values(coco, tmp_path, options, message):
    res = invoke([*base_args(coco), "--out", tmp_path / "out", *options])
    assert_one_error(res, f"error: {message}")
    assert not (tmp_path / "out").exists()  # refused before anything is written


@pytest.mark.parametrize("field, value, message", [
    ("score_size", 0, "score_size must be an integer >= 1 or None, got 0"),
    ("input_size", 0, "input_size must be an integer >= 1 or None, got 0"),
    ("input_size", 2.5, "input_size must be an integer >= 1 or None, got 2.5"),
    ("batch_size", -5, "batch_size must be an integer >= 1, got -5"),
    ("batch_size", True, "batch_size must be an integer >= 1, got True"),
    ("limit", -1, "limit must be an integer >= 1 or None, got -1"),
    ("num_clusters", 0, "num_clusters must be an integer >= 1 or None, got 0"),
])
def test_settings_refuse_degenerate_values(coco, tmp_path, field, value, message):
    with pytest.raises(ValueError) as info:
        settings(coco, **{field: value})
    assert str(info.value) == message
    spec = settings(coco)  # changed after it was made: evaluate checks again
    setattr(spec, field, value)
    with pytest.raises(ValueError) as info:
        evaluate(spec, tmp_path / "out", progress=False)
    assert str(info.value) == message
    assert not (tmp_path / "out").exists()


def test_protocol_sizes_are_not_replaced_by_the_default():
    assert get_protocol("diffcut", 256, 64) == Protocol("diffcut", 256, 64)
    assert get_protocol("diffcut") == Protocol("diffcut", 1024, 128)
    assert get_protocol("diffseg", None, 128) == Protocol("diffseg", 512, 128)
    for kw, name in (({"input_size": 0}, "input_size"), ({"score_size": 0}, "score_size")):
        with pytest.raises(ValueError, match=f"^{name} must be an integer >= 1 or None, got 0$"):
            get_protocol("diffcut", **kw)


def test_results_markdown_shows_failed_images():
    text = results_markdown([{**GOOD, "num_images": 2, "failed": [
        {"i": 1, "id": "x", "path": "/d/x.jpg", "error": "OSError: broken"}]}])
    assert "| 2 (1 failed) |" in text
