"""Backbone.encode: sizes, grids, early exit, parity with a full pipeline pass."""

import numpy as np
import pytest
import torch

from diffuseg.backbones.capture import FeatureHook
from diffuseg.backbones.diffusion import resize_dims
from diffuseg.types import Encoding

CHANNELS = 64  # tiny models: feature layer width (see tests/tiny_models.py)


@pytest.mark.parametrize(
    ("hw", "size", "processed"),
    [
        ((128, 128), 128, (128, 128)),
        ((128, 192), 128, (64, 128)),  # 85.3 -> 64
        ((200, 77), 128, (128, 64)),  # 49.3 -> 64
        ((200, 77), 256, (256, 128)),  # 98.6 -> 128
        ((300, 500), 1024, (640, 1024)),  # 614.4 -> 640
        ((480, 640), 512, (384, 512)),
        ((10, 1000), 512, (64, 512)),  # never below one multiple
    ],
)
def test_resize_dims(hw, size, processed):
    assert resize_dims(*hw, size=size, multiple=64) == processed


@pytest.mark.parametrize(
    ("hw", "size", "processed"),
    [
        ((128, 128), 128, (128, 128)),
        ((128, 192), 128, (64, 128)),
        ((200, 77), 128, (128, 64)),
        ((200, 77), 256, (256, 128)),
    ],
)
def test_feature_grid_and_channels(backbone, make_image, hw, size, processed):
    img = make_image(*hw)
    (enc,) = backbone.encode([img], size=size)
    assert isinstance(enc, Encoding)
    h, w = processed
    # both tiny families read latent / 4 = image / 32 (as SD 1.x down_blocks[-2], SDXL [-1])
    assert tuple(enc.features.shape) == (CHANNELS, h // 32, w // 32)
    assert backbone.feature_grid(h, w) == (h // 32, w // 32)
    assert enc.features.dtype == torch.float32 and enc.features.device.type == "cpu"
    assert not enc.features.is_inference()
    assert torch.isfinite(enc.features).all() and enc.features.std() > 0
    assert enc.image.shape == (h, w, 3) and enc.image.dtype == np.uint8
    assert enc.attention == {}
    assert enc.meta["image_size"] == [h, w]
    assert enc.meta["original_size"] == list(hw)
    assert enc.meta["crop"] is None
    assert enc.meta["family"] == backbone.family
    assert enc.meta["timestep"] == 50 and enc.meta["seed"] == 42
    assert enc.meta["backbone"] == backbone.preset.name
    assert enc.meta["repo"] == backbone.preset.repo_id


def test_default_size_is_the_preset_resolution(backbone, make_image):
    (enc,) = backbone.encode(make_image(300, 200))
    assert enc.meta["image_size"] == [128, 64]  # tiny models: resolution 16 * 8 = 128


def test_square_crop(backbone, make_image):
    img = make_image(128, 192)
    (enc,) = backbone.encode([img], size=128, square=True)
    assert enc.meta["crop"] == [0, 32, 128, 128]
    assert enc.meta["image_size"] == [128, 128]
    assert enc.meta["original_size"] == [128, 192]
    np.testing.assert_array_equal(enc.image, img[:, 32:160])


def _later_modules(unet, family):
    later = {"mid_block": unet.mid_block, "conv_out": unet.conv_out}
    for i, block in enumerate(unet.up_blocks):
        later[f"up_blocks.{i}"] = block
    if family == "sd1":
        later["down_blocks.-1"] = unet.down_blocks[-1]
    last = unet.down_blocks[-1 if family == "sdxl" else -2].attentions[-1]
    later["last_transformer.attn2"] = last.transformer_blocks[-1].attn2
    later["last_transformer.ff"] = last.transformer_blocks[-1].ff
    later["last_attention.proj_out"] = last.proj_out
    return later


def test_blocks_after_the_feature_layer_never_run(backbone, family, make_image):
    unet = backbone.unet
    calls = {}
    handles = []
    watched = dict(_later_modules(unet, family))
    watched["feature_layer"] = backbone.feature_module
    for name, module in watched.items():
        calls[name] = 0

        def hook(mod, args, out, name=name):
            calls[name] += 1

        handles.append(module.register_forward_hook(hook))
    try:
        backbone.encode([make_image(128, 192), make_image(128, 128)], size=128)
        assert calls["feature_layer"] == 2  # once per processed size
        assert {k: v for k, v in calls.items() if k != "feature_layer"} == {
            k: 0 for k in watched if k != "feature_layer"
        }
        # and the same counters do see a full pass
        z = backbone.latents(make_image(128, 128)[None])
        with torch.inference_mode():
            backbone.unet(z, 50, **backbone._conditioning(1, 128, 128))
        assert all(calls[k] >= 1 for k in watched)
    finally:
        for h in handles:
            h.remove()


def _reference_pipeline(family, folder):
    if family == "sdxl":
        from diffusers import StableDiffusionXLPipeline as cls
    else:
        from diffusers import StableDiffusionPipeline as cls
    kwargs = {} if family == "sdxl" else {"safety_checker": None}
    return cls.from_pretrained(folder, local_files_only=True, **kwargs)


def test_features_equal_a_full_pipeline_pass(backbone, family, tiny_dirs, make_image):
    """Independent reference: the diffusers pipeline's own prompt encoding, VAE, DDIM add_noise
    and time ids, a full UNet pass with a plain hook; early exit changes nothing."""
    pipe = _reference_pipeline(family, tiny_dirs[family])
    img = make_image(128, 192, seed=3)
    (enc,) = backbone.encode([img], size=128)
    h, w = enc.meta["image_size"]
    with torch.inference_mode():
        x = torch.from_numpy(enc.image).permute(2, 0, 1)[None].float() / 127.5 - 1
        z0 = pipe.vae.encode(x).latent_dist.mean * pipe.vae.config.scaling_factor
        eps = torch.randn((1, 4, h // 8, w // 8), generator=torch.Generator("cpu").manual_seed(42))
        from diffusers import DDIMScheduler

        sched = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
        zt = sched.add_noise(z0, eps, torch.tensor([50]))
        if family == "sdxl":
            emb, _, pooled, _ = pipe.encode_prompt("", do_classifier_free_guidance=False)
            time_ids = pipe._get_add_time_ids(
                (h, w), (0, 0), (h, w), emb.dtype, pipe.text_encoder_2.config.projection_dim
            )
            assert time_ids.tolist() == [[h, w, 0, 0, h, w]]
            extra = {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}
        else:
            emb, _ = pipe.encode_prompt("", "cpu", 1, do_classifier_free_guidance=False)
            extra = {}
        torch.testing.assert_close(backbone._prompt_embeds, emb)
        torch.testing.assert_close(backbone.latents(enc.image[None]), z0)
        layer = backbone.feature_module  # same weights as pipe.unet's layer
        with FeatureHook(layer, stop=False) as hook:
            out = backbone.unet(zt, 50, encoder_hidden_states=emb, **extra).sample
        assert not hook.stopped and out.shape == zt.shape
    ref = hook.output.transpose(1, 2).reshape(1, CHANNELS, h // 32, w // 32)[0]
    torch.testing.assert_close(enc.features, ref, rtol=1e-5, atol=1e-6)


def test_seed_and_timestep(backbone, make_image):
    img = make_image(128, 128)
    a = backbone.encode([img], size=128)[0].features
    b = backbone.encode([img], size=128)[0].features
    c = backbone.encode([img], size=128, seed=7)[0]
    d = backbone.encode([img], size=128, timestep=500)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - c.features).abs().max() > 1e-4 and c.meta["seed"] == 7
    assert (a - d.features).abs().max() > 1e-4 and d.meta["timestep"] == 500


def test_batching_equals_single_images(backbone, make_image):
    imgs = [make_image(128, 128, seed=s) for s in range(3)] + [make_image(128, 192, seed=9)]
    batched = backbone.encode(imgs, size=128, batch_size=4)
    singles = [backbone.encode([im], size=128)[0] for im in imgs]
    assert [e.meta["original_size"] for e in batched] == [[128, 128]] * 3 + [[128, 192]]
    for e, s in zip(batched, singles, strict=True):
        torch.testing.assert_close(e.features, s.features, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(e.image, s.image)


def test_input_validation(backbone, make_image):
    with pytest.raises(ValueError, match="uint8"):
        backbone.encode([make_image(64, 64).astype(np.float32)])
    with pytest.raises(ValueError, match="features=True and/or attention=True"):
        backbone.encode([make_image(64, 64)], features=False)
    gray = make_image(64, 64)[:, :, 0]
    (enc,) = backbone.encode(gray, size=64)  # one (H, W) array, grayscale
    assert enc.image.shape == (64, 64, 3)
    rgba = np.dstack([make_image(64, 64), np.full((64, 64), 255, np.uint8)])
    assert backbone.encode([rgba], size=64)[0].features.shape == (CHANNELS, 2, 2)


def test_both_features_and_attention(backbone, make_image):
    (enc,) = backbone.encode([make_image(64, 128)], size=128, attention=True)
    assert enc.features.shape == (CHANNELS, 2, 4)
    assert (4, 8) in enc.attention  # image / 16 = latent / 2 exists in both families
    assert enc.meta["attention_timestep"] == 300 and enc.meta["timestep"] == 50


def test_encoding_round_trips_through_safetensors(backbone, make_image, tmp_path):
    pytest.importorskip("diffuseg.io")
    (enc,) = backbone.encode([make_image(128, 128)], size=128, attention=True)
    enc.save(tmp_path / "e.safetensors")
    back = Encoding.load(tmp_path / "e.safetensors")
    torch.testing.assert_close(back.features, enc.features)
    assert back.meta == enc.meta and set(back.attention) == set(enc.attention)
