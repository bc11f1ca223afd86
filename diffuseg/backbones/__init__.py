"""Diffusion backbones: presets, loading, and reading a UNet (features, self-attention).

The only part of diffuseg that knows diffusers. Methods never see a UNet: they get
:class:`~diffuseg.types.Encoding` objects from :meth:`Backbone.encode`.

Importing this package is cheap: diffusers and transformers are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from diffuseg.backbones.registry import (
    FAMILIES,
    PRESETS,
    BackbonePreset,
    WeightsNotFoundError,
    get_preset,
    list_backbones,
    resolve_backbone,
)

if TYPE_CHECKING:  # pragma: no cover
    from diffuseg.backbones.diffusion import Backbone, load_backbone

__all__ = [
    "FAMILIES",
    "PRESETS",
    "Backbone",
    "BackbonePreset",
    "WeightsNotFoundError",
    "get_preset",
    "list_backbones",
    "load_backbone",
    "resolve_backbone",
]


def __getattr__(name: str) -> Any:
    if name in ("Backbone", "load_backbone"):
        from diffuseg.backbones import diffusion

        return getattr(diffusion, name)
    raise AttributeError(f"module 'diffuseg.backbones' has no attribute {name!r}")
