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


def test_method_precision_on_cuda_and_fp32_on_cpu():
    """Unless the user picks one, the backbone runs in the method's official precision on CUDA
    (DiffCut fp16, DiffSeg's KerasCV model fp32) and in fp32 on the CPU."""
    from diffuseg.backbones.diffusion import resolve_dtype
    from diffuseg.methods import get_method

    assert get_method("diffcut").cuda_dtype == "float16"
    assert get_method("diffseg").cuda_dtype == get_method("dwc").cuda_dtype == "float32"
    assert resolve_dtype(None, "cuda", "float16") == torch.float16
    assert resolve_dtype(None, "cuda", "float32") == torch.float32
    assert resolve_dtype("bf16", "cuda", "float16") == torch.bfloat16  # the user's choice wins
    assert resolve_dtype(None, "cpu", "float16") == torch.float32
    assert resolve_dtype("auto", "cpu") == torch.float32


def test_segmenter_asks_for_the_methods_precision(monkeypatch):
    import diffuseg.backbones as backbones
    from diffuseg import Segmenter

    seen = {}
    monkeypatch.setattr(backbones, "load_backbone", lambda *a, **kw: seen.update(kw) or "model")
    assert Segmenter("diffcut", "ssd-1b").backbone == "model"
    assert seen["cuda_dtype"] == "float16" and seen["dtype"] is None
    Segmenter("diffseg", "sd14", dtype="bf16").backbone  # noqa: B018 (loads)
    assert seen["cuda_dtype"] == "float32" and seen["dtype"] == "bf16"


def test_sdxl_vae_never_fp16(tiny_dirs, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    xl = load_backbone(tiny_dirs["sdxl"], device="cpu", dtype="fp16")
    assert xl.dtype == torch.float16 and next(xl.unet.parameters()).dtype == torch.float16
    assert xl.vae_dtype == torch.float32 and next(xl.vae.parameters()).dtype == torch.float32
    # DiffCut's precision: an fp16 UNet, a VAE with fp16-rounded weights computing in fp32
    sd1 = load_backbone(tiny_dirs["sd1"], device="cpu", dtype=torch.float16)
    full = load_backbone(tiny_dirs["sd1"], device="cpu", dtype="fp32")
    assert sd1.vae_dtype == torch.float32
    for (name, p16), (_, p32) in zip(sd1.vae.named_parameters(), full.vae.named_parameters(),
                                     strict=True):
        assert p16.dtype == torch.float32, name
        assert torch.equal(p16, p32.half().float()), name
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
