"""DiffCut early exit: how much of the UNet runs when the forward pass stops at the feature layer.

1. FLOPs (no weights needed): an SSD-1B-shaped UNet (its published architecture: channels
   (320, 640, 1280), transformer depths 2 / 4 in the down blocks and [4, 4, 10] / [2, 1, 1] in the
   up blocks, a mid block without attention, SDXL text-time embeddings) is built on
   ``device="meta"`` and counted with ``torch.utils.flop_counter.FlopCounterMode`` at a 1024 px
   input (latent 128 x 128): the full pass against the pass cut at
   ``down_blocks[-1].attentions[-1].transformer_blocks[-1].attn1`` (diffuseg's FeatureHook).
   The SDXL VAE encoder is counted too, for the end-to-end ratio of one DiffCut encoding.
2. CPU time: the same comparison with real (random) weights: the SSD-1B architecture at 512 px
   (``--quick``: a 4x narrower copy at 256 px). CPU time is ``time.process_time`` (all threads),
   best of ``--repeat`` runs, after one warm-up run; early exit and full pass must give the same
   features.

    .venv/bin/python bench/bench_early_exit.py [--quick] [--threads 1] [--repeat 2]
"""

from __future__ import annotations

import argparse
import gc
import time

import torch
from common import sdxl_vae_config, ssd1b_config

from diffuseg.backbones.capture import FeatureHook, get_module

FEATURE_LAYER = "down_blocks[-1].attentions[-1].transformer_blocks[-1].attn1"


def unet_inputs(latent: int, device: str | torch.device = "cpu", batch: int = 1):
    g = None if str(device) == "meta" else torch.Generator().manual_seed(0)

    def rnd(*shape):
        if g is None:
            return torch.empty(shape, device=device)
        return torch.randn(shape, generator=g)

    sample = rnd(batch, 4, latent, latent)
    t = torch.full((batch,), 50, dtype=torch.long, device=device)
    kwargs = {
        "encoder_hidden_states": rnd(batch, 77, 2048),
        "added_cond_kwargs": {
            "text_embeds": rnd(batch, 1280),
            "time_ids": torch.tensor(
                [[latent * 8.0] * 2 + [0.0, 0.0] + [latent * 8.0] * 2] * batch, device=device
            ),
        },
    }
    return sample, t, kwargs


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def flops_section(resolution: int) -> None:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**ssd1b_config())
        vae = AutoencoderKL(**sdxl_vae_config())
    n_params = sum(p.numel() for p in unet.parameters())
    layer = get_module(unet, FEATURE_LAYER)
    encoder_params = sum(
        p.numel() for p in list(unet.conv_in.parameters()) + list(unet.down_blocks.parameters())
    )
    latent = resolution // 8
    sample, t, kw = unet_inputs(latent, "meta")
    with torch.no_grad():
        full = count_flops(lambda: unet(sample, t, **kw))
        early = count_flops(lambda: FeatureHook(layer, stop=True).run(unet, sample, t, **kw))
        image = torch.empty((1, 3, resolution, resolution), device="meta")
        vae_flops = count_flops(lambda: vae.encode(image))
    print(
        f"SSD-1B-shaped UNet: {n_params / 1e9:.3f} B parameters "
        f"(conv_in + down blocks {encoder_params / 1e6:.0f} M); input {resolution} px, "
        f"latent {latent}x{latent}; feature layer {FEATURE_LAYER}"
    )
    print(f"  UNet FLOPs, full pass          : {full / 1e12:7.3f} TFLOP")
    print(f"  UNet FLOPs, up to the hook     : {early / 1e12:7.3f} TFLOP")
    print(f"  UNet ratio full / early exit   : {full / early:7.2f}x   (target >= 2.5x)")
    print(f"  VAE encoder FLOPs              : {vae_flops / 1e12:7.3f} TFLOP")
    print(
        f"  encode (VAE + UNet) full/early : {(vae_flops + full) / 1e12:.3f} / "
        f"{(vae_flops + early) / 1e12:.3f} TFLOP = {(vae_flops + full) / (vae_flops + early):.2f}x"
    )


def timing_section(width: int, heads: tuple[int, int, int], resolution: int, repeat: int) -> None:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    t0 = time.perf_counter()
    unet = UNet2DConditionModel(**ssd1b_config(width, heads)).eval()
    build = time.perf_counter() - t0
    n_params = sum(p.numel() for p in unet.parameters())
    layer = get_module(unet, FEATURE_LAYER)
    sample, t, kw = unet_inputs(resolution // 8)

    def full():
        with FeatureHook(layer, stop=False) as hook:
            unet(sample, t, **kw)
        return hook.output

    def early():
        return FeatureHook(layer, stop=True).run(unet, sample, t, **kw)

    def timed(fn):
        fn()  # warm-up
        best_cpu = best_wall = float("inf")
        for _ in range(repeat):
            gc.collect()
            c0, w0 = time.process_time(), time.perf_counter()
            out = fn()
            best_cpu = min(best_cpu, time.process_time() - c0)
            best_wall = min(best_wall, time.perf_counter() - w0)
        return best_cpu, best_wall, out

    with torch.inference_mode():
        cpu_full, wall_full, ref = timed(full)
        cpu_early, wall_early, out = timed(early)
    diff = (ref - out).abs().max().item()
    print(
        f"SSD-1B architecture, width {width} ({n_params / 1e9:.3f} B parameters, random "
        f"weights, built in {build:.1f} s), input {resolution} px, "
        f"{torch.get_num_threads()} threads, best of {repeat}:"
    )
    print(f"  full pass   : {cpu_full:7.2f} s CPU  {wall_full:7.2f} s wall")
    print(f"  early exit  : {cpu_early:7.2f} s CPU  {wall_early:7.2f} s wall")
    print(
        f"  CPU ratio   : {cpu_full / cpu_early:7.2f}x   wall ratio {wall_full / wall_early:.2f}x"
    )
    print(f"  features identical: max |diff| = {diff:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small timing model (seconds)")
    parser.add_argument("--threads", type=int, default=1, help="1: steadiest CPU time")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=1024, help="FLOP count input size")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    flops_section(args.resolution)
    if args.quick:
        timing_section(width=64, heads=(2, 4, 8), resolution=256, repeat=1)
    else:
        timing_section(width=320, heads=(5, 10, 20), resolution=512, repeat=args.repeat)


if __name__ == "__main__":
    main()
