"""DiffCut after encoding, end to end, against the official procedure, in one process.

For each token grid (32x32 is SSD-1B's feature map at 1024 px, 48x48 at 1536 px, 64x64 at
2048 px) and 1280 channels: diffusion-like planted features (``smooth_planted_features``: 8
correlated region prototypes, a smooth random field, a little white noise), DiffCut's defaults
(alpha 10, tau 0.5, self-loops), giving 14-26 segments and a well-separated spectrum as real
features do; the labels at 128x128 without refinement, as DiffCut's evaluation makes them:

* official: ``official_diffcut.generate_masks``, the official code's operations step by step
  (masked full-size affinity per node, dense L_sym products and ``eigh``, 100 thresholds scored
  one by one, cluster assembly, per-cluster pooling, upsampled features);
* ours: ``run_diffcut`` with ``DiffCutConfig(refine=False)`` at output size 128x128 (affinity,
  level-batched cut with DiffCut's sampled sweep and zero-row quirk, concept assignment on the
  score maps).

Both run in this process on the same features (interleaved repeats, medians); printed: times,
the ratio official/ours, segments, and the ARI between the two label maps (1.0: the same
segmentation).

    python bench/bench_end_to_end.py [--quick] [--sizes 32,48,64] [--repeats N]
"""

from __future__ import annotations

# isort: off
from common import timed  # first: pins one thread before numpy and torch load
# isort: on

import argparse
import statistics
import time

import torch
from official_diffcut import generate_masks

from diffuseg.graph.affinity import cosine_affinity
from diffuseg.methods.diffcut import DiffCutConfig, diffcut_tokens, run_diffcut
from diffuseg.types import Encoding

from planted import adjusted_rand_index, smooth_planted_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16x16 tokens, one repeat")
    parser.add_argument("--sizes", default="32,48", help="token grid sides, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sizes = [16] if args.quick else [int(s) for s in args.sizes.split(",")]
    repeats = 1 if args.quick else args.repeats
    print(f"threads {torch.get_num_threads()}, repeats {repeats}, 1280 channels, 8 planted "
          "regions, alpha 10, tau 0.5, labels at 128x128, no refinement")
    for side in sizes:
        run_size(side, repeats)


def run_size(side: int, repeats: int) -> None:
    features, _ = smooth_planted_features(side)
    config = DiffCutConfig(refine=False)
    encoding = Encoding(features=features)
    runs = {
        "ours": lambda: run_diffcut(encoding, config, output_size=(128, 128)),
        "official": lambda: generate_masks(features, 0.5, 10.0, (128, 128)),
    }
    runs["ours"]()  # warm-up (scipy import, allocator)
    samples: dict[str, list[float]] = {name: [] for name in runs}
    results = {}
    for _ in range(repeats):  # interleaved, so that a slow moment hits both alike
        for name, fn in runs.items():
            start = time.perf_counter()
            results[name] = fn()
            samples[name].append(time.perf_counter() - start)
    t = {k: statistics.median(v) for k, v in samples.items()}
    ours_labels = results["ours"].labels
    official_labels = results["official"][0, 0]
    t_aff, _ = timed(lambda: cosine_affinity(features, alpha=10), repeats)
    t_cut, _ = timed(lambda: diffcut_tokens(features, config), repeats)
    print(f"{side}x{side} tokens ({side * side})")
    print(f"  official   {t['official'] * 1e3:9.1f} ms  segments "
          f"{len(set(official_labels.ravel().tolist())):3d}")
    print(f"  ours       {t['ours'] * 1e3:9.1f} ms  segments {results['ours'].num_segments:3d}"
          f"  (affinity {t_aff * 1e3:.1f} ms, affinity + cut {t_cut * 1e3:.1f} ms)")
    print(f"  ARI official vs ours {adjusted_rand_index(official_labels, ours_labels):.4f}")
    print(f"  speed-up, official procedure / ours: {t['official'] / t['ours']:.1f}x "
          "(target >= 10x)")


if __name__ == "__main__":
    main()
