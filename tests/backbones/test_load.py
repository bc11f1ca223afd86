"""load_backbone: components, devices, dtypes, the cached empty-prompt conditioning."""

import pytest
import torch

from diffuseg.backbones import load_backbone
from diffuseg.backbones.diffusion import default_device, default_dtype


def test_loaded_components(backbone, family):
    from diffusers import DDIMScheduler

    assert isinstance(backbone.scheduler, DDIMScheduler)
    assert backbone.scheduler.config.timestep_spacing == "trailing"
    assert backbone.device == torch.device("cpu") and backbone.dtype == torch.float32
    assert backbone.multiple == 64 and backbone.vae_scale_factor == 8
    assert backbone.resolution == 128
    assert not backbone.unet.training and not backbone.vae.training
    # empty prompt cached: (1, 77, D); SDXL: both encoders' hidden sizes, pooled (1, 32)
    emb = backbone._prompt_embeds
    assert emb.shape == (1, 77, 32 if family == "sd1" else 64)
    if family == "sdxl":
        assert backbone._pooled_embeds.shape == (1, 32)
    else:
        assert backbone._pooled_embeds is None
    assert "Backbone(" in repr(backbone)


def test_defaults_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("CPU-only expectation")
    assert default_device() == torch.device("cpu")
    assert default_dtype("cpu") == torch.float32


def test_sdxl_vae_never_fp16(tiny_dirs, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    xl = load_backbone(tiny_dirs["sdxl"], device="cpu", dtype="fp16")
    assert xl.dtype == torch.float16 and next(xl.unet.parameters()).dtype == torch.float16
    assert xl.vae_dtype == torch.float32 and next(xl.vae.parameters()).dtype == torch.float32
    sd1 = load_backbone(tiny_dirs["sd1"], device="cpu", dtype=torch.float16)
    assert sd1.vae_dtype == torch.float16
    xl_bf16 = load_backbone(tiny_dirs["sdxl"], device="cpu", dtype="bf16")
    assert xl_bf16.vae_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        load_backbone(tiny_dirs["sd1"], dtype="int8")


def test_bf16_encode_matches_fp32(tiny_dirs, backbones, family, make_image, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    low = load_backbone(tiny_dirs[family], device="cpu", dtype="bf16")
    img = make_image(128, 192, seed=5)
    (a,) = backbones[family].encode([img], size=128, attention=True)
    (b,) = low.encode([img], size=128, attention=True)
    assert b.features.dtype == torch.float32 and b.meta["dtype"] == "bfloat16"
    cos = torch.nn.functional.cosine_similarity(a.features.flatten(), b.features.flatten(), dim=0)
    assert cos > 0.99
    for grid, maps in b.attention.items():
        sums = maps.reshape(maps.shape[0], -1).sum(-1)
        torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=1e-5)
        assert (maps - a.attention[grid]).abs().max() < 0.05
