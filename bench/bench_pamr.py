"""PAMR speed and memory: diffuseg's shift-and-accumulate implementation against a stacked one.

The stacked variant materialises all 8 * len(dilations) shifted copies of the masks at every
iteration (as a convolution-based implementation does): the same arithmetic, P times the memory.
Prints CPU time per call (``time.process_time``, so other load on the machine matters less), the
ratio, the peak extra memory of the stacked masks, and the largest difference between the two.

    .venv/bin/python bench/bench_pamr.py [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from diffuseg.refine import _DIRECTIONS, _local_affinity, pamr


def pamr_stacked(image, masks, iterations=10, dilations=(1, 2, 4, 8)):
    """Same maths, every neighbour copy stacked into one (B, K, P, H, W) tensor per step."""
    h, w = image.shape[-2:]
    aff = _local_affinity(image, dilations)[:, None]  # (B, 1, P, H, W)
    for _ in range(iterations):
        copies = []
        for d in dilations:
            mp = F.pad(masks, [d] * 4, mode="replicate")
            for dy, dx in _DIRECTIONS:
                copies.append(mp[..., d + dy * d : d + dy * d + h, d + dx * d : d + dx * d + w])
        masks = (torch.stack(copies, dim=2) * aff).sum(dim=2)
    return masks


def timed(fn, *args, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        out = fn(*args)
        best = min(best, time.process_time() - t0)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="only the 128x128 cases")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    print(f"threads={args.threads}; 10 iterations, dilations (1, 2, 4, 8)")
    print(
        f"{'size':>9} {'K':>3} {'ours s':>8} {'stacked s':>10} {'ratio':>6} "
        f"{'stacked extra MiB':>18} {'max |diff|':>11}"
    )
    cases = [(128, 128, 10), (128, 128, 30), (375, 500, 5), (512, 512, 20)]
    for h, w, k in cases[:2] if args.quick else cases:
        image = torch.rand(1, 3, h, w, generator=g)
        masks = torch.softmax(torch.randn(1, k, h, w, generator=g) * 3, dim=1)
        t_ours, ours = timed(pamr, image, masks)
        t_ref, ref = timed(pamr_stacked, image, masks)
        extra = 32 * k * h * w * 4 / 2**20
        diff = (ours - ref).abs().max().item()
        print(
            f"{h:>4}x{w:<4} {k:>3} {t_ours:>8.3f} {t_ref:>10.3f} {t_ref / t_ours:>6.2f} "
            f"{extra:>18.1f} {diff:>11.2e}"
        )


if __name__ == "__main__":
    main()
