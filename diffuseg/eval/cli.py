"""``diffuseg eval``: evaluate a method on a dataset, and ``diffuseg eval compare``.

Mounted by the main app with ``app.add_typer(eval_app, name="eval")``. Errors (missing dataset
root, unknown settings or values out of range, records of another run in --out, a damaged
run.json, an --out or --encodings that cannot be a writable folder, --open-vocab on a dataset
without an open-vocabulary benchmark, missing CLIP weights; for ``compare`` a file that is not a
result, one line per file) are one line on stderr and exit code 2. Images of the dataset that
cannot be read do not stop the run: the results are printed, then one error line per failed
image and a summary, and the exit code is 1 (``--resume`` retries them).

``--open-vocab`` adds DiffCut's open-vocabulary benchmark (VOC, Pascal Context-59, COCO-Object) to
the same run: segments named by CLIP (``--clip``, default DiffCut's ConvNeXt-L), per-image
Jaccard averaged over images (see diffuseg/eval/runner.py and openvocab.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

eval_app = typer.Typer(
    add_completion=False,
    invoke_without_command=True,
    pretty_exceptions_enable=False,
    help="Evaluate a segmentation method on a labelled dataset (METHODS.md section 6).",
)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


_DATASETS_HELP = "coco-stuff-27, coco-object, cityscapes-27, voc, context-59, ade20k-150"


@eval_app.callback()
def run(
    ctx: typer.Context,
    dataset: Annotated[str | None, typer.Option(help=_DATASETS_HELP)] = None,
    root: Annotated[Path | None, typer.Option(help="dataset folder (standard layout)")] = None,
    out: Annotated[Path | None, typer.Option(help="folder for records and results")] = None,
    method: Annotated[str, typer.Option(help="segmentation method")] = "diffcut",
    backbone: Annotated[str | None, typer.Option(help="preset name or model folder")] = None,
    protocol: Annotated[str | None, typer.Option(
        help="diffcut (1024 in, scored 128x128) or diffseg (512, scored 512x512); "
             "default: diffseg for diffseg, else diffcut")] = None,
    limit: Annotated[int | None, typer.Option(help="first N images only")] = None,
    encodings: Annotated[Path | None, typer.Option(
        help="Encoding cache folder: encode once, evaluate many settings")] = None,
    resume: Annotated[bool, typer.Option(help="continue the records in --out")] = False,
    param: Annotated[list[str] | None, typer.Option(help="method setting KEY=VALUE")] = None,
    matching: Annotated[str, typer.Option(help="hungarian (per image) or dataset")] = "hungarian",
    num_clusters: Annotated[int | None, typer.Option(
        help="clusters for --matching dataset")] = None,
    batch_size: Annotated[int, typer.Option(help="images per backbone call")] = 4,
    input_size: Annotated[int | None, typer.Option(help="override the protocol's input")] = None,
    score_size: Annotated[int | None, typer.Option(help="override the scoring size")] = None,
    diffcut_compat: Annotated[bool, typer.Option(
        help="ADE20K: score as DiffCut's code (0 scored, 150 dropped)")] = False,
    open_vocab: Annotated[bool, typer.Option(
        "--open-vocab", help="also score DiffCut's open-vocabulary benchmark: segments named by "
        "CLIP (voc, context-59, coco-object)")] = False,
    clip: Annotated[str | None, typer.Option(
        help="CLIP model for --open-vocab: a folder with open_clip_config.json and "
             "open_clip_model.safetensors, a hub id, or name:tag (default DiffCut's "
             "convnext_large_d_320:laion2b_s29b_b131k_ft_soup)")] = None,
    vocabulary: Annotated[str, typer.Option(
        help="class text for --open-vocab: diffcut (DiffCut's synonym lists) or names")
    ] = "diffcut",
    clip_normalize: Annotated[bool, typer.Option(
        help="--open-vocab: standardise CLIP's input with its mean/std (DiffCut feeds [0, 1] "
             "RGB, the default here)")] = False,
    preprocessing: Annotated[str, typer.Option(
        help="standard (centre crop of the shorter side, bilinear) or diffcut-code (DiffCut's "
             "min(h,w)-1 crop and non-antialiased resize, to reproduce its numbers exactly)")
    ] = "standard",
    attention_timesteps: Annotated[str | None, typer.Option(
        help="timestep(s) of the self-attention pass, comma-separated to average several "
             "(default 300)")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ...")] = None,
    dtype: Annotated[str | None, typer.Option(help="float32, bfloat16, float16")] = None,
    save_predictions: Annotated[bool, typer.Option(
        "--save-predictions", help="per image, the method's raw prediction and the scored one "
        "as label PNGs under --out/predictions/ (rescore with any tool)")] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Evaluate METHOD on DATASET; writes records, results.json and results.md to --out."""
    if ctx.invoked_subcommand is not None:
        return
    missing = [n for n, v in (("--dataset", dataset), ("--root", root), ("--out", out))
               if v is None]
    if missing:
        _fail(f"missing {', '.join(missing)} (see diffuseg eval --help)")
    from diffuseg.cli_params import parse_params
    from diffuseg.eval.openvocab import open_vocab_prompts
    from diffuseg.eval.runner import EvalSettings, evaluate
    from diffuseg.methods import get_method

    if clip is not None and not open_vocab:
        _fail("--clip is used only with --open-vocab")
    try:
        spec = get_method(method)
        params = parse_params(param, spec)
        timesteps = None
        if attention_timesteps:
            timesteps = [int(t) for t in attention_timesteps.split(",") if t.strip()]
            timesteps = timesteps[0] if len(timesteps) == 1 else timesteps
        if open_vocab:
            open_vocab_prompts(dataset, vocabulary)  # the dataset has the benchmark
        settings = EvalSettings(  # checks the sizes, --batch-size, --limit, --num-clusters
            dataset=dataset, root=str(root), method=method, backbone=backbone, params=params,
            protocol=protocol or ("diffseg" if method == "diffseg" else "diffcut"),
            input_size=input_size, score_size=score_size, limit=limit, matching=matching,
            num_clusters=num_clusters,
            dataset_kw={"diffcut_compat": True} if diffcut_compat else {},
            batch_size=batch_size, device=device, dtype=dtype,
            open_vocab=open_vocab, clip=clip, vocabulary=vocabulary,
            clip_normalize=clip_normalize, attention_timestep=timesteps,
            preprocessing=preprocessing,
        )
    except (ValueError, typer.BadParameter) as exc:
        _fail(str(exc))
    from diffuseg.backbones.registry import WeightsNotFoundError

    try:
        result = evaluate(settings, out, encodings=encodings, resume=resume, progress=progress,
                          save_predictions=save_predictions)
    except (ValueError, WeightsNotFoundError, OSError) as exc:
        _fail(str(exc))
    from diffuseg.eval.runner import results_markdown

    typer.echo(results_markdown([result]), nl=False)
    typer.echo(f"results: {Path(out) / 'results.json'}")
    failed = result.get("failed") or []
    if failed:
        for f in failed:
            where = f" ({f['path']})" if f.get("path") else ""
            typer.echo(f"error: image {f['id']!r}{where}: {f['error']}", err=True)
        typer.echo(f"error: {len(failed)} of {len(failed) + result['num_images']} images could "
                   "not be read and are not scored; fix them and run again with --resume",
                   err=True)
        raise typer.Exit(1)


@eval_app.command("compare")
def compare(
    results: Annotated[list[Path], typer.Argument(help="results.json files or --out folders")],
) -> None:
    """Print one markdown table of several evaluation results; a file that is not one is an
    error line naming it and its wrong keys (every bad file is named, exit code 2)."""
    from diffuseg.eval.runner import load_result, results_markdown

    loaded, errors = [], []
    for p in results:
        try:
            loaded.append(load_result(p))
        except ValueError as exc:
            errors.append(str(exc))
    if errors:
        for message in errors:
            typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2)
    typer.echo(results_markdown(loaded), nl=False)
