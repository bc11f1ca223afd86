"""Shared by the benchmark scripts: one-thread set-up and a median timer.

Import it before numpy or torch: it pins BLAS and OpenMP to one thread (unless the environment
says otherwise), because on a shared 2-core machine thread contention swamps the timings of both
sides of a ratio (two 2-thread runs of bench_dwc.py measured 26.8x and 9.3x for the same cut).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# the planted-partition helpers of the test suite
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls of ``fn`` (seconds) and its last result."""
    times, out = [], None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out
