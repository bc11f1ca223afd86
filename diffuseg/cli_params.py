"""``--param KEY=VALUE`` parsing shared by ``diffuseg segment`` and ``diffuseg eval`` (both
command lines import it from here; neither imports the other).

Values are parsed by the config field's type name (bool words, numbers, comma-separated tuples,
``none``); the method's config then checks them by type and range (methods/config.py).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import typer


def parse_params(items: list[str] | None, spec) -> dict[str, Any]:
    """``--param key=value`` pairs, each value parsed to the config field's type."""
    out: dict[str, Any] = {}
    types = {f.name: f.type for f in fields(spec.config_cls)}
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--param")
        key, raw = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key not in types:
            raise typer.BadParameter(
                f"unknown setting {key!r} for {spec.name}; valid: {', '.join(sorted(types))}",
                param_hint="--param",
            )
        out[key] = parse_value(raw.strip(), str(types[key]))
    return out


def parse_value(raw: str, type_name: str) -> Any:
    if raw.lower() in ("none", "null"):
        return None
    if "tuple" in type_name:
        return tuple(parse_value(x, type_name.replace("tuple", "")) for x in raw.split(",") if x)
    if "bool" in type_name:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise typer.BadParameter(f"not a boolean: {raw!r}", param_hint="--param")
    if "int" in type_name or "float" in type_name:
        for cast in (int, float):  # 2.5 for an int setting stays 2.5: the config says why not
            try:
                return cast(raw)
            except ValueError:
                continue
    return raw


__all__ = ["parse_params", "parse_value"]
