"""The BLIP captioner on a tiny random BLIP saved to disk (tests/tiny_blip.py): parity with
``generate``, determinism, batching, prompt handling, loading rules and input checks."""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiny_blip import make_tiny_blip, make_tiny_model  # noqa: E402

from diffuseg.backbones.registry import WeightsNotFoundError  # noqa: E402
from diffuseg.labels.captioner import DEFAULT_CAPTIONER, Captioner, load_captioner  # noqa: E402

PROMPT = "a picture of"


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    """A tiny BLIP folder (model.safetensors + processor files); read-only for tests."""
    return make_tiny_blip(tmp_path_factory.mktemp("blip") / "tiny", seed=0)


@pytest.fixture(scope="module")
def captioner(blip_dir):
    return load_captioner(blip_dir)


@pytest.fixture(scope="module")
def reference(blip_dir):
    """The in-memory model the folder was saved from (same seed) and the saved processor."""
    from transformers import BlipProcessor

    return make_tiny_model(seed=0), BlipProcessor.from_pretrained(blip_dir)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    shapes = [(40, 50), (47, 50), (32, 32), (61, 23), (33, 80)]
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


def _direct(reference, image, max_new_tokens, prompt=None):
    """transformers' own path, as DiffSeg's notebook: processor -> generate -> decode."""
    from PIL import Image

    model, processor = reference
    inputs = processor(images=Image.fromarray(image), text=prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, num_beams=1, do_sample=False)
    return out[0], processor.decode(out[0], skip_special_tokens=True).strip()


def _one_line_help(message):
    assert "\n" not in message
    assert "save_pretrained" in message


def test_default_is_diffseg_checkpoint():
    # google/diffseg diffseg.ipynb, cell "1b. Initialize BLIP (optional)".
    assert DEFAULT_CAPTIONER == "Salesforce/blip-image-captioning-base"


def test_loads_on_cpu_in_float32(captioner, blip_dir):
    assert isinstance(captioner, Captioner)
    assert captioner.device.type == "cpu"  # no CUDA on the test machine
    assert captioner.dtype == torch.float32
    assert captioner.num_beams == 1
    assert captioner.name == str(blip_dir)


@pytest.mark.parametrize("max_new_tokens", [3, 12])
def test_parity_with_generate(captioner, reference, images, one_thread, max_new_tokens):
    got = [captioner.caption(im, max_new_tokens=max_new_tokens) for im in images]
    want = [_direct(reference, im, max_new_tokens)[1] for im in images]
    assert got == want
    # The captions depend on the image: the vision tower is really used.
    assert len(set(got)) >= 3


def test_prompt_echo_is_removed(captioner, reference, images, one_thread):
    model, processor = reference
    for im in images[:3]:
        ids, full = _direct(reference, im, 12, prompt=PROMPT)
        # BLIP returns [DEC] + prompt + continuation: the echo is really there ...
        prompt_ids = processor.tokenizer(PROMPT, add_special_tokens=False).input_ids
        assert ids[0].item() == model.config.text_config.bos_token_id
        assert ids[1 : 1 + len(prompt_ids)].tolist() == prompt_ids
        assert full.startswith(PROMPT)
        # ... and the caption is the continuation alone.
        got = captioner.caption(im, prompt=PROMPT, max_new_tokens=12)
        assert got == full[len(PROMPT) :].strip()
        assert not got.startswith(PROMPT)


def test_blank_prompt_is_unconditional(captioner, images, one_thread):
    assert captioner.caption(images[0], prompt="  ") == captioner.caption(images[0])
    assert captioner.caption(images[0], prompt="") == captioner.caption(images[0], prompt=None)


def test_deterministic(captioner, images, one_thread):
    first = [captioner.caption(im, max_new_tokens=12) for im in images]
    second = [captioner.caption(im, max_new_tokens=12) for im in images]
    assert first == second


@pytest.mark.parametrize("prompt", [None, PROMPT])
def test_batched_equals_one_by_one(captioner, images, one_thread, prompt):
    single = [captioner.caption(im, prompt=prompt, max_new_tokens=12) for im in images]
    # 5 images in batches of 2: full batches, a last partial batch, different sizes per batch.
    assert captioner.caption_many(images, prompt=prompt, max_new_tokens=12, batch_size=2) == single
    assert captioner.caption_many(images, prompt=prompt, max_new_tokens=12) == single
    assert captioner.caption_many([], prompt=prompt) == []


def test_beam_search_is_deterministic(captioner, reference, images, one_thread):
    beams = Captioner(captioner.model, captioner.processor, num_beams=3)
    from PIL import Image

    model, processor = reference
    inputs = processor(images=Image.fromarray(images[1]), return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=8, num_beams=3, do_sample=False)
    want = processor.decode(out[0], skip_special_tokens=True).strip()
    assert beams.caption(images[1], max_new_tokens=8) == want
    assert beams.caption(images[1], max_new_tokens=8) == want


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((8, 8), np.uint8), r"\(H, W, 3\).*\(8, 8\)"),
        (np.zeros((8, 8, 4), np.uint8), r"\(H, W, 3\).*\(8, 8, 4\)"),
        (np.zeros((1, 8, 8, 3), np.uint8), r"\(H, W, 3\).*\(1, 8, 8, 3\)"),
        (np.zeros((8, 8, 3), np.float32), r"uint8.*float32"),
        (np.zeros((0, 8, 3), np.uint8), r"empty"),
    ],
)
def test_bad_images(captioner, bad, match):
    with pytest.raises(ValueError, match=match):
        captioner.caption(bad)


def test_bad_image_in_a_batch_names_it(captioner, images):
    with pytest.raises(ValueError, match=r"image 1: expected dtype uint8"):
        captioner.caption_many([images[0], images[1].astype(np.float64) / 255])


@pytest.mark.parametrize(
    "kwargs", [{"max_new_tokens": 0}, {"max_new_tokens": 2.5}, {"batch_size": 0}, {"prompt": 3}]
)
def test_bad_arguments(captioner, images, kwargs):
    with pytest.raises(ValueError):
        captioner.caption_many(images[:1], **kwargs)


def test_half_precision_only_on_cuda(blip_dir):
    assert load_captioner(blip_dir, device="cpu", dtype="fp16").dtype == torch.float32


def test_folder_without_weights(blip_dir, tmp_path):
    folder = shutil.copytree(blip_dir, tmp_path / "noweights")
    (folder / "model.safetensors").unlink()
    with pytest.raises(WeightsNotFoundError, match="no model.safetensors") as info:
        load_captioner(folder)
    _one_line_help(str(info.value))


def test_bin_only_folder_is_never_unpickled(blip_dir, tmp_path, monkeypatch):
    folder = shutil.copytree(blip_dir, tmp_path / "binonly")
    (folder / "model.safetensors").unlink()
    torch.save(make_tiny_model(seed=0).state_dict(), folder / "pytorch_model.bin")

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load must never be called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(WeightsNotFoundError, match=r"pytorch_model\.bin") as info:
        load_captioner(folder)
    assert "safe_serialization=True" in str(info.value)
    _one_line_help(str(info.value))


def test_folder_without_tokenizer(blip_dir, tmp_path):
    folder = shutil.copytree(blip_dir, tmp_path / "notok")
    for name in ("tokenizer.json", "vocab.txt"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(WeightsNotFoundError, match="tokenizer"):
        load_captioner(folder)


def test_not_a_blip_folder(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(WeightsNotFoundError, match="'bert' model, not BLIP"):
        load_captioner(tmp_path)


def test_nonexistent_folder():
    with pytest.raises(WeightsNotFoundError, match="no captioning model folder") as info:
        load_captioner("/nonexistent/blip")
    _one_line_help(str(info.value))


def test_hub_id_offline_with_empty_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    with pytest.raises(WeightsNotFoundError) as info:
        load_captioner()
    message = str(info.value)
    _one_line_help(message)
    assert DEFAULT_CAPTIONER in message
    assert "not found in the local Hugging Face cache" in message
    assert f"hf download {DEFAULT_CAPTIONER}" in message
    assert "HF_HUB_OFFLINE is set" in message
    assert not any(tmp_path.rglob("*.safetensors"))


def test_hub_id_from_the_offline_cache(blip_dir, images, monkeypatch, tmp_path, one_thread):
    # A hub cache laid out as huggingface_hub writes it: refs/main -> snapshots/<commit>/.
    repo = tmp_path / "hub" / "models--someone--tiny-blip"
    commit = "0" * 40
    shutil.copytree(blip_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    cached = load_captioner("someone/tiny-blip")
    assert cached.name == "someone/tiny-blip"
    local = load_captioner(blip_dir)
    assert cached.caption_many(images[:2]) == local.caption_many(images[:2])
