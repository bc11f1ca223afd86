"""The ``diffuseg`` command line: segment, encode, backbones, methods.

Every bad input gets one clear error line and the others are still processed; the exit code is
1 if any input failed, 2 for a usage or set-up error (e.g. missing weights); outputs are written
atomically (temp file, then rename), so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Training-free segmentation from pre-trained diffusion models (DiffSeg, DiffCut, DWC).",
    pretty_exceptions_enable=False,
)

ENCODING_SUFFIX = ".safetensors"


def _error(message: str) -> None:
    typer.echo(f"error: {message}", err=True)


def _parse_params(items: list[str] | None, spec) -> dict[str, Any]:
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
        out[key] = _parse_value(raw.strip(), str(types[key]))
    return out


def _parse_value(raw: str, type_name: str) -> Any:
    if raw.lower() in ("none", "null"):
        return None
    if "tuple" in type_name:
        return tuple(_parse_value(x, type_name.replace("tuple", "")) for x in raw.split(",") if x)
    if "bool" in type_name:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise typer.BadParameter(f"not a boolean: {raw!r}", param_hint="--param")
    for cast in (int, float):
        if cast.__name__ in type_name:
            try:
                return cast(raw)
            except ValueError:
                continue
    return raw


def _output_stem(path: Path, used: set[str]) -> str:
    """A unique file stem per input (two inputs called a.jpg in different folders)."""
    stem = path.stem if path.suffix != ENCODING_SUFFIX else path.name[: -len(ENCODING_SUFFIX)]
    candidate, i = stem, 1
    while candidate in used:
        i += 1
        candidate = f"{stem}-{i}"
    used.add(candidate)
    return candidate


@app.command("segment")
def segment_command(
    inputs: Annotated[list[Path] | None, typer.Argument(
        help="Images, folders of images, or saved Encodings (.safetensors).")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("out"),
    method: Annotated[str, typer.Option(help="Method: see `diffuseg methods`.")] = "diffcut",
    backbone: Annotated[str | None, typer.Option(
        help="Backbone preset or local model folder (default: the method's).")] = None,
    tau: Annotated[float | None, typer.Option(help="Cut / merge threshold.")] = None,
    alpha: Annotated[float | None, typer.Option(help="Affinity exponent.")] = None,
    size: Annotated[int | None, typer.Option(help="Long side (px) to encode at.")] = None,
    no_refine: Annotated[bool, typer.Option("--no-refine", help="Skip PAMR refinement.")] = False,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, ...")] = None,
    dtype: Annotated[str | None, typer.Option(help="float32, float16, bfloat16.")] = None,
    encoding: Annotated[list[Path] | None, typer.Option(
        help="A saved Encoding to segment (repeatable); no model is loaded for it.")] = None,
    param: Annotated[list[str] | None, typer.Option(
        "--param", "-p", help="Any method setting as KEY=VALUE (repeatable).")] = None,
    recursive: Annotated[bool, typer.Option(help="Descend into sub-folders.")] = False,
) -> None:
    """Segment images: writes <name>.labels.png, <name>.overlay.png and <name>.json per input."""
    from tqdm import tqdm

    from diffuseg.backbones import WeightsNotFoundError
    from diffuseg.io import (
        iter_image_paths,
        load_image,
        write_json,
        write_label_png,
        write_overlay_png,
    )
    from diffuseg.methods import get_method
    from diffuseg.segmenter import Segmenter
    from diffuseg.types import Encoding

    try:
        spec = get_method(method)
        overrides = _parse_params(param, spec)
        for key, value in (("tau", tau), ("alpha", alpha)):
            if value is not None:
                overrides[key] = value
        if no_refine:
            overrides["refine"] = False
        segmenter = Segmenter(method, backbone, device=device, dtype=dtype, size=size, **overrides)
    except (ValueError, typer.BadParameter) as exc:
        _error(str(exc))
        raise typer.Exit(2) from None

    paths = iter_image_paths(list(inputs or []), recursive=recursive) + list(encoding or [])
    if not paths:
        _error("no input images")
        raise typer.Exit(2)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    used: set[str] = set()
    for path in tqdm(paths, desc=f"{method}", unit="img", disable=None, file=sys.stderr):
        stem = _output_stem(path, used)
        try:
            if path.name.endswith(ENCODING_SUFFIX):
                enc = Encoding.load(path)
                image = enc.image
                result = segmenter.segment(enc)
            else:
                image = load_image(path)
                result = segmenter.segment(image)
        except WeightsNotFoundError as exc:
            _error(str(exc))
            raise typer.Exit(2) from None
        except (ValueError, OSError, RuntimeError) as exc:
            failed += 1
            _error(f"{path}: {exc}")
            continue
        write_label_png(out / f"{stem}.labels.png", result.labels)
        if image is not None:
            write_overlay_png(out / f"{stem}.overlay.png", image, result.labels)
        write_json(out / f"{stem}.json", {"input": str(path), **result.to_dict()})
    done = len(paths) - failed
    typer.echo(f"segmented {done}/{len(paths)} input(s) into {out}", err=True)
    if failed:
        raise typer.Exit(1)


@app.command("encode")
def encode_command(
    inputs: Annotated[list[Path], typer.Argument(help="Images or folders of images.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")] = Path("encodings"),
    backbone: Annotated[str, typer.Option(help="Backbone preset or model folder.")] = "ssd-1b",
    method: Annotated[str | None, typer.Option(
        help="Capture only what this method needs (default: features and attention).")] = None,
    size: Annotated[int | None, typer.Option(help="Long side (px) to encode at.")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, ...")] = None,
    dtype: Annotated[str | None, typer.Option(help="float32, float16, bfloat16.")] = None,
    recursive: Annotated[bool, typer.Option(help="Descend into sub-folders.")] = False,
) -> None:
    """Run the backbone once per image and save Encodings (.safetensors) to segment later."""
    from tqdm import tqdm

    from diffuseg.backbones import WeightsNotFoundError, load_backbone
    from diffuseg.io import iter_image_paths, load_image
    from diffuseg.methods import get_method

    needs = {"features", "attention"}
    if method is not None:
        try:
            needs = set(get_method(method).needs)
        except ValueError as exc:
            _error(str(exc))
            raise typer.Exit(2) from None
    paths = iter_image_paths(list(inputs), recursive=recursive)
    if not paths:
        _error("no input images")
        raise typer.Exit(2)
    try:
        model = load_backbone(backbone, device=device, dtype=dtype)
    except (WeightsNotFoundError, ValueError) as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    used: set[str] = set()
    for path in tqdm(paths, desc="encode", unit="img", disable=None, file=sys.stderr):
        stem = _output_stem(path, used)
        try:
            image = load_image(path)
            (enc,) = model.encode([image], features="features" in needs,
                                  attention="attention" in needs, size=size)
        except (ValueError, OSError, RuntimeError) as exc:
            failed += 1
            _error(f"{path}: {exc}")
            continue
        enc.meta["source"] = str(path)
        enc.save(out / f"{stem}{ENCODING_SUFFIX}")
    typer.echo(f"encoded {len(paths) - failed}/{len(paths)} image(s) into {out}", err=True)
    if failed:
        raise typer.Exit(1)


@app.command("backbones")
def backbones_command() -> None:
    """List the backbone presets."""
    from diffuseg.backbones.registry import get_preset, list_backbones

    for name in list_backbones():
        p = get_preset(name)
        typer.echo(f"{name:8s} {p.repo_id:45s} {p.family:5s} {p.resolution}px")


@app.command("methods")
def methods_command() -> None:
    """List the segmentation methods."""
    from diffuseg.methods import get_method, list_methods

    for name in list_methods():
        spec = get_method(name)
        typer.echo(f"{name:10s} {spec.summary}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
