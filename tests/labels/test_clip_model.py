"""Our open_clip-compatible ConvNeXt CLIP: parity with open_clip, loading, tokenisation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from diffuseg.backbones.registry import WeightsNotFoundError
from diffuseg.labels.clip_model import (
    BUILTIN_CONFIGS,
    DEFAULT_CLIP,
    ClipConfig,
    ClipModel,
    _tokenizer,
    load_clip,
)

from tiny_clip import TINY_CLIP_CONFIG, golden_inputs, make_tiny_clip, seeded_state_dict

GOLDEN = Path(__file__).resolve().parents[1] / "data" / "open_clip_golden.safetensors"


def _golden(name: str) -> tuple[dict, dict, list[str], dict[str, torch.Tensor]]:
    with safe_open(str(GOLDEN), "pt") as f:
        meta = f.metadata()
        tensors = {k.split(".", 1)[1]: f.get_tensor(k) for k in f.keys()
                   if k.startswith(name + ".")}
    return (json.loads(meta[f"{name}.config"]), json.loads(meta[f"{name}.shapes"]),
            json.loads(meta["prompts"]), tensors)


def _seeded_model(cfg: dict) -> ClipModel:
    model = ClipModel(ClipConfig.from_open_clip(cfg), tokenizer=_tokenizer())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state = {k: torch.from_numpy(v) for k, v in seeded_state_dict(shapes).items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


@pytest.mark.parametrize("name", ["mlp", "linear"])
def test_parity_with_open_clip(name, one_thread):
    """Same parameter names and shapes as open_clip, and its outputs to float precision."""
    cfg, shapes, prompts, want = _golden(name)
    model = _seeded_model(cfg)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == shapes
    x, pooled = (torch.from_numpy(a) for a in golden_inputs(model.cfg.dims[-1]))

    dense = model.dense_input(x)
    assert dense.shape == want["dense"].shape == (2, 768, 2, 3)
    torch.testing.assert_close(dense, want["dense"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.encode_image(x), want["image_embed"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.head(pooled), want["head"], rtol=1e-4, atol=1e-4)

    tokens = model.tokenize(prompts)
    assert torch.equal(tokens, want["tokens"])  # incl. the truncated prompt ending in <end>
    assert int(tokens[-1, -1]) == 49407
    torch.testing.assert_close(model.encode_text(prompts), want["text_embed"], rtol=1e-4,
                               atol=1e-4)


def test_head_is_the_pooled_path_of_encode_image(one_thread):
    """head(mean of dense features) == encode_image: pooling then head is open_clip's image
    embedding, which is why masked pooling + head classifies a mask."""
    model = _seeded_model(TINY_CLIP_CONFIG)
    x = torch.from_numpy(np.random.RandomState(3).standard_normal((1, 3, 64, 64))
                         .astype(np.float32))
    dense = model.dense_input(x)
    torch.testing.assert_close(model.head(dense.mean((2, 3))), model.encode_image(x))


def test_load_clip_from_folder_matches_the_seeded_model(tmp_path, one_thread):
    folder = make_tiny_clip(tmp_path / "clip")
    model = load_clip(folder, device="cpu")
    ref = _seeded_model(TINY_CLIP_CONFIG)
    image = np.random.RandomState(0).randint(0, 256, (70, 90, 3), dtype=np.uint8)
    dense = model.dense(image, size=96)
    assert dense.shape == (32, 3, 3) and dense.dtype == torch.float32
    torch.testing.assert_close(dense, ref.dense(image, size=96))
    torch.testing.assert_close(model.encode_text(["a dog", "grass"]),
                               ref.encode_text(["a dog", "grass"]))
    assert model.head(dense.reshape(32, -1).t()[:4]).shape == (4, 16)
    # a non-square size and a larger input (upsampled, like DiffCut's 2048 for COCO-Object)
    assert model.dense(image, size=(64, 128)).shape == (32, 2, 4)


def test_preprocess_normalises_like_clip():
    model = _seeded_model(TINY_CLIP_CONFIG)
    white = np.full((40, 40, 3), 255, dtype=np.uint8)
    x = model.preprocess(white, 40)
    want = (1 - torch.tensor([0.48145466, 0.4578275, 0.40821073])) / torch.tensor(
        [0.26862954, 0.26130258, 0.27577711])
    torch.testing.assert_close(x[0, :, 0, 0], want)
    for bad in (np.zeros((8, 8), np.uint8), np.zeros((40, 40, 3), np.float32)):
        with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
            model.preprocess(bad, 64)
    with pytest.raises(ValueError, match="at least 32"):
        model.preprocess(white, 16)


def test_missing_and_pickled_weights_are_refused(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_clip(tmp_path / "nowhere")
    folder = tmp_path / "bin_only"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    (folder / "open_clip_pytorch_model.bin").write_bytes(b"\x80\x04not unpickled")
    with pytest.raises(WeightsNotFoundError, match="pickled checkpoints, never loaded"):
        load_clip(folder)
    with pytest.raises(WeightsNotFoundError, match="unknown CLIP model"):
        load_clip("convnext_large_d_320:no_such_tag")


def test_hub_id_offline_without_cache_says_how(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    with pytest.raises(WeightsNotFoundError) as info:
        load_clip(DEFAULT_CLIP)
    message = str(info.value)
    assert "\n" not in message
    assert "laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup" in message
    assert "--clip PATH" in message and "HF_HUB_OFFLINE" in message


def test_config_checks(tmp_path):
    cfg = ClipConfig.from_open_clip(BUILTIN_CONFIGS["convnext_large_d_320"])
    assert (cfg.dims, cfg.depths, cfg.embed_dim, cfg.proj) == (
        (192, 384, 768, 1536), (3, 3, 27, 3), 768, "mlp")
    assert (cfg.width, cfg.heads, cfg.layers, cfg.norm_eps) == (768, 12, 16, 1e-6)
    # a round trip through open_clip's layout keeps every field
    assert ClipConfig.from_open_clip(cfg.to_open_clip()) == cfg
    for section, key, value in (("text_cfg", "pool_type", "last"), ("text_cfg", "embed_cls", True),
                                ("text_cfg", "no_causal_mask", True), (None, "quick_gelu", True)):
        odd = json.loads(json.dumps(TINY_CLIP_CONFIG))
        (odd[section] if section else odd)[key] = value
        with pytest.raises(ValueError, match=f"unsupported CLIP option {key}"):
            ClipConfig.from_open_clip(odd)
    # the hub config's preprocess_cfg decides the normalisation
    half = ClipConfig.from_open_clip({"model_cfg": TINY_CLIP_CONFIG,
                                      "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}})
    assert half.mean == (0.5, 0.5, 0.5) and ClipConfig.from_open_clip(half.to_open_clip()) == half
    x = ClipModel(half).preprocess(np.full((40, 40, 3), 255, np.uint8), 40)
    torch.testing.assert_close(x[0, :, 0, 0], torch.ones(3))
    vit = {"embed_dim": 512, "vision_cfg": {"image_size": 224, "layers": 12, "width": 768,
                                            "patch_size": 32}, "text_cfg": {}}
    with pytest.raises(ValueError, match="ConvNeXt"):
        ClipConfig.from_open_clip(vit)
    bad = json.loads(json.dumps(TINY_CLIP_CONFIG))
    bad["text_cfg"]["width"], bad["text_cfg"]["heads"] = 30, 4
    with pytest.raises(ValueError, match="multiple"):
        ClipModel(ClipConfig.from_open_clip(bad))
    # weights that do not fit the config
    folder = make_tiny_clip(tmp_path / "clip")
    cfg_file = folder / "open_clip_config.json"
    wrong = json.loads(json.dumps(TINY_CLIP_CONFIG))
    wrong["text_cfg"]["layers"] = 2
    cfg_file.write_text(json.dumps(wrong))
    with pytest.raises(ValueError, match="does not match the config"):
        load_clip(folder)


def test_hub_id_from_the_offline_cache(tmp_path, monkeypatch, one_thread):
    """A hub id resolves through the Hugging Face cache (laid out as huggingface_hub writes it:
    refs/main -> snapshots/<commit>/), offline, to the same model as the folder."""
    import shutil

    folder = make_tiny_clip(tmp_path / "clip")
    repo = tmp_path / "hf" / "hub" / "models--someone--tiny-clip"
    commit = "1" * 40
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    for name in ("someone/tiny-clip", "hf-hub:someone/tiny-clip"):
        model = load_clip(name, device="cpu")
        torch.testing.assert_close(model.encode_text(["a cat"]),
                                   load_clip(folder).encode_text(["a cat"]))
