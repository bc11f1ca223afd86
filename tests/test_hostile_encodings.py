"""Hostile Encodings, built in tmp_path: valid files whose ``diffuseg.meta`` breaks the schema,
files that are not safetensors at all (truncated, random bytes, empty), tensors of the wrong rank,
shape or dtype, and attention / features holding NaN, inf, negative values or all-zero maps.

Each goes (a) through the API, ``Segmenter(method).segment(Encoding.load(path))`` for diffcut,
diffseg, kmeans and dwc (no model weights: the Encoding is all they read), which must raise a
``ValueError`` whose message says what is wrong; and (b) through the CLI in a subprocess, all of a
method's bad files with one good Encoding: no traceback, exactly one ``error:`` line per bad file
naming it and its cause, the good one's outputs written, exit code 1.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import diffuseg
from diffuseg.types import Encoding

from planted import planted_attention, planted_features, planted_labels

METHODS = ("diffcut", "diffseg", "kmeans", "dwc")
ATTENTION_METHODS = ("diffseg", "kmeans", "dwc")
GRID = 16


# ---------------------------------------------------------------------------------------------
# the good Encoding and a writer that can break any part of it
# ---------------------------------------------------------------------------------------------
def good_parts() -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and meta of a good Encoding: 16x16 planted features (8 channels), planted
    attention on grids 16x16 .. 2x2, a 64x64 image, SD 1.x meta."""
    labels = planted_labels(GRID, GRID, 4, seed=0)
    tensors: dict[str, torch.Tensor] = {"features": planted_features(labels, 0.1, seed=0, dim=8)}
    for (h, w), maps in planted_attention(labels).items():
        tensors[f"attention.{h}x{w}"] = maps
    palette = np.array([[200, 40, 30], [30, 60, 210], [40, 180, 60], [230, 220, 40]], np.uint8)
    image = np.repeat(np.repeat(palette[labels], 4, axis=0), 4, axis=1)
    tensors["image"] = torch.from_numpy(np.ascontiguousarray(image))
    meta = {"backbone": "sd14", "family": "sd1", "original_size": [64, 64],
            "image_size": [64, 64], "seed": 0, "timestep": 100, "attention_timestep": 300}
    return tensors, meta


def write_encoding(path: Path, tensors: dict[str, torch.Tensor], meta_text: str | None,
                   fmt: str | None = "encoding/1") -> Path:
    """A safetensors file with exactly these tensors and metadata (no Encoding checks)."""
    metadata = {}
    if fmt is not None:
        metadata["diffuseg.format"] = fmt
    if meta_text is not None:
        metadata["diffuseg.meta"] = meta_text
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


@dataclass(frozen=True)
class Case:
    """One malformed Encoding: how to make it, which methods read the broken part, and the
    message (a regex) each must give."""

    name: str
    build: Callable[[Path], Path]  # folder -> the file written
    methods: tuple[str, ...]
    message: str


def meta_case(name: str, meta_text: str, message: str) -> Case:
    def build(folder: Path) -> Path:
        tensors, _ = good_parts()
        return write_encoding(folder / f"{name}.safetensors", tensors, meta_text)

    return Case(name, build, METHODS, message)


def bad_key(name: str, key: str, value, message: str) -> Case:
    """Good meta except ``key`` = ``value`` (JSON)."""
    _, meta = good_parts()
    return meta_case(name, json.dumps({**meta, key: value}), message)


def tensor_case(name: str, change: Callable[[dict[str, torch.Tensor]], None], message: str,
                methods: tuple[str, ...] = METHODS) -> Case:
    def build(folder: Path) -> Path:
        tensors, meta = good_parts()
        change(tensors)
        return write_encoding(folder / f"{name}.safetensors", tensors, json.dumps(meta))

    return Case(name, build, methods, message)


def bytes_case(name: str, make: Callable[[bytes], bytes], message: str) -> Case:
    def build(folder: Path) -> Path:
        tensors, meta = good_parts()
        good = write_encoding(folder / f"{name}.source", tensors, json.dumps(meta))
        path = folder / f"{name}.safetensors"
        path.write_bytes(make(good.read_bytes()))
        good.unlink()
        return path

    return Case(name, build, METHODS, message)


def set_item(key: str, value: torch.Tensor) -> Callable[[dict], None]:
    def change(tensors: dict) -> None:
        tensors[key] = value

    return change


def edit_attention(grid: str, edit: Callable[[torch.Tensor], None]) -> Callable[[dict], None]:
    def change(tensors: dict) -> None:
        maps = tensors[f"attention.{grid}"].clone()
        edit(maps)
        tensors[f"attention.{grid}"] = maps

    return change


def edit_features(edit: Callable[[torch.Tensor], None]) -> Callable[[dict], None]:
    def change(tensors: dict) -> None:
        feats = tensors["features"].clone()
        edit(feats)
        tensors["features"] = feats

    return change


def drop(*keys: str) -> Callable[[dict], None]:
    def change(tensors: dict) -> None:
        for key in [k for k in tensors if k in keys or any(k.startswith(p) for p in keys)]:
            del tensors[key]

    return change


def _set(index, value: float) -> Callable[[torch.Tensor], None]:
    def edit(t: torch.Tensor) -> None:
        t[index] = value

    return edit


N = GRID * GRID
SIZE = r"must be \[H, W\], two positive integers"
FAMILY = r"meta 'family' must be one of sd1, sd2, sdxl"
NAN = r"attention for grid 16x16 holds NaN or inf entries"
CORRUPT = r"cannot read Encoding \S+: not a valid safetensors file \(truncated or corrupt\): "
CASES = [
    # -- diffuseg.meta: valid JSON that is not an object, invalid JSON, schema violations
    meta_case("meta_list", "[1, 2]", r"diffuseg\.meta must be a JSON object, got list"),
    meta_case("meta_number", "3.5", r"diffuseg\.meta must be a JSON object, got float"),
    meta_case("meta_string", '"sd14"', r"diffuseg\.meta must be a JSON object, got str"),
    meta_case("meta_null", "null", r"diffuseg\.meta must be a JSON object, got null"),
    meta_case("meta_bad_json", '{"original_size": [64,', r"diffuseg\.meta is not valid JSON"),
    bad_key("size_fraction", "original_size", [47.9, 64],
            rf"meta 'original_size' {SIZE}, got \[47\.9, 64\]"),
    bad_key("size_zero", "image_size", [0, 64], rf"meta 'image_size' {SIZE}, got \[0, 64\]"),
    bad_key("size_three", "original_size", [64, 64, 3], rf"meta 'original_size' {SIZE}"),
    bad_key("size_string", "original_size", "64x64", rf"meta 'original_size' {SIZE}"),
    bad_key("size_null", "original_size", None, rf"meta 'original_size' {SIZE}, got None"),
    bad_key("size_dict", "original_size", {"h": 64}, rf"meta 'original_size' {SIZE}"),
    bad_key("size_bools", "original_size", [True, True], rf"meta 'original_size' {SIZE}"),
    bad_key("size_nan", "image_size", [float("nan"), 64], rf"meta 'image_size' {SIZE}"),
    bad_key("family_null", "family", None, rf"{FAMILY}, got None"),
    bad_key("family_dict", "family", {"a": 1}, rf"{FAMILY}, got \{{'a': 1\}}"),
    bad_key("family_list", "family", ["sd1"], rf"{FAMILY}, got \['sd1'\]"),
    bad_key("family_unknown", "family", "sd9", rf"{FAMILY}, got 'sd9'"),
    bad_key("backbone_null", "backbone", None, r"meta 'backbone' must be a string, got None"),
    bad_key("backbone_dict", "backbone", {}, r"meta 'backbone' must be a string, got \{\}"),
    bad_key("backbone_list", "backbone", ["sd14"], r"meta 'backbone' must be a string"),
    bad_key("crop_empty", "crop", [0, 0, 0, 64], r"meta 'crop' must be null or \[top, left"),
    bad_key("timestep_negative", "timestep", -5, r"meta 'timestep' must be an integer >= 0"),
    bad_key("seed_string", "seed", "0", r"meta 'seed' must be an integer, got '0'"),
    bad_key("attention_timestep_empty", "attention_timestep", [],
            r"meta 'attention_timestep' must be an integer >= 0 or a non-empty list"),
    # -- not a (diffuseg) safetensors file
    bytes_case("truncated", lambda b: b[: len(b) // 2], rf"{CORRUPT}.*not fully covered"),
    bytes_case("truncated_header", lambda b: b[:5], rf"{CORRUPT}.*header too small"),
    bytes_case("random_bytes", lambda b: np.random.default_rng(0).bytes(4096),
               rf"{CORRUPT}.*header too large"),
    bytes_case("empty_file", lambda b: b"", rf"{CORRUPT}.*header too small"),
    bytes_case("text_file", lambda b: b"hello, world\n" * 10, CORRUPT),
    Case("not_an_encoding",
         lambda folder: write_encoding(folder / "not_an_encoding.safetensors",
                                       {"weight": torch.zeros(3)}, None, fmt=None),
         METHODS, r"is a safetensors file but not a diffuseg Encoding"),
    # -- tensors of the wrong rank, shape or dtype
    tensor_case("features_rank2", set_item("features", torch.rand(8, N)),
                r"Encoding\.features must be \(C, h, w\), got shape \(8, 256\)"),
    tensor_case("features_rank4", set_item("features", torch.rand(1, 8, GRID, GRID)),
                r"Encoding\.features must be \(C, h, w\)"),
    tensor_case("features_no_channel", set_item("features", torch.rand(0, GRID, GRID)),
                r"Encoding\.features must have at least one channel"),
    tensor_case("features_int", set_item("features", torch.ones(8, GRID, GRID, dtype=torch.int32)),
                r"Encoding\.features must be floating point"),
    tensor_case("attention_key_shape", set_item("attention.16x16", torch.rand(N, 16, 8)),
                r"attention for grid \(16, 16\) must be \(256, 16, 16\), got \(256, 16, 8\)"),
    tensor_case("attention_rank2", set_item("attention.16x16", torch.rand(N, N)),
                r"attention for grid \(16, 16\) must be \(256, 16, 16\), got \(256, 256\)"),
    tensor_case("attention_bad_name", set_item("attention.16by16", torch.rand(N, 16, 16)),
                r"tensor 'attention\.16by16' is not named attention\.<h>x<w>"),
    tensor_case("attention_empty_grid", set_item("attention.0x4", torch.rand(0, 0, 4)),
                r"tensor 'attention\.0x4' names an empty grid"),
    tensor_case("attention_int", set_item("attention.2x2", torch.ones(4, 2, 2, dtype=torch.int64)),
                r"attention for grid \(2, 2\) must be floating point"),
    tensor_case("image_rank2", set_item("image", torch.zeros(64, 64, dtype=torch.uint8)),
                r"Encoding\.image must be an \(H, W, 3\) uint8 array"),
    tensor_case("image_float", set_item("image", torch.zeros(64, 64, 3)),
                r"image must be uint8, got torch\.float32"),
    # -- values: attention (read by diffseg, kmeans, dwc)
    tensor_case("attention_one_nan", edit_attention("16x16", _set((3, 4, 5), float("nan"))),
                rf"{NAN} \(1 NaN, 0 inf of 65536; first in the key map of query 3 ",
                ATTENTION_METHODS),
    tensor_case("attention_half_nan", edit_attention("16x16", _set(slice(0, N // 2),
                                                                  float("nan"))),
                rf"{NAN} \(32768 NaN, 0 inf", ATTENTION_METHODS),
    tensor_case("attention_all_nan", edit_attention("16x16", _set(slice(None), float("nan"))),
                rf"{NAN} \(65536 NaN, 0 inf", ATTENTION_METHODS),
    tensor_case("attention_inf_column",
                edit_attention("16x16", _set((slice(None), slice(None), 7), float("inf"))),
                rf"{NAN} \(0 NaN, 4096 inf", ATTENTION_METHODS),
    tensor_case("attention_coarse_nan", edit_attention("4x4", _set((0, 0, 0), float("nan"))),
                r"attention for grid 4x4 holds NaN or inf entries", ATTENTION_METHODS),
    tensor_case("attention_zero_map", edit_attention("16x16", _set(17, 0.0)),
                r"attention for grid 16x16: 1 key map\(s\) sum to zero \(first: query 17\)",
                ATTENTION_METHODS),
    tensor_case("attention_all_zero", edit_attention("16x16", _set(slice(None), 0.0)),
                r"attention for grid 16x16: 256 key map\(s\) sum to zero", ATTENTION_METHODS),
    tensor_case("attention_negative", edit_attention("16x16", lambda t: t.sub_(1e-3)),
                r"attention for grid 16x16 holds negative entries", ATTENTION_METHODS),
    tensor_case("attention_unnormalised", edit_attention("8x8", lambda t: t.mul_(2)),
                r"attention for grid 8x8: key maps must sum to 1 "
                r"\(query \d+ sums to 2, tolerance 0\.001\)",
                ATTENTION_METHODS),
    tensor_case("attention_missing", drop("attention."),
                r"needs \['attention'\] but this Encoding has none", ATTENTION_METHODS),
    # -- values: features (read by diffcut)
    tensor_case("features_one_nan", edit_features(_set((0, 1, 2), float("nan"))),
                r"non-finite features: 1 NaN and 0 inf", ("diffcut",)),
    tensor_case("features_all_nan", edit_features(_set(slice(None), float("nan"))),
                r"non-finite features: 2048 NaN and 0 inf", ("diffcut",)),
    tensor_case("features_inf", edit_features(_set((3, 0, 0), float("-inf"))),
                r"non-finite features: 0 NaN and 1 inf", ("diffcut",)),
    tensor_case("features_missing", drop("features"),
                r"method 'diffcut' needs \['features'\] but this Encoding has none",
                ("diffcut",)),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """Every case's file, plus ``good``: a good Encoding written by :meth:`Encoding.save`."""
    folder = tmp_path_factory.mktemp("hostile_encodings")
    files = {case.name: case.build(folder) for case in CASES}
    tensors, meta = good_parts()
    attention = {}
    for key, value in tensors.items():
        if key.startswith("attention."):
            h, w = key.removeprefix("attention.").split("x")
            attention[(int(h), int(w))] = value
    good = Encoding(features=tensors["features"], attention=attention,
                    image=tensors["image"].numpy(), meta=meta)
    good.save(folder / "good.safetensors")
    files["good"] = folder / "good.safetensors"
    return files


def test_case_names_are_unique():
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("method", METHODS)
def test_the_good_encoding_segments(corpus, method):
    seg = diffuseg.Segmenter(method).segment(Encoding.load(corpus["good"]))
    assert seg.labels.shape == (64, 64) and seg.num_segments >= 2


@pytest.mark.parametrize(("case", "method"),
                         [(c, m) for c in CASES for m in c.methods],
                         ids=[f"{c.name}-{m}" for c in CASES for m in c.methods])
def test_api_raises_a_clear_value_error(corpus, case, method):
    path = corpus[case.name]
    with pytest.raises(ValueError, match=case.message) as info:
        diffuseg.Segmenter(method).segment(Encoding.load(path))
    message = str(info.value)
    assert "\n" not in message
    if case.methods == METHODS:  # the file itself is bad: the error names it
        assert str(path) in message


def run_segment(paths: list[Path], method: str, out: Path) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "diffuseg.cli", "segment"]
    for path in paths:
        argv += ["--encoding", str(path)]
    argv += ["--method", method, "--out", str(out)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.parametrize("method", METHODS)
def test_cli_reports_each_bad_encoding_once_and_writes_the_good_one(corpus, method, tmp_path):
    cases = [c for c in CASES if method in c.methods]
    bad = [corpus[c.name] for c in cases]
    out = tmp_path / "out"
    proc = run_segment([*bad[: len(bad) // 2], corpus["good"], *bad[len(bad) // 2 :]], method, out)
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text
    assert proc.returncode == 1, text
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == len(bad), errors
    assert proc.stderr.count("error:") == len(bad)
    for case, path in zip(cases, bad, strict=True):
        mine = [e for e in errors if e.startswith(f"error: {path}: ")]
        assert len(mine) == 1, (case.name, errors)
        assert re.search(case.message, mine[0]), (case.name, mine[0])
    assert not any(str(corpus["good"]) in e for e in errors)
    for name in ("good.labels.png", "good.overlay.png", "good.json"):
        assert (out / name).is_file(), name
    record = json.loads((out / "good.json").read_text())
    assert record["size"] == [64, 64] and record["num_segments"] >= 2
    assert f"segmented 1/{len(bad) + 1} input(s)" in proc.stderr


# ---------------------------------------------------------------------------------------------
# the meta schema at construction, and what is accepted
# ---------------------------------------------------------------------------------------------
def test_integral_float_sizes_are_accepted_as_ints(tmp_path):
    tensors, meta = good_parts()
    path = write_encoding(tmp_path / "float_sizes.safetensors", tensors,
                          json.dumps({**meta, "original_size": [48.0, 40.0], "seed": 3.0}))
    enc = Encoding.load(path)
    assert enc.meta["original_size"] == [48, 40] and type(enc.meta["original_size"][0]) is int
    assert type(enc.meta["seed"]) is int
    seg = diffuseg.Segmenter("diffseg").segment(enc)
    assert seg.labels.shape == (48, 40)


def test_meta_is_checked_on_construction():
    feats = torch.rand(4, 3, 3)
    for meta, message in [
        ({"original_size": [47.9, 64]}, r"meta 'original_size' must be \[H, W\]"),
        ({"image_size": (-1, 5)}, r"meta 'image_size' must be \[H, W\]"),
        ({"family": None}, r"meta 'family' must be one of"),
        ({"backbone": 14}, r"meta 'backbone' must be a string, got 14"),
        ({"attention_timestep": [300, "x"]}, r"meta 'attention_timestep' must be an integer"),
        ({1: "x"}, r"meta keys must be strings"),
    ]:
        with pytest.raises(ValueError, match=message):
            Encoding(features=feats, meta=meta)
    with pytest.raises(ValueError, match="meta must be a dict"):
        Encoding(features=feats, meta=[("original_size", [4, 4])])
    # the caller's dict is left alone; a normalised copy is kept
    given = {"original_size": (48, 64.0), "crop": None, "family": "sdxl", "note": [1.5]}
    enc = Encoding(features=feats, meta=given)
    assert enc.meta == {"original_size": [48, 64], "crop": None, "family": "sdxl", "note": [1.5]}
    assert given["original_size"] == (48, 64.0)
    plain = {"original_size": [48, 64]}
    assert Encoding(features=feats, meta=plain).meta is plain  # nothing to normalise: no copy
    # numpy scalars (e.g. from an array's shape arithmetic) become plain ints, JSON-writable
    enc = Encoding(features=feats, meta={"image_size": [np.int64(48), np.float32(64.0)],
                                         "seed": np.int32(7)})
    assert enc.meta == {"image_size": [48, 64], "seed": 7}
    assert all(type(v) is int for v in [*enc.meta["image_size"], enc.meta["seed"]])
    with pytest.raises(ValueError, match=r"meta 'original_size' must be \[H, W\]"):
        Encoding(features=feats, meta={"original_size": [np.bool_(True), 4]})


def test_attention_grids_are_checked_on_construction():
    with pytest.raises(ValueError, match=r"attention grids must be \(h, w\) tuples"):
        Encoding(attention={(0, 4): torch.rand(0, 0, 4)})
    with pytest.raises(ValueError, match=r"attention grids must be \(h, w\) tuples"):
        Encoding(attention={(2.0, 2): torch.rand(4, 2, 2)})
    with pytest.raises(ValueError, match=r"attention for grid \(2, 2\) must be \(4, 2, 2\)"):
        Encoding(attention={(2, 2): torch.rand(4, 4)})
    with pytest.raises(ValueError, match="must be floating point"):
        Encoding(attention={(2, 2): torch.ones(4, 2, 2, dtype=torch.int32)})
    with pytest.raises(ValueError, match="at least one channel"):
        Encoding(features=torch.rand(3, 0, 0))
