"""Benchmark: DiffSeg's KL merging, vectorised ("fast") vs the direct chunked formula
("reference", what the official code does, in fp32), in one process.

    .venv/bin/python bench/bench_diffseg_kl.py           # 64x64 grid: 4096 maps, 256 anchors
    .venv/bin/python bench/bench_diffseg_kl.py --quick   # 32x32 grid: 1024 maps

Prints the times, the speed-up ratios (target >= 50x at 64x64) and the agreement of both modes:
largest |difference| of the KL matrices, threshold decisions that differ, proposals found.
The attention is synthetic (softmax of a smooth random feature field; no model is needed).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from diffuseg.methods.diffseg import (
    aggregate_attention,
    anchor_indices,
    merge_attention,
    symmetric_kl,
)


def synthetic_attention(size: int, seed: int = 0) -> dict[tuple[int, int], torch.Tensor]:
    """An SD-like pyramid (size, size/2, size/4, size/8): softmax(f f^T / T) of a smooth random
    feature field f (8 channels drawn on an 8x8 grid, upsampled, plus noise), pooled per level."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 8, 8, 8, generator=gen)
    field = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)[0]
    field = field + 0.1 * torch.randn(field.shape, generator=gen)
    out = {}
    for s in (1, 2, 4, 8):
        f = F.avg_pool2d(field[None], s)[0] if s > 1 else field
        g = size // s
        tok = F.normalize(f.reshape(8, g * g).T, dim=1)
        out[(g, g)] = torch.softmax(tok @ tok.T / 0.1, dim=1).reshape(g * g, g, g)
    return out


def timed(fn, repeat: int = 1):
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32x32 grid instead of 64x64")
    parser.add_argument("--grid", type=int, default=None, help="token grid side (default 64)")
    parser.add_argument("--anchors", type=int, default=16, help="anchors per axis (M)")
    parser.add_argument("--tau", type=float, default=0.9)
    parser.add_argument("--repeat", type=int, default=3, help="best-of runs of the fast path")
    parser.add_argument("--skip-merge", action="store_true",
                        help="time only the KL matrix, not the whole 3-iteration merge")
    args = parser.parse_args()
    size = args.grid or (32 if args.quick else 64)

    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, grid {size}x{size}, "
          f"{args.anchors}x{args.anchors} anchors, tau {args.tau}")
    t_agg, agg = timed(lambda: aggregate_attention(synthetic_attention(size)))
    n = size * size
    flat = agg.reshape(n, n)
    anchors = flat[anchor_indices((size, size), args.anchors)]
    print(f"aggregated attention {tuple(agg.shape)} ({agg.numel() * 4 / 2**20:.0f} MiB) "
          f"built in {t_agg:.2f} s")

    # 1. the KL matrix of iteration 1: anchors x all maps
    t_fast, d_fast = timed(lambda: symmetric_kl(anchors, flat, mode="fast"), args.repeat)
    t_ref, d_ref = timed(lambda: symmetric_kl(anchors, flat, mode="reference"))
    diff = (d_fast - d_ref).abs().max().item()
    flips = {tau: int(((d_fast < tau) != (d_ref < tau)).sum()) for tau in (0.9, 1.1)}
    print(f"KL matrix {tuple(d_fast.shape)} x {n} keys: fast {t_fast:.3f} s, "
          f"reference {t_ref:.2f} s, ratio {t_ref / t_fast:.0f}x")
    print(f"  max |fast - reference| = {diff:.2e}; differing decisions D < tau: {flips} "
          f"of {d_fast.numel()}")

    # 2. the whole merge (3 iterations)
    if not args.skip_merge:
        taus = (args.tau,) * 3
        t_mfast, p_fast = timed(lambda: merge_attention(agg, taus, args.anchors, mode="fast"),
                                args.repeat)
        t_mref, p_ref = timed(lambda: merge_attention(agg, taus, args.anchors, mode="reference"))
        same = p_fast.shape == p_ref.shape
        pdiff = (p_fast - p_ref).abs().max().item() if same else float("nan")
        print(f"merge (3 iterations): fast {t_mfast:.3f} s, reference {t_mref:.2f} s, "
              f"ratio {t_mref / t_mfast:.0f}x; proposals {p_fast.shape[0]} vs {p_ref.shape[0]}, "
              f"max |diff| {pdiff:.2e}")


if __name__ == "__main__":
    main()
