"""A tiny random BLIP captioning model for tests (no weights, no network).

``make_tiny_blip(folder)`` builds a ``BlipForConditionalGeneration`` from a tiny ``BlipConfig``
and a ``BlipProcessor`` (BLIP's image processor + a BERT WordPiece tokenizer over a hand-written
vocabulary), saves both with ``save_pretrained(safe_serialization=True)`` and returns the folder.
Loading it back goes through the same ``from_pretrained`` code path users hit with
``Salesforce/blip-image-captioning-base``.

Shapes (what tests rely on): 32 x 32 input, 8 px patches (16 patches + CLS), vision and text
width 32, 2 layers each, 2 heads; ``len(TINY_VOCAB)`` tokens with BERT's special-token layout
([PAD]=0, [SEP] ends a caption) and BLIP's ``[DEC]`` as the decoder's start token.

Building and saving one takes well under a second on CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_IMAGE_SIZE = 32

#: BERT's special tokens first (their usual roles), then a few words and WordPiece suffixes,
#: then BLIP's decoder start ``[DEC]`` and encoder token ``[ENC]`` (as in BLIP's real vocabulary,
#: where they follow BERT's 30522 tokens).
TINY_VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    *"a an the of on in with and picture photo photography dog cat grass sky tree".split(),
    *"man woman car street red blue green two is sitting standing near house water".split(),
    *". , ##s ##ing".split(),
    "[DEC]",
    "[ENC]",
]


def write_vocab(folder: Path) -> Path:
    """Write ``TINY_VOCAB`` as a WordPiece ``vocab.txt`` (one token a line) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "vocab.txt"
    path.write_text("\n".join(TINY_VOCAB) + "\n")
    return path


def make_tiny_processor(folder: Path):
    """A ``BlipProcessor`` over ``TINY_VOCAB`` resizing to ``TINY_IMAGE_SIZE`` (its vocabulary
    is written to ``folder/vocab.txt``; the processor itself is not saved)."""
    from transformers import BertTokenizer, BlipImageProcessor, BlipProcessor

    write_vocab(folder)
    # from_pretrained reads vocab.txt in transformers 4 and 5 alike (their constructors differ).
    tokenizer = BertTokenizer.from_pretrained(
        folder, do_lower_case=True, bos_token="[DEC]", model_max_length=64
    )
    image_processor = BlipImageProcessor(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
    return BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)


def make_tiny_model(seed: int = 0):
    """A random ``BlipForConditionalGeneration`` (eval mode, float32) with the tiny shapes."""
    from transformers import BlipConfig, BlipForConditionalGeneration

    vocab = {tok: i for i, tok in enumerate(TINY_VOCAB)}
    text = {
        "vocab_size": len(TINY_VOCAB),
        "hidden_size": 32,
        "encoder_hidden_size": 32,
        "intermediate_size": 64,
        "projection_dim": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 64,
        "bos_token_id": vocab["[DEC]"],
        "eos_token_id": vocab["[SEP]"],
        "sep_token_id": vocab["[SEP]"],
        "pad_token_id": vocab["[PAD]"],
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "projection_dim": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": TINY_IMAGE_SIZE,
        "patch_size": 8,
        "initializer_range": 0.02,  # BLIP's default 1e-10 makes every image look the same
    }
    config = BlipConfig(
        text_config=text, vision_config=vision, projection_dim=32, image_text_hidden_size=32
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    # A random decoder's logits are all near zero; widen them so that greedy decoding depends
    # clearly on the image and the prefix (no near-ties between batched and single runs).
    with torch.no_grad():
        for p in model.text_decoder.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.2)
    return model


def make_tiny_blip(folder: Path, seed: int = 0, safe: bool = True) -> Path:
    """Build, save (safetensors unless ``safe`` is False) and return a tiny BLIP folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = make_tiny_model(seed)
    model.save_pretrained(folder, safe_serialization=safe)
    make_tiny_processor(folder).save_pretrained(folder)
    return folder
