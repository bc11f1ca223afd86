"""The public entry point: a method bound to a (lazily loaded) backbone.

``Segmenter.encode`` runs the expensive UNet pass once; ``Segmenter.segment`` turns an image or a
saved Encoding into a Segmentation with any settings, without the model when given an Encoding.
"""

from __future__ import annotations

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
            default: the method's paper backbone. Loaded on first use only.
        device, dtype: where and how the backbone runs (default: CUDA with half precision when
            available, else CPU float32).
        size: long side (px) the image is resized to before encoding (default: the preset's).
        attention_timestep: timestep of the self-attention pass (default 300), or a list to
            average the attention over several timesteps (DWC's option).
        **config: settings of the method (see its config dataclass), e.g. ``tau=0.4``.

    Example:
        >>> seg = Segmenter(method="ncut").segment("photo.jpg")
        >>> seg.labels.shape  # (H, W) int32, values 0..K-1
    """

    def __init__(
        self,
        method: str = "diffcut",
        backbone: str | Path | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        size: int | None = None,
        attention_timestep: int | list[int] | None = None,
        **config: Any,
    ) -> None:
        self.spec: MethodSpec = get_method(method)
        self.backbone_name = (
            str(backbone) if backbone is not None else self.spec.default_backbone
        )
        self.device = device
        self.dtype = dtype
        self.size = size
        self.attention_timestep = attention_timestep
        self.overrides = dict(config)
        self.spec.make_config(self.overrides)  # fail now on unknown settings
        self._backbone = None

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

            self._backbone = load_backbone(self.backbone_name, device=self.device, dtype=self.dtype)
        return self._backbone

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

        array = load_image(image)
        if not self.spec.needs_backbone:
            return Encoding(image=array, meta={"original_size": list(array.shape[:2])})
        extra = {} if self.attention_timestep is None else {
            "attention_timestep": self.attention_timestep}
        (encoding,) = self.backbone.encode(
            [array],
            features="features" in self.spec.needs,
            attention="attention" in self.spec.needs,
            size=self.size,
            **extra,
        )
        return encoding

    def segment(
        self,
        image_or_encoding: ImageLike | Encoding,
        output_size: tuple[int, int] | None = None,
        **overrides: Any,
    ) -> Segmentation:
        """Segment an image, or re-segment a saved Encoding without the model.

        Args:
            image_or_encoding: a path, PIL image, (H, W, 3) uint8 array, or an Encoding.
            output_size: (H, W) of the labels; default the original image size.
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
        return self.spec.run(encoding, config, output_size)


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
