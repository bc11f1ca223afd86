"""Tiny random Stable Diffusion pipelines for tests (no weights, no network).

``make_tiny_pipeline(folder, family)`` builds a structurally faithful but tiny pipeline of the SD
1.x family (``StableDiffusionPipeline`` layout) or the SDXL family (``StableDiffusionXLPipeline``
layout: two text encoders, ``addition_embed_type="text_time"``), saves it with
``save_pretrained(safe_serialization=True)`` and returns the folder. Loading it back goes through
the same ``from_pretrained`` code path users hit with real weights.

Shapes of the tiny models (the properties tests rely on):
- VAE: 4 levels, so the latent is the image / 8 with 4 channels, as in real Stable Diffusion.
- SD 1.x UNet: 3 ``CrossAttnDownBlock2D`` + 1 ``DownBlock2D`` (as SD 1.x), one layer per block,
  channels (32, 32, 64, 64), 2 heads, ``cross_attention_dim`` 32. Self-attention at latent /1, /2,
  /4 (down and up) and /8 (mid): 10 ``attn1`` layers. Feature layer ``down_blocks[-2]`` (latent
  /4), 64 channels.
- SDXL UNet: ``DownBlock2D`` + 2 ``CrossAttnDownBlock2D`` (as SDXL), channels (32, 32, 64),
  transformer depths (1, 1, 2) so that "the last transformer block" is not the first,
  ``cross_attention_dim`` 64 = 32 + 32 (both text encoders). Feature layer ``down_blocks[-1]``
  (latent /4), 64 channels.
- ``unet.config.sample_size`` 16, so the default resolution is 16 * 8 = 128 px.

Building and saving one takes well under a second on CPU.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

TINY_SAMPLE_SIZE = 16
TINY_FEATURE_CHANNELS = 64
_MAX_LENGTH = 77


def _write_tokenizer_files(folder: Path) -> Path:
    """Write a hand-made CLIP BPE vocabulary (vocab.json, merges.txt) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits + ".,!?'-")
    vocab: dict[str, int] = {}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges = ["t h", "th e</w>", "a n", "i n", "e r", "o n", "a t"]
    for m in merges:
        a, b = m.split()
        vocab[a + b] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


def _tokenizer(src: Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(
        vocab=str(src / "vocab.json"), merges=str(src / "merges.txt"), model_max_length=_MAX_LENGTH
    )


def _text_config(tokenizer, hidden: int = 32, projection_dim: int = 32):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=_MAX_LENGTH,
        projection_dim=projection_dim,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="quick_gelu",
    )


def _vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=TINY_SAMPLE_SIZE * 8,
    )


def _scheduler():
    from diffusers import PNDMScheduler

    # Real SD 1.x repositories ship a PNDM scheduler config; the backbone converts it to DDIM.
    return PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        steps_offset=1,
    )


def _sd1_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=TINY_SAMPLE_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 32, 64, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32,
        attention_head_dim=2,  # legacy name: the number of heads
        norm_num_groups=8,
    )


def _sdxl_unet(text_proj_dim: int):
    from diffusers import UNet2DConditionModel

    time_dim = 8
    return UNet2DConditionModel(
        sample_size=TINY_SAMPLE_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 2, 4),
        use_linear_projection=True,
        cross_attention_dim=64,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + text_proj_dim,
        norm_num_groups=8,
    )


def make_tiny_pipeline(folder: str | Path, family: str = "sd1", seed: int = 0) -> Path:
    """Build a tiny random pipeline of ``family`` ("sd1" or "sdxl") and save it to ``folder``.

    Returns:
        The folder (a diffusers pipeline folder with ``model_index.json`` and safetensors weights).
    """
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    src = _write_tokenizer_files(folder / "_tokenizer_src")
    torch.manual_seed(seed)
    if family == "sd1":
        from diffusers import StableDiffusionPipeline

        tokenizer = _tokenizer(src)
        pipe = StableDiffusionPipeline(
            vae=_vae(),
            text_encoder=CLIPTextModel(_text_config(tokenizer)),
            tokenizer=tokenizer,
            unet=_sd1_unet(),
            scheduler=_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    elif family == "sdxl":
        from diffusers import StableDiffusionXLPipeline

        tokenizer, tokenizer_2 = _tokenizer(src), _tokenizer(src)
        pipe = StableDiffusionXLPipeline(
            vae=_vae(),
            text_encoder=CLIPTextModel(_text_config(tokenizer)),
            text_encoder_2=CLIPTextModelWithProjection(_text_config(tokenizer_2)),
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            unet=_sdxl_unet(text_proj_dim=32),
            scheduler=_scheduler(),
        )
    else:
        raise ValueError(f"family must be 'sd1' or 'sdxl', got {family!r}")
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder
