"""Method settings are checked by type and range when a config is made, from the API and the
command line alike (diffuseg/methods/config.py)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

import diffuseg
from diffuseg.cli import app
from diffuseg.methods import get_method

BAD = [
    # (method, setting, value, message)
    ("ncut", "tau", "abc", "tau must be a number, got 'abc'"),
    ("ncut", "tau", float("nan"), "tau must be a finite number"),
    ("ncut", "tau", -1, "tau must be > 0"),
    ("ncut", "grid", "abc", "grid must be an integer"),
    ("ncut", "grid", 2.5, "grid must be an integer, got 2.5"),
    ("ncut", "max_depth", -1, "max_depth must be >= 0"),
    ("ncut", "min_size", 0.7, "min_size must be >= 0, < 0.5"),
    ("ncut", "sigma_color", 0, "sigma_color must be > 0"),
    ("ncut", "sigma_space", 0, "sigma_space must be > 0"),
    ("ncut", "radius", -1, "radius must be > 0"),
    ("ncut", "median", 0, "median must be >= 1, odd"),
    ("ncut", "median", 4, "median must be >= 1, odd"),
    ("ncut", "refine", "yes", "refine must be true or false"),
    ("ncut", "max_side", 0, "max_side must be >= 1"),
    ("ncut", "refine_dilations", (1, 0), r"refine_dilations\[1\] must be >= 1"),
    ("diffcut", "alpha", float("nan"), "alpha must be a finite number"),
    ("diffcut", "refine_iterations", -3, "refine_iterations must be >= 1"),
    ("diffcut", "mode", "slow", "mode must be one of fast, reference"),
    ("diffcut", "sweep", "all", "sweep must be one of sampled, exact"),
    ("diffcut", "solver", "magma", "solver must be one of auto, lanczos, arpack, dense"),
    ("diffseg", "taus", (1.0, -1.0), r"taus\[1\] must be > 0"),
    ("diffseg", "output_size", (10,), "output_size must have 2 values"),
    ("kmeans", "k", 0, "k must be >= 1"),
    ("dwc", "teleport", 1.0, "teleport must be >= 0, < 1"),
]


@pytest.mark.parametrize("method, name, value, message", BAD)
def test_bad_values_are_refused_when_the_config_is_made(method, name, value, message):
    spec = get_method(method)
    with pytest.raises(ValueError, match=message):
        spec.make_config({name: value})
    with pytest.raises(ValueError, match=message):
        spec.config_cls(**{name: value})  # constructing the dataclass directly: the same check


def test_values_are_normalised():
    cfg = get_method("ncut").make_config({"grid": 24.0, "refine_dilations": [1, 2], "tau": 1})
    assert cfg.grid == 24 and isinstance(cfg.grid, int)
    assert cfg.refine_dilations == (1, 2) and isinstance(cfg.tau, float)
    assert get_method("diffseg").make_config({"output_size": [4, 5]}).output_size == (4, 5)
    assert get_method("diffcut").make_config({"max_depth": None}).max_depth is None


def test_the_api_refuses_before_any_work():
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ValueError, match="tau must be a number, got 'abc'"):
        diffuseg.segment(image, method="ncut", tau="abc")
    with pytest.raises(ValueError, match="grid must be an integer"):
        diffuseg.Segmenter("ncut", grid=2.5)


@pytest.mark.parametrize("args, message", [
    (["--param", "tau=abc"], "tau must be a number, got 'abc'"),
    (["--tau", "nan"], "tau must be a finite number"),
    (["--tau", "-1"], "tau must be > 0"),
    (["--param", "grid=2.5"], "grid must be an integer, got 2.5"),
    (["--param", "max_depth=abc"], "max_depth must be an integer"),
    (["--param", "median=abc"], "median must be an integer"),
    (["--param", "median=0"], "median must be >= 1, odd"),
    (["--param", "sigma_space=0"], "sigma_space must be > 0"),
    (["--param", "max_side=-1"], "max_side must be >= 1"),
])
def test_the_command_line_says_what_is_wrong(tmp_path, args, message):
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "a.png")
    result = CliRunner().invoke(app, ["segment", str(tmp_path / "a.png"), "--method", "ncut",
                                      "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "out" / "a.labels.png").exists()


def test_methods_name_prints_every_setting():
    result = CliRunner().invoke(app, ["methods", "diffcut"])
    assert result.exit_code == 0, result.output
    assert "  tau = 0.5  [float, > 0]" in result.output
    assert "  sweep = 'sampled'  [str, one of sampled, exact]" in result.output
    assert result.output.count(" = ") == len(get_method("diffcut").config_cls.describe())
    bad = CliRunner().invoke(app, ["methods", "nope"])
    assert bad.exit_code == 2 and "unknown method" in bad.output


def test_every_setting_has_a_type_a_default_and_a_meaning():
    for name in diffuseg.list_methods():
        rows = get_method(name).config_cls.describe()
        assert rows and all(r["meaning"] for r in rows), name
    tau = next(r for r in get_method("diffcut").config_cls.describe() if r["name"] == "tau")
    assert tau["default"] == 0.5 and tau["range"] == "> 0" and "NCut < tau" in tau["meaning"]
