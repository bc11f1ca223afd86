"""Recursive normalized cut, fast vs reference, on DiffCut-sized inputs.

32x32 tokens x 1280 channels (SSD-1B's feature layer at 1024 input), planted regions plus noise,
alpha 10, tau 0.5. Both modes run in this process on the same affinity; prints the ratio.

    python bench/bench_ncut.py [--quick] [--repeats N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from diffuseg.graph.affinity import cosine_affinity  # noqa: E402
from diffuseg.graph.ncut import recursive_ncut  # noqa: E402

from planted import adjusted_rand_index, planted_features, planted_labels  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16x16 tokens, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--regions", type=int, default=8)
    parser.add_argument("--noise", type=float, default=0.02)
    args = parser.parse_args()
    side, repeats = (16, 1) if args.quick else (32, args.repeats)

    labels = planted_labels(side, side, args.regions, seed=0)
    features = planted_features(labels, noise=args.noise, dim=1280)
    t_aff, weights = timed(lambda: cosine_affinity(features, alpha=10), repeats)
    recursive_ncut(weights, 0.5)  # warm-up (scipy import, allocator)
    t_fast, fast = timed(lambda: recursive_ncut(weights, 0.5, mode="fast"), repeats)
    t_ref, ref = timed(lambda: recursive_ncut(weights, 0.5, mode="reference"), repeats)

    print(f"tokens {side}x{side}, channels 1280, regions {args.regions}, noise {args.noise}, "
          f"threads {torch.get_num_threads()}")
    print(f"affinity            {t_aff * 1e3:9.1f} ms")
    print(f"cut fast            {t_fast * 1e3:9.1f} ms  segments {fast.num_segments:4d}  "
          f"ARI {adjusted_rand_index(labels, fast.labels):.4f}")
    print(f"cut reference       {t_ref * 1e3:9.1f} ms  segments {ref.num_segments:4d}  "
          f"ARI {adjusted_rand_index(labels, ref.labels):.4f}")
    print(f"speed-up fast/reference: {t_ref / t_fast:.1f}x (target >= 20x)")


if __name__ == "__main__":
    main()
