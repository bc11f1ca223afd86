"""A captioning model for caption labels: DiffSeg names segments with the nouns of a caption, and
when the user gives none, the caption comes from BLIP.

DiffSeg's notebook (google/diffseg ``diffseg.ipynb``, cells "1b. Initialize BLIP (optional)" and
"2. Run Inference on Real Images"; the same code in ``diffseg/diffseg.ipynb``) loads
``Salesforce/blip-image-captioning-base`` (``AutoProcessor`` + ``TFBlipForConditionalGeneration``),
captions with ``processor(images=image)`` (no text prompt: unconditional captioning), then
``blip.generate(**inputs)`` with the generation defaults (greedy search, no sampling, one beam)
and ``processor.decode(out[0], skip_special_tokens=True)``; the caption's nouns (NLTK POS tags
``NN*``) are the candidate names. :class:`Captioner` does the same in PyTorch, greedy by default,
with the settings passed explicitly so that a checkpoint's ``generation_config.json`` cannot turn
sampling on. The length limit is DiffSeg's too: the defaults' ``max_length=20`` counts the start
token, hence ``max_new_tokens=19`` (raise it to let long captions finish).

:func:`load_captioner` follows the backbones' loading rules: a local folder (written by
``save_pretrained``) or a hub id (``snapshot_download``, only the files needed, the cache only
when ``HF_HUB_OFFLINE`` is set), safetensors only (never ``torch.load`` / pickle, never remote
code), and :class:`~diffuseg.backbones.registry.WeightsNotFoundError` with a one-line message
when the weights are not there.

Importing this module does not import transformers (only loading does).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffuseg.backbones.diffusion import (
    default_device,
    missing_errors,
    resolve_dtype,
    transformers_dtype_kw,
)
from diffuseg.backbones.registry import (
    WeightsNotFoundError,
    describe_missing,
    hub_snapshot,
    looks_like_path,
    weights_help,
)

__all__ = ["DEFAULT_CAPTIONER", "HUB_PATTERNS", "Captioner", "load_captioner"]

log = logging.getLogger(__name__)

#: DiffSeg's captioner (google/diffseg ``diffseg.ipynb``, cell "1b. Initialize BLIP").
DEFAULT_CAPTIONER = "Salesforce/blip-image-captioning-base"

#: The only files read from a hub repository: configs, processor / tokenizer files and
#: safetensors weights (no pytorch_model.bin, no tf_model.h5).
HUB_PATTERNS = [
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
]

_PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


# ---------------------------------------------------------------------------------------------
# the captioner
# ---------------------------------------------------------------------------------------------
def _check_image(image: Any, index: int | None = None) -> np.ndarray:
    """``image`` as a contiguous (H, W, 3) uint8 array, or a ValueError saying what is wrong."""
    where = "image" if index is None else f"image {index}"
    arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"{where}: expected an (H, W, 3) RGB array, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(
            f"{where}: expected dtype uint8 (values 0..255), got {arr.dtype}; for floats in "
            "[0, 1] use (x * 255).round().astype(np.uint8)"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{where}: empty image of shape {arr.shape}")
    return np.ascontiguousarray(arr)


class Captioner:
    """A BLIP captioning model (``BlipForConditionalGeneration``) and its ``BlipProcessor``.

    Build with :func:`load_captioner`. Decoding is deterministic: greedy search by default
    (DiffSeg's setting), beam search with ``num_beams > 1``; never sampling.

    Attributes:
        model: the transformers model (eval mode) on ``device`` in ``dtype``.
        processor: its processor (BLIP image processor + BERT tokenizer).
        device, dtype: where and in which precision it runs.
        num_beams: 1 = greedy (DiffSeg), more = beam search.
        name: where it was loaded from (hub id or folder), for records.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        device: torch.device | str | None = None,
        num_beams: int = 1,
        name: str = "",
    ) -> None:
        if int(num_beams) < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        self.model = model.eval()
        self.processor = processor
        self.device = (
            torch.device(device) if device is not None else next(model.parameters()).device
        )
        self.num_beams = int(num_beams)
        self.name = name

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def __repr__(self) -> str:
        return f"Captioner({self.name!r}, device={self.device}, dtype={self.dtype})"

    def caption(
        self, image: np.ndarray, prompt: str | None = None, max_new_tokens: int = 19
    ) -> str:
        """Caption one image.

        Args:
            image: (H, W, 3) uint8 RGB, any size (the processor resizes it to the model's input,
                384 x 384 for BLIP).
            prompt: optional text the caption must continue (BLIP's conditional captioning,
                e.g. ``"a picture of"``); None or blank = unconditional, as DiffSeg.
            max_new_tokens: at most this many tokens are generated after the prompt.
        Returns:
            The caption, whitespace-stripped, lower case (BLIP's tokenizer is uncased). With a
            prompt, only the continuation: BLIP echoes the prompt at the start of its output and
            that echo is removed, so the prompt's own words do not become segment names.
        Raises:
            ValueError: the image is not (H, W, 3) uint8, or ``max_new_tokens`` < 1.
        """
        return self.caption_many([image], prompt=prompt, max_new_tokens=max_new_tokens)[0]

    def caption_many(
        self,
        images: Sequence[np.ndarray],
        prompt: str | None = None,
        max_new_tokens: int = 19,
        batch_size: int = 8,
    ) -> list[str]:
        """Caption several images, ``batch_size`` at a time; the same captions as
        :meth:`caption` one by one (one shared prompt, so no text padding is involved).

        Args:
            images: (H, W, 3) uint8 RGB arrays, sizes may differ. All are checked before any is
                captioned.
            prompt, max_new_tokens: as for :meth:`caption`.
            batch_size: images per ``generate`` call.
        Returns:
            One caption per image, in order.
        """
        arrays = [_check_image(im, i) for i, im in enumerate(images)]
        if isinstance(max_new_tokens, bool) or int(max_new_tokens) != max_new_tokens:
            raise ValueError(f"max_new_tokens must be an integer, got {max_new_tokens!r}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if prompt is not None and not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string or None, got {type(prompt).__name__}")
        prompt = prompt.strip() if prompt and prompt.strip() else None
        captions: list[str] = []
        for start in range(0, len(arrays), int(batch_size)):
            captions += self._generate(
                arrays[start : start + int(batch_size)], prompt, int(max_new_tokens)
            )
        return captions

    @torch.inference_mode()
    def _generate(self, arrays: list[np.ndarray], prompt: str | None, max_new: int) -> list[str]:
        from PIL import Image

        # PIL images, not arrays: the processor would have to guess the channel axis of an
        # array (ambiguous for, e.g., a 3 x 3 x 3 image).
        pil = [Image.fromarray(a) for a in arrays]
        texts = None if prompt is None else [prompt] * len(pil)
        inputs = self.processor(images=pil, text=texts, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.dtype)
        kwargs: dict[str, Any] = {}
        if prompt is not None:
            kwargs["input_ids"] = inputs["input_ids"].to(self.device)
            kwargs["attention_mask"] = inputs["attention_mask"].to(self.device)
        out = self.model.generate(
            pixel_values=pixel_values,
            max_new_tokens=max_new,
            num_beams=self.num_beams,
            do_sample=False,
            **kwargs,
        ).cpu()
        if prompt is None:
            return [self._decode(row) for row in out]
        # BLIP's generate swaps [CLS] for its decoder start token, drops the trailing [SEP] and
        # returns start token + prompt + continuation: the first (prompt length - 1) tokens are
        # the echo.
        n_prefix = inputs["input_ids"].shape[1] - 1
        return [self._strip_prompt(row, n_prefix) for row in out]

    def _decode(self, ids: torch.Tensor) -> str:
        return self.processor.decode(ids, skip_special_tokens=True).strip()

    def _strip_prompt(self, ids: torch.Tensor, n_prefix: int) -> str:
        # Decode the whole output and remove the decoded prompt from its start: decoding the
        # continuation alone would lose how its first WordPiece joins the prompt ("##s").
        full = self._decode(ids)
        prefix = self._decode(ids[:n_prefix])
        if prefix and full.startswith(prefix):
            return full[len(prefix) :].strip()
        return self._decode(ids[n_prefix:])


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
def _help(repo_id: str | None) -> str:
    """One sentence (no newline) on how to provide a captioner's weights."""
    local = "a local BLIP folder written by save_pretrained (safetensors weights)"
    return f"Pass {local}." if repo_id is None else weights_help(repo_id, local)


def _captioner_folder(name: str) -> tuple[Path, str | None]:
    """(local folder with the files, hub id or None for a local folder)."""
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve(), None
    if looks_like_path(name):
        raise WeightsNotFoundError(f"no captioning model folder at {path}. {_help(None)}")
    return hub_snapshot(name, HUB_PATTERNS, f"the captioning model {name!r}", _help(name)), name


def _check_folder(folder: Path, where: str, repo_id: str | None) -> None:
    """Raise WeightsNotFoundError if ``folder`` lacks what loading needs (checked before any
    file is read by transformers, so a .bin-only folder never reaches an unpickler)."""

    def missing(what: str) -> WeightsNotFoundError:
        return WeightsNotFoundError(
            f"cannot load the captioning model from {where}: {what}. {_help(repo_id)}"
        )

    config_path = folder / "config.json"
    if not config_path.is_file():
        raise missing("no config.json")
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError, AttributeError) as exc:
        raise missing(f"unreadable config.json ({exc.__class__.__name__})") from None
    if model_type != "blip":
        raise missing(f"config.json describes a {model_type!r} model, not BLIP")
    if not any(folder.glob("*.safetensors")):
        pickles = sorted(p.name for pat in _PICKLE_WEIGHTS for p in folder.glob(pat))
        if pickles:
            raise missing(
                f"only pickle weights ({', '.join(pickles)}), which diffuseg never loads; "
                "re-save them with save_pretrained(..., safe_serialization=True)"
            )
        raise missing("no model.safetensors")
    if not any(
        (folder / f).is_file() for f in ("preprocessor_config.json", "processor_config.json")
    ):
        raise missing("no preprocessor_config.json (the image processor)")
    if not any((folder / f).is_file() for f in ("tokenizer.json", "vocab.txt")):
        # transformers 5 silently builds an empty tokenizer when its files are missing.
        raise missing("no tokenizer.json or vocab.txt")


def load_captioner(
    name_or_path: str | os.PathLike = DEFAULT_CAPTIONER,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> Captioner:
    """Load a BLIP captioning model.

    Args:
        name_or_path: a hub id (default DiffSeg's ``Salesforce/blip-image-captioning-base``;
            downloaded on first use, only configs, tokenizer and safetensors weights; from the
            cache only when ``HF_HUB_OFFLINE`` is set or the hub cannot be reached) or a local
            folder (e.g. written by ``save_pretrained``).
        device: default ``cuda`` if available, else ``cpu``.
        dtype: default bf16 (fp16 where bf16 is unsupported) on CUDA, fp32 elsewhere. Half
            precision is used on CUDA only: asked for elsewhere, fp32 is used (with a warning).
    Returns:
        A :class:`Captioner` (greedy decoding, as DiffSeg).
    Raises:
        WeightsNotFoundError: not a folder, not in the cache, not a BLIP model, no safetensors
            weights, or processor / tokenizer files missing; the message is one line saying how
            to provide them.
    """
    name = os.fspath(name_or_path)
    device = torch.device(device) if device is not None else default_device()
    dtype = resolve_dtype(dtype, device)
    if device.type != "cuda" and dtype != torch.float32:
        # Half precision is slow or unsupported for some ops off CUDA; fp32 gives the same
        # greedy captions there at an affordable cost for one small model.
        log.warning("captioner: %s on %s is not supported, using float32", dtype, device.type)
        dtype = torch.float32

    folder, repo_id = _captioner_folder(name)
    where = str(folder) if repo_id is None else f"{repo_id} (files in {folder})"
    _check_folder(folder, where, repo_id)

    from transformers import BlipForConditionalGeneration, BlipProcessor

    try:
        # Explicit classes (never AutoModel with remote code); use_safetensors=True makes
        # transformers refuse a pickle file rather than fall back to it.
        processor = BlipProcessor.from_pretrained(str(folder), local_files_only=True)
        model = BlipForConditionalGeneration.from_pretrained(
            str(folder),
            local_files_only=True,
            use_safetensors=True,
            **{transformers_dtype_kw(): dtype},
        )
    except missing_errors() as exc:
        raise WeightsNotFoundError(
            f"cannot load the captioning model from {where}: {describe_missing(exc)}. "
            f"{_help(repo_id)}"
        ) from None
    return Captioner(model.to(device).eval(), processor, device=device, name=name)
