"""The evaluation loop: preprocess, encode (batched, cached), segment, match, record, report.

Durability: every image's TP / FP / FN (and, for dataset-level matching, its class x cluster
histogram) is appended to a JSONL file as one line carrying a checksum, flushed and fsynced
before the next image starts. ``resume=True`` reads the records back and skips the images they
cover, so a killed run continues with identical final numbers: nothing lost, nothing counted
twice (records are keyed by dataset index). A damaged *last* line (the crash hit mid-write) is
cut off and its image redone; a damaged line elsewhere is an error.

Which settings made a record: every record carries ``"run"``, the digest of
:meth:`EvalSettings.identity` (:func:`run_digest`), and ``run.json`` holds that identity in
full. Resume refuses ("records of other settings") when run.json holds another identity, or
when any record carries another digest, even with run.json deleted. Records written before
records carried a digest are resumed only when run.json exists and holds this run's identity:
without it nothing tells what made them, so they are refused too. A run.json (or
``method_config.json``) that is not a readable JSON object is an error naming the file.

Images that cannot be read: a damaged image or label file (``SampleError`` from the dataset:
PIL's UnidentifiedImageError, a truncated JPEG, ...) or a sample the preprocessing rejects does
not stop the run. The image is appended to ``failures.jsonl`` (``failures.rank<r>.jsonl``
sharded; checksummed lines with its index, id, file, cause and the settings digest), it gets no
record and no counts, and the loop goes on with the next image; the images recorded before it
stay recorded (one durable record per image). The result lists the images still without a
record under ``failed`` (``[{"i", "id", "path", "error"}]``; empty when none) and
``num_images`` counts the images *scored*; results.md shows "N (k failed)" and a list of them,
and the CLI prints one error line per failed image and exits with code 1. ``resume=True``
retries every image without a record, the failed ones included (an image that now reads is
scored and leaves the list). Errors while segmenting or scoring are not caught: they are bugs
or backbone failures, not bad data, and stop the run as before.

Settings and folders: :class:`EvalSettings` refuses degenerate values when it is made (and
:func:`evaluate` checks again): ``input_size``, ``score_size``, ``batch_size``, ``limit`` and
``num_clusters`` are integers >= 1 (None where allowed: the protocol's sizes, every image, no
clusters), dataset-level matching needs ``num_clusters``. ``out_dir`` must be (or be creatable
as) a writable folder, ``encodings`` a folder (a read-only cache holding every Encoding is
fine): a file in the way, no permission, or a virtual file system such as /proc is one
ValueError naming the path (:func:`prepare_folder`), before any image is read.

Sharding: under ``torchrun --nproc_per_node N`` (env ``RANK`` / ``WORLD_SIZE``) process r takes
``indices[r::N]`` (never ``DistributedSampler``, which pads by repeating images), writes its own
``records.rank<r>.jsonl``, and the integer counts are all-reduced once at the end (gloo on CPU),
so the result equals the single-process one exactly.

Open vocabulary (``open_vocab=True``; VOC, Pascal Context-59 and COCO-Object only): DiffCut's
second benchmark in the same run. Each image is segmented as usual (its Hungarian counts are
recorded as always), then every segment is named by CLIP mask classification
(``diffuseg.labels.clip``: dense features of the protocol's input image, masked average pooling
over the segment at the score size, the image head, cosine against the text classifier of the
dataset's classes, background included, argmax over every class) and the per-pixel class map is
compared with the ground truth without any matching. The record of the image also holds that
comparison's per-class TP / FP / FN and its Jaccard (mean IoU over the classes present in the
ground truth or the prediction), so resume and sharding work unchanged; the result gains an
``open_vocab`` block: ``miou_per_image`` (DiffCut's number: per-image Jaccard averaged over the
images), ``miou_dataset`` (one confusion over all images) and the per-class IoU.

What follows DiffCut's ``eval_diffcut_openvoc.py`` and what does not:
- Same: the vocabulary (eval/openvocab.py, ``vocabulary="diffcut"``), CLIP ConvNeXt-L by
  default, CLIP sees the DiffCut input image (1024) and COCO-Object images upsampled 2x
  (2048), the argmax over all classes, the ground truth with void / unlabeled / stuff as
  background and no pixel ignored (our loaders already map them so), the per-image Jaccard.
- Different by default: segments and scoring at the protocol's score size (128x128 for the
  diffcut protocol, so that both numbers come out of one run) where DiffCut's script predicts,
  refines and scores at 1024x1024 with PAMR at 15 iterations, dilations 1, 2, 4, 8, 12, 24, 32,
  64. To score as it does: ``score_size=1024`` and the method params
  ``refine_iterations=15, refine_dilations=(1, 2, 4, 8, 12, 24, 32, 64)``. Its input crop is one
  pixel smaller than the shorter side (``min(h, w) - 1``) and its resize has no antialiasing;
  ours is the full shorter side with PIL's resize unless ``preprocessing="diffcut-code"``.
  Same too: masks reach CLIP's grid with nearest-exact (``mask_pool``'s default; a segment
  smaller than a cell takes the cells it overlaps where DiffCut pools nothing), and CLIP sees
  [0, 1] RGB without its mean / std normalisation as in DiffCut's script (``clip_normalize``
  turns that on).

Outputs in ``out_dir``: ``run.json`` (the settings the records belong to), the records,
``failures.jsonl`` (only when an image could not be read), ``method_config.json`` (the
resolved method settings), ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from diffuseg.eval import published
from diffuseg.eval.datasets import (
    READ_ERRORS,
    SampleError,
    SegDataset,
    describe_error,
    get_dataset,
)
from diffuseg.eval.matching import (
    Scores,
    cluster_histogram,
    dataset_scores,
    merge_background,
    official_scores,
)
from diffuseg.eval.openvocab import class_counts, class_iou, counts_jaccard, open_vocab_prompts
from diffuseg.io import checked_line, checksum, ensure_folder, parse_checked_line, write_json


@dataclass(frozen=True)
class Protocol:
    """Preprocessing of a published protocol: centre square crop (shorter side), image resized
    bilinearly to ``input_size`` x ``input_size``, label nearest to ``score_size`` x
    ``score_size``; the prediction is made at the score size."""

    name: str
    input_size: int
    score_size: int


PROTOCOLS: dict[str, Protocol] = {
    "diffseg": Protocol("diffseg", 512, 512),
    "diffcut": Protocol("diffcut", 1024, 128),
}


def get_protocol(name: str, input_size: int | None = None,
                 score_size: int | None = None) -> Protocol:
    """A protocol by name, optionally with another input or score size (None: the protocol's;
    any other value must be an integer >= 1, 0 is not a default)."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; available: {', '.join(PROTOCOLS)}")
    _check_int("input_size", input_size, 1, optional=True)
    _check_int("score_size", score_size, 1, optional=True)
    p = PROTOCOLS[name]
    return Protocol(p.name, p.input_size if input_size is None else int(input_size),
                    p.score_size if score_size is None else int(score_size))


def _check_int(name: str, value: Any, minimum: int, optional: bool = False) -> None:
    """ValueError naming the option and its valid range unless ``value`` is an integer >=
    ``minimum`` (or None when ``optional``)."""
    if value is None and optional:
        return
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not ok or value < minimum:
        valid = f"an integer >= {minimum}" + (" or None" if optional else "")
        raise ValueError(f"{name} must be {valid}, got {value!r}")


def center_square(array: np.ndarray) -> np.ndarray:
    """The centred square crop (side = shorter side) of an (H, W, ...) array."""
    h, w = array.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return array[top : top + side, left : left + side]


def diffcut_code_preprocess(image: np.ndarray, label: np.ndarray,
                            protocol: Protocol) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessing exactly as DiffCut's evaluation: its ``DataIterator``
    (``dataloader/iterator.py``) crops the centre square of side min(H, W) - 1 placed as
    torchvision's ``CenterCrop`` (``round((H - c) / 2)``) and resizes the image bilinearly
    *without* antialiasing (``Resize(antialias=None)`` on tensors) and the label with
    ``nearest-exact`` to the input size; ``eval_diffcut.py`` then brings the label to the score
    size with a plain ``F.interpolate`` (mode ``nearest``). Returns what :func:`preprocess`
    returns."""
    import torch
    import torch.nn.functional as F

    h, w = label.shape[:2]
    if image.shape[:2] != (h, w):
        raise ValueError(f"image {image.shape[:2]} and label {(h, w)} differ in size")
    c = min(h, w) - 1
    top, left = int(round((h - c) / 2.0)), int(round((w - c) / 2.0))
    img = torch.from_numpy(np.ascontiguousarray(image[top:top + c, left:left + c]))
    lab = torch.from_numpy(np.ascontiguousarray(label[top:top + c, left:left + c]).astype(np.int64))
    x = img.permute(2, 0, 1)[None].to(torch.float32) / 255.0
    s_in, s_sc = protocol.input_size, protocol.score_size
    x = F.interpolate(x, size=(s_in, s_in), mode="bilinear", align_corners=False, antialias=False)
    out = (x[0].permute(1, 2, 0).clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    y = F.interpolate(lab[None, None].to(torch.float64), size=(s_in, s_in), mode="nearest-exact")
    y = F.interpolate(y, size=(s_sc, s_sc), mode="nearest")
    return np.array(out, order="C"), y[0, 0].to(torch.int64).numpy()


def preprocess(image: np.ndarray, label: np.ndarray,
               protocol: Protocol) -> tuple[np.ndarray, np.ndarray]:
    """Protocol preprocessing of one sample.

    Returns:
        image (S, S, 3) uint8 with S = input_size (bilinear), label (s, s) int64 with
        s = score_size (nearest; ignore values kept).
    """
    img = center_square(image)
    lab = center_square(label)
    s_in, s_sc = protocol.input_size, protocol.score_size
    if img.shape[:2] != (s_in, s_in):
        img = np.asarray(Image.fromarray(img).resize((s_in, s_in), Image.Resampling.BILINEAR))
    if lab.shape != (s_sc, s_sc):
        if lab.min() < 0 or lab.max() > 255:
            raise ValueError("labels must lie in 0..255 to be resized")
        lab = np.asarray(Image.fromarray(lab.astype(np.uint8)).resize(
            (s_sc, s_sc), Image.Resampling.NEAREST))
    return np.array(img, dtype=np.uint8, order="C"), np.array(lab, dtype=np.int64)


@dataclass
class EvalSettings:
    """What to evaluate.

    Attributes:
        dataset, root: registry name and folder; ``dataset_kw`` extra loader options
            (e.g. ``{"diffcut_compat": True}`` for ADE20K).
        method, backbone, params: the method, its backbone (preset or folder; None: the
            method's default) and setting overrides.
        protocol: "diffseg" (512 in, scored 512) or "diffcut" (1024 in, scored 128);
            ``input_size`` / ``score_size`` override it.
        limit: evaluate the first ``limit`` images only.
        matching: "hungarian" (per image; many-to-one background on datasets with one) or
            "dataset" (one assignment over the accumulated histogram; needs ``num_clusters``).
        batch_size: images per backbone call.
        device, dtype: where the backbone (and the CLIP model of ``open_vocab``) runs.
        open_vocab: also score DiffCut's open-vocabulary benchmark (voc, context-59,
            coco-object): segments named by CLIP mask classification, per-image Jaccard.
        clip: the CLIP model for ``open_vocab``: an open_clip ``name:tag``, hub id or folder
            (``diffuseg.labels.clip_model.load_clip``); None: DiffCut's ConvNeXt-L.
        vocabulary: the class text of ``open_vocab``: "diffcut" (DiffCut's synonym lists) or
            "names" (bare class names); see eval/openvocab.py.
        attention_timestep: timestep(s) of the self-attention pass (None: 300; a list averages
            several, DWC's option).
        preprocessing: "standard" (centre crop of the shorter side, PIL bilinear resize) or
            "diffcut-code" (:func:`diffcut_code_preprocess`: DiffCut's one-pixel-smaller crop and
            non-antialiased resize, for reproducing its numbers to the pixel).
        clip_normalize: standardise CLIP's input with its mean / std. Off by default because
            DiffCut's script feeds CLIP [0, 1] RGB (``DataIterator`` divides by 255 and nothing
            else), and that is what its published numbers were measured with.
    """

    dataset: str
    root: str
    method: str = "diffcut"
    backbone: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    protocol: str = "diffcut"
    input_size: int | None = None
    score_size: int | None = None
    limit: int | None = None
    matching: str = "hungarian"
    num_clusters: int | None = None
    dataset_kw: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 4
    device: str | None = None
    dtype: str | None = None
    open_vocab: bool = False
    clip: str | None = None
    vocabulary: str = "diffcut"
    clip_normalize: bool = False
    attention_timestep: int | list[int] | None = None
    preprocessing: str = "standard"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """ValueError naming the setting and its valid range for a degenerate value: sizes,
        ``batch_size``, ``limit`` and ``num_clusters`` are integers >= 1 (None where the field
        allows it), ``matching`` is "hungarian" or "dataset" (the latter with ``num_clusters``),
        ``preprocessing`` one of :data:`PREPROCESSING`. Run on construction and again by
        :func:`evaluate` (the fields can be changed in between)."""
        get_protocol(self.protocol, self.input_size, self.score_size)  # name and sizes
        _check_int("batch_size", self.batch_size, 1)
        _check_int("limit", self.limit, 1, optional=True)
        _check_int("num_clusters", self.num_clusters, 1, optional=True)
        if self.matching not in ("hungarian", "dataset"):
            raise ValueError(f"matching must be 'hungarian' or 'dataset', got {self.matching!r}")
        if self.matching == "dataset" and self.num_clusters is None:
            raise ValueError("dataset-level matching needs num_clusters (an integer >= 1: a "
                             "fixed number of clusters whose ids mean the same in every image)")
        if self.preprocessing not in PREPROCESSING:
            raise ValueError(f"preprocessing must be one of {', '.join(PREPROCESSING)}, got "
                             f"{self.preprocessing!r}")

    def identity(self) -> dict[str, Any]:
        """The settings that decide every per-image record (resume must not mix them).

        The open-vocabulary keys are included when ``open_vocab`` is on, so that the records of
        a run without it keep the identity they were written with.
        """
        keys = ("dataset", "method", "backbone", "params", "protocol", "input_size",
                "score_size", "matching", "num_clusters", "dataset_kw")
        if self.open_vocab:
            keys += ("open_vocab", "clip", "vocabulary", "clip_normalize")
        if self.attention_timestep is not None:
            keys += ("attention_timestep",)
        if self.preprocessing != "standard":
            keys += ("preprocessing",)
        identity = {k: getattr(self, k) for k in keys}
        # records scored by other rules (before the official layout) must not be resumed into
        identity["scoring"] = SCORING_VERSION
        return json.loads(json.dumps(identity, default=str))


# ---------------------------------------------------------------------------------------------
# durable records
# ---------------------------------------------------------------------------------------------
#: One JSONL line with a checksum of the record (io.checked_line, shared with segment's journal).
record_line = checked_line


def _parse(line: bytes) -> dict | None:
    rec = parse_checked_line(line)
    if rec is None:
        return None
    # what every reader relies on: the dataset index and the image id
    index = rec.get("i")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0 \
            or not isinstance(rec.get("id"), str):
        return None
    return rec


def read_records(path: Path, repair: bool = False) -> dict[int, dict]:
    """Records of a JSONL file keyed by dataset index.

    A damaged last line (a crash mid-write) is dropped, and cut from the file when ``repair``;
    a damaged line before the last raises ValueError.
    """
    out: dict[int, dict] = {}
    if not path.is_file():
        return out
    data = path.read_bytes()
    offset = 0
    lines = data.split(b"\n")
    for n, line in enumerate(lines):
        last = n == len(lines) - 1 or all(not x.strip() for x in lines[n + 1 :])
        if not line.strip():
            offset += len(line) + 1
            continue
        rec = _parse(line)
        complete = n < len(lines) - 1  # has its newline
        if rec is None or not complete:
            if not last:
                raise ValueError(f"{path}: corrupt record on line {n + 1} (not the last line); "
                                 "the file was damaged, not cut by a crash")
            if repair:
                with open(path, "r+b") as f:
                    f.truncate(offset)
                    f.flush()
                    os.fsync(f.fileno())
            break
        out.setdefault(int(rec["i"]), rec)
        offset += len(line) + 1
    return out


class RecordWriter:
    """Append-only JSONL writer: one line per image, flushed and fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "ab")  # noqa: SIM115 (closed in close())

    def write(self, record: dict) -> None:
        self._f.write(record_line(record))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


# ---------------------------------------------------------------------------------------------
# encodings cache
# ---------------------------------------------------------------------------------------------
def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def encoding_cache_dir(root: Path, backbone: str, input_size: int, parts: list[str],
                       dataset: str, preprocessing: str = "standard") -> Path:
    """Cache folder of one (backbone, input size, captured parts, dataset, preprocessing: it
    decides the pixels the backbone sees)."""
    tag = hashlib.sha1(str(backbone).encode()).hexdigest()[:8]
    name = f"{_slug(Path(str(backbone)).name)}-{tag}-{input_size}px-{'+'.join(sorted(parts))}"
    if preprocessing != "standard":
        name += f"-{_slug(preprocessing)}"
    return root / name / _slug(dataset)


# ---------------------------------------------------------------------------------------------
# the loop
# ---------------------------------------------------------------------------------------------
def _dist_env() -> tuple[int, int]:
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _records_path(out_dir: Path, rank: int, world: int) -> Path:
    return out_dir / ("records.jsonl" if world == 1 else f"records.rank{rank}.jsonl")


def _failures_path(out_dir: Path, rank: int, world: int) -> Path:
    return out_dir / ("failures.jsonl" if world == 1 else f"failures.rank{rank}.jsonl")


def _load_all_records(out_dir: Path, own: Path, pattern: str = "records*.jsonl"
                      ) -> dict[int, dict]:
    records: dict[int, dict] = {}
    for path in sorted(out_dir.glob(pattern)):
        for i, rec in read_records(path, repair=(path == own)).items():
            records.setdefault(i, rec)
    return records


def run_digest(settings: EvalSettings) -> str:
    """The digest of ``settings.identity()`` that every record (and failure line) carries as
    ``"run"``: resume takes only records of the run's own digest."""
    return checksum(settings.identity())


_JSON_KINDS = {list: "a list", str: "a string", int: "a number", float: "a number",
               bool: "a boolean", type(None): "null"}


def read_json_object(path: Path, hint: str = "") -> dict:
    """The JSON object in ``path``; one ValueError naming the file and what is wrong with it
    (unreadable, not UTF-8, not JSON, or JSON but not an object), ``hint`` appended."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # JSONDecodeError, UnicodeDecodeError: ValueErrors
        raise ValueError(f"{path}: damaged, not a JSON object ({describe_error(exc)})"
                         f"{hint}") from exc
    if not isinstance(data, dict):
        kind = _JSON_KINDS.get(type(data), type(data).__name__)
        raise ValueError(f"{path}: expected a JSON object, found {kind}{hint}")
    return data


def _check_run(out_dir: Path, settings: EvalSettings, resume: bool) -> bool:
    """Refuse a folder whose run.json or records do not belong to this run; True when run.json
    exists and holds this run's identity."""
    run_file = out_dir / "run.json"
    identity = settings.identity()
    has_records = any(out_dir.glob("records*.jsonl")) or any(out_dir.glob("failures*.jsonl"))
    if run_file.exists() or run_file.is_symlink():
        if not run_file.is_file():
            raise ValueError(f"{run_file}: not a file (it should hold the settings of the "
                             "records in this folder); remove it or choose a new --out")
        saved = read_json_object(run_file, hint=": it should hold the settings of the records "
                                 "in this folder; remove it (records carry their settings' "
                                 "digest) or choose a new --out")
        if has_records and not resume:
            raise ValueError(f"{out_dir} already holds records of a run: pass --resume to "
                             "continue it, or choose a new --out")
        if saved != identity and has_records:
            diff = sorted(k for k in {*identity, *saved} if saved.get(k) != identity.get(k))
            raise ValueError(f"{out_dir} holds records of other settings ({', '.join(diff)}); "
                             "choose a new --out")
        return saved == identity
    if has_records and not resume:
        raise ValueError(f"{out_dir} already holds records: pass --resume or a new --out")
    return False


def _check_record_runs(out_dir: Path, records: dict[int, dict], digest: str,
                       run_matches: bool) -> None:
    """Resume only records made with this run's settings: each carries the digest of the
    identity it was made with. Records without one (written before records carried it) are
    taken only when run.json exists and holds this run's identity (run.json was checked by
    :func:`_check_run`); without it nothing tells what made them."""
    other = sorted(i for i, rec in records.items() if "run" in rec and rec["run"] != digest)
    if other:
        rec = records[other[0]]
        raise ValueError(f"{out_dir} holds records of other settings ({len(other)} record(s), "
                         f"e.g. image {rec['id']!r} made with settings digest {rec['run']}, "
                         f"this run's is {digest}); choose a new --out")
    old = sorted(i for i, rec in records.items() if "run" not in rec)
    if old and not run_matches:
        raise ValueError(f"{out_dir} holds {len(old)} record(s) without a settings digest (made "
                         "before records carried one) and no run.json with this run's settings "
                         "to vouch for them: they may be records of other settings; choose a "
                         "new --out")


def evaluate(
    settings: EvalSettings,
    out_dir: str | Path,
    *,
    encodings: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    on_record: Callable[[int, dict], None] | None = None,
    dataset: SegDataset | None = None,
    clip: Any = None,
    save_predictions: bool = False,
) -> dict[str, Any]:
    """Evaluate ``settings`` and write the results to ``out_dir``.

    Args:
        settings: what to evaluate (:class:`EvalSettings`).
        out_dir: folder of the records and results (created).
        encodings: Encoding cache folder: a cached Encoding is reused, a missing one is computed
            and saved (only for methods that use a backbone).
        resume: continue the records already in ``out_dir`` (else they must not exist).
        progress: show a progress bar with the running mIoU (stderr).
        on_record: called as ``on_record(index, record)`` after each record is durably written.
        dataset: an already built dataset (default: ``get_dataset(settings.dataset, root)``).
        clip: for ``settings.open_vocab``, an object with ``dense(image, size)``,
            ``head(pooled)`` and ``encode_text(prompts)`` (the ``load_clip`` API) used instead
            of loading ``settings.clip`` (tests inject one). Loaded only if an image remains.
        save_predictions: write, per image, the method's raw prediction and the one that was
            scored as label PNGs (:class:`PredictionWriter`), before its record; resuming a run
            that did not save them is refused (recomputed files could disagree with records).
    Returns:
        The result dict (also written as results.json / results.md by rank 0): ``miou`` and
        ``pixel_accuracy`` in [0, 1], ``per_class_iou``, ``counts``, ``num_images`` (scored),
        ``failed`` (the images that could not be read: ``[{"i", "id", "path", "error"}]``, not
        counted; see the module docstring), the protocol and score resolution, the resolved
        config and the published numbers; with ``open_vocab`` also an ``open_vocab`` block.
    Raises:
        ValueError: bad settings (degenerate values, ``open_vocab`` on another dataset, ...),
            records of another run in ``out_dir`` (or records without a settings digest and no
            matching run.json), a damaged run.json / method_config.json, an ``out_dir`` or
            ``encodings`` that cannot be a folder; ``WeightsNotFoundError`` (a ValueError) for
            missing weights. A damaged image is not raised: it is listed in ``failed``.
    """
    import torch

    from diffuseg.segmenter import Segmenter

    prompts: tuple[str, ...] = ()
    if settings.open_vocab:
        prompts = open_vocab_prompts(settings.dataset, settings.vocabulary)
    elif settings.clip is not None or clip is not None:
        raise ValueError("a CLIP model is used only by open-vocabulary evaluation (open_vocab)")
    settings.validate()  # the fields may have changed since construction
    rank, world = _dist_env()
    out_dir = Path(out_dir)
    ensure_folder(out_dir, "output folder")
    if encodings is not None and Path(encodings).exists() and not Path(encodings).is_dir():
        raise ValueError(f"encodings folder {encodings} is a file, not a folder")
    ds = dataset if dataset is not None else get_dataset(settings.dataset, settings.root,
                                                         **settings.dataset_kw)
    if settings.open_vocab and ds.num_classes != len(prompts):
        raise ValueError(f"dataset {ds.name!r} has {ds.num_classes} classes but the "
                         f"open-vocabulary classes of {settings.dataset!r} are {len(prompts)}")
    protocol = get_protocol(settings.protocol, settings.input_size, settings.score_size)
    prepare = PREPROCESSING[settings.preprocessing]
    segmenter = Segmenter(settings.method, settings.backbone, device=settings.device,
                          attention_timestep=settings.attention_timestep,
                          dtype=settings.dtype, **settings.params)

    pg_owned = False
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo", rank=rank, world_size=world)
            pg_owned = True
    # every rank checks the same untouched folder (so all raise alike), then rank 0 writes
    # run.json: only after the records were checked against the run.json they were found with
    digest = run_digest(settings)
    own_path = _records_path(out_dir, rank, world)
    own_failures = _failures_path(out_dir, rank, world)
    run_matches = _check_run(out_dir, settings, resume)
    records = _load_all_records(out_dir, own_path) if resume else {}
    _check_record_runs(out_dir, records, digest, run_matches)
    if own_failures.is_file():  # a line cut by a crash must not be followed by new ones
        read_records(own_failures, repair=True)
    if (out_dir / "method_config.json").is_file():  # read back by the results
        read_json_object(out_dir / "method_config.json", hint=": remove it (it is written "
                         "again from the method's settings) or choose a new --out")
    if world > 1:
        dist.barrier()
    if rank == 0:
        write_json(out_dir / "run.json", settings.identity())

    n = len(ds) if settings.limit is None else min(settings.limit, len(ds))
    indices = list(range(n))
    mine = indices[rank::world]
    ids = ds.image_ids()
    for i, rec in records.items():
        if i < len(ids) and rec["id"] != ids[i]:
            raise ValueError(f"record {i} is for image {rec['id']!r} but the dataset has "
                             f"{ids[i]!r} there: another dataset or list; choose a new --out")
    if settings.open_vocab:
        bad = sorted(i for i, rec in records.items() if "ov" not in rec)
        if bad:
            raise ValueError(f"record {bad[0]} has no open-vocabulary counts (a run without "
                             "open_vocab): choose a new --out")
    predictions = PredictionWriter(out_dir) if save_predictions else None
    if predictions is not None:
        # an image's files are written before its record: a record without them means the run
        # saved none (or they were deleted); recomputing them now could disagree with the record
        bare = [records[i]["id"] for i in mine if i in records and not predictions.has(
            records[i]["id"])]
        if bare:
            raise ValueError(f"{len(bare)} recorded image(s) have no saved predictions (e.g. "
                             f"{bare[0]!r}): the run did not save them; choose a new --out to "
                             "save predictions for every image")
    todo = [i for i in mine if i not in records]

    running = _accumulate([records[i] for i in mine if i in records], ds.num_classes, settings)
    ov_running = [records[i]["ov"]["jaccard"] for i in mine if i in records
                  ] if settings.open_vocab else []
    namer = _ClipNamer(settings, prompts, ds, protocol, clip) if settings.open_vocab else None
    if namer is not None and todo:
        namer.load()  # before any image: missing weights fail at once
    needs = sorted(segmenter.spec.needs & {"features", "attention"})
    cache = None
    if encodings is not None and needs:
        ensure_folder(Path(encodings), "encodings folder", probe=False)
        cache = encoding_cache_dir(Path(encodings), segmenter.backbone_name, protocol.input_size,
                                   needs, ds.name, settings.preprocessing)
        ensure_folder(cache, "encodings folder", probe=False)
    expected = _encoding_meta(segmenter, settings, needs, protocol) if needs else {}
    method_config_path = out_dir / "method_config.json"
    bar = _progress(len(mine), len(mine) - len(todo), progress, rank, settings)
    writer = RecordWriter(own_path)
    failures: dict[int, dict] = {}  # this process's images that could not be read, this run
    failure_writer: RecordWriter | None = None

    def fail(i: int, exc: BaseException) -> None:
        nonlocal failure_writer
        if isinstance(exc, SampleError):
            entry = {"i": int(i), "id": exc.image_id, "error": exc.cause,
                     "path": None if exc.path is None else str(exc.path)}
        else:  # a dataset passed in, or the preprocessing
            entry = {"i": int(i), "id": ids[i], "error": describe_error(exc), "path": None}
        entry["run"] = digest
        if failure_writer is None:
            failure_writer = RecordWriter(own_failures)
        failure_writer.write(entry)
        failures[i] = entry
        bar.update(1)
        bar.set_postfix({"mIoU": f"{running.miou * 100:.1f}", "failed": len(failures)})

    try:
        for start in range(0, len(todo), settings.batch_size):
            chunk = todo[start : start + settings.batch_size]
            samples = []
            for i in chunk:
                try:
                    image_id, image, label = ds[i]
                    img, lab = prepare(image, label, protocol)
                except READ_ERRORS as exc:  # a damaged image: recorded as failed, run goes on
                    fail(i, exc)
                    continue
                samples.append((i, image_id, img, lab))
            if not samples:
                continue
            encs = _encodings(segmenter, samples, needs, cache, protocol, expected,
                              settings.batch_size)
            for (i, image_id, img, lab), enc in zip(samples, encs, strict=True):
                config = segmenter.config(enc)
                refine = bool(getattr(config, "refine", False))
                # the method's labels unrefined: the runner refines after the background merge
                seg = segmenter.segment(enc, output_size=(protocol.score_size,) * 2,
                                        **({"refine": False} if refine else {}))
                if rank == 0 and not method_config_path.is_file():
                    write_json(method_config_path, {**seg.config, **(
                        {"refine": True} if refine else {})})
                scored = score_image(img, lab, seg.method_labels, ds, settings,
                                     config if refine else None)
                rec = {"i": int(i), "id": image_id, "run": digest, **scored.record}
                if namer is not None:
                    rec["ov"] = namer.score(img, lab, scored.unmerged)
                    ov_running.append(rec["ov"]["jaccard"])
                if predictions is not None:
                    predictions.write(image_id, scored)
                writer.write(rec)
                running.add(Scores.from_dict(rec))
                bar.update(1)
                postfix = {"mIoU": f"{running.miou * 100:.1f}"}
                if namer is not None:
                    postfix["ov"] = f"{_mean_jaccard(ov_running) * 100:.1f}"
                if failures:
                    postfix["failed"] = len(failures)
                bar.set_postfix(postfix)
                if on_record is not None:
                    on_record(i, rec)
    finally:
        writer.close()
        if failure_writer is not None:
            failure_writer.close()
        bar.close()

    # this process's share, then one all-reduce of the integer counts (and of a mask of the
    # images that failed: each index is one rank's)
    records.update(read_records(own_path))
    share = [records[i] for i in mine if i in records]
    totals = _totals(share, ds.num_classes, settings, n)
    failed_mask = np.zeros(n, dtype=np.int64)
    failed_mask[[i for i in mine if i not in records]] = 1
    totals["failed"] = failed_mask
    if world > 1:
        import torch.distributed as dist

        # integer counts, and per-image values each held by one rank (zeros elsewhere): the
        # sums are exact, so the result equals the single-process one bit for bit
        for key in list(totals):
            t = torch.from_numpy(np.ascontiguousarray(totals[key]))
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            totals[key] = t.numpy()
        dist.barrier()
    if settings.matching == "dataset":
        scores = dataset_scores(totals["hist"])
    else:
        scores = Scores(totals["tp"], totals["fp"], totals["fn"])
    failed = _failed_images(out_dir, np.flatnonzero(totals["failed"]).tolist(), failures, ids,
                            digest)
    result = _result(settings, ds, protocol, scores, n, world, out_dir, segmenter, failed)
    if settings.open_vocab:
        result["open_vocab"] = _open_vocab_result(settings, ds, totals, result, namer)
    if rank == 0:
        write_json(out_dir / "results.json", result)
        (out_dir / "results.md").write_text(results_markdown([result], config=True))
    if pg_owned:
        import torch.distributed as dist

        dist.destroy_process_group()
    return result


def _failed_images(out_dir: Path, indices: list[int], own: dict[int, dict], ids: list[str],
                   digest: str) -> list[dict]:
    """The ``failed`` list of the results: per failed dataset index, {"i", "id", "path",
    "error"}; this process's from memory, another rank's from its failures file (lines of this
    run's settings)."""
    if not indices:
        return []
    others: dict[int, dict] = {}
    if any(i not in own for i in indices):
        for path in sorted(out_dir.glob("failures*.jsonl")):
            for i, entry in read_records(path).items():
                if entry.get("run") == digest:
                    others[i] = entry
    out = []
    for i in indices:
        entry = own.get(i) or others.get(i) or {"error": "could not be read (cause not found "
                                                         "in the failures files)"}
        out.append({"i": int(i), "id": ids[i], "path": entry.get("path"),
                    "error": str(entry.get("error"))})
    return out


def _progress(total: int, initial: int, enabled: bool, rank: int, settings: EvalSettings):
    from tqdm.auto import tqdm

    desc = f"{settings.method} {settings.dataset}" + (f" [rank {rank}]" if rank else "")
    return tqdm(total=total, initial=initial, disable=not enabled, desc=desc, leave=False)


#: Sample preprocessing by name (EvalSettings.preprocessing).
PREPROCESSING: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "standard": preprocess,
    "diffcut-code": diffcut_code_preprocess,
}


def _encoding_meta(segmenter, settings: EvalSettings, needs: list[str],
                   protocol: Protocol) -> dict[str, Any]:
    """What decides an Encoding besides the image, as its ``meta`` records it: a cached Encoding
    is reused only if all of it matches (another dtype, seed or timestep is encoded again)."""
    import torch

    from diffuseg.backbones.diffusion import (
        ATTENTION_TIMESTEP,
        NOISE_SEED,
        default_device,
        resolve_dtype,
    )
    from diffuseg.backbones.registry import DIFFCUT_TIMESTEP, get_preset

    device = torch.device(settings.device) if settings.device else default_device()
    meta: dict[str, Any] = {
        "seed": NOISE_SEED,
        "dtype": str(resolve_dtype(settings.dtype, device, segmenter.spec.cuda_dtype)
                     ).replace("torch.", ""),
        "image_size": [protocol.input_size] * 2,
    }
    if "features" in needs:
        # a preset's own timestep; a model folder gets DiffCut's (read without the folder, which
        # a fully cached run may no longer have)
        preset = get_preset(str(segmenter.backbone_name))
        meta["timestep"] = preset.timestep if preset is not None else DIFFCUT_TIMESTEP
    if "attention" in needs:
        t = settings.attention_timestep
        meta["attention_timestep"] = ATTENTION_TIMESTEP if t is None else t
    return meta


def _encodings(segmenter, samples, needs, cache: Path | None, protocol: Protocol,
               expected: dict[str, Any], batch_size: int) -> list:
    """One Encoding per sample: from the cache when its meta matches ``expected``
    (:func:`_encoding_meta`), else encoded in one batched backbone call."""
    from diffuseg.types import Encoding

    size = protocol.input_size
    if not needs:  # no backbone: the method reads the image only
        return [Encoding(image=img, meta={"original_size": [size, size]})
                for _, _, img, _ in samples]
    out: list = [None] * len(samples)
    missing = []
    for k, (_, image_id, _, _) in enumerate(samples):
        path = None if cache is None else cache / f"{_slug(image_id)}.safetensors"
        if path is not None and path.is_file():
            try:
                enc = Encoding.load(path)
                if all(enc.meta.get(key) == value for key, value in expected.items()):
                    out[k] = enc
                    continue
            except ValueError:
                pass  # damaged: recompute
        missing.append(k)
    if missing:
        extra = {"attention_timestep": expected["attention_timestep"]} if "attention" in needs \
            else {}
        encoded = segmenter.backbone.encode(
            [samples[k][2] for k in missing], features="features" in needs,
            attention="attention" in needs, size=size, square=True,
            batch_size=batch_size, seed=expected["seed"],
            timestep=expected.get("timestep"), **extra)
        for k, enc in zip(missing, encoded, strict=True):
            out[k] = enc
            if cache is not None:
                enc.save(cache / f"{_slug(samples[k][1])}.safetensors")
    return out


#: Changes whenever the per-image counts would change for the same prediction; part of a run's
#: identity, so that resume never mixes records scored by different rules.
SCORING_VERSION = "official-layout-1"

#: The order in which one image is scored (the official evaluation's), as results record it.
SCORING_ORDER = (
    "method labels at the score size, unrefined, raw ids",
    "many-to-one background merge (datasets with a background class)",
    "refinement with the method's settings (PAMR + median filter), if on",
    "final Hungarian matching over all classes, official histogram layout",
)


@dataclass
class ScoredImage:
    """One image scored as the official evaluation does.

    Attributes:
        raw: (s, s) int64, the method's prediction (raw ids, unrefined).
        final: (s, s) int64, the prediction that was matched (background merged, then refined:
            after refinement, ids are ranks of the merged ids, as PAMR's argmax gives them).
        record: the image's record fields: "segments" (raw ids present), "tp", "fp", "fn", and
            "hist" for dataset-level matching.
        unmerged: (s, s) consecutive labels of the refined raw prediction (no merge): the
            segments that open-vocabulary naming sees; None unless open vocabulary or
            dataset-level matching needs it.
    """

    raw: np.ndarray
    final: np.ndarray
    record: dict[str, Any]
    unmerged: np.ndarray | None


class PredictionWriter:
    """``--save-predictions``: per image, ``predictions/raw/<id>.png`` (the method's prediction:
    raw ids, unrefined, before the background merge) and ``predictions/scored/<id>.png`` (the
    prediction the final matching scored), as label PNGs (8-bit palette, 16-bit above 255 ids),
    written atomically, so that any tool (the official scripts included) can rescore a run and
    compare it image by image. File names are the image ids made file-safe."""

    KINDS = ("raw", "scored")

    def __init__(self, out_dir: Path) -> None:
        self.folders = {k: Path(out_dir) / "predictions" / k for k in self.KINDS}
        for folder in self.folders.values():
            ensure_folder(folder, "predictions folder")

    def paths(self, image_id: str) -> dict[str, Path]:
        return {k: f / f"{_slug(image_id)}.png" for k, f in self.folders.items()}

    def has(self, image_id: str) -> bool:
        return all(p.is_file() for p in self.paths(image_id).values())

    def write(self, image_id: str, scored: ScoredImage) -> None:
        from diffuseg.io import write_label_png

        paths = self.paths(image_id)
        write_label_png(paths["raw"], scored.raw)
        write_label_png(paths["scored"], scored.final)


def score_image(image: np.ndarray, label: np.ndarray, raw: np.ndarray, ds: SegDataset,
                settings: EvalSettings, refine: Any = None) -> ScoredImage:
    """Score one image in the official order (:data:`SCORING_ORDER`).

    DiffCut's ``eval_diffcut.py`` merges the background segments *before* PAMR and scores the
    refined map, whose ids are then PAMR's argmax indices over the merged ids present (ranks);
    DiffSeg's benchmark has no refinement. The per-image counts always come from this order; for
    dataset-level matching the refined prediction without the merge (cluster ids keep their
    identity) also gives the record's histogram.

    Args:
        image: (S, S, 3) uint8, the protocol's input image (refinement resizes it, as DiffCut).
        label: (s, s) our class ids at the score size.
        raw: (s, s) the method's raw ids (:attr:`Segmentation.method_labels`).
        ds: the dataset (classes, ignore value, background).
        settings: the run's settings (matching, clusters).
        refine: the method's config when refinement is on (its PAMR settings), else None.
    """
    from diffuseg.methods.common import refine_as_configured

    raw = np.asarray(raw, dtype=np.int64)
    background = 0 if ds.has_background else None
    pred = raw
    if background is not None:
        pred = merge_background(label, pred, ds.num_classes, ds.ignore_index, background)
    if refine is not None:
        refined = np.asarray(refine_as_configured(image, pred, refine), dtype=np.int64)
        pred = np.searchsorted(np.unique(pred), refined)
    record: dict[str, Any] = {"segments": int(np.unique(raw).size)}
    record.update(official_scores(label, pred, ds.num_classes, ds.ignore_index,
                                  background).to_dict())
    unmerged = None
    if settings.matching == "dataset" or settings.open_vocab:
        unmerged = raw
        if refine is not None:  # without a merge, the refined map is already the unmerged one
            unmerged = refined if background is None else np.asarray(
                refine_as_configured(image, raw, refine), dtype=np.int64)
    if settings.matching == "dataset":
        record["hist"] = cluster_histogram(label, unmerged, ds.num_classes,
                                           int(settings.num_clusters), ds.ignore_index).tolist()
    if unmerged is not None:
        unmerged = np.unique(unmerged, return_inverse=True)[1].reshape(raw.shape)
    return ScoredImage(raw=raw, final=pred, record=record, unmerged=unmerged)


#: CLIP input size relative to the protocol's input: DiffCut upsamples COCO-Object images to
#: 2048 before CLIP (``associate_label`` in ``eval_diffcut_openvoc.py``), the others stay at 1024.
CLIP_UPSAMPLE: dict[str, int] = {"coco-object": 2}


class _ClipNamer:
    """Open-vocabulary scoring of one image: CLIP names the segments, the class map is compared
    with the ground truth. The CLIP model and the text classifier are made once, on demand."""

    def __init__(self, settings: EvalSettings, prompts: tuple[str, ...], ds: SegDataset,
                 protocol: Protocol, clip: Any = None) -> None:
        self.settings = settings
        self.prompts = prompts
        self.num_classes = ds.num_classes
        self.ignore_index = ds.ignore_index
        self.size = protocol.input_size * CLIP_UPSAMPLE.get(ds.name, 1)
        self.clip = clip
        self.injected = clip is not None
        self.classifier = None

    @property
    def name(self) -> str:
        """The CLIP model's name as the results report it."""
        if self.injected:
            return str(getattr(self.clip, "name", None) or self.settings.clip
                       or type(self.clip).__name__)
        if self.settings.clip:
            return self.settings.clip
        from diffuseg.labels.clip_model import DEFAULT_CLIP

        return DEFAULT_CLIP

    def load(self) -> None:
        """Load CLIP (unless injected) and build the text classifier."""
        if self.classifier is not None:
            return
        if self.clip is None:
            from diffuseg.labels.clip_model import load_clip

            args = (self.settings.clip,) if self.settings.clip else ()
            self.clip = load_clip(*args, device=self.settings.device, dtype=self.settings.dtype)
        from diffuseg.labels.clip import build_text_classifier

        self.classifier = build_text_classifier(self.clip.encode_text, self.prompts)

    def score(self, image: np.ndarray, label: np.ndarray, seg_labels: np.ndarray) -> dict:
        """The open-vocabulary part of one image's record.

        Args:
            image: (S, S, 3) uint8, the protocol's input image (CLIP resizes it to ``size``).
            label: (s, s) ground-truth class ids at the score size (ignore value left out).
            seg_labels: (s, s) segment labels 0..K-1 at the score size.
        Returns:
            {"tp", "fp", "fn": per-class counts (lists), "jaccard": the image's macro Jaccard
            (None when no pixel is scored), "classes": the class id of each segment}.
        """
        from diffuseg.labels.clip import classify_pooled, mask_pool

        self.load()
        features = self.clip.dense(image, self.size, normalize=self.settings.clip_normalize)
        pooled = mask_pool(features, seg_labels)
        classes = classify_pooled(pooled, self.classifier, self.clip.head)[0].numpy()
        pred = classes[np.asarray(seg_labels, dtype=np.int64)]
        tp, fp, fn = class_counts(label, pred, self.num_classes, self.ignore_index)
        jac = counts_jaccard(tp, fp, fn)
        return {"tp": tp.tolist(), "fp": fp.tolist(), "fn": fn.tolist(),
                "jaccard": None if np.isnan(jac) else jac, "classes": classes.tolist()}


def _mean_jaccard(values: list[float | None]) -> float:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else float("nan")


def _accumulate(records: list[dict], num_classes: int, settings: EvalSettings) -> Scores:
    total = Scores.zeros(num_classes)
    for rec in records:
        total.add(Scores.from_dict(rec))
    return total


def _totals(records: list[dict], num_classes: int, settings: EvalSettings, n: int) -> dict:
    """This process's sums: int64 counts; for open vocabulary also the per-image Jaccard as a
    float64 vector over the n dataset indices (0 where this process has no value) and an int64
    mask of the indices that hold one."""
    s = _accumulate(records, num_classes, settings)
    totals = {"tp": s.tp, "fp": s.fp, "fn": s.fn,
              "images": np.array([len(records)], dtype=np.int64)}
    if settings.matching == "dataset":
        hist = np.zeros((num_classes, int(settings.num_clusters)), dtype=np.int64)
        for rec in records:
            hist += np.asarray(rec["hist"], dtype=np.int64)
        totals["hist"] = hist
    if settings.open_vocab:
        for key in ("tp", "fp", "fn"):
            totals[f"ov_{key}"] = np.zeros(num_classes, dtype=np.int64)
        values = np.zeros(n, dtype=np.float64)
        valid = np.zeros(n, dtype=np.int64)
        for rec in records:
            ov = rec["ov"]
            for key in ("tp", "fp", "fn"):
                totals[f"ov_{key}"] += np.asarray(ov[key], dtype=np.int64)
            if ov["jaccard"] is not None:
                values[int(rec["i"])] = float(ov["jaccard"])
                valid[int(rec["i"])] = 1
        totals["ov_image_jaccard"] = values
        totals["ov_image_valid"] = valid
    return totals


def _result(settings: EvalSettings, ds: SegDataset, protocol: Protocol, scores: Scores,
            n: int, world: int, out_dir: Path, segmenter, failed: list[dict]) -> dict[str, Any]:
    cfg_path = out_dir / "method_config.json"
    method_config = read_json_object(cfg_path) if cfg_path.is_file() else None
    refine = (method_config or {}).get("refine")
    backbone = segmenter.backbone_name if segmenter.spec.needs_backbone else None
    pubs = [p for p in published.lookup(settings.method, ds.name, backbone, refine=refine,
                                        protocol=protocol.name)
            if p.metric != published.OPEN_VOCAB_METRIC]
    matching = settings.matching
    if matching == "hungarian" and ds.has_background:
        matching = "hungarian+background"
    return {
        "dataset": ds.name,
        "method": settings.method,
        "backbone": backbone,
        "protocol": protocol.name,
        "input_size": [protocol.input_size] * 2,
        "score_resolution": [protocol.score_size] * 2,
        "matching": matching,
        "scoring": {
            "order": list(SCORING_ORDER),
            "layout": "official: histogram columns max(classes, pred.max() + 1) over raw ids, "
                      "background last (DiffCut's eval_diffcut.py, DiffSeg's utils.py)",
        },
        "num_images": n - len(failed),  # scored; the failed ones are listed, not counted
        "failed": failed,
        "miou": scores.miou,
        "pixel_accuracy": scores.pixel_accuracy,
        "per_class_iou": scores.class_iou(ds.class_names),
        "counts": scores.to_dict(),
        "published": [p.to_dict() for p in pubs],
        "world_size": world,
        "settings": asdict(settings),
        "method_config": method_config,
        "dataset_info": ds.describe(),
    }


def _open_vocab_result(settings: EvalSettings, ds: SegDataset, totals: dict, result: dict,
                       namer: _ClipNamer) -> dict[str, Any]:
    """The ``open_vocab`` block of the results from the (all-reduced) totals."""
    tp, fp, fn = (totals[f"ov_{k}"] for k in ("tp", "fp", "fn"))
    valid = totals["ov_image_valid"].astype(bool)
    per_image = totals["ov_image_jaccard"][valid]  # index order, whatever the sharding
    iou = class_iou(tp, fp, fn)
    method_config = result.get("method_config") or {}
    pubs = published.lookup(settings.method, ds.name, result["backbone"],
                            refine=method_config.get("refine"), protocol=result["protocol"],
                            metric=published.OPEN_VOCAB_METRIC)
    return {
        "miou_per_image": float(per_image.mean()) if per_image.size else float("nan"),
        "miou_dataset": counts_jaccard(tp, fp, fn),
        "per_class_iou": {name: (None if np.isnan(v) else float(v))
                          for name, v in zip(ds.class_names, iou, strict=True)},
        "num_images_scored": int(valid.sum()),
        "counts": {"tp": tp.tolist(), "fp": fp.tolist(), "fn": fn.tolist()},
        "clip": namer.name,
        "clip_input_size": [namer.size] * 2,
        "vocabulary": settings.vocabulary,
        "clip_normalize": settings.clip_normalize,
        "num_classes": ds.num_classes,
        "ground_truth": "void, unlabeled (and COCO stuff) are background; no pixel ignored",
        "published": [p.to_dict() for p in pubs],
    }


# ---------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{100 * x:.1f}"


#: Keys the table's own columns already show.
_SHOWN = {"dataset", "method", "backbone", "protocol", "matching", "input_size", "score_size"}


def differing_settings(results: list[dict]) -> list[dict[str, Any]]:
    """Per result, the settings (run settings and resolved method config, flattened) whose
    values are not the same in every result, the table's own columns aside; [] when the rows
    differ in nothing else (or there is one row)."""
    if len(results) < 2:
        return []
    flat = []
    for r in results:
        values: dict[str, Any] = {}
        for key, value in (r.get("settings") or {}).items():
            if key == "params":
                continue  # the method config holds them, resolved
            values[key] = value
        for key, value in (r.get("method_config") or {}).items():
            values[key] = value
        flat.append({k: json.dumps(v, sort_keys=True, default=str) for k, v in values.items()
                     if k not in _SHOWN and k not in ("root", "output_size")})
    keys = sorted({k for f in flat for k in f if len({g.get(k) for g in flat}) > 1})
    if not keys:
        return []
    return [{k: json.loads(f[k]) if k in f else "–" for k in keys} for f in flat]


def results_markdown(results: list[dict], config: bool = False) -> str:
    """One markdown table of results (mIoU / pixel accuracy in percent, published beside).

    When any result has an ``open_vocab`` block, three columns follow: its per-image mIoU
    (DiffCut's number), its dataset mIoU and the published open-vocabulary mIoU. When rows
    differ in settings the other columns do not show (a method parameter, the preprocessing,
    the dtype, ...), a last column lists them per row (:func:`differing_settings`).
    """
    open_vocab = any(r.get("open_vocab") for r in results)
    differ = differing_settings(results)
    head = ("| dataset | method | backbone | protocol | scored at | images | matching | mIoU "
            "| pixel acc. | published mIoU | published pixel acc. |")
    ncol = 11
    if open_vocab:
        head += " open-vocab mIoU | open-vocab mIoU (dataset) | published open-vocab mIoU |"
        ncol += 3
    if differ:
        head += " settings that differ |"
        ncol += 1
    lines = [head, "|" + "---|" * ncol]
    for r in results:
        pubs = r.get("published") or []
        pm = [p for p in pubs if p["metric"] == "miou"]
        pa = [p for p in pubs if p["metric"] == "pixel_accuracy"]
        res = "x".join(str(v) for v in r["score_resolution"])
        images = f"{r['num_images']}" + (f" ({len(r['failed'])} failed)" if r.get("failed")
                                         else "")
        row = (
            f"| {r['dataset']} | {r['method']} | {r['backbone'] or '–'} | {r['protocol']} | "
            f"{res} | {images} | {r['matching']} | {_pct(r['miou'])} | "
            f"{_pct(r['pixel_accuracy'])} | {pm[0]['value'] if pm else '–'} | "
            f"{pa[0]['value'] if pa else '–'} |"
        )
        if open_vocab:
            ov = r.get("open_vocab") or {}
            po = ov.get("published") or []
            row += (f" {_pct(ov.get('miou_per_image'))} | {_pct(ov.get('miou_dataset'))} | "
                    f"{po[0]['value'] if po else '–'} |")
        if differ:
            row += " " + (", ".join(f"{k}={v}" for k, v in differ[len(lines) - 2].items())
                          or "–") + " |"
        lines.append(row)
    text = "\n".join(lines) + "\n"
    if config:
        for r in results:
            failed = r.get("failed") or []
            if failed:
                text += (f"\nFailed images: {len(failed)} could not be read and are not scored "
                         "(fix them and run again with --resume to score them):\n\n")
                text += "".join(f"- {f['id']}" + (f" ({f['path']})" if f.get("path") else "")
                                + f": {f['error']}\n" for f in failed)
            ov = r.get("open_vocab")
            if ov:
                text += (f"\nOpen vocabulary: CLIP {ov['clip']} at "
                         f"{'x'.join(str(v) for v in ov['clip_input_size'])}, vocabulary "
                         f"{ov['vocabulary']!r}, {ov['num_classes']} classes, "
                         f"{ov['num_images_scored']} images scored.\n")
            pubs = [*(r.get("published") or []), *((ov or {}).get("published") or [])]
            sources = sorted({p["source"] for p in pubs})
            text += "\nPublished: " + ("; ".join(sources) if sources else "none for this setting")
            text += "\n\nResolved config:\n\n```json\n"
            text += json.dumps({"settings": r["settings"], "method_config": r["method_config"]},
                               indent=2, default=str)
            text += "\n```\n"
    return text


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _json_kind(value: Any) -> str:
    kind = _JSON_KINDS.get(type(value), "an object" if isinstance(value, dict) else None)
    return kind or type(value).__name__


#: What :func:`results_markdown` reads from a result (its table): key -> (test, what it must be).
_RESULT_KEYS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "dataset": (lambda v: isinstance(v, str), "a string"),
    "method": (lambda v: isinstance(v, str), "a string"),
    "backbone": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "protocol": (lambda v: isinstance(v, str), "a string"),
    "score_resolution": (lambda v: isinstance(v, list) and bool(v)
                         and all(isinstance(x, int) and not isinstance(x, bool) for x in v),
                         "a list of integers"),
    "num_images": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "matching": (lambda v: isinstance(v, str), "a string"),
    "miou": (lambda v: v is None or _is_number(v), "a number or null"),
    "pixel_accuracy": (lambda v: v is None or _is_number(v), "a number or null"),
}


def _published_ok(value: Any) -> bool:
    return value is None or (isinstance(value, list) and all(
        isinstance(p, dict) and isinstance(p.get("metric"), str) and "value" in p
        for p in value))


def check_result(result: Any, source: str = "result") -> dict:
    """``result`` if it holds what :func:`results_markdown` needs for its table, else one
    ValueError starting with ``source`` that names every missing or wrong key."""
    if not isinstance(result, dict):
        raise ValueError(f"{source}: not an evaluation result (expected a JSON object, found "
                         f"{_json_kind(result)})")
    missing = [k for k in _RESULT_KEYS if k not in result]
    wrong = [f"{k!r} must be {want}, found {_json_kind(result[k])} {result[k]!r:.40}"
             for k, (test, want) in _RESULT_KEYS.items() if k in result and not test(result[k])]
    if not _published_ok(result.get("published")):
        wrong.append("'published' must be a list of objects with 'metric' and 'value'")
    if result.get("failed") is not None and not isinstance(result["failed"], list):
        wrong.append(f"'failed' must be a list, found {_json_kind(result['failed'])}")
    ov = result.get("open_vocab")
    if ov is not None:
        if not isinstance(ov, dict):
            wrong.append(f"'open_vocab' must be an object, found {_json_kind(ov)}")
        else:
            wrong += [f"'open_vocab.{k}' must be a number or null, found {_json_kind(ov[k])}"
                      for k in ("miou_per_image", "miou_dataset")
                      if ov.get(k) is not None and not _is_number(ov[k])]
            if not _published_ok(ov.get("published")):
                wrong.append("'open_vocab.published' must be a list of objects with 'metric' "
                             "and 'value'")
    if missing or wrong:
        parts = ([f"missing key{'s' if len(missing) > 1 else ''} "
                  f"{', '.join(repr(k) for k in missing)}"] if missing else []) + wrong
        raise ValueError(f"{source}: not an evaluation result: {'; '.join(parts)}")
    return result


def load_result(path: str | Path) -> dict:
    """A results.json (or the folder holding one), checked by :func:`check_result`.

    Raises:
        ValueError: one line naming the file: missing, unreadable, not JSON, not an object,
            or missing / wrong keys (each named).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise ValueError(f"no results.json at {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a JSON results file ({describe_error(exc)})") from exc
    return check_result(data, str(path))


__all__ = ["PROTOCOLS", "EvalSettings", "Protocol", "center_square", "check_result", "evaluate",
           "get_protocol", "load_result", "preprocess", "read_json_object",
           "read_records", "results_markdown", "run_digest"]
