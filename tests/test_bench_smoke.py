"""The throughput and end-to-end benchmarks run (at tiny sizes) from a clean checkout: their
figures are in the README, so they must keep working."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def run(script: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=BENCH, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_throughput_bench_at_tiny_size_on_the_cpu():
    out = run("bench_throughput.py", "--device", "cpu", "--size", "tiny", "--images", "4",
              "--batch-size", "2", "--collection", "4")
    for stage in ("encode", "segment", "end to end", "collection"):
        lines = [ln for ln in out.splitlines() if ln.strip().startswith(stage)]
        assert lines and all("images/s" in ln or " vs 1: " in ln for ln in lines), out
    assert "backbone idle" in out and "2 workers vs 1" in out


def test_end_to_end_bench_quick():
    out = run("bench_end_to_end.py", "--quick")
    assert "speed-up, official procedure / ours" in out and "ARI official vs ours" in out
