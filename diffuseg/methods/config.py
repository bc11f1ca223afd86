"""Method settings: one place that checks every value by type and range.

Each method's config is a frozen dataclass deriving from :class:`MethodConfig`. A field declares
its range with :func:`setting` (``tau: float = setting(0.5, gt=0)``); when a config is made,
from the API, the CLI, the demo or an evaluation, :meth:`MethodConfig.__post_init__` checks and
normalises every field against its type hint and range:

* ``bool`` takes only True / False; ``int`` an integer (an integral float such as 48.0 is
  accepted, 2.5 is not); ``float`` a finite number (no NaN or infinity unless the field says so);
  ``str`` fields with ``choices`` one of them;
* ``tuple[X, ...]`` and ``tuple[X, Y]`` take any sequence (a JSON list) and become tuples, every
  element checked as X (the range applies to each element);
* ``X | None`` also takes None.

A bad value is a ``ValueError`` naming the setting, the value and what is allowed, raised when
the config is made, so that nothing downstream sees it (``tau="abc"`` used to reach the cut as a
string, ``tau=nan`` to give one segment silently).
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any


def setting(default: Any, *, gt: float | None = None, ge: float | None = None,
            lt: float | None = None, le: float | None = None,
            choices: Sequence[Any] | None = None, odd: bool = False) -> Any:
    """A config field with its allowed range: ``gt`` / ``ge`` / ``lt`` / ``le`` bounds (for a
    sequence, of each element), ``choices`` for strings, ``odd`` for odd integers."""
    meta = {k: v for k, v in dict(gt=gt, ge=ge, lt=lt, le=le, odd=odd or None).items()
            if v is not None}
    if choices is not None:
        meta["choices"] = tuple(choices)
    return field(default=default, metadata=meta)


def describe_range(meta: typing.Mapping[str, Any]) -> str:
    """The range of a field in words, e.g. "> 0", "one of fast, reference"."""
    parts = [f"{op} {meta[key]:g}" for key, op in (("gt", ">"), ("ge", ">="), ("lt", "<"),
                                                     ("le", "<="))
             if key in meta]
    if meta.get("odd"):
        parts.append("odd")
    if "choices" in meta:
        parts.append("one of " + ", ".join(map(str, meta["choices"])))
    return ", ".join(parts)


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's settings; see the module docstring."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            checked = _check(f.name, value, hints.get(f.name, Any), f.metadata)
            if checked is not value:
                object.__setattr__(self, f.name, checked)

    @classmethod
    def describe(cls) -> list[dict[str, Any]]:
        """Per setting: name, type (as written), default, range and the docstring's meaning."""
        meanings = _attribute_docs(cls.__doc__ or "")
        out = []
        for f in fields(cls):
            default = f.default if f.default is not MISSING else None
            out.append({"name": f.name, "type": str(f.type), "default": default,
                        "range": describe_range(f.metadata),
                        "meaning": meanings.get(f.name, "")})
        return out


def _attribute_docs(doc: str) -> dict[str, str]:
    """First line of each entry of a Google-style ``Attributes:`` section ("a, b: text" gives
    both names the text)."""
    out: dict[str, str] = {}
    lines = doc.splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == "Attributes:")
    except StopIteration:
        return out
    indent = None
    for ln in lines[start + 1 :]:
        if not ln.strip():
            continue
        depth = len(ln) - len(ln.lstrip())
        if indent is None:
            indent = depth
        if depth < indent:
            break
        if depth == indent and ":" in ln:
            names, text = ln.strip().split(":", 1)
            for name in names.split(","):
                out[name.strip()] = text.strip()
    return out


def _check(name: str, value: Any, hint: Any, meta: typing.Mapping[str, Any]) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _check(name, value, options[0], meta)
        return value
    if hint is Any:
        return value
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ValueError(f"{name} must be a sequence, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            if typing.get_origin(args[0]) is tuple or args[0] is Any:
                return tuple(value)  # structured pairs: the config checks them itself
            items = tuple(_scalar(f"{name}[{i}]", v, args[0], meta) for i, v in enumerate(value))
            if not items:
                raise ValueError(f"{name} must not be empty")
            return items
        if len(value) != len(args):
            raise ValueError(f"{name} must have {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_scalar(f"{name}[{i}]", v, t, meta)
                     for i, (v, t) in enumerate(zip(value, args, strict=True)))
    return _scalar(name, value, hint, meta)


def _scalar(name: str, value: Any, hint: Any, meta: typing.Mapping[str, Any]) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if isinstance(value, float) and not (math.isfinite(value) and value == int(value)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        value = int(value)
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    elif hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{name} must be a string, got {value!r}")
        if "choices" in meta and value not in meta["choices"]:
            raise ValueError(f"{name} must be {describe_range(meta)}; got {value!r}")
        return value
    else:
        return value
    bounds = (("gt", lambda v, b: v > b), ("ge", lambda v, b: v >= b),
              ("lt", lambda v, b: v < b), ("le", lambda v, b: v <= b))
    for key, ok in bounds:
        if key in meta and not ok(value, meta[key]):
            raise ValueError(f"{name} must be {describe_range(meta)}; got {value!r}")
    if meta.get("odd") and value % 2 == 0:
        raise ValueError(f"{name} must be {describe_range(meta)}; got {value!r}")
    return value


__all__ = ["MethodConfig", "describe_range", "setting"]
