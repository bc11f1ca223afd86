"""The ``diffuseg`` command line: segment, encode, backbones, methods.

Every bad input gets one clear error line and the others are still processed; the exit code is
1 if any input failed, 2 for a usage or set-up error (e.g. missing weights); outputs are written
atomically (temp file, then rename), so an interrupted run never leaves a half-written file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from diffuseg.cli_params import parse_params
from diffuseg.pipeline import ENCODING_SUFFIX

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Training-free segmentation from pre-trained diffusion models (DiffSeg, DiffCut, DWC).",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from diffuseg import __version__

        typer.echo(f"diffuseg {__version__}")
        raise typer.Exit()


@app.callback()
def _main_options(
    version: Annotated[bool, typer.Option(
        "--version", help="Print the version and exit.", callback=_print_version,
        is_eager=True)] = False,
) -> None:
    """Training-free segmentation from pre-trained diffusion models (DiffSeg, DiffCut, DWC)."""

OUTPUT_FORMATS = ("png", "coco", "npz", "hierarchy")
#: compare's figure: the format its extension names.
FIGURE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
MIN_PANEL_WIDTH = 32
#: The methods whose segmentations carry a cut hierarchy (--depth, --format hierarchy).
CUT_METHODS = ("diffcut", "dwc", "ncut")


def _error(message: str) -> None:
    typer.echo(f"error: {message}", err=True)


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
    output_format: Annotated[str, typer.Option(
        "--format", "-f",
        help="Output format(s), comma-separated: png (<name>.labels.png, .overlay.png, .json), "
             "coco (<name>.masks.json: COCO RLE masks, SAM field names), "
             "npz (<name>.npz: labels int32 + JSON meta, no pickles), "
             "hierarchy (<name>.hierarchy.png: one overlay per depth of the cut, a region "
             "keeping its colour from depth to depth).")] = "png",
    depth: Annotated[int | None, typer.Option(
        help="Write the regions at this depth of the cut's hierarchy (0: one segment) instead "
             "of its leaves (cut-based methods: diffcut, dwc, ncut).")] = None,
    classes: Annotated[str | None, typer.Option(
        help="Name each segment with one of these comma-separated class names (CLIP mask "
             "classification, DiffCut's way), e.g. \"cat,dog,grass\".")] = None,
    classes_file: Annotated[Path | None, typer.Option(
        help="Class names, one per line (\"person, people\": synonyms; # comments).")] = None,
    merge: Annotated[bool, typer.Option(
        help="With classes: merge the segments of one class (DiffCut).")] = True,
    clip: Annotated[str | None, typer.Option(
        help="CLIP model for classes: folder (open_clip_config.json + "
             "open_clip_model.safetensors), hub id or open_clip name:tag "
             "(default DiffCut's convnext_large_d_320).")] = None,
    clip_size: Annotated[int, typer.Option(help="Long side (px) of CLIP's input.")] = 1024,
    caption: Annotated[str | None, typer.Option(
        help="Name each segment with a word of this caption (cross-attention, DiffSeg's way); "
             "'auto' captions each image with the captioning model first.")] = None,
    captioner: Annotated[str | None, typer.Option(
        help="Captioning model for --caption auto: folder or hub id (default DiffSeg's BLIP).")
    ] = None,
    words: Annotated[str | None, typer.Option(
        help="With --caption: the comma-separated caption words to name with (default: its "
             "words minus stopwords).")] = None,
    voting: Annotated[str, typer.Option(help="With --caption: mean or majority.")] = "mean",
    attention_timesteps: Annotated[str | None, typer.Option(
        help="Timestep(s) of the self-attention pass, comma-separated to average over several "
             "(default 300).")] = None,
    batch_size: Annotated[int, typer.Option(
        help="Images per backbone call (those of equal processed size go together).")] = 4,
    workers: Annotated[int, typer.Option(
        help="Threads that cut, refine and write while the next batch is on the backbone.")
    ] = 1,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Skip the inputs whose outputs a previous run finished.")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Redo every input even if --out holds its outputs.")] = False,
) -> None:
    """Segment images: writes <name>.labels.png, <name>.overlay.png and <name>.json per input
    (or COCO RLE masks / .npz with --format), and manifest.json listing them.

    Inputs are decoded ahead, encoded in batches and cut by --workers threads; a killed run
    continues with --resume. Under torchrun / accelerate launch (RANK, WORLD_SIZE) each process
    segments its share of the inputs."""
    from diffuseg import pipeline
    from diffuseg.backbones import WeightsNotFoundError
    from diffuseg.io import ensure_folder, iter_image_paths, load_image
    from diffuseg.methods import get_method
    from diffuseg.segmenter import Segmenter
    from diffuseg.types import Encoding

    formats = [f.strip().lower() for f in output_format.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(OUTPUT_FORMATS))
    if unknown or not formats:
        _error(f"unknown --format {', '.join(unknown) or repr(output_format)}; "
               f"choose from {', '.join(OUTPUT_FORMATS)} (comma-separated)")
        raise typer.Exit(2)
    try:
        if batch_size < 1 or workers < 1:
            raise ValueError(f"--batch-size and --workers must be at least 1, got {batch_size} "
                             f"and {workers}")
        if resume and overwrite:
            raise ValueError("--resume and --overwrite exclude each other")
        rank, world = pipeline.dist_env()
        spec = get_method(method)
        overrides = parse_params(param, spec)
        for key, value in (("tau", tau), ("alpha", alpha)):
            if value is not None:
                overrides[key] = value
        if no_refine:
            overrides["refine"] = False
        timesteps = None
        if attention_timesteps:
            timesteps = [int(t) for t in attention_timesteps.split(",") if t.strip()]
        if device is None and world > 1 and "LOCAL_RANK" in os.environ:
            import torch

            if torch.cuda.is_available():
                device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        segmenter = Segmenter(method, backbone, device=device, dtype=dtype, size=size,
                              attention_timestep=timesteps, clip=clip, clip_size=clip_size,
                              captioner=captioner, **overrides)
        class_names = _class_names(classes, classes_file)
        if class_names is not None and caption is not None:
            raise ValueError("name segments by --classes or by --caption, not both")
        if caption is not None and not spec.needs_backbone:
            raise ValueError(f"--caption needs a diffusion method; {method!r} reads no model")
        if voting not in ("mean", "majority"):
            raise ValueError(f"--voting must be mean or majority, got {voting!r}")
        chosen = [w.strip() for w in words.split(",") if w.strip()] if words else None
        if depth is not None and depth < 0:
            raise ValueError(f"--depth must be >= 0, got {depth}")
        if (depth is not None or "hierarchy" in formats) and spec.name not in CUT_METHODS:
            raise ValueError(f"--depth and --format hierarchy need a cut's hierarchy: "
                             f"{', '.join(CUT_METHODS)} make one, {method} does not")
    except (ValueError, typer.BadParameter) as exc:
        _error(str(exc))
        raise typer.Exit(2) from None

    paths = iter_image_paths(list(inputs or []), recursive=recursive) + list(encoding or [])
    if not paths:
        _error("no input images")
        raise typer.Exit(2)
    try:
        _check_setup(spec, backbone, device, dtype, size,
                     images=any(not str(p).endswith(ENCODING_SUFFIX) for p in paths))
    except (ValueError, WeightsNotFoundError) as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    planned = pipeline.plan(paths)
    for item in planned:  # a stem changed to avoid a clash is said, not silent
        if item.stem != pipeline.output_stem(item.path) and rank == 0:
            typer.echo(f"note: {item.path} is written as {item.stem}.* (another input has its "
                       "name)", err=True)
    items = pipeline.shard(planned, rank, world)

    def files_of(item: pipeline.WorkItem) -> list[str]:
        names = []
        if "png" in formats:
            names += [f"{item.stem}.labels.png", f"{item.stem}.overlay.png", f"{item.stem}.json"]
        if "coco" in formats:
            names.append(f"{item.stem}.masks.json")
        if "npz" in formats:
            names.append(f"{item.stem}.npz")
        if "hierarchy" in formats:
            names.append(f"{item.stem}.hierarchy.png")
        return names

    try:
        ensure_folder(out, "output folder")
        skip = pipeline.prepare_folder(out, items, files_of, resume, overwrite)
    except (ValueError, OSError) as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    journal = pipeline.Journal(out, rank)
    naming = class_names is not None or caption is not None

    def load(item: pipeline.WorkItem) -> Any:
        if item.path.name.endswith(ENCODING_SUFFIX):
            return Encoding.load(item.path)
        return load_image(item.path)

    def encode(payloads: list[Any]) -> list[Any]:
        arrays = [p for p in payloads if not isinstance(p, Encoding)]
        encoded = iter(segmenter.encode_batch(arrays, batch_size=batch_size))
        return [p if isinstance(p, Encoding) else next(encoded) for p in payloads]

    def process(item: pipeline.WorkItem, enc: Encoding) -> pipeline.Outcome:
        full = result = segmenter.segment(enc)
        if depth is not None:
            result = full.at_depth(depth)
        if naming:
            result = segmenter.name(result, enc, classes=class_names, caption=caption,
                                    words=chosen, voting=voting, merge=merge)
        written = _write_outputs(out, item, enc.image, result, formats, full)
        journal.append({"index": item.index, "input": str(item.path), "stem": item.stem,
                        "status": "done", "segments": result.num_segments, "files": written})
        return pipeline.Outcome(item, "done", segments=result.num_segments, files=written)

    todo = [it for it in items if it.stem not in skip]
    # a caption's cross-attention pass uses the backbone, which the encode stage owns
    threads = 1 if caption is not None else workers
    counts = {"done": 0, "failed": 0, "skipped": len(items) - len(todo)}
    lines = not sys.stderr.isatty()  # a log file gets one line per input, a terminal a bar
    from tqdm import tqdm

    bar = tqdm(total=len(items), initial=counts["skipped"], desc=method, unit="img",
               disable=lines or None, file=sys.stderr)
    try:
        for outcome in pipeline.run(todo, load=load, encode=encode, process=process,
                                    batch_size=batch_size, workers=threads,
                                    fatal=(WeightsNotFoundError,)):
            counts[outcome.status] += 1
            if outcome.status == "failed":
                journal.append({"index": outcome.item.index, "input": str(outcome.item.path),
                                "stem": outcome.item.stem, "status": "failed",
                                "error": outcome.error, "files": []})
                bar.write(f"error: {outcome.item.path}: {outcome.error}", file=sys.stderr)
            elif lines:
                typer.echo(f"{outcome.item.path}: {outcome.segments} segments, "
                           f"{outcome.seconds:.2f} s", err=True)
            bar.update(1)
    except WeightsNotFoundError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    finally:
        bar.close()
        journal.close()
    pipeline.write_manifest(out)
    shard_note = f" (process {rank} of {world})" if world > 1 else ""
    typer.echo(f"segmented {counts['done']}/{len(items)} input(s) into {out}{shard_note}: "
               f"{counts['skipped']} already done, {counts['failed']} failed", err=True)
    if counts["failed"]:
        raise typer.Exit(1)


def _check_setup(spec, backbone: str | None, device: str | None, dtype: str | None,
                 size: int | None, images: bool) -> None:
    """Set-up errors once, before any input (exit 2), not once per input: a device or dtype
    torch does not know, an unknown backbone, a size below 64 px. Options a method without a
    backbone ignores get one note."""
    if not spec.needs_backbone:
        ignored = [flag for flag, value in (("--backbone", backbone), ("--size", size),
                                            ("--device", device), ("--dtype", dtype))
                   if value is not None]
        if ignored:
            typer.echo(f"note: {spec.name} reads no model: {', '.join(ignored)} ignored",
                       err=True)
        return
    from diffuseg.backbones.diffusion import resolve_device, resolve_dtype
    from diffuseg.backbones.registry import resolve_backbone

    resolve_dtype(dtype, resolve_device(device), spec.cuda_dtype)
    if size is not None and size < 64:
        raise ValueError(f"--size must be at least 64 pixels, got {size}")
    if images:  # Encodings need no backbone
        resolve_backbone(backbone or spec.default_backbone)


def _write_outputs(out: Path, item, image, result, formats: list[str], full=None) -> list[str]:
    """Write one input's output set (each file atomically); returns the names written.
    ``full``: the segmentation with its hierarchy when ``result`` is one depth of it."""
    from diffuseg import __version__
    from diffuseg.io import (
        write_json,
        write_label_png,
        write_masks_json,
        write_npz,
        write_overlay_png,
    )

    stem, names = item.stem, []
    if "png" in formats:
        write_label_png(out / f"{stem}.labels.png", result.labels)
        names.append(f"{stem}.labels.png")
        if image is not None:
            write_overlay_png(out / f"{stem}.overlay.png", image, result.labels)
            names.append(f"{stem}.overlay.png")
        write_json(out / f"{stem}.json", {"input": str(item.path), "diffuseg": __version__,
                                          **result.to_dict()})
        names.append(f"{stem}.json")
    if "coco" in formats:
        write_masks_json(out / f"{stem}.masks.json", result.labels, result.config,
                         names=result.names, input=str(item.path), diffuseg=__version__)
        names.append(f"{stem}.masks.json")
    if "hierarchy" in formats and image is not None:
        from PIL import Image

        from diffuseg.io import atomic_path
        from diffuseg.viz import hierarchy_figure

        figure = hierarchy_figure(image, full if full is not None else result)
        with atomic_path(out / f"{stem}.hierarchy.png") as tmp:
            Image.fromarray(figure).save(tmp, format="PNG")
        names.append(f"{stem}.hierarchy.png")
    if "npz" in formats:
        write_npz(out / f"{stem}.npz", result.labels, {"input": str(item.path),
                                                       "diffuseg": __version__,
                                                       **result.to_dict()})
        names.append(f"{stem}.npz")
    return names


def _class_names(classes: str | None, classes_file: Path | None) -> list[str] | None:
    """The class names of --classes (comma-separated) and --classes-file (one per line)."""
    if classes is None and classes_file is None:
        return None
    names = [c.strip() for c in (classes or "").split(",") if c.strip()]
    if classes_file is not None:
        try:
            lines = classes_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"cannot read --classes-file {classes_file}: {exc}") from None
        names += [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not names:
        raise ValueError("no class names given")
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"class names given twice: {', '.join(dup)}")
    return names


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
    from diffuseg.io import ensure_folder, iter_image_paths, load_image
    from diffuseg.methods import get_method

    needs = {"features", "attention"}
    cuda_dtype = None
    if method is not None:
        try:
            needs = set(get_method(method).needs)
            cuda_dtype = get_method(method).cuda_dtype
            if not get_method(method).needs_backbone:
                raise ValueError(f"{method} reads no model: there is nothing to encode "
                                 f"(`diffuseg segment IMAGE --method {method}` reads images)")
        except ValueError as exc:
            _error(str(exc))
            raise typer.Exit(2) from None
    paths = iter_image_paths(list(inputs), recursive=recursive)
    if not paths:
        _error("no input images")
        raise typer.Exit(2)
    try:
        ensure_folder(out, "output folder")
        model = load_backbone(backbone, device=device, dtype=dtype, cuda_dtype=cuda_dtype)
    except (WeightsNotFoundError, ValueError) as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    failed = 0
    from diffuseg.pipeline import plan

    for item in tqdm(plan(paths), desc="encode", unit="img", disable=None, file=sys.stderr):
        path, stem = item.path, item.stem
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


@app.command("compare")
def compare_command(
    image: Annotated[Path, typer.Argument(help="The image to segment.")],
    methods: Annotated[str, typer.Option(
        help="Comma-separated methods, one panel each (see `diffuseg methods`).")
    ] = "diffcut,diffseg,dwc",
    out: Annotated[Path, typer.Option(
        "--out", "-o", help="Figure to write: .png, .jpg or .webp (the extension decides).")
    ] = Path("compare.png"),
    backbone: Annotated[str | None, typer.Option(
        help="Backbone preset or local model folder for every method that needs one "
             "(default: each method's own).")] = None,
    size: Annotated[int | None, typer.Option(help="Long side (px) to encode at.")] = None,
    panel_width: Annotated[int | None, typer.Option(
        help="Width of each panel in pixels (default: the image's, at most 512).")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, ...")] = None,
    dtype: Annotated[str | None, typer.Option(help="float32, float16, bfloat16.")] = None,
) -> None:
    """Segment one image with several methods and write them side by side as one PNG figure.

    Each method runs with its published defaults (and its backbone's); methods that share a
    backbone share one encoding (one UNet pass).
    """
    from PIL import Image

    from diffuseg.backbones import WeightsNotFoundError
    from diffuseg.io import atomic_path, ensure_folder, load_image
    from diffuseg.methods import get_method
    from diffuseg.segmenter import Segmenter
    from diffuseg.viz import compare_figure

    names = list(dict.fromkeys(m.strip() for m in methods.split(",") if m.strip()))
    if not names:
        _error("no methods given (--methods diffcut,diffseg,...)")
        raise typer.Exit(2)
    try:
        if panel_width is not None and panel_width < MIN_PANEL_WIDTH:
            raise ValueError(f"--panel-width must be at least {MIN_PANEL_WIDTH} pixels, got "
                             f"{panel_width}")
        figure_format = FIGURE_FORMATS.get(out.suffix.lower())
        if figure_format is None:
            raise ValueError(f"--out {out}: the figure's extension says its format; use one of "
                             f"{', '.join(sorted(FIGURE_FORMATS))}")
        if out.is_dir():
            raise ValueError(f"--out {out} is a folder; name the figure file")
        ensure_folder(out.parent if str(out.parent) else Path("."), "output folder")
        specs = [get_method(name) for name in names]
        array = load_image(image)
    except ValueError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    # One encoding per backbone, with every part its methods need.
    segmenters = {
        s.name: Segmenter(s.name, backbone if s.needs_backbone else None, device=device,
                          dtype=dtype, size=size)
        for s in specs
    }
    groups: dict[str, set[str]] = {}
    for spec in specs:
        if spec.needs_backbone:
            groups.setdefault(segmenters[spec.name].backbone_name, set()).update(spec.needs)
    encodings: dict[str, Any] = {}
    try:
        for name, needs in groups.items():
            users = [s.name for s in specs if segmenters[s.name].backbone_name == name]
            model = segmenters[users[0]].backbone  # loads the weights (or fails here)
            (encodings[name],) = model.encode([array], features="features" in needs,
                                               attention="attention" in needs, size=size)
    except WeightsNotFoundError as exc:
        needing = ", ".join(s.name for s in specs if s.needs_backbone)
        _error(f"{needing} need(s) diffusion weights: {exc}")
        raise typer.Exit(2) from None
    except (ValueError, OSError, RuntimeError) as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    panels, titles = {}, {}
    for spec in specs:
        seg = segmenters[spec.name]
        source = encodings[seg.backbone_name] if spec.needs_backbone else array
        try:
            result = seg.segment(source, output_size=array.shape[:2])
        except (ValueError, RuntimeError) as exc:
            _error(f"{spec.name}: {exc}")
            raise typer.Exit(1) from None
        panels[spec.name] = result.labels
        where = f" @ {Path(seg.backbone_name).name}" if spec.needs_backbone else ""
        titles[spec.name] = f"{spec.name}{where}: {result.num_segments} segments"
    width = panel_width or min(array.shape[1], 512)
    figure = compare_figure(array, panels, titles, panel_width=width)
    try:
        with atomic_path(out) as tmp:
            Image.fromarray(figure).save(tmp, format=figure_format)
    except OSError as exc:
        _error(f"cannot write {out}: {exc.strerror or exc}")
        raise typer.Exit(2) from None
    typer.echo(f"wrote {out} ({len(names)} methods, {figure.shape[1]}x{figure.shape[0]})",
               err=True)


@app.command("demo")
def demo_command(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port (default: the first free from 7860).")
                    ] = None,
    share: Annotated[bool, typer.Option(
        "--share", help="Also ask Gradio for a public share link.")] = False,
    backbone: Annotated[str | None, typer.Option(
        help="Backbone preset or local model folder selected at start.")] = None,
    method: Annotated[str | None, typer.Option(
        help="Method selected at start (default: ncut, which needs no weights).")] = None,
    max_pixels: Annotated[int, typer.Option(help="Largest accepted upload (width x height).")
                          ] = 16_000_000,
    max_bytes: Annotated[int, typer.Option(help="Largest accepted upload (bytes).")
                         ] = 25_000_000,
    clip: Annotated[str | None, typer.Option(
        help="CLIP model for class names (folder, hub id or open_clip name:tag; default "
             "DiffCut's), loaded on the first request that names segments.")] = None,
) -> None:
    """Start the web demo (Gradio: the `demo` extra of the package); prints its address."""
    try:
        from diffuseg.demo import launch
    except ImportError as exc:
        _error(f"the demo needs gradio: pip install 'diffuseg[demo]' ({exc})")
        raise typer.Exit(2) from None
    try:
        demo = launch(host=host, port=port, share=share, backbone=backbone, method=method,
                      max_pixels=max_pixels, max_bytes=max_bytes, clip=clip,
                      prevent_thread_lock=True)
    except (ValueError, OSError) as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    typer.echo(f"diffuseg demo on {demo.local_url} (Ctrl-C to stop)", err=True)
    if getattr(demo, "share_url", None):
        typer.echo(f"public share link: {demo.share_url}", err=True)
    try:
        demo.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()


@app.command("backbones")
def backbones_command() -> None:
    """List the backbone presets."""
    from diffuseg.backbones.registry import get_preset, list_backbones

    for name in list_backbones():
        p = get_preset(name)
        typer.echo(f"{name:8s} {p.repo_id:45s} {p.family:5s} {p.resolution}px")


@app.command("methods")
def methods_command(
    name: Annotated[str | None, typer.Argument(
        help="A method: print each of its settings with type, default, range and meaning.")
    ] = None,
) -> None:
    """List the segmentation methods, or one method's settings (`diffuseg methods diffcut`)."""
    from diffuseg.methods import get_method, list_methods

    if name is None:
        for method in list_methods():
            typer.echo(f"{method:10s} {get_method(method).summary}")
        return
    try:
        spec = get_method(name)
    except ValueError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    typer.echo(f"{spec.name}: {spec.summary}")
    if spec.default_backbone:
        typer.echo(f"backbone: {spec.default_backbone} (per-backbone defaults apply: "
                   "`diffuseg backbones`)")
    typer.echo("settings (--param NAME=VALUE, or NAME=VALUE in Python):")
    for row in spec.config_cls.describe():
        kind = row["type"] + (f", {row['range']}" if row["range"] else "")
        typer.echo(f"  {row['name']} = {row['default']!r}  [{kind}]")
        typer.echo(f"      {row['meaning']}")


def _mount_subcommands() -> None:
    from diffuseg.eval.cli import eval_app

    app.add_typer(eval_app, name="eval", help="Evaluate on a benchmark dataset; `eval compare`.")


_mount_subcommands()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
