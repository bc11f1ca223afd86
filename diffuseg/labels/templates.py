"""Text data for naming segments: prompt templates, stopwords, class-name synonyms.

Sources (facts carried over, written out here):
- ``VILD_TEMPLATES``: the 14 prompt templates of ViLD (Gu et al., "Open-vocabulary Object
  Detection via Vision and Language Knowledge Distillation", ICLR 2022), as used by FC-CLIP
  (bytedance/fc-clip) and DiffCut (PaulCouairon/DiffCut ``tools/clip_classifier.py``,
  ``VILD_PROMPT``): the same 14 strings in the same order, including their inconsistent final
  periods. A class's text embedding is the mean of its 14 normalised template embeddings,
  normalised again.
- ``STOPWORDS``: a small list of English function words (articles, prepositions, pronouns,
  auxiliaries, conjunctions) dropped when the nouns of a caption are not given: enough for
  captions such as "a cat sitting on the grass next to a dog"; no NLP dependency.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["STOPWORDS", "VILD_TEMPLATES", "expand_templates", "split_synonyms"]

#: The 14 ViLD prompt templates ("{}" is the class name).
VILD_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

#: Words that never name a segment (lower case).
STOPWORDS: frozenset[str] = frozenset(
    """
    a an the this that these those some any each every no
    of in on at to from by with without into onto over under above below behind between
    beside besides near next through across along around against among up down out off
    and or but nor so yet as than then there here
    is are was were be been being am has have had having do does did
    it its it's they them their he him his she her hers we us our you your i me my
    who whom whose which what where when while
    very too also just only not
    's 't
    """.split()
)


def split_synonyms(name: str) -> list[str]:
    """The synonyms of one class name: ``"person, people"`` -> ``["person", "people"]``.

    Comma-separated alternatives, stripped, empty parts dropped (the detectron2 metadata
    convention FC-CLIP and DiffCut read class names in).

    Raises:
        ValueError: the name holds no text.
    """
    parts = [p.strip() for p in str(name).split(",")]
    parts = [p for p in parts if p]
    if not parts:
        raise ValueError(f"empty class name {name!r}")
    return parts


def expand_templates(name: str, templates: Sequence[str] = VILD_TEMPLATES) -> list[str]:
    """The prompts of one class name (one synonym): ``[t.format(name) for t in templates]``."""
    if not templates:
        raise ValueError("no prompt templates")
    return [t.format(name) for t in templates]
