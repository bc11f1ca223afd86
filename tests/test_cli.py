"""`diffuseg` command line end to end: files written, JSON valid, bad inputs, exit codes."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from diffuseg.cli import app
from diffuseg.io import read_label_png
from diffuseg.types import Encoding

runner = CliRunner()


def bands(h=48, w=72) -> np.ndarray:
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = (200, 30, 30)
    image[:, w // 2 :] = (30, 30, 200)
    return image


def make_inputs(folder):
    folder.mkdir()
    Image.fromarray(bands()).save(folder / "a.png")
    Image.fromarray(bands()[:, ::-1]).save(folder / "b.jpg", quality=95)
    (folder / "broken.png").write_bytes(Image.fromarray(bands()).tobytes()[:100])
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_segment_ncut_end_to_end_with_bad_files(tmp_path):
    inputs = make_inputs(tmp_path / "in")
    out = tmp_path / "out"
    result = runner.invoke(app, ["segment", str(inputs), str(inputs / "notes.txt"),
                                 str(tmp_path / "missing.png"), "--method", "ncut", "--out",
                                 str(out)])
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3  # broken.png, notes.txt, missing.png: one line each
    assert any("broken.png" in e for e in errors) and any("missing.png" in e for e in errors)
    assert "Traceback" not in result.output
    for stem in ("a", "b"):
        labels = read_label_png(out / f"{stem}.labels.png")
        assert labels.shape == (48, 72)
        assert (out / f"{stem}.overlay.png").is_file()
        record = json.loads((out / f"{stem}.json").read_text())
        assert record["config"]["method"] == "ncut"
        assert record["num_segments"] == len(np.unique(labels)) >= 2
        halves = np.zeros((48, 72), int)
        halves[:, 36:] = 1
        if stem == "b":
            halves = 1 - halves
        for k in np.unique(labels):  # every segment lies within one colour
            assert len(np.unique(halves[labels == k])) == 1
        assert sum(s["area"] for s in record["segments"]) == 48 * 72
        assert record["hierarchy"][0]["size"] > 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{s}.{kind}" for s in ("a", "b") for kind in ("labels.png", "overlay.png", "json")]
        + ["manifest.json", ".diffuseg"]
    )  # nothing for the bad inputs, no temp files left
    manifest = json.loads((out / "manifest.json").read_text())
    assert [o["stem"] for o in manifest["outputs"]] == ["a", "b"]
    assert sorted(Path(f["input"]).name for f in manifest["failed"]) == [
        "broken.png", "missing.png", "notes.txt"]


def test_segment_all_good_exits_zero_and_params_parse(tmp_path):
    Image.fromarray(bands()).save(tmp_path / "a.png")
    out = tmp_path / "out"
    result = runner.invoke(app, ["segment", str(tmp_path / "a.png"), "--method", "ncut",
                                 "--out", str(out), "--tau", "0.05", "-p", "grid=24",
                                 "-p", "refine=true"])
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "a.json").read_text())["config"]
    assert cfg["tau"] == 0.05 and cfg["grid"] == 24 and cfg["refine"] is True
    bad = runner.invoke(app, ["segment", str(tmp_path / "a.png"), "--method", "ncut",
                              "-p", "nonsense=1"])
    assert bad.exit_code == 2 and "unknown setting" in bad.output


def test_missing_weights_is_one_clear_line(tmp_path):
    Image.fromarray(bands()).save(tmp_path / "a.png")
    result = runner.invoke(app, ["segment", str(tmp_path / "a.png"), "--method", "diffcut",
                                 "--backbone", str(tmp_path / "no-model-here"), "--out",
                                 str(tmp_path / "out")])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output


def test_listing_commands():
    methods = runner.invoke(app, ["methods"])
    assert methods.exit_code == 0 and "diffcut" in methods.output and "ncut" in methods.output
    backbones = runner.invoke(app, ["backbones"])
    assert backbones.exit_code == 0 and "segmind/SSD-1B" in backbones.output



@pytest.mark.parametrize("method", ["diffcut", "diffseg", "kmeans", "dwc"])
def test_segment_with_a_tiny_saved_model(tmp_path, tiny_sd1, method):
    Image.fromarray(bands(96, 160)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    result = runner.invoke(app, ["segment", str(tmp_path / "a.png"), "--method", method,
                                 "--backbone", str(tiny_sd1), "--size", "128", "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "a.json").read_text())
    assert record["config"]["method"] == method
    assert record["config"]["family"] == "sd1"
    assert record["size"] == [96, 160]
    assert read_label_png(out / "a.labels.png").shape == (96, 160)
    if method == "diffcut":
        assert record["config"]["tau"] == 0.2  # the SD 1.x default


def test_encode_once_then_segment_without_the_model(tmp_path, tiny_sd1):
    Image.fromarray(bands(96, 160)).save(tmp_path / "a.png")
    enc_dir = tmp_path / "enc"
    result = runner.invoke(app, ["encode", str(tmp_path / "a.png"), "--backbone", str(tiny_sd1),
                                 "--size", "128", "--out", str(enc_dir)])
    assert result.exit_code == 0, result.output
    saved = enc_dir / "a.safetensors"
    encoding = Encoding.load(saved)
    assert encoding.features is not None and encoding.attention  # both, for every method
    assert encoding.meta["original_size"] == [96, 160]
    for method, extra in (("diffcut", ["--tau", "0.3"]), ("diffseg", ["--tau", "1.1"])):
        out = tmp_path / method
        result = runner.invoke(app, ["segment", "--encoding", str(saved), "--method", method,
                                     "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        record = json.loads((out / "a.json").read_text())
        assert record["config"]["tau"] == float(extra[1])
        assert read_label_png(out / "a.labels.png").shape == (96, 160)
        assert (out / "a.overlay.png").is_file()


def test_caption_names_every_segment(tmp_path, tiny_sd1):
    Image.fromarray(bands(96, 160)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    args = ["segment", str(tmp_path / "a.png"), "--method", "kmeans", "-p", "k=3",
            "--backbone", str(tiny_sd1), "--size", "128", "--out", str(out),
            "--caption", "the cat on the grass"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "a.json").read_text())
    assert record["config"]["caption"] == "the cat on the grass"
    names = [s["name"] for s in record["segments"]]
    assert len(names) == record["num_segments"] and set(names) <= {"cat", "grass"}
    # one chosen word names every segment
    result = runner.invoke(app, [*args, "--words", "grass", "--voting", "majority",
                                 "--overwrite"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "a.json").read_text())
    assert {s["name"] for s in record["segments"]} == {"grass"}
    bad = runner.invoke(app, ["segment", str(tmp_path / "a.png"), "--method", "ncut",
                              "--caption", "a cat", "--out", str(out)])
    assert bad.exit_code == 2 and "needs a diffusion method" in bad.output


def test_dwc_with_attention_averaged_over_timesteps(tmp_path, tiny_sd1):
    Image.fromarray(bands(96, 160)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    result = runner.invoke(app, ["segment", str(tmp_path / "a.png"), "--method", "dwc",
                                 "--backbone", str(tiny_sd1), "--size", "128", "--out", str(out),
                                 "--attention-timesteps", "100,300,700"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "a.json").read_text())
    assert record["config"]["attention_timestep"] == [100, 300, 700]
    assert read_label_png(out / "a.labels.png").shape == (96, 160)


@pytest.mark.parametrize("args, message", [
    (["compare", "{img}", "--methods", "ncut", "--panel-width", "0", "--out", "{tmp}/x.png"],
     "--panel-width must be at least 32 pixels, got 0"),
    (["compare", "{img}", "--methods", "ncut", "--out", "{tmp}/afile/x.png"],
     "output folder {tmp}/afile is a file, not a folder"),
    (["compare", "{img}", "--methods", "ncut", "--out", "{tmp}/x.gif"],
     "the figure's extension says its format"),
    (["compare", "{img}", "--methods", "ncut", "--out", "{tmp}"], "use one of"),
    (["segment", "{img}", "--method", "ncut", "--out", "{tmp}/afile"],
     "output folder {tmp}/afile is a file, not a folder"),
    (["segment", "{img}", "--method", "ncut", "--out", "/proc/diffuseg-test"],
     "output folder /proc/diffuseg-test cannot be created"),
    (["encode", "{img}", "--out", "{tmp}/afile/enc"], "{tmp}/afile is a file, not a folder"),
])
def test_unusable_outputs_are_one_error_line(tmp_path, args, message):
    Image.fromarray(bands()).save(tmp_path / "a.png")
    (tmp_path / "afile").write_text("x")
    fill = {"img": str(tmp_path / "a.png"), "tmp": str(tmp_path)}
    result = runner.invoke(app, [a.format(**fill) for a in args])
    assert result.exit_code == 2, result.output
    assert message.format(**fill) in result.stderr and "Traceback" not in result.output


def test_compare_writes_the_format_its_extension_names(tmp_path):
    Image.fromarray(bands()).save(tmp_path / "a.png")
    for name, fmt in (("f.jpg", "JPEG"), ("f.png", "PNG"), ("f.webp", "WEBP")):
        result = runner.invoke(app, ["compare", str(tmp_path / "a.png"), "--methods", "ncut",
                                     "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
        with Image.open(tmp_path / name) as im:
            assert im.format == fmt


@pytest.mark.parametrize("args, message", [
    (["--backbone", "nope"], "unknown backbone 'nope'"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--dtype", "float8"], "unknown dtype 'float8'"),
    (["--size", "8"], "--size must be at least 64 pixels"),
])
def test_set_up_errors_are_said_once_before_any_input(tmp_path, args, message):
    for name in ("a", "b", "c"):
        Image.fromarray(bands()).save(tmp_path / f"{name}.png")
    result = runner.invoke(app, ["segment", str(tmp_path / "a.png"), str(tmp_path / "b.png"),
                                 str(tmp_path / "c.png"), "--method", "diffcut",
                                 "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and message in errors[0]


def test_options_a_method_ignores_get_a_note_and_encode_refuses_it(tmp_path):
    Image.fromarray(bands()).save(tmp_path / "a.png")
    result = runner.invoke(app, ["segment", str(tmp_path / "a.png"), "--method", "ncut",
                                 "--backbone", "sd15", "--size", "512",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 0
    assert "note: ncut reads no model: --backbone, --size ignored" in result.stderr
    result = runner.invoke(app, ["encode", str(tmp_path / "a.png"), "--method", "ncut",
                                 "--out", str(tmp_path / "enc")])
    assert result.exit_code == 2 and "ncut reads no model: there is nothing to encode" in (
        result.stderr)


def test_version_and_short_help():
    import diffuseg

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"diffuseg {diffuseg.__version__}"
    result = runner.invoke(app, ["segment", "-h"])
    assert result.exit_code == 0 and "--resume" in result.output


def test_outputs_say_their_version_and_renamed_stems_are_said(tmp_path):
    import diffuseg

    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        Image.fromarray(bands()).save(tmp_path / folder / "a.png")
    result = runner.invoke(app, ["segment", str(tmp_path / "x" / "a.png"),
                                 str(tmp_path / "y" / "a.png"), "--method", "ncut",
                                 "-f", "png,coco", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert f"note: {tmp_path / 'y' / 'a.png'} is written as a-2.*" in result.stderr
    record = json.loads((tmp_path / "out" / "a-2.json").read_text())
    assert record["diffuseg"] == diffuseg.__version__
    assert record["input"] == str(tmp_path / "y" / "a.png")
    masks = json.loads((tmp_path / "out" / "a.masks.json").read_text())
    assert masks["diffuseg"] == diffuseg.__version__


def test_depth_and_hierarchy_figure(tmp_path):
    image = np.zeros((60, 80, 3), np.uint8)
    image[:, :40] = (200, 30, 30)
    image[:30, 40:] = (30, 200, 30)
    image[30:, 40:] = (30, 30, 200)
    image[:20, :20] = (250, 250, 0)
    Image.fromarray(image).save(tmp_path / "q.png")
    out = tmp_path / "out"
    result = runner.invoke(app, ["segment", str(tmp_path / "q.png"), "--method", "ncut",
                                 "--depth", "1", "-f", "png,hierarchy", "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "q.json").read_text())
    assert record["config"]["depth"] == 1 and record["num_segments"] == 2
    leaves = sorted(sorted(s["leaves"]) for s in record["segments"])
    assert sorted(x for group in leaves for x in group) == [0, 1, 2, 3]  # the 4 leaves, merged
    labels = read_label_png(out / "q.labels.png")
    assert len(np.unique(labels[:, :40])) == 1 or len(np.unique(labels[:, 40:])) == 1
    with Image.open(out / "q.hierarchy.png") as figure:
        assert figure.size[0] == 80 and figure.size[1] > 4 * 60  # depths 0..3, one row each
    bad = runner.invoke(app, ["segment", str(tmp_path / "q.png"), "--method", "kmeans",
                              "--depth", "1", "--out", str(tmp_path / "k")])
    assert bad.exit_code == 2 and "need a cut's hierarchy" in bad.stderr
