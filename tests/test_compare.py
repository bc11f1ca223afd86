"""`diffuseg compare`: several methods side by side in one figure."""

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from diffuseg.cli import app
from diffuseg.viz import TITLE_HEIGHT

runner = CliRunner()




def test_compare_ncut_and_kmeans_on_a_tiny_model(tmp_path, tiny_sd1, small_photo):
    out = tmp_path / "fig" / "compare.png"
    result = runner.invoke(app, ["compare", str(small_photo), "--methods", "ncut,kmeans",
                                 "--backbone", str(tiny_sd1), "--size", "128",
                                 "--panel-width", "100", "--out", str(out)])
    assert result.exit_code == 0, result.output
    with Image.open(out) as im:
        fig = np.asarray(im.convert("RGB"))
    panel_h = round(120 * 100 / 160)
    assert fig.shape == (TITLE_HEIGHT + panel_h, 2 * 100, 3)
    left, right = fig[TITLE_HEIGHT:, :100], fig[TITLE_HEIGHT:, 100:]
    assert not np.array_equal(left, right)  # two different segmentations
    for panel in (left, right):  # each panel is coloured by several segments
        assert len(np.unique(panel.reshape(-1, 3), axis=0)) > 10
    assert (fig[:TITLE_HEIGHT].min(axis=2) < 100).sum() > 20  # titles drawn
    assert "2 methods" in result.stderr


def test_compare_default_width_and_order(tmp_path, small_photo):
    out = tmp_path / "c.png"
    result = runner.invoke(app, ["compare", str(small_photo), "--methods", "ncut",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    with Image.open(out) as im:
        assert im.size == (160, 120 + TITLE_HEIGHT)


def test_compare_missing_weights_is_one_clear_line(tmp_path, small_photo, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    out = tmp_path / "c.png"
    result = runner.invoke(app, ["compare", str(small_photo), "--methods", "ncut,diffcut,diffseg",
                                 "--out", str(out)])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert "diffcut" in errors[0] and "weights" in errors[0]
    assert "Traceback" not in result.output and not out.exists()


def test_compare_bad_inputs(tmp_path, small_photo):
    for args in (["--methods", "ncut,nope"], ["--methods", " , "]):
        result = runner.invoke(app, ["compare", str(small_photo), *args,
                                     "--out", str(tmp_path / "x.png")])
        assert result.exit_code == 2
        assert len([x for x in result.stderr.splitlines() if x.startswith("error:")]) == 1
    (tmp_path / "t.png").write_text("not an image")
    result = runner.invoke(app, ["compare", str(tmp_path / "t.png"), "--methods", "ncut",
                                 "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "not an image" in result.stderr
