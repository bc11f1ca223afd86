"""Segmentation methods: pure functions from an ``Encoding`` to a ``Segmentation``.

Every method registers a :class:`MethodSpec`: its frozen config dataclass (published defaults),
the function that runs it, and which parts of an Encoding it needs ("features", "attention",
"image"), so that the Segmenter knows what to ask the backbone for (or that no backbone is needed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from diffuseg.types import Encoding, Segmentation


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    Attributes:
        name: the name users type (``method="diffcut"``).
        config_cls: frozen dataclass of the method's settings, defaults = published values.
        run: ``run(encoding, config, output_size) -> Segmentation``; ``output_size`` (H, W) or
            None for the encoding's original image size.
        needs: the Encoding parts the method reads: subset of {"features", "attention", "image"}.
        summary: one line for ``list_methods`` and ``--help``.
        default_backbone: the preset the method's paper uses (None: needs no backbone).
        cuda_dtype: the backbone's precision on CUDA unless the user picks one, as the
            method's official code runs (DiffCut fp16, DiffSeg's KerasCV model fp32); CPU
            always defaults to fp32.
    """

    name: str
    config_cls: type
    run: Callable[..., Segmentation]
    needs: frozenset[str]
    summary: str = ""
    default_backbone: str | None = None
    cuda_dtype: str = "float32"

    @property
    def needs_backbone(self) -> bool:
        return bool(self.needs & {"features", "attention"})

    def make_config(
        self, overrides: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None
    ):
        """The config with ``defaults`` (e.g. a backbone preset's) then ``overrides`` applied.

        Unknown keys raise ``ValueError`` naming the valid ones.
        """
        cfg = self.config_cls()
        valid = {f.name for f in fields(cfg)}
        for source in (defaults or {}, overrides or {}):
            unknown = set(source) - valid
            if unknown:
                raise ValueError(
                    f"unknown setting(s) {sorted(unknown)} for method {self.name!r}; "
                    f"valid: {sorted(valid)}"
                )
            cfg = replace(cfg, **{k: v for k, v in source.items() if v is not None})
        return cfg


_REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    _REGISTRY[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; available: {sorted(_REGISTRY)}") from None


def list_methods() -> list[str]:
    """Names of every available method, sorted."""
    _load_all()
    return sorted(_REGISTRY)


def _load_all() -> None:
    # Importing a method module registers it.
    import importlib

    for module in ("diffcut", "classic", "diffseg", "baselines", "dwc"):
        importlib.import_module(f"diffuseg.methods.{module}")


__all__ = ["Encoding", "MethodSpec", "Segmentation", "get_method", "list_methods", "register"]
