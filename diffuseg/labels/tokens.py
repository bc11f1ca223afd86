"""Words of a caption and their token positions in a CLIP prompt.

CLIP's tokenizer first splits the lower-cased, whitespace-normalised text into pieces with one
regular expression (letters runs, single digits, runs of other symbols, English clitics), then
byte-pair-encodes each piece on its own, the last token of a piece carrying ``</w>``. So the
tokens of a caption are the concatenation of the tokens of its pieces, and a word's positions
are found by matching pieces, never token ids: a sub-word search would find "ball" inside
"football" (``foot``, ``ball</w>``).

:func:`word_token_indices` does that for any CLIP tokenizer (transformers ``CLIPTokenizer``,
slow or fast) and checks the assumption on every call: if the concatenated piece tokens differ
from the caption's tokens, it raises instead of returning wrong positions.

:func:`clip_tokenizer` builds Stable Diffusion's (and open_clip's) tokenizer offline from the
real CLIP BPE vocabulary, shipped in ``diffuseg/assets`` (``bpe_simple_vocab_16e6.txt.gz``, OpenAI
CLIP's file; see the assets README for its source and licence).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import regex

from diffuseg.labels.templates import STOPWORDS

__all__ = [
    "caption_pieces",
    "caption_words",
    "clip_bpe_path",
    "clip_tokenizer",
    "word_token_indices",
]

#: CLIP's pre-tokenisation pattern (openai/CLIP ``simple_tokenizer.py``; the same in transformers'
#: ``CLIPTokenizer``), applied to lower-cased text with collapsed whitespace.
_PIECES = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def caption_pieces(text: str) -> list[str]:
    """CLIP's pieces of ``text``: ``"A hot-dog's bun"`` -> a, hot, -, dog, 's, bun."""
    return _PIECES.findall(" ".join(str(text).split()).lower())


def caption_words(
    caption: str, words: Sequence[str] | None = None, stopwords: Iterable[str] = STOPWORDS
) -> list[str]:
    """The words that may name segments.

    Args:
        caption: the prompt text.
        words: the user's words (each must occur in the caption as whole pieces, e.g. "cat" in
            "a cat." but not in "cats"; multi-piece words such as "hot-dog" or "traffic light"
            are allowed); None: every alphabetic piece of the caption that is not a stopword.
        stopwords: lower-case words dropped when ``words`` is None.
    Returns:
        Distinct words, lower case, in order of first appearance (given order for ``words``).
    Raises:
        ValueError: a given word does not occur in the caption, or no word is left.
    """
    pieces = caption_pieces(caption)
    if words is not None:
        out: list[str] = []
        for w in words:
            key = " ".join(str(w).split()).lower()
            if not key:
                continue
            if not _find(pieces, caption_pieces(key)):
                raise ValueError(f"word {w!r} does not occur in the caption {caption!r}")
            if key not in out:
                out.append(key)
    else:
        stop = {s.lower() for s in stopwords}
        out = []
        for p in pieces:
            if p.isalpha() and p not in stop and p not in out:
                out.append(p)
    if not out:
        raise ValueError(f"no words to label with in the caption {caption!r}")
    return out


def _find(haystack: list[str], needle: list[str]) -> list[int]:
    """Start positions of ``needle`` in ``haystack`` (both lists of pieces)."""
    n = len(needle)
    if n == 0:
        return []
    return [i for i in range(len(haystack) - n + 1) if haystack[i : i + n] == needle]


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def word_token_indices(
    tokenizer: Any,
    caption: str,
    words: Sequence[str] | None = None,
    *,
    stopwords: Iterable[str] = STOPWORDS,
) -> dict[str, list[int]]:
    """Word -> positions of its tokens in the prompt the text encoder sees.

    Positions count the start token: the caption's first token is at 1, as in
    ``tokenizer(caption).input_ids`` and in the cross-attention maps of
    :meth:`~diffuseg.backbones.diffusion.Backbone.cross_attention`. A word spanning several
    tokens ("skateboarder" -> ``skate``, ``boar``, ``der</w>``) gets all of them; a word that
    occurs several times gets the tokens of every occurrence. Tokens past the tokenizer's
    ``model_max_length`` (the end token included) are dropped, as truncation drops them.

    Args:
        tokenizer: a CLIP tokenizer (transformers ``CLIPTokenizer`` or compatible: callable with
            ``add_special_tokens=False``, returning ``input_ids``).
        caption: the prompt text.
        words: see :func:`caption_words` (None: the caption's words minus ``stopwords``).
    Returns:
        {word: sorted token positions}, words in :func:`caption_words` order.
    Raises:
        ValueError: a given word is missing from the caption or truncated away entirely (words
            chosen by default that are truncated away are skipped), or the tokenizer does not
            split text the way CLIP does.
    """
    chosen = caption_words(caption, words, stopwords)
    pieces = caption_pieces(caption)
    starts: list[int] = []
    flat: list[int] = []
    for piece in pieces:
        starts.append(len(flat))
        flat.extend(_ids(tokenizer, piece))
    starts.append(len(flat))
    whole = _ids(tokenizer, caption)
    if whole != flat:
        raise ValueError(
            "the tokenizer does not split text into CLIP pieces (token ids of the caption differ "
            "from those of its pieces): word positions cannot be trusted"
        )
    limit = int(getattr(tokenizer, "model_max_length", 77) or 77) - 1  # the end token's slot
    result: dict[str, list[int]] = {}
    for word in chosen:
        wp = caption_pieces(word)
        positions: list[int] = []
        for s in _find(pieces, wp):
            positions.extend(1 + t for t in range(starts[s], starts[s + len(wp)]))
        positions = sorted(p for p in set(positions) if p < limit)
        if not positions:
            if words is None:  # a long (e.g. generated) caption: its tail is not seen, skip it
                continue
            raise ValueError(f"word {word!r} lies past the prompt's {limit + 1} tokens")
        result[word] = positions
    if not result:
        raise ValueError(f"no word of the caption lies within the prompt's {limit + 1} tokens")
    return result


# ---------------------------------------------------------------------------------------------
# the real CLIP vocabulary, offline
# ---------------------------------------------------------------------------------------------
_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
_NUM_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48,894 merges: 49,408 tokens in all


def clip_bpe_path() -> Path:
    """Path of the CLIP BPE file shipped with diffuseg (``diffuseg/assets``)."""
    path = Path(__file__).resolve().parents[1] / "assets" / _BPE_FILE
    if not path.is_file():  # pragma: no cover - a broken installation
        raise FileNotFoundError(f"{path} is missing: reinstall diffuseg")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP's reversible byte -> printable character table, in CLIP's order (the
    printable bytes first, then the others mapped to 256, 257, ...): the order of the first 256
    vocabulary entries."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def clip_tokenizer(folder: str | Path, bpe_path: str | Path | None = None) -> Any:
    """Stable Diffusion's CLIP tokenizer built offline from the CLIP BPE file.

    Writes ``vocab.json`` and ``merges.txt`` (the layout of a pipeline's ``tokenizer/`` folder)
    into ``folder`` and returns a transformers ``CLIPTokenizer`` (49,408 tokens, max length 77,
    pad = end token as SD 1.x).

    Args:
        folder: where to write the two files (created if needed).
        bpe_path: the ``.txt.gz`` BPE file; default :func:`clip_bpe_path`.
    """
    from transformers import CLIPTokenizer

    src = Path(bpe_path) if bpe_path is not None else clip_bpe_path()
    lines = gzip.open(src, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(m.split()) for m in lines[1 : _NUM_MERGES + 1]]
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(
        json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False), encoding="utf-8"
    )
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
    return CLIPTokenizer(
        vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=77
    )
