"""Sharding: two CPU processes (gloo, torchrun's environment variables set by hand) give exactly
the single-process numbers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from eval_fakes import band_dataset

from diffuseg.eval.runner import EvalSettings, evaluate, read_records

WORKER = """
import json, sys
from diffuseg.eval.runner import EvalSettings, evaluate
settings = EvalSettings(**json.loads(sys.argv[1]))
result = evaluate(settings, sys.argv[2], progress=False, resume=sys.argv[3] == "1",
                  save_predictions=True)
print("COUNTS", json.dumps(result["counts"]))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(settings: dict, out, world: int = 2, resume: bool = False) -> list[str]:
    port = _free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, json.dumps(settings), str(out), "1" if resume else "0"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr[-2000:]
        outputs.append(stdout)
    return outputs


def test_two_gloo_processes_equal_one(tmp_path):
    root = band_dataset(tmp_path / "coco", n=5)
    spec = dict(dataset="coco-stuff-27", root=str(root), method="ncut", params={"grid": 16},
                protocol="diffcut", input_size=128)
    single = evaluate(EvalSettings(**spec), tmp_path / "single", progress=False,
                      save_predictions=True)

    outputs = _launch(spec, tmp_path / "dist")
    for text in outputs:  # every rank holds the all-reduced counts
        counts = json.loads(text.split("COUNTS", 1)[1])
        assert counts == single["counts"]
    result = json.loads((tmp_path / "dist" / "results.json").read_text())
    assert result["counts"] == single["counts"] and result["miou"] == single["miou"]
    assert result["world_size"] == 2 and result["num_images"] == 5
    # each rank took indices[rank::2], no padding, no image twice
    assert sorted(read_records(tmp_path / "dist" / "records.rank0.jsonl")) == [0, 2, 4]
    assert sorted(read_records(tmp_path / "dist" / "records.rank1.jsonl")) == [1, 3]
    # the saved predictions are the single process's, file for file
    for kind in ("raw", "scored"):
        one = sorted((tmp_path / "single" / "predictions" / kind).iterdir())
        two = sorted((tmp_path / "dist" / "predictions" / kind).iterdir())
        assert [p.name for p in one] == [p.name for p in two] and len(one) == 5
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two, strict=True))

    # a single-process resume of the sharded records recomputes nothing and agrees exactly
    again = evaluate(EvalSettings(**spec), tmp_path / "dist", progress=False, resume=True,
                     on_record=lambda i, r: (_ for _ in ()).throw(AssertionError(i)))
    assert again["counts"] == single["counts"]
