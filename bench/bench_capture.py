"""Self-attention capture: time and peak memory of a UNet pass with and without AttentionCapture.

An SD 1.5-sized UNet (860 M parameters, random weights) at 512 px (latent 64 x 64; 16
self-attention layers at grids 64, 32, 16 and 8): one process per variant, so that each peak is
its own. In each process: build the UNet, trim the heap, reset the peak resident set size
(``/proc/self/clear_refs``) and run one pass: extra peak = peak RSS during it minus RSS before
it. Time (``time.process_time``, all threads) is the best of ``--repeat`` later passes. For the
capture variant the result maps (the per-grid running sums, kept as the output) are alive at
the peak and counted. The capture process also checks that the UNet
output equals the plain one. ``--quick``: a narrow SD 1.x UNet at 256 px.

Children run with glibc's mmap threshold fixed at 64 KiB so that RSS tracks live tensors.

    .venv/bin/python bench/bench_capture.py [--quick] [--threads 1] [--repeat 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time

import torch
from common import sd15_unet_config  # threads are set per child below

MiB = 1 << 20


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


def _malloc_trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(variant: str, quick: bool, size: int, threads: int, repeat: int) -> dict:
    from diffusers import UNet2DConditionModel

    from diffuseg.backbones.capture import AttentionCapture

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**sd15_unet_config(64 if quick else 320)).eval()
    g = torch.Generator().manual_seed(0)
    latent = torch.randn(1, 4, size // 8, size // 8, generator=g)
    context = torch.randn(1, 77, 768, generator=g)
    t = torch.tensor([300])

    def run():
        if variant == "capture":
            with AttentionCapture(unet) as cap:
                out = unet(latent, t, encoder_hidden_states=context).sample
            return out, cap.maps()
        return unet(latent, t, encoder_hidden_states=context).sample, None

    with torch.inference_mode():
        # memory: the first pass in a fresh process (one-time allocations are the same for both
        # variants and cancel in the difference), from a trimmed heap
        gc.collect()
        _malloc_trim()
        exact = _reset_peak()
        before = _status()["VmRSS"]
        out, maps = run()
        peak = _status()["VmHWM"] if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        extra = peak - before
        # time: the best of the next ``repeat`` passes
        cpu = wall = float("inf")
        for _ in range(repeat):
            out = maps = None
            gc.collect()
            c0, w0 = time.process_time(), time.perf_counter()
            out, maps = run()
            cpu = min(cpu, time.process_time() - c0)
            wall = min(wall, time.perf_counter() - w0)
        result = {
            "variant": variant,
            "cpu_s": cpu,
            "wall_s": wall,
            "rss_before_mib": before / MiB,
            "extra_peak_mib": extra / MiB,
            "exact_peak": exact,
        }
        if maps is not None:
            m = maps[0]
            result["maps_mib"] = sum(a.numel() * 4 for a in m.values()) / MiB
            result["grids"] = sorted([list(g) for g in m], reverse=True)
            worst = max(
                (a.reshape(a.shape[0], -1).sum(-1) - 1).abs().max().item() for a in m.values()
            )
            result["row_sum_err"] = worst
            del maps, m
            plain = unet(latent, t, encoder_hidden_states=context).sample
            result["out_max_diff"] = (plain - out).abs().max().item()
    return result


def _child_env() -> dict[str, str]:
    """glibc settings that make RSS follow live tensor memory: every allocation of 64 KiB or more
    is its own mmap, returned to the system when freed (no heap reuse or fragmentation that
    would differ between runs)."""
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(64 << 10))
    env.setdefault("MALLOC_TRIM_THRESHOLD_", str(64 << 10))
    env.setdefault("MALLOC_ARENA_MAX", "2")
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="1: steadiest CPU time")
    parser.add_argument("--size", type=int, default=None, help="input px (512; quick 256)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes (best is kept)")
    parser.add_argument("--child", choices=["plain", "capture"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = args.size or (256 if args.quick else 512)
    if args.child:
        print(json.dumps(child(args.child, args.quick, size, args.threads, args.repeat)))
        return

    results = {}
    for variant in ("plain", "capture"):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            variant,
            "--size",
            str(size),
            "--threads",
            str(args.threads),
            "--repeat",
            str(args.repeat),
        ]
        cmd += ["--quick"] if args.quick else []
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=_child_env())
        if proc.returncode != 0:
            sys.exit(f"{variant} run failed:\n{proc.stderr[-3000:]}")
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
    plain, cap = results["plain"], results["capture"]
    model = "narrow SD 1.x UNet (64..256 channels)" if args.quick else "SD 1.5-sized UNet"
    print(
        f"{model}, random weights, input {size} px (latent {size // 8}), "
        f"{args.threads} threads; memory: first pass; time: best of {args.repeat} later passes"
    )
    print(
        f"{'variant':>8} {'CPU s':>7} {'wall s':>7} {'RSS before MiB':>15} {'extra peak MiB':>15}"
    )
    for r in (plain, cap):
        print(
            f"{r['variant']:>8} {r['cpu_s']:7.2f} {r['wall_s']:7.2f} "
            f"{r['rss_before_mib']:15.0f} {r['extra_peak_mib']:15.1f}"
        )
    print(f"capture / plain CPU time: {cap['cpu_s'] / plain['cpu_s']:.2f}x")
    extra = cap["extra_peak_mib"] - plain["extra_peak_mib"]
    print(
        f"extra peak of capture over plain: {extra:.1f} MiB (target <= 100 MiB), of which "
        f"{cap['maps_mib']:.1f} MiB are the returned maps (grids {cap['grids']})"
    )
    print(
        f"rows sum to 1 within {cap['row_sum_err']:.1e}; UNet output max |diff| "
        f"{cap['out_max_diff']:.1e}; peak from {'VmHWM' if cap['exact_peak'] else 'ru_maxrss'}"
    )


if __name__ == "__main__":
    main()
