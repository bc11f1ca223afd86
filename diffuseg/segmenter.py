"""The public entry point: a method bound to a (lazily loaded) backbone.

``Segmenter.encode`` runs the expensive UNet pass once; ``Segmenter.segment`` turns an image or a
saved Encoding into a Segmentation with any settings, without the model when given an Encoding;
``Segmenter.name`` names its segments with class names (CLIP) or a caption's words
(cross-attention), each model loaded on first use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diffuseg.methods import MethodSpec, get_method
from diffuseg.types import Encoding, Segmentation

ImageLike = str | Path | np.ndarray | Any  # a path, an (H, W, 3) uint8 array or a PIL image


def backbone_defaults(method: str, backbone: str | None, meta: dict | None = None) -> dict:
    """Per-backbone config defaults of ``method`` (e.g. DiffCut's tau 0.2 on SD 1.x).

    The backbone is a preset name or a local folder; failing that, an Encoding's ``meta``
    (its recorded backbone or family) decides. Unknown backbones give no defaults.
    """
    from diffuseg.backbones.registry import FAMILY_METHOD_DEFAULTS, get_preset, resolve_backbone

    meta = meta or {}
    name = backbone if backbone is not None else meta.get("backbone")
    preset = get_preset(str(name)) if name else None
    if preset is None and backbone is not None and Path(backbone).is_dir():
        preset = resolve_backbone(backbone)  # reads the folder's configs, loads no weights
    if preset is not None:
        return preset.defaults_for(method)
    return dict(FAMILY_METHOD_DEFAULTS.get(meta.get("family"), {}).get(method, {}))


class Segmenter:
    """A segmentation method bound to a diffusion backbone.

    Args:
        method: a name from :func:`diffuseg.list_methods` ("diffcut", "diffseg", "ncut", ...).
        backbone: a preset name (:func:`diffuseg.list_backbones`) or a local model folder;
            default: the method's paper backbone. Loaded on first use only. An already loaded
            :class:`~diffuseg.backbones.diffusion.Backbone` is used as it is.
        device, dtype: where and how the backbone runs (default: CUDA when available, in the
            method's published precision: DiffCut fp16, DiffSeg / DWC / k-means fp32; else CPU
            float32).
        size: long side (px) the image is resized to before encoding (default: the preset's).
        attention_timestep: timestep of the self-attention pass (default 300), or a list to
            average the attention over several timesteps (DWC's option).
        clip: the CLIP model that names segments by class (open_clip ConvNeXt: a folder, hub id
            or ``name:tag``; default DiffCut's ``convnext_large_d_320``), loaded on first use; or
            an already loaded model (anything with ``dense``, ``head`` and ``encode_text``).
        clip_size: long side (px) of CLIP's input, rounded to a multiple of 32 (DiffCut: 1024).
        captioner: the captioning model for ``caption="auto"`` (default DiffSeg's BLIP).
        **config: settings of the method (see its config dataclass), e.g. ``tau=0.4``.

    Example:
        >>> seg = Segmenter(method="ncut").segment("photo.jpg")
        >>> seg.labels.shape  # (H, W) int32, values 0..K-1
        >>> seg = Segmenter().segment("photo.jpg", classes=["cat", "dog", "grass"])
        >>> seg.names  # {label: class name}, segments of one class merged
    """

    def __init__(
        self,
        method: str = "diffcut",
        backbone: str | Path | Any = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        size: int | None = None,
        attention_timestep: int | list[int] | None = None,
        clip: str | Path | None = None,
        clip_size: int = 1024,
        captioner: str | Path | None = None,
        **config: Any,
    ) -> None:
        self.spec: MethodSpec = get_method(method)
        loaded = backbone if hasattr(backbone, "encode") and hasattr(backbone, "preset") else None
        if loaded is not None:
            backbone = loaded.preset.name
        self.backbone_name = (
            str(backbone) if backbone is not None else self.spec.default_backbone
        )
        self.device = device
        self.dtype = dtype
        self.size = size
        self.attention_timestep = attention_timestep
        self.overrides = dict(config)
        self.spec.make_config(self.overrides)  # fail now on unknown settings
        if int(clip_size) < 32:
            raise ValueError(f"clip_size must be at least 32, got {clip_size}")
        self._clip = clip if hasattr(clip, "dense") else None
        self.clip_name = None if clip is None else (
            type(clip).__name__ if self._clip is not None else str(clip))
        self.clip_size = int(clip_size)
        self.captioner_name = str(captioner) if captioner is not None else None
        self._backbone = loaded
        self._captioner = None
        self._classifiers: dict[tuple[str, ...], Any] = {}

    @property
    def method(self) -> str:
        return self.spec.name

    @property
    def backbone(self):
        """The loaded backbone (loads it on first access)."""
        if self._backbone is None:
            if self.backbone_name is None:
                raise ValueError(f"method {self.method!r} needs no backbone")
            from diffuseg.backbones import load_backbone

            self._backbone = load_backbone(self.backbone_name, device=self.device, dtype=self.dtype,
                                           cuda_dtype=self.spec.cuda_dtype)
        return self._backbone

    @property
    def clip(self):
        """The CLIP model that names segments by class (loads it on first access)."""
        if self._clip is None:
            from diffuseg.labels.clip_model import DEFAULT_CLIP, load_clip

            self._clip = load_clip(self.clip_name or DEFAULT_CLIP, device=self.device,
                                   dtype=self.dtype)
        return self._clip

    @property
    def captioner(self):
        """The captioning model of ``caption="auto"`` (loads it on first access)."""
        if self._captioner is None:
            from diffuseg.labels.captioner import DEFAULT_CAPTIONER, load_captioner

            self._captioner = load_captioner(self.captioner_name or DEFAULT_CAPTIONER,
                                             device=self.device, dtype=self.dtype)
        return self._captioner

    def config(self, encoding: Encoding | None = None, **overrides: Any):
        """The resolved config: published defaults, then the backbone's, then the user's."""
        defaults = {}
        if self.spec.needs_backbone:
            meta = encoding.meta if encoding is not None else None
            name = self.backbone_name if encoding is None else None
            defaults = backbone_defaults(self.method, name, meta)
        return self.spec.make_config({**self.overrides, **overrides}, defaults=defaults)

    def encode(self, image: ImageLike) -> Encoding:
        """Run the backbone once on an image (or only load it, for methods without a backbone).

        Args:
            image: a path, a PIL image or an (H, W, 3) uint8 array.
        Returns:
            Encoding with what this method needs (features and/or attention, and the image).
        """
        from diffuseg.io import load_image

        return self.encode_batch([load_image(image)])[0]

    def encode_batch(self, images: Sequence[np.ndarray], batch_size: int = 4) -> list[Encoding]:
        """Encode several (H, W, 3) uint8 images; those that reach the same processed size go
        through the backbone together, ``batch_size`` at a time. Returns one Encoding per
        image, in order (without a backbone: the images, wrapped)."""
        if not self.spec.needs_backbone or not images:
            return [Encoding(image=a, meta={"original_size": list(a.shape[:2])}) for a in images]
        extra = {} if self.attention_timestep is None else {
            "attention_timestep": self.attention_timestep}
        return self.backbone.encode(
            list(images),
            features="features" in self.spec.needs,
            attention="attention" in self.spec.needs,
            size=self.size,
            batch_size=batch_size,
            **extra,
        )

    def segment(
        self,
        image_or_encoding: ImageLike | Encoding,
        output_size: tuple[int, int] | None = None,
        *,
        classes: Sequence[str] | None = None,
        caption: str | None = None,
        words: Sequence[str] | None = None,
        voting: str = "mean",
        merge: bool = True,
        **overrides: Any,
    ) -> Segmentation:
        """Segment an image, or re-segment a saved Encoding without the model.

        Args:
            image_or_encoding: a path, PIL image, (H, W, 3) uint8 array, or an Encoding.
            output_size: (H, W) of the labels; default the original image size.
            classes, caption, words, voting, merge: name the segments (:meth:`name`).
            **overrides: settings for this call only.
        Returns:
            Segmentation: labels (H, W) int32 in 0..K-1, hierarchy, segments, resolved config.
        """
        if isinstance(image_or_encoding, Encoding):
            encoding = image_or_encoding
            config = self.config(encoding, **overrides)
        else:
            config = self.config(**overrides)
            encoding = self.encode(image_or_encoding)
        missing = {p for p in self.spec.needs if _part(encoding, p) is None}
        if missing:
            raise ValueError(
                f"method {self.method!r} needs {sorted(missing)} but this Encoding has none; "
                f"encode it with that part (diffuseg encode --method {self.method})"
            )
        result = self.spec.run(encoding, config, output_size)
        if classes is None and caption is None:
            return result
        return self.name(result, encoding, classes=classes, caption=caption, words=words,
                         voting=voting, merge=merge)

    def name(
        self,
        segmentation: Segmentation,
        image_or_encoding: ImageLike | Encoding,
        *,
        classes: Sequence[str] | None = None,
        caption: str | None = None,
        words: Sequence[str] | None = None,
        voting: str = "mean",
        merge: bool = True,
    ) -> Segmentation:
        """Name the segments of ``segmentation``: by class names (CLIP) or by a caption's words.

        Args:
            segmentation: what :meth:`segment` returned for this image.
            image_or_encoding: the image (path, PIL, array) or its Encoding (needed for a
                caption: the cross-attention is computed on the encoding's latent).
            classes: class names (DiffCut's open-vocabulary step: masked pooling of CLIP's dense
                features, argmax over the 14-template text embeddings); "a, b" are synonyms.
            caption: a caption whose words name the segments (DiffSeg's cross-attention), or
                "auto" to caption the image with the captioning model first.
            words: with ``caption``: the words that may name segments (default its non-stopwords).
            voting: with ``caption``: "mean" or "majority".
            merge: with ``classes``: merge segments of the same class (DiffCut); the merged
                segmentation has no hierarchy and each record lists the labels it merged.
        Returns:
            A new Segmentation whose segment records carry ``name`` (and ``score``, the cosine
            similarity of the winning class, for classes); ``config`` records how.
        """
        if (classes is None) == (caption is None):
            raise ValueError("name segments by classes or by a caption (exactly one)")
        if classes is not None:
            return self._name_by_classes(segmentation, image_or_encoding, classes, merge)
        return self._name_by_caption(segmentation, image_or_encoding, caption, words, voting)

    def _image_of(self, image_or_encoding: ImageLike | Encoding) -> np.ndarray:
        from diffuseg.io import load_image

        if isinstance(image_or_encoding, Encoding):
            if image_or_encoding.image is None:
                raise ValueError("this Encoding holds no image: pass the image to name segments")
            return image_or_encoding.image
        return load_image(image_or_encoding)

    def _name_by_classes(self, seg: Segmentation, image_or_encoding: ImageLike | Encoding,
                         classes: Sequence[str], merge: bool) -> Segmentation:
        from diffuseg.backbones.diffusion import resize_dims
        from diffuseg.labels.clip import (
            build_text_classifier,
            classify_pooled,
            mask_pool,
            merge_named_segments,
        )
        from diffuseg.labels.clip_model import DEFAULT_CLIP
        from diffuseg.types import segment_records

        names = tuple(str(c).strip() for c in classes)
        if not names or not all(names):
            raise ValueError("classes must be non-empty names")
        if names not in self._classifiers:  # text embeddings once per class list
            self._classifiers[names] = build_text_classifier(self.clip.encode_text, names)
        classifier = self._classifiers[names]
        image = self._image_of(image_or_encoding)
        size = resize_dims(*image.shape[:2], self.clip_size, multiple=32)
        pooled = mask_pool(self.clip.dense(image, size), seg.labels)
        cls, sims = classify_pooled(pooled, classifier, self.clip.head)
        cls = cls.tolist()
        config = {**seg.config, "classes": list(names), "clip": self.clip_name or DEFAULT_CLIP,
                  "clip_size": self.clip_size, "merge": bool(merge)}
        if not merge:
            records = [{**r, "name": names[cls[r["label"]]],
                        "score": round(float(sims[r["label"], cls[r["label"]]]), 6)}
                       for r in seg.segments]
            return dataclasses.replace(seg, segments=records, config=config)
        labels, merged_classes = merge_named_segments(seg.labels, cls)
        records = segment_records(labels)
        for r in records:
            c = int(merged_classes[r["label"]])
            members = [s["label"] for s in seg.segments if cls[s["label"]] == c]
            r.update(name=names[c], score=round(max(float(sims[m, c]) for m in members), 6),
                     merged_from=members)
        return Segmentation(labels=labels, hierarchy=None, segments=records, config=config)

    def _name_by_caption(self, seg: Segmentation, image_or_encoding: ImageLike | Encoding,
                         caption: str, words: Sequence[str] | None,
                         voting: str) -> Segmentation:
        from diffuseg.labels import name_segments_from_caption

        if not self.spec.needs_backbone:
            raise ValueError(f"naming by caption needs a diffusion method; {self.method!r} "
                             "reads no model")
        if voting not in ("mean", "majority"):
            raise ValueError(f"voting must be 'mean' or 'majority', got {voting!r}")
        encoding = image_or_encoding
        if not isinstance(encoding, Encoding):
            encoding = self.encode(encoding)
        config = dict(seg.config)
        if str(caption).strip().lower() == "auto":
            caption = self.captioner.caption(self._image_of(encoding))
            from diffuseg.labels.captioner import DEFAULT_CAPTIONER

            config["captioner"] = self.captioner_name or DEFAULT_CAPTIONER
        named = name_segments_from_caption(self.backbone, encoding, seg.labels, caption,
                                           list(words) if words else None, voting=voting)
        records = [{**r, "name": named.names[r["label"]]} for r in seg.segments]
        config.update(caption=caption, voting=voting)
        if words:
            config["words"] = list(words)
        return dataclasses.replace(seg, segments=records, config=config)


def _part(encoding: Encoding, part: str):
    if part == "attention":
        return encoding.attention or None
    return getattr(encoding, part)


def segment(
    image: ImageLike | Encoding,
    method: str = "diffcut",
    backbone: str | Path | None = None,
    **overrides: Any,
) -> Segmentation:
    """One call: ``Segmenter(method, backbone).segment(image, **overrides)``.

    Args:
        image: a path, PIL image, (H, W, 3) uint8 array or an Encoding.
        method, backbone: as for :class:`Segmenter`.
        **overrides: method settings (``tau=...``), or ``device``, ``dtype``, ``size``,
            ``output_size``.
    """
    init = {k: overrides.pop(k) for k in ("device", "dtype", "size", "attention_timestep")
            if k in overrides}
    output_size = overrides.pop("output_size", None)
    return Segmenter(method, backbone, **init, **overrides).segment(image, output_size=output_size)
