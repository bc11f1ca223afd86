import shutil

import pytest

from diffuseg.backbones import WeightsNotFoundError, load_backbone


def _assert_helpful(message: str):
    assert "\n" not in message
    assert "--backbone FOLDER" in message and "--model" not in message
    assert "save_pretrained" in message
    assert "hf download" in message and "REPO" not in message
    assert "HF_HUB_OFFLINE" in message
    assert "`--method ncut` needs no weights" in message


def test_is_a_value_error():
    assert issubclass(WeightsNotFoundError, ValueError)


def test_nonexistent_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as info:
        load_backbone("/nonexistent")
    _assert_helpful(str(info.value))
    assert "/nonexistent" in str(info.value)


@pytest.mark.parametrize("name", ["sd14", "ssd-1b"])
def test_preset_offline_with_empty_cache(monkeypatch, tmp_path, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(WeightsNotFoundError) as info:
        load_backbone(name)
    message = str(info.value)
    _assert_helpful(message)
    repo = {"sd14": "CompVis/stable-diffusion-v1-4", "ssd-1b": "segmind/SSD-1B"}[name]
    assert f"hf download {repo}" in message
    assert "not found in the local Hugging Face cache" in message


def test_unknown_hub_repo_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as info:
        load_backbone("someone/not-cached")
    _assert_helpful(str(info.value))


def test_folder_without_unet_weights(tiny_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = shutil.copytree(tiny_dirs["sd1"], tmp_path / "broken")
    for f in (folder / "unet").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(WeightsNotFoundError, match=r"missing unet/\*\.safetensors") as info:
        load_backbone(folder)
    _assert_helpful(str(info.value))


def test_folder_without_tokenizer_files(tiny_dirs, tmp_path, monkeypatch):
    # transformers 5 silently builds an empty tokenizer when its files are missing: we must not.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = shutil.copytree(tiny_dirs["sdxl"], tmp_path / "broken")
    shutil.rmtree(folder / "tokenizer_2")
    (folder / "tokenizer_2").mkdir()
    with pytest.raises(WeightsNotFoundError, match="missing tokenizer_2/vocab.json") as info:
        load_backbone(folder)
    _assert_helpful(str(info.value))


def test_hub_kwargs_follow_the_environment_now(monkeypatch, tmp_path):
    from diffuseg.backbones import registry

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert registry.hub_kwargs(False, "a/b") == {
        "local_files_only": True,
        "cache_dir": str(tmp_path / "hub"),
    }
    assert registry.hub_kwargs(True) == {"local_files_only": True}
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    # an unreachable hub means: the cache only, no per-file retries
    monkeypatch.setattr(registry, "_hub_reachable", lambda repo: False)
    assert registry.hub_kwargs(False, "a/b")["local_files_only"] is True
    monkeypatch.setattr(registry, "_hub_reachable", lambda repo: True)
    assert registry.hub_kwargs(False, "a/b")["local_files_only"] is False
