"""Word -> token positions: multi-token words, sub-word traps, truncation; the real CLIP
vocabulary (the BPE file shipped in diffuseg/assets) and the tiny hand-made test vocabulary."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from diffuseg.labels.templates import STOPWORDS, VILD_TEMPLATES, expand_templates, split_synonyms
from diffuseg.labels.tokens import (
    caption_pieces,
    caption_words,
    clip_bpe_path,
    clip_tokenizer,
    word_token_indices,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tiny_models import _tokenizer, _write_tokenizer_files  # noqa: E402


@pytest.fixture(scope="module")
def real_tokenizer(tmp_path_factory):
    assert clip_bpe_path().stat().st_size == 1356917  # the shipped file (assets README)
    return clip_tokenizer(tmp_path_factory.mktemp("clip_tok"))


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    return _tokenizer(_write_tokenizer_files(tmp_path_factory.mktemp("tiny_tok")))


def test_real_vocabulary_gives_stable_diffusion_ids(real_tokenizer):
    assert len(real_tokenizer) == 49408
    # the ids Stable Diffusion's tokenizer gives (start 49406, "a" 320, ..., end 49407)
    ids = real_tokenizer("a photo of a cat").input_ids
    assert ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_real_vocabulary_multi_token_words(real_tokenizer):
    caption = "a skateboarder eating a pomegranate near a sailboat"
    toks = real_tokenizer.convert_ids_to_tokens(real_tokenizer(caption).input_ids)
    assert toks[2:4] == ["skate", "boarder</w>"]
    idx = word_token_indices(real_tokenizer, caption)
    assert idx == {"skateboarder": [2, 3], "eating": [4], "pomegranate": [6], "sailboat": [9, 10]}
    assert [toks[i] for i in idx["sailboat"]] == ["sail", "boat</w>"]


def test_real_vocabulary_no_subword_match(real_tokenizer):
    # "boat" is the second token of "sailboat": only the standalone word may match
    idx = word_token_indices(real_tokenizer, "a sailboat and a boat", ["boat", "sailboat"])
    assert idx == {"boat": [6], "sailboat": [2, 3]}


def test_real_vocabulary_phrases_and_repeats(real_tokenizer):
    caption = "a traffic light near a hot-dog stand, two hot dogs and a dog"
    idx = word_token_indices(real_tokenizer, caption, ["traffic light", "Hot-Dog", "dog"])
    assert idx["traffic light"] == [2, 3]
    assert idx["hot-dog"] == [6, 7, 8]  # hot, -, dog
    assert idx["dog"] == [8, 16]  # in "hot-dog" (a whole piece) and the last word, not "dogs"


def test_truncation(real_tokenizer):
    caption = " ".join(["cat"] * 80) + " dog"
    idx = word_token_indices(real_tokenizer, caption, ["cat"])
    assert idx["cat"] == list(range(1, 76))  # 75 caption slots between start and end tokens
    with pytest.raises(ValueError, match="past the prompt"):
        word_token_indices(real_tokenizer, caption, ["dog"])
    # words chosen by default: the truncated tail is skipped, not an error
    assert list(word_token_indices(real_tokenizer, caption)) == ["cat"]
    with pytest.raises(ValueError, match="no word of the caption"):
        word_token_indices(real_tokenizer, " ".join(["the"] * 80) + " dog")


def test_tiny_vocabulary_multi_token_words(tiny_tokenizer):
    # the tiny vocabulary has characters and 7 merges: "cat" is c, a, t</w>; "the" one token
    caption = "the cat on the grass"
    toks = tiny_tokenizer.convert_ids_to_tokens(tiny_tokenizer(caption).input_ids)
    assert toks[:5] == ["<|startoftext|>", "the</w>", "c", "a", "t</w>"]
    idx = word_token_indices(tiny_tokenizer, caption)
    assert list(idx) == ["cat", "grass"]
    assert idx["cat"] == [2, 3, 4]
    n_on = len(tiny_tokenizer("on", add_special_tokens=False).input_ids)
    start = 5 + n_on + 1  # after "on" and the second "the"
    n_grass = len(tiny_tokenizer("grass", add_special_tokens=False).input_ids)
    assert idx["grass"] == list(range(start, start + n_grass))


def test_caption_words():
    assert caption_pieces("A hot-dog's bun") == ["a", "hot", "-", "dog", "'s", "bun"]
    assert caption_words("A cat sitting on the grass next to a cat.") == [
        "cat", "sitting", "grass"]
    assert caption_words("a cat and a dog", ["Dog", "cat", "dog"]) == ["dog", "cat"]
    with pytest.raises(ValueError, match="does not occur"):
        caption_words("a cat and a dog", ["cats"])
    with pytest.raises(ValueError, match="no words"):
        caption_words("the of a")
    assert "the" in STOPWORDS and "cat" not in STOPWORDS


def test_tokenizer_that_is_not_clip_is_refused():
    class Chars:  # splits across pieces: a token spans the space
        model_max_length = 77

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [ord(c) for c in text]}

    with pytest.raises(ValueError, match="CLIP pieces"):
        word_token_indices(Chars(), "a cat")


def test_templates():
    assert len(VILD_TEMPLATES) == 14 and all(t.count("{}") == 1 for t in VILD_TEMPLATES)
    assert expand_templates("dog")[0] == "a photo of a dog."
    assert split_synonyms("person, people,") == ["person", "people"]
    with pytest.raises(ValueError):
        split_synonyms(" , ")
