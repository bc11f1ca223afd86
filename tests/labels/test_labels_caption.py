"""Caption labels: cross-attention capture on tiny UNets, aggregation, word maps and voting on
hand-made maps with known answers, and the whole path end to end on tiny pipelines."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffuseg.backbones.capture import AttentionCapture, CrossAttentionCapture
from diffuseg.labels.caption import (
    aggregate_cross_attention,
    caption_names,
    name_segments_from_caption,
    vote_words,
    word_maps,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiny_models import make_tiny_pipeline  # noqa: E402


# -- hand-made maps ------------------------------------------------------------------------------
def test_aggregate_uses_resolution_weights():
    fine = torch.full((3, 4, 4), 0.6)
    coarse = torch.full((3, 2, 2), 0.3)
    out = aggregate_cross_attention({(4, 4): fine, (2, 2): coarse})
    assert out.shape == (3, 4, 4)
    # weights sqrt(16) : sqrt(4) = 2/3 : 1/3
    torch.testing.assert_close(out, torch.full((3, 4, 4), 0.6 * 2 / 3 + 0.3 / 3))
    out = aggregate_cross_attention({(4, 4): fine, (2, 2): coarse}, weights=[0, 1], target=(8, 6))
    torch.testing.assert_close(out, torch.full((3, 8, 6), 0.3))
    with pytest.raises(ValueError, match="prompt length"):
        aggregate_cross_attention({(4, 4): fine, (2, 2): coarse[:2]})


def test_word_maps_mean_of_tokens_and_unit_norm():
    cross = torch.zeros(5, 2, 2)
    cross[1] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    cross[2] = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    cross[3] = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    maps = word_maps(cross, {"two": [1, 2], "one": [3]})
    s = 0.5**0.5
    torch.testing.assert_close(maps[0], torch.tensor([[s, s], [0.0, 0.0]]))
    torch.testing.assert_close(maps[1], torch.tensor([[0.6, 0.0], [0.0, 0.8]]))
    with pytest.raises(ValueError, match="outside"):
        word_maps(cross, {"x": [5]})


def _planted(height=8, width=8, tokens=6):
    """Token 2 ('cat') on the left half, token 4 ('grass') on the right half, two grids."""
    maps = {}
    for h, w in ((height, width), (height // 2, width // 2)):
        m = torch.full((tokens, h, w), 0.05)
        m[2, :, : w // 2] = 0.8
        m[4, :, w // 2 :] = 0.8
        maps[(h, w)] = m / m.sum(0, keepdim=True)
    return maps


def test_planted_left_right_with_both_votings():
    labels = np.zeros((16, 16), dtype=np.int32)
    labels[:, 8:] = 1
    labels[:4, :4] = 2  # a third segment inside the left half
    cross = aggregate_cross_attention(_planted())
    maps = word_maps(cross, {"cat": [2], "grass": [4]})
    for voting in ("mean", "majority"):
        best, scores = vote_words(labels, maps, voting)
        assert best.tolist() == [0, 1, 0]
        assert scores.shape == (3, 2)
    _, frac = vote_words(labels, maps, "majority")
    np.testing.assert_allclose(frac.sum(1), 1.0)


def test_mean_and_majority_differ_where_they_should():
    # 6 pixels of one segment; word 0 wins 4 pixels narrowly, word 1 wins 2 pixels by far
    labels = np.zeros((1, 6), dtype=np.int64)
    maps = torch.tensor([[[0.51, 0.51, 0.51, 0.51, 0.0, 0.0]], [[0.49, 0.49, 0.49, 0.49, 1, 1]]])
    assert vote_words(labels, maps, "mean")[0].tolist() == [1]
    assert vote_words(labels, maps, "majority")[0].tolist() == [0]


def test_majority_is_a_mode_not_a_median():
    # winners 0,0,0,0,1,1,1,2,2,2: mode 0; the official median of indices would say 1
    winners = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    maps = torch.zeros(3, 1, 10)
    for i, k in enumerate(winners):
        maps[k, 0, i] = 1.0
    best, frac = vote_words(np.zeros((1, 10), dtype=int), maps, "majority")
    assert best.tolist() == [0]
    np.testing.assert_allclose(frac[0], [0.4, 0.3, 0.3])


def test_absent_label_and_bad_voting():
    labels = np.array([[0, 2]])
    best, _ = vote_words(labels, torch.ones(2, 1, 2), "mean")
    assert best.tolist() == [0, -1, 0]
    with pytest.raises(ValueError, match="voting"):
        vote_words(labels, torch.ones(2, 1, 2), "median")


def test_caption_names_with_a_multi_token_word():
    class Tok:  # a CLIP-like tokenizer: one token per letter, the caption's pieces concatenated
        model_max_length = 77

        def __call__(self, text, add_special_tokens=True):
            ids = [ord(c) for piece in text.lower().split() for c in piece]
            return {"input_ids": ids}

    # "a cat" -> a(1) c(2) a(3) t(4): "cat" spans tokens 2..4
    maps = {}
    for h, w in ((8, 8), (4, 4)):
        m = torch.full((6, h, w), 0.01)
        m[2:5, :, : w // 2] = 1.0  # cat's three tokens on the left
        m[1, :, w // 2 :] = 1.0  # "a" on the right
        maps[(h, w)] = m
    labels = np.zeros((8, 8), dtype=int)
    labels[:, 4:] = 1
    out = caption_names(labels, maps, Tok(), "a cat", ["cat", "a"])
    assert out.tokens == {"cat": [2, 3, 4], "a": [1]}  # not the letter a inside "cat"
    assert out.names == ["cat", "a"]


# -- tiny models ---------------------------------------------------------------------------------
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from diffuseg.backbones import load_backbone

    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        root = tmp_path_factory.mktemp("tiny_caption")
        return {f: load_backbone(make_tiny_pipeline(root / f, f)) for f in ("sd1", "sdxl")}
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def _image(h=128, w=128, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_cross_capture_shapes_sums_and_unchanged_output(tiny, family):
    bb = tiny[family]
    z = bb.latents(_image(128, 192)[None])
    emb, pooled = bb.encode_prompt("the cat on the grass")
    kwargs = {"encoder_hidden_states": emb}
    if pooled is not None:
        time_ids = torch.tensor([[128, 192, 0, 0, 128, 192]], dtype=bb.dtype)
        kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids}
    t = torch.tensor([300])
    with torch.inference_mode():
        plain = bb.unet(z, t, **kwargs).sample
        with AttentionCapture(bb.unet) as self_cap, CrossAttentionCapture(bb.unet) as cap:
            captured = bb.unet(z, t, **kwargs).sample
    torch.testing.assert_close(captured, plain, rtol=1e-4, atol=1e-5)
    maps = cap.maps()[0]
    assert self_cap.maps()[0]  # both captures filled from one pass
    grids = sorted(maps, key=lambda g: -g[0] * g[1])
    # SD 1.x: cross-attention from latent /1; SDXL: its first block has none, from latent /2
    assert grids[0] == ((16, 24) if family == "sd1" else (8, 12))
    for (h, w), m in maps.items():
        assert m.shape == (77, h, w) and m.dtype == torch.float32
        torch.testing.assert_close(m.sum(0), torch.ones(h, w))
    # processors restored: the plain output again
    with torch.inference_mode():
        torch.testing.assert_close(bb.unet(z, t, **kwargs).sample, plain)


def test_cross_capture_equals_materialised_reference(tiny):
    bb = tiny["sd1"]
    z = bb.latents(_image()[None])
    emb, _ = bb.encode_prompt("the cat")
    name = "mid_block.attentions.0.transformer_blocks.0.attn2"
    attn = bb.unet.get_submodule(name)
    seen = {}

    def hook(module, args, kwargs):
        seen["x"] = args[0]
        seen["ctx"] = kwargs.get("encoder_hidden_states")

    handle = attn.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.inference_mode(), CrossAttentionCapture(
            bb.unet, layer_filter=lambda n: n == name + ".processor", chunk_bytes=64
        ) as cap:
            bb.unet(z, torch.tensor([300]), encoder_hidden_states=emb)
    finally:
        handle.remove()
    (grid, got), = cap.maps()[0].items()
    with torch.inference_mode():
        q = attn.to_q(seen["x"])[0].view(-1, attn.heads, attn.inner_dim // attn.heads)
        k = attn.to_k(seen["ctx"])[0].view(-1, attn.heads, attn.inner_dim // attn.heads)
        p = torch.softmax(torch.einsum("nhd,mhd->hnm", q, k) * attn.scale, -1).mean(0)
    assert grid == (2, 2)
    torch.testing.assert_close(got, p.t().reshape(77, 2, 2), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_end_to_end_on_tiny_pipeline(tiny, family):
    bb = tiny[family]
    enc = bb.encode(_image(), features=False, attention=True)[0]
    labels = np.zeros((100, 80), dtype=np.int32)
    labels[:, 40:] = 1
    labels[:20, :20] = 2
    caption = "the cat on the grass"
    out = name_segments_from_caption(bb, enc, labels, caption)
    assert out.words == ["cat", "grass"]
    assert out.tokens["cat"] == [2, 3, 4]  # c, a, t</w> in the tiny vocabulary
    assert len(out.names) == 3 and set(out.names) <= {"cat", "grass"}
    assert out.scores.shape == (3, 2)
    # the pure path on the same maps agrees, and so does a second run (deterministic)
    cross = bb.cross_attention(bb.latents(enc.image[None]), caption)[0]
    again = caption_names(labels, cross, bb.tokenizer, caption, voting="mean")
    assert again.names == out.names
    np.testing.assert_allclose(again.scores, out.scores, rtol=1e-5)
    maj = name_segments_from_caption(bb, enc, labels, caption, ["grass"], voting="majority")
    assert maj.names == ["grass"] * 3
    bb.release_text_encoders()
    assert name_segments_from_caption(bb, enc, labels, caption).names == out.names
