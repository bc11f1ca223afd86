import json

import pytest

from diffuseg.backbones import (
    PRESETS,
    BackbonePreset,
    WeightsNotFoundError,
    get_preset,
    list_backbones,
    resolve_backbone,
)
from diffuseg.backbones.registry import family_from_configs, resolution_from_configs

SDXL_FEATURE = "down_blocks[-1].attentions[-1].transformer_blocks[-1].attn1"
SD1_FEATURE = "down_blocks[-2].attentions[-1].transformer_blocks[-1].attn1"


def test_presets_listed_with_their_facts():
    assert list_backbones() == ["sd14", "sd15", "sd21", "sdxl", "ssd-1b", "vega"]
    expected = {
        "sd14": ("CompVis/stable-diffusion-v1-4", "sd1", 512),
        "sd15": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "sd1", 512),
        "sd21": ("stabilityai/stable-diffusion-2-1", "sd2", 768),
        "sdxl": ("stabilityai/stable-diffusion-xl-base-1.0", "sdxl", 1024),
        "ssd-1b": ("segmind/SSD-1B", "sdxl", 1024),
        "vega": ("segmind/Segmind-Vega", "sdxl", 1024),
    }
    for name, (repo, family, resolution) in expected.items():
        p = PRESETS[name]
        assert (p.repo_id, p.family, p.resolution, p.timestep) == (repo, family, resolution, 50)
        assert p.feature_block == (SDXL_FEATURE if family == "sdxl" else SD1_FEATURE)


def test_per_method_defaults():
    assert get_preset("sd14").defaults_for("diffcut") == {"tau": 0.2, "alpha": 10}
    assert get_preset("sd15").defaults_for("diffcut")["tau"] == 0.2
    assert get_preset("sd21").defaults_for("diffcut")["tau"] == 0.2
    for name in ("ssd-1b", "vega", "sdxl"):
        assert get_preset(name).defaults_for("diffcut") == {"tau": 0.5, "alpha": 10}
    assert get_preset("sd14").defaults_for("diffseg") == {}
    assert get_preset("sd14").defaults_for("no-such-method") == {}


def test_preset_defaults_are_read_only_and_copies():
    p = get_preset("ssd-1b")
    with pytest.raises(TypeError):
        p.method_defaults["diffcut"]["tau"] = 0.9
    d = p.defaults_for("diffcut")
    d["tau"] = 0.9
    assert p.defaults_for("diffcut")["tau"] == 0.5
    assert json.loads(json.dumps(p.to_dict()))["method_defaults"]["diffcut"]["tau"] == 0.5


def test_resolve_by_name_alias_and_repo_id():
    assert resolve_backbone("SSD-1B") is PRESETS["ssd-1b"]
    assert resolve_backbone("segmind/SSD-1B") is PRESETS["ssd-1b"]
    assert resolve_backbone("ssd1b") is PRESETS["ssd-1b"]
    assert resolve_backbone("sd1.5") is PRESETS["sd15"]
    assert resolve_backbone(PRESETS["vega"]) is PRESETS["vega"]
    with pytest.raises(ValueError, match="unknown backbone"):
        resolve_backbone("not-a-backbone")


def test_family_detection_from_saved_tiny_folders(tiny_dirs):
    sd1 = resolve_backbone(tiny_dirs["sd1"])
    sdxl = resolve_backbone(str(tiny_dirs["sdxl"]))
    assert (sd1.family, sd1.resolution, sd1.feature_block) == ("sd1", 128, SD1_FEATURE)
    assert (sdxl.family, sdxl.resolution, sdxl.feature_block) == ("sdxl", 128, SDXL_FEATURE)
    assert sd1.repo_id == str(tiny_dirs["sd1"].resolve())
    assert sd1.defaults_for("diffcut")["tau"] == 0.2
    assert sdxl.defaults_for("diffcut")["tau"] == 0.5


def _fake_folder(root, model_index, unet, vae):
    (root / "unet").mkdir(parents=True)
    (root / "vae").mkdir()
    if model_index is not None:
        (root / "model_index.json").write_text(json.dumps(model_index))
    (root / "unet" / "config.json").write_text(json.dumps(unet))
    (root / "vae" / "config.json").write_text(json.dumps(vae))
    return root


def test_family_detection_sd2_and_sdxl_from_configs(tmp_path):
    vae = {"block_out_channels": [128, 256, 512, 512]}
    sd2 = _fake_folder(
        tmp_path / "sd2",
        {"_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "X"]},
        {"cross_attention_dim": 1024, "sample_size": 96},
        vae,
    )
    p = resolve_backbone(sd2)
    assert (p.family, p.resolution) == ("sd2", 768)
    # SDXL by the UNet alone (no model_index.json), or by a second text encoder
    xl = _fake_folder(
        tmp_path / "xl", None, {"addition_embed_type": "text_time", "sample_size": 128}, vae
    )
    assert (resolve_backbone(xl).family, resolve_backbone(xl).resolution) == ("sdxl", 1024)
    assert family_from_configs({"text_encoder_2": ["transformers", "Y"]}, {}) == "sdxl"
    assert family_from_configs(None, {"cross_attention_dim": 768}) == "sd1"
    assert resolution_from_configs({"sample_size": 64}, vae) == 512


def test_resolve_rejects_folders_that_are_not_models(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="no unet/config.json"):
        resolve_backbone(tmp_path)
    with pytest.raises(WeightsNotFoundError, match="no model folder"):
        resolve_backbone(tmp_path / "missing")


def test_preset_validates_family():
    with pytest.raises(ValueError, match="family"):
        BackbonePreset(name="x", repo_id="x/y", family="sd3", resolution=512)
    p = BackbonePreset(name="x", repo_id="x/y", family="sd2", resolution=768)
    assert p.feature_block == SD1_FEATURE and p.timestep == 50
