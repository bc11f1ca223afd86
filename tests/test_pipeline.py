"""Segmenting collections: input order, bounded work in flight, resume after a real SIGKILL,
complete output sets, sharding by RANK / WORLD_SIZE (torchrun) equal to one process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from diffuseg import pipeline
from diffuseg.cli import app

runner = CliRunner()


def photos(folder: Path, n: int, size: int = 96) -> Path:
    """``n`` different crops of the bundled example photo, ``size`` px square. Real photos, not
    flat colour blocks: flat blocks make nearly disconnected graphs whose splits rounding noise
    decides, and then not even two runs of one process agree to the bit."""
    import diffuseg

    folder.mkdir(parents=True, exist_ok=True)
    with Image.open(Path(diffuseg.__file__).parent / "assets" / "example.jpg") as im:
        photo = np.asarray(im.convert("RGB"))
    rng = np.random.default_rng(0)
    for k in range(n):
        top = int(rng.integers(0, photo.shape[0] - 2 * size))
        left = int(rng.integers(0, photo.shape[1] - 2 * size))
        crop = photo[top : top + 2 * size, left : left + 2 * size]
        Image.fromarray(crop).resize((size, size)).save(folder / f"img{k:02d}.png")
    return folder


def tree(folder: Path) -> dict[str, bytes]:
    """Every user-facing file of an output folder (the per-process journal aside)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# --- the pipeline itself -------------------------------------------------------------------------


def test_outcomes_come_in_input_order_with_bounded_work_in_flight():
    items = pipeline.plan([Path(f"x{k}.png") for k in range(40)])
    rng = np.random.default_rng(1)
    delays = rng.uniform(0, 0.01, size=40)
    live, peak, lock = [0], [0], threading.Lock()

    def load(item):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        return item.index

    def process(item, payload):
        time.sleep(delays[item.index])
        with lock:
            live[0] -= 1
        return pipeline.Outcome(item, "done", segments=payload)

    out = list(pipeline.run(items, load=load, encode=lambda p: p, process=process,
                            batch_size=4, workers=3))
    assert [o.item.index for o in out] == list(range(40))
    assert [o.segments for o in out] == list(range(40))
    # loaded but not yet processed: two batches ahead plus what the workers hold
    assert peak[0] <= 4 * 2 + 2 * 3 + 4


def test_a_bad_item_fails_alone_and_fatal_errors_abort():
    items = pipeline.plan([Path(f"x{k}.png") for k in range(6)])

    def load(item):
        if item.index == 1:
            raise ValueError("unreadable")
        return item.index

    def encode(payloads):
        if 3 in payloads:
            raise RuntimeError("bad batch")
        return payloads

    def process(item, payload):
        return pipeline.Outcome(item, "done", segments=payload)

    out = list(pipeline.run(items, load=load, encode=encode, process=process, batch_size=3))
    assert [o.status for o in out] == ["done", "failed", "done", "failed", "done", "done"]
    assert out[1].error == "unreadable" and out[3].error == "bad batch"

    class Fatal(Exception):
        pass

    def fatal_process(item, payload):
        raise Fatal("no weights")

    with pytest.raises(Fatal):
        list(pipeline.run(items, load=lambda it: 0, encode=None, process=fatal_process,
                          fatal=(Fatal,)))


def test_stems_are_planned_before_sharding():
    paths = [Path("a/x.png"), Path("b/x.png"), Path("c/y.jpg"), Path("enc/x.safetensors")]
    stems = [it.stem for it in pipeline.plan(paths)]
    assert stems == ["x", "x-2", "y", "x-3"]
    items = pipeline.plan(paths)
    assert pipeline.shard(items, 0, 2) + pipeline.shard(items, 1, 2) != items  # interleaved
    assert sorted(pipeline.shard(items, 0, 2) + pipeline.shard(items, 1, 2),
                  key=lambda it: it.index) == items


# --- the command ------------------------------------------------------------------------------


def test_workers_and_batches_give_the_same_files(tmp_path):
    inputs = photos(tmp_path / "in", 6)
    base = ["segment", str(inputs), "--method", "ncut", "-p", "grid=24"]
    one = runner.invoke(app, [*base, "--out", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    two = runner.invoke(app, [*base, "--out", str(tmp_path / "two"), "--workers", "2",
                              "--batch-size", "3"])
    assert two.exit_code == 0, two.output
    assert tree(tmp_path / "one") == tree(tmp_path / "two")
    # stderr is not a terminal here: one line per input instead of a progress bar
    lines = [ln for ln in two.stderr.splitlines() if "segments," in ln]
    assert len(lines) == 6 and lines[0].startswith(str(inputs / "img00.png"))
    assert "segmented 6/6 input(s)" in two.stderr


def test_an_output_folder_in_use_needs_resume_or_overwrite(tmp_path):
    inputs = photos(tmp_path / "in", 2)
    args = ["segment", str(inputs), "--method", "ncut", "-p", "grid=16", "--out",
            str(tmp_path / "out")]
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--resume" in again.stderr and "--overwrite" in again.stderr
    resumed = runner.invoke(app, [*args, "--resume"])
    assert resumed.exit_code == 0 and "2 already done" in resumed.stderr
    redone = runner.invoke(app, [*args, "--overwrite"])
    assert redone.exit_code == 0 and "segmented 2/2" in redone.stderr
    assert runner.invoke(app, [*args, "--resume", "--overwrite"]).exit_code == 2


def _cli(*args: str, env: dict | None = None) -> list[str]:
    return [sys.executable, "-m", "diffuseg.cli", *args]


def test_resume_after_a_sigkill_redoes_only_what_is_missing(tmp_path):
    inputs = photos(tmp_path / "in", 16, size=120)
    out = tmp_path / "out"
    args = ["segment", str(inputs), "--method", "ncut", "-p", "grid=32", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(_cli(*args), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    journal = out / ".diffuseg" / "journal.rank0.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if journal.is_file() and len(journal.read_text().splitlines()) >= 3:
            break
        if proc.poll() is not None:
            pytest.fail(f"finished before the kill: {proc.stderr.read().decode()[-500:]}")
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(journal.read_text().splitlines())
    assert 3 <= finished < 16
    result = subprocess.run(_cli(*args, "--resume"), env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = result.stderr.strip().splitlines()[-1]
    done_now = int(summary.split("segmented ")[1].split("/")[0])
    skipped = int(summary.split(": ")[1].split(" already done")[0])
    assert skipped >= finished - 1 and done_now + skipped == 16  # a line cut by the kill: redone
    redone = [ln for ln in result.stderr.splitlines() if "segments," in ln]
    assert len(redone) == done_now
    # complete sets only, no temp files, a manifest of all sixteen
    names = sorted(p.name for p in out.iterdir())
    stems = [f"img{k:02d}" for k in range(16)]
    assert names == sorted([f"{s}.{kind}" for s in stems for kind in
                            ("labels.png", "overlay.png", "json")] + ["manifest.json", ".diffuseg"])
    manifest = json.loads((out / "manifest.json").read_text())
    assert [o["stem"] for o in manifest["outputs"]] == stems and manifest["failed"] == []


def test_a_partial_output_set_is_removed_and_redone(tmp_path):
    inputs = photos(tmp_path / "in", 3)
    out = tmp_path / "out"
    args = ["segment", str(inputs), "--method", "ncut", "-p", "grid=16", "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    reference = tree(out)
    # what a kill mid-set leaves: img01's JSON gone, its journal line never written, a temp file
    (out / "img01.json").unlink()
    lines = (out / ".diffuseg" / "journal.rank0.jsonl").read_text().splitlines()
    kept = [ln for ln in lines if '"img01"' not in ln]
    (out / ".diffuseg" / "journal.rank0.jsonl").write_text("\n".join(kept) + "\n")
    (out / ".img01.labels.png.abc123.tmp.png").write_bytes(b"")
    result = runner.invoke(app, [*args, "--resume"])
    assert result.exit_code == 0 and "2 already done" in result.stderr
    assert tree(out) == reference


def test_torchrun_shards_give_the_files_of_one_process(tmp_path):
    inputs = photos(tmp_path / "in", 7)
    base = ["segment", str(inputs), "--method", "ncut", "-p", "grid=24"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run(_cli(*base, "--out", str(tmp_path / "single")), env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
              "--master_port", str(_free_port()), "-m", "diffuseg.cli", *base,
              "--out", str(tmp_path / "dist")]
    dist = subprocess.run(launch, env=env, capture_output=True, text=True, timeout=300)
    assert dist.returncode == 0, dist.stderr[-3000:]
    assert tree(tmp_path / "dist") == tree(tmp_path / "single")
    journals = sorted(p.name for p in (tmp_path / "dist" / ".diffuseg").glob("*.jsonl"))
    assert journals == ["journal.rank0.jsonl", "journal.rank1.jsonl"]
    # one shard alone, as when rerunning a failed one: exactly its half, no collective needed
    alone = subprocess.run(_cli(*base, "--out", str(tmp_path / "half")),
                           env={**env, "RANK": "1", "WORLD_SIZE": "2"}, capture_output=True,
                           text=True, timeout=300)
    assert alone.returncode == 0, alone.stderr[-2000:]
    half = json.loads((tmp_path / "half" / "manifest.json").read_text())
    assert [o["index"] for o in half["outputs"]] == [1, 3, 5]
    assert "(process 1 of 2)" in alone.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_temp_files_of_names_with_glob_characters_are_removed(tmp_path):
    (item,) = pipeline.plan([Path("in/a[1]*.png")])
    leftover = tmp_path / f".{item.stem}.labels.png.abc123.tmp.png"
    leftover.write_bytes(b"")
    other = tmp_path / ".a1x.labels.png.abc123.tmp.png"  # another input's: not ours to remove
    other.write_bytes(b"")
    pipeline.prepare_folder(tmp_path, [item], lambda it: [f"{it.stem}.labels.png"],
                            resume=False, overwrite=False)
    assert not leftover.exists() and other.exists()
