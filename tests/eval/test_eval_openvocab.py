"""Open-vocabulary evaluation (DiffCut's second benchmark) through the harness: numbers known by
hand from planted images and a fake CLIP, resume, sharding, the CLI, the published numbers."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from eval_fakes import (
    OPEN_VOCAB_VOC,
    FakeClip,
    flat_bands,
    make_coco,
    open_vocab_voc,
)
from typer.testing import CliRunner

from diffuseg.eval.cli import eval_app
from diffuseg.eval.openvocab import (
    DIFFCUT_VOCABULARY,
    class_counts,
    counts_jaccard,
    image_jaccard,
)
from diffuseg.eval.published import lookup
from diffuseg.eval.runner import EvalSettings, evaluate, read_records, results_markdown
from diffuseg.labels.templates import VILD_TEMPLATES, split_synonyms

HERE = Path(__file__).parent

# By hand, from OPEN_VOCAB_VOC and FakeClip's words (band widths in columns, all rows alike):
# image 1 all right (1.0); image 2: person 1, background 32/64, cat 0, dog 0, cow 0 -> 1.5 / 5;
# image 3 all right (1.0).
PER_IMAGE = [1.0, 0.3, 1.0]
# Summed over the images: background 80 / 112, cat 112 / 144, dog 96 / 128, person 1, cow 0.
CLASS_IOU = {"background": 80 / 112, "cat": 112 / 144, "dog": 96 / 128, "person": 1.0, "cow": 0.0}


def settings(root, **kw) -> EvalSettings:
    base = dict(dataset="voc", root=str(root), method="ncut", params={"grid": 16},
                protocol="diffcut", input_size=128, open_vocab=True)
    return EvalSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return open_vocab_voc(tmp_path_factory.mktemp("ovvoc"))


@pytest.fixture(scope="module")
def reference(voc, tmp_path_factory):
    """An uninterrupted open-vocabulary run on the planted VOC images."""
    out = tmp_path_factory.mktemp("ovref")
    fake = FakeClip()
    return evaluate(settings(voc), out, progress=False, clip=fake), out, fake


class Killed(Exception):
    pass


class NoClip:
    """A CLIP that must not be used."""

    name = "unused"

    def dense(self, *args):
        raise AssertionError("CLIP used")

    head = encode_text = dense


def test_metric_helpers_agree_with_image_jaccard():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (20, 20))
    pred = rng.integers(0, 6, (20, 20))
    gt[0, :4] = 255
    tp, fp, fn = class_counts(gt, pred, 6)
    assert counts_jaccard(tp, fp, fn) == pytest.approx(image_jaccard(gt, pred, 6))
    assert tp.sum() + fn.sum() == 396 and tp.sum() + fp.sum() == 396
    assert math.isnan(counts_jaccard(np.zeros(3), np.zeros(3), np.zeros(3)))


def test_diffcut_vocabulary_is_fc_clips_synonym_lists():
    voc, ctx, coco = (DIFFCUT_VOCABULARY[k] for k in ("voc", "context-59", "coco-object"))
    assert (len(voc), len(ctx), len(coco)) == (21, 60, 81)
    assert split_synonyms(voc[0])[:3] == ["background", "crops", "bush"]
    assert len(split_synonyms(voc[0])) == 72 and ctx[0] == coco[0] == "background"
    assert split_synonyms(coco[50]) == ["orange fruit"] and coco[80] == "toothbrush, toothbrushes"
    assert ctx[59] == "wood piece" and split_synonyms(voc[20]) == ["tvmonitor", "monitor", "tv"]


def test_planted_images_give_the_hand_computed_numbers(voc, reference, tmp_path):
    result, out, fake = reference
    ov = result["open_vocab"]
    assert ov["miou_per_image"] == pytest.approx(np.mean(PER_IMAGE), abs=1e-12)
    assert ov["miou_dataset"] == pytest.approx(np.mean(list(CLASS_IOU.values())), abs=1e-12)
    seen = {k: v for k, v in ov["per_class_iou"].items() if v is not None}
    assert seen == pytest.approx(CLASS_IOU, abs=1e-12)
    assert ov["num_images_scored"] == 3 and ov["num_classes"] == 21
    assert ov["clip"] == "fake-clip" and ov["clip_input_size"] == [128, 128]
    assert ov["vocabulary"] == "diffcut" and ov["published"] == []
    # per image, durably recorded: the Jaccard and each segment's class
    recs = read_records(out / "records.jsonl")
    assert [recs[i]["ov"]["jaccard"] for i in range(3)] == pytest.approx(PER_IMAGE, abs=1e-12)
    for i, (_, _, values) in enumerate(OPEN_VOCAB_VOC.values()):
        assert set(recs[i]["ov"]["classes"]) <= set(values) | {10}  # 10: cow, the planted error
    assert 10 in recs[1]["ov"]["classes"]
    # CLIP ran once per image at the input size; the text classifier was built once
    prompts = sum(len(split_synonyms(n)) for n in DIFFCUT_VOCABULARY["voc"]) * len(VILD_TEMPLATES)
    assert fake.sizes == [128, 128, 128] and fake.text_calls == math.ceil(prompts / 128)
    assert fake.normalized == [False] * 3 and ov["clip_normalize"] is False  # DiffCut's input
    # the unsupervised numbers of the same run are those of a run without open vocabulary
    plain = evaluate(settings(voc, open_vocab=False), tmp_path / "plain", progress=False)
    assert result["counts"] == plain["counts"] and "open_vocab" not in plain
    saved = json.loads((out / "results.json").read_text())
    assert saved["open_vocab"]["miou_per_image"] == ov["miou_per_image"]
    md = (out / "results.md").read_text()
    assert "| open-vocab mIoU | open-vocab mIoU (dataset) |" in md and "| 76.7 | 64.8 | – |" in md
    assert "CLIP fake-clip at 128x128" in md


def test_synonyms_decide_with_the_diffcut_vocabulary(voc, tmp_path):
    # the dog band looks like "puppy": a synonym of dog in DiffCut's vocabulary, unknown to the
    # bare names, where every class scores 0 and the tie goes to class 0, background
    seen = ("background", "cat", "puppy", "person", "background", "cow")
    ours = evaluate(settings(voc, limit=1), tmp_path / "a", progress=False,
                    clip=FakeClip(seen))["open_vocab"]
    names = evaluate(settings(voc, limit=1, vocabulary="names"), tmp_path / "b",
                     progress=False, clip=FakeClip(seen))["open_vocab"]
    assert ours["miou_per_image"] == 1.0
    # background 48 / 80, cat 1, dog 0
    assert names["miou_per_image"] == pytest.approx((48 / 80 + 1 + 0) / 3, abs=1e-12)
    with pytest.raises(ValueError, match="vocabulary"):
        evaluate(settings(voc, vocabulary="nope"), tmp_path / "c", progress=False,
                 clip=FakeClip())


def test_coco_object_stuff_and_unlabeled_are_background_and_clip_sees_2x(tmp_path):
    # fine ids: 156 sky-other (stuff), 16 cat (COCO-Object class 16), 255 unlabeled; the
    # unlabeled band looks like the cat, so it counts against cat instead of being ignored
    image, label = flat_bands(128, [0, 1, 1], [32, 64, 32], [156, 16, 255])
    root = make_coco(tmp_path / "coco", {"000000000001": (image, label)})
    fake = FakeClip()
    result = evaluate(settings(root, dataset="coco-object"), tmp_path / "out", progress=False,
                      clip=fake)
    ov = result["open_vocab"]
    # background: 32 / 64, cat: 64 / 96
    assert ov["miou_per_image"] == pytest.approx((32 / 64 + 64 / 96) / 2, abs=1e-12)
    assert ov["per_class_iou"]["cat"] == pytest.approx(64 / 96, abs=1e-12)
    assert ov["num_classes"] == 81 and fake.sizes == [256] and ov["clip_input_size"] == [256, 256]


def test_resume_continues_without_recomputing(voc, reference, tmp_path, monkeypatch):
    ref, _, _ = reference
    seen = []

    def kill_after_one(i, rec):
        seen.append(i)
        raise Killed

    with pytest.raises(Killed):
        evaluate(settings(voc), tmp_path, progress=False, clip=FakeClip(),
                 on_record=kill_after_one)
    fake = FakeClip()
    redone = []
    result = evaluate(settings(voc), tmp_path, progress=False, resume=True, clip=fake,
                      on_record=lambda i, r: redone.append(i))
    assert seen == [0] and redone == [1, 2] and fake.dense_calls == 2
    assert result["open_vocab"] == ref["open_vocab"] and result["counts"] == ref["counts"]
    # a finished run resumes without using CLIP: an injected one is not touched, and no weights
    # are loaded
    done = evaluate(settings(voc), tmp_path, progress=False, resume=True, clip=NoClip())
    assert done["open_vocab"]["miou_per_image"] == ref["open_vocab"]["miou_per_image"]
    monkeypatch.setattr("diffuseg.labels.clip_model.load_clip", NoClip().dense)
    done = evaluate(settings(voc), tmp_path, progress=False, resume=True)
    assert done["open_vocab"]["miou_dataset"] == ref["open_vocab"]["miou_dataset"]
    assert done["open_vocab"]["clip"] == "convnext_large_d_320:laion2b_s29b_b131k_ft_soup"
    # records of an open-vocabulary run are not mixed with other settings
    with pytest.raises(ValueError, match="other settings"):
        evaluate(settings(voc, open_vocab=False), tmp_path, progress=False, resume=True)
    with pytest.raises(ValueError, match="other settings"):
        evaluate(settings(voc, vocabulary="names"), tmp_path, progress=False, resume=True,
                 clip=FakeClip())


def test_open_vocab_needs_a_benchmark_dataset(voc, tmp_path):
    with pytest.raises(ValueError, match="voc, context-59, coco-object"):
        evaluate(settings(voc, dataset="coco-stuff-27"), tmp_path / "a", progress=False,
                 clip=FakeClip())
    with pytest.raises(ValueError, match="open_vocab"):
        evaluate(settings(voc, open_vocab=False, clip="x"), tmp_path / "b", progress=False)
    assert not (tmp_path / "a").exists()  # refused before anything was written


WORKER = """
import json, sys
sys.path.insert(0, sys.argv[3])
from eval_fakes import FakeClip
from diffuseg.eval.runner import EvalSettings, evaluate
settings = EvalSettings(**json.loads(sys.argv[1]))
result = evaluate(settings, sys.argv[2], progress=False, clip=FakeClip())
print("OV", json.dumps(result["open_vocab"]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_equal_one(voc, reference, tmp_path):
    ref, _, _ = reference
    spec = dict(dataset="voc", root=str(voc), method="ncut", params={"grid": 16},
                protocol="diffcut", input_size=128, open_vocab=True)
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps(spec), str(tmp_path), str(HERE)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr[-2000:]
        got = json.loads(stdout.split("OV", 1)[1])
        assert got == json.loads(json.dumps(ref["open_vocab"]))  # exactly, on every rank
    assert sorted(read_records(tmp_path / "records.rank0.jsonl")) == [0, 2]
    assert sorted(read_records(tmp_path / "records.rank1.jsonl")) == [1]


def test_cli_open_vocab_end_to_end(voc, reference, tmp_path, monkeypatch):
    ref, _, _ = reference
    asked = []

    def fake_load_clip(name="default", device=None, dtype=None):
        asked.append((name, device, dtype))
        return FakeClip()

    monkeypatch.setattr("diffuseg.labels.clip_model.load_clip", fake_load_clip)
    runner = CliRunner()
    args = ["--dataset", "voc", "--root", str(voc), "--method", "ncut", "--param", "grid=16",
            "--input-size", "128", "--no-progress", "--open-vocab"]
    res = runner.invoke(eval_app, [*args, "--clip", "some/clip", "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert asked == [("some/clip", None, None)]
    assert "open-vocab mIoU" in res.output and "| 76.7 | 64.8 | – |" in res.output
    saved = json.loads((tmp_path / "a" / "results.json").read_text())
    assert saved["open_vocab"]["miou_per_image"] == ref["open_vocab"]["miou_per_image"]
    assert saved["open_vocab"]["clip"] == "some/clip"  # the model asked for
    # without --clip the default model is asked for
    res = runner.invoke(eval_app, [*args, "--limit", "1", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    assert asked[-1] == ("default", None, None)


def test_cli_open_vocab_errors(voc, tmp_path):
    runner = CliRunner()
    base = ["--root", str(voc), "--method", "ncut", "--no-progress"]
    res = runner.invoke(eval_app, ["--dataset", "coco-stuff-27", *base, "--open-vocab",
                                   "--out", str(tmp_path / "a")])
    assert res.exit_code == 2 and res.output.count("\n") == 1
    assert "voc, context-59, coco-object" in res.output
    empty = tmp_path / "empty_clip"
    empty.mkdir()
    res = runner.invoke(eval_app, ["--dataset", "voc", *base, "--open-vocab", "--clip",
                                   str(empty), "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and res.output.count("\n") == 1
    assert "open_clip_model.safetensors" in res.output
    res = runner.invoke(eval_app, ["--dataset", "voc", *base, "--clip", str(empty),
                                   "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "--open-vocab" in res.output


def test_published_open_vocab_numbers_beside_ours():
    for dataset, value in (("voc", 63.0), ("context-59", 24.6), ("coco-object", 36.0)):
        (p,) = lookup("diffcut", dataset, "ssd1b", refine=True, metric="miou_open_vocab")
        assert p.value == value and p.protocol == "diffcut" and "DiffCut" in p.source
    assert lookup("diffcut", "voc", "ssd-1b", refine=False, metric="miou_open_vocab") == []
    pubs = [q.to_dict() for q in lookup("diffcut", "voc", "ssd-1b", refine=True)]
    row = {"dataset": "voc", "method": "diffcut", "backbone": "ssd-1b", "protocol": "diffcut",
           "score_resolution": [128, 128], "num_images": 1449,
           "matching": "hungarian+background", "miou": 0.651, "pixel_accuracy": 0.9,
           "published": [p for p in pubs if p["metric"] != "miou_open_vocab"],
           "open_vocab": {"miou_per_image": 0.6234, "miou_dataset": 0.55,
                          "published": [p for p in pubs if p["metric"] == "miou_open_vocab"]}}
    plain = {**row, "open_vocab": None, "dataset": "coco-stuff-27"}
    md = results_markdown([row, plain])
    assert "| 65.1 | 90.0 | 65.2 | – | 62.3 | 55.0 | 63.0 |" in md
    assert "| 65.1 | 90.0 | 65.2 | – | – | – | – |" in md


def test_tiny_clip_through_the_real_loader(voc, tmp_path):
    from tiny_clip import make_tiny_clip

    folder = make_tiny_clip(tmp_path / "clip")
    res = CliRunner().invoke(eval_app, [
        "--dataset", "voc", "--root", str(voc), "--method", "ncut", "--param", "grid=16",
        "--input-size", "128", "--limit", "2", "--no-progress", "--open-vocab", "--clip",
        str(folder), "--device", "cpu", "--dtype", "float32", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    ov = json.loads((tmp_path / "out" / "results.json").read_text())["open_vocab"]
    assert ov["clip"] == str(folder) and ov["num_images_scored"] == 2
    assert 0.0 <= ov["miou_per_image"] <= 1.0 and 0.0 <= ov["miou_dataset"] <= 1.0
    recs = read_records(tmp_path / "out" / "records.jsonl")
    for rec in recs.values():  # every record's Jaccard is the one of its own counts
        assert rec["ov"]["jaccard"] == pytest.approx(
            counts_jaccard(*(np.array(rec["ov"][k]) for k in ("tp", "fp", "fn"))))


def test_clip_normalize_reaches_clip_and_is_part_of_the_run(voc, reference, tmp_path):
    result, out, _ = reference
    fake = FakeClip()
    normed = evaluate(settings(voc, clip_normalize=True), tmp_path / "n", progress=False,
                      clip=fake)
    assert fake.normalized == [True] * 3 and normed["open_vocab"]["clip_normalize"] is True
    # the fake ignores it, so the numbers agree; the records of one never resume the other
    assert normed["open_vocab"]["miou_per_image"] == result["open_vocab"]["miou_per_image"]
    with pytest.raises(ValueError):
        evaluate(settings(voc, clip_normalize=True), out, resume=True, progress=False,
                 clip=FakeClip())
