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


# --------------------------------------------------------------------------------------------
# published architectures, for random-weight models (no weights can be downloaded here)
# --------------------------------------------------------------------------------------------
def ssd1b_config(width: int = 320, heads: tuple[int, int, int] = (5, 10, 20)) -> dict:
    """SSD-1B's UNet architecture (segmind/SSD-1B unet/config.json); ``width`` scales channels."""
    return dict(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2D",  # SSD-1B: one resnet, no attention
        block_out_channels=(width, 2 * width, 4 * width),
        layers_per_block=2,
        transformer_layers_per_block=[1, 2, 4],
        reverse_transformer_layers_per_block=[[4, 4, 10], [2, 1, 1], [1, 1, 1]],
        attention_head_dim=list(heads),  # legacy name: number of heads
        use_linear_projection=True,
        cross_attention_dim=2048,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,  # 6 * 256 + 1280 (pooled text embeds)
        norm_num_groups=32,
    )


def sdxl_vae_config() -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2,
        norm_num_groups=32,
        sample_size=1024,
    )


def sd15_unet_config(width: int = 320) -> dict:
    """Stable Diffusion 1.5's UNet architecture (its unet/config.json); ``width`` scales the
    channels (64: a narrow copy for quick runs)."""
    return dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(width, 2 * width, 4 * width, 4 * width),
        layers_per_block=2,
        attention_head_dim=8,  # legacy name: 8 heads
        cross_attention_dim=768,
        norm_num_groups=32,
    )


def sd_vae_config() -> dict:
    """The SD 1.x VAE (same layout as SDXL's, 512 px sample size)."""
    return {**sdxl_vae_config(), "sample_size": 512}
