"""Throughput of whole collections: images/s of encode, of segmentation after encoding, and of
the pipeline end to end, with random-weight models built from the published architectures.

Models (no weights can be downloaded here; random weights cost the same FLOPs):

* ``--size tiny``: the test suite's tiny SD 1.x pipeline (128 px), saved and loaded through
  ``load_backbone`` as users' folders are: a smoke test, run by the default test suite;
* ``--size sd15``: SD 1.5's UNet and VAE architectures at 512 px;
* ``--size ssd1b``: SSD-1B's UNet and the SDXL VAE at 1024 px (DiffCut's backbone).

For sd15 / ssd1b the backbone is assembled in memory (random prompt embeddings instead of text
encoders, which segmentation reads once), on ``--device`` in the method's precision (DiffCut
fp16 on CUDA). Reported, on ``--images`` copies of crops of the bundled photo:

* encode: images/s of ``Segmenter.encode_batch`` (VAE + UNet up to what the method needs);
* segment: images/s of the method on the saved Encodings, one worker and ``--workers``;
* end to end: images/s of ``diffuseg.pipeline.run`` (decode ahead, batched encode, ``--workers``
  threads cutting while the next batch is on the backbone) and the fraction of its wall time the
  backbone was idle, waiting for the CPU (1 - encode time / wall time);
* collection: ``--collection`` saved DiffCut Encodings of SSD-1B's feature size (32x32 tokens x
  1280 channels, diffusion-like planted features, a 256 px image each for PAMR) segmented by the
  pipeline with one worker and with ``--workers``: both timings.

    python bench/bench_throughput.py --device cpu --size tiny --images 8     # seconds
    python bench/bench_throughput.py --device cuda --size ssd1b --images 64 --batch-size 8
"""

from __future__ import annotations

# isort: off
from common import sd15_unet_config, sd_vae_config, sdxl_vae_config, ssd1b_config
# isort: on

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import diffuseg
from diffuseg import pipeline
from diffuseg.segmenter import Segmenter

SIZES = {"tiny": 128, "sd15": 512, "ssd1b": 1024}


def random_backbone(size: str, device: str, method: str):
    """A Backbone with random weights of the named architecture (tiny: loaded from a folder)."""
    from diffuseg.backbones import load_backbone
    from diffuseg.methods import get_method

    cuda_dtype = get_method(method).cuda_dtype
    if size == "tiny":
        from tiny_models import make_tiny_pipeline

        folder = make_tiny_pipeline(Path(tempfile.mkdtemp()) / "tiny", family="sd1")
        return load_backbone(folder, device=device, cuda_dtype=cuda_dtype)
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    from diffuseg.backbones.diffusion import Backbone, resolve_dtype
    from diffuseg.backbones.registry import BackbonePreset

    dtype = resolve_dtype(None, device, cuda_dtype)
    vae_dtype = torch.float32 if dtype == torch.float16 else dtype
    torch.manual_seed(0)
    family = "sdxl" if size == "ssd1b" else "sd1"
    unet_cfg = ssd1b_config() if size == "ssd1b" else sd15_unet_config()
    vae_cfg = sdxl_vae_config() if size == "ssd1b" else sd_vae_config()
    unet = UNet2DConditionModel(**unet_cfg).to(device=device, dtype=dtype).eval()
    vae = AutoencoderKL(**vae_cfg).to(device=device, dtype=vae_dtype).eval()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", timestep_spacing="trailing")
    width = 2048 if family == "sdxl" else 768
    embeds = torch.randn(1, 77, width, device=device, dtype=dtype)
    pooled = torch.randn(1, 1280, device=device, dtype=dtype) if family == "sdxl" else None
    preset = BackbonePreset(name=f"random-{size}", repo_id=f"random-{size}", family=family,
                            resolution=SIZES[size])
    return Backbone(preset, unet=unet, vae=vae, scheduler=scheduler, prompt_embeds=embeds,
                    pooled_embeds=pooled, device=torch.device(device), dtype=dtype,
                    vae_dtype=vae_dtype)


def photos(n: int, side: int) -> list[np.ndarray]:
    """``n`` different square crops of the bundled photo, resized to ``side``."""
    with Image.open(Path(diffuseg.__file__).parent / "assets" / "example.jpg") as im:
        photo = np.asarray(im.convert("RGB"))
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        s = int(rng.integers(200, min(photo.shape[:2]) + 1))
        top = int(rng.integers(0, photo.shape[0] - s + 1))
        left = int(rng.integers(0, photo.shape[1] - s + 1))
        crop = Image.fromarray(photo[top : top + s, left : left + s]).resize((side, side))
        out.append(np.asarray(crop))
    return out


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=sorted(SIZES), default=None,
                        help="model architecture (default: tiny on cpu, ssd1b elsewhere)")
    parser.add_argument("--method", default="diffcut")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--collection", type=int, default=64,
                        help="saved Encodings segmented with 1 and --workers workers (0: skip)")
    args = parser.parse_args()
    size = args.size or ("tiny" if args.device == "cpu" else "ssd1b")
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "CPU"
    print(f"device {args.device} ({name}), model {size} at {SIZES[size]} px, method "
          f"{args.method}, {args.images} images, batch {args.batch_size}, workers "
          f"{args.workers}, torch threads {torch.get_num_threads()}")
    start = time.perf_counter()
    backbone = random_backbone(size, args.device, args.method)
    print(f"  model ready in {time.perf_counter() - start:.1f} s (dtype {backbone.dtype})")
    segmenter = Segmenter(args.method, backbone)
    images = photos(args.images, SIZES[size])

    with torch.inference_mode():
        segmenter.encode_batch(images[: args.batch_size], batch_size=args.batch_size)  # warm-up
        sync(args.device)
        start = time.perf_counter()
        encodings = segmenter.encode_batch(images, batch_size=args.batch_size)
        sync(args.device)
        t_encode = time.perf_counter() - start
        print(f"  encode        {args.images / t_encode:8.2f} images/s")

        items = pipeline.plan([Path(f"img{k:03d}.png") for k in range(args.images)])
        by_index = dict(enumerate(encodings))
        for workers in sorted({1, args.workers}):
            start = time.perf_counter()
            for _ in pipeline.run(items, load=lambda it: by_index[it.index], encode=None,
                                  process=lambda it, enc: _segment(segmenter, it, enc),
                                  batch_size=args.batch_size, workers=workers):
                pass
            t = time.perf_counter() - start
            print(f"  segment       {args.images / t:8.2f} images/s from saved Encodings "
                  f"({workers} worker{'s' if workers > 1 else ''}: {t:.2f} s)")

        busy = []
        lock = threading.Lock()

        def encode(payloads):
            t0 = time.perf_counter()
            out = segmenter.encode_batch(payloads, batch_size=args.batch_size)
            sync(args.device)
            with lock:
                busy.append(time.perf_counter() - t0)
            return out

        start = time.perf_counter()
        for _ in pipeline.run(items, load=lambda it: images[it.index], encode=encode,
                              process=lambda it, enc: _segment(segmenter, it, enc),
                              batch_size=args.batch_size, workers=args.workers):
            pass
        wall = time.perf_counter() - start
        idle = 1 - sum(busy) / wall
        print(f"  end to end    {args.images / wall:8.2f} images/s ({wall:.2f} s); backbone idle "
              f"{100 * idle:.0f} % of the time (waiting for the CPU); median batch "
              f"{statistics.median(busy) * 1e3:.0f} ms")
        if args.collection:
            collection(args.collection, args.workers, args.batch_size)


def collection(n: int, workers: int, batch_size: int) -> None:
    """``n`` saved DiffCut Encodings (32x32x1280) segmented with 1 and ``workers`` workers."""
    from diffuseg.types import Encoding

    from planted import smooth_planted_features

    segmenter = Segmenter("diffcut")  # default settings, PAMR on: needs no backbone
    images = photos(min(n, 8), 256)
    encodings = [Encoding(features=smooth_planted_features(32, seed=k)[0],
                          image=images[k % len(images)], meta={"original_size": [256, 256]})
                 for k in range(n)]
    items = pipeline.plan([Path(f"enc{k:03d}.safetensors") for k in range(n)])
    times = {}
    for w in sorted({1, workers}):
        start = time.perf_counter()
        for _ in pipeline.run(items, load=lambda it: encodings[it.index], encode=None,
                              process=lambda it, enc: _segment(segmenter, it, enc),
                              batch_size=batch_size, workers=w):
            pass
        times[w] = time.perf_counter() - start
        print(f"  collection    {n} DiffCut Encodings (32x32x1280, PAMR at 256 px), {w} "
              f"worker{'s' if w > 1 else ''}: {times[w]:.2f} s ({n / times[w]:.2f} images/s)")
    if len(times) == 2:
        print(f"  collection    {workers} workers vs 1: {times[1] / times[workers]:.2f}x")


def _segment(segmenter: Segmenter, item, enc) -> pipeline.Outcome:
    result = segmenter.segment(enc)
    return pipeline.Outcome(item, "done", segments=result.num_segments)


if __name__ == "__main__":
    main()
