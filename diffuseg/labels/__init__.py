"""Naming the segments: caption words (DiffSeg's cross-attention) and open-vocabulary classes
(DiffCut's CLIP mask classification).

- :mod:`diffuseg.labels.caption`: :func:`caption_names`, :func:`name_segments_from_caption`.
- :mod:`diffuseg.labels.clip`: :func:`mask_pool`, :func:`build_text_classifier`,
  :func:`classify_pooled`, :func:`classify_segments`, :func:`merge_named_segments`,
  :func:`name_with_classes`; :mod:`diffuseg.labels.clip_model`: :func:`load_clip` (open_clip's
  ConvNeXt CLIP in plain torch).
- :mod:`diffuseg.labels.tokens`: :func:`word_token_indices`, :func:`caption_words`,
  :func:`clip_tokenizer`.
- :mod:`diffuseg.labels.templates`: the 14 ViLD templates, stopwords.

Importing this package does not import open_clip (never needed), diffusers or transformers.
"""

from __future__ import annotations

from diffuseg.labels.caption import (
    CaptionNames,
    aggregate_cross_attention,
    caption_names,
    name_segments_from_caption,
    vote_words,
    word_maps,
)
from diffuseg.labels.clip import (
    TextClassifier,
    build_text_classifier,
    classify_pooled,
    classify_segments,
    mask_pool,
    merge_named_segments,
    name_with_classes,
)
from diffuseg.labels.clip_model import ClipModel, load_clip
from diffuseg.labels.templates import STOPWORDS, VILD_TEMPLATES
from diffuseg.labels.tokens import caption_words, clip_tokenizer, word_token_indices

__all__ = [
    "STOPWORDS",
    "VILD_TEMPLATES",
    "CaptionNames",
    "ClipModel",
    "TextClassifier",
    "aggregate_cross_attention",
    "build_text_classifier",
    "caption_names",
    "caption_words",
    "classify_pooled",
    "classify_segments",
    "clip_tokenizer",
    "load_clip",
    "mask_pool",
    "merge_named_segments",
    "name_segments_from_caption",
    "name_with_classes",
    "vote_words",
    "word_maps",
    "word_token_indices",
]
