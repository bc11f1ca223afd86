"""Naming segments through the public API and the CLI: by class (CLIP) and by caption."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from diffuseg.cli import app
from diffuseg.labels.clip import build_text_classifier, classify_segments
from diffuseg.segmenter import Segmenter

runner = CliRunner()
COLOURS = {"red": (1.0, 0, 0), "green": (0, 1.0, 0), "blue": (0, 0, 1.0), "yellow": (1.0, 1.0, 0)}


class ColourClip:
    """A CLIP stand-in that knows colours: dense features are the mean RGB of each 32x32 cell of
    the resized image, the head is the identity, and a prompt embeds as its colour word's RGB.
    So a segment's class is the colour name nearest (in angle) to its mean colour."""

    def __init__(self):
        self.dense_sizes, self.prompts = [], 0

    def dense(self, image, size):
        self.dense_sizes.append(tuple(size) if not isinstance(size, int) else (size, size))
        h, w = self.dense_sizes[-1]
        x = torch.from_numpy(np.asarray(Image.fromarray(image).resize((w, h)))).float() / 255
        return x.reshape(h // 32, 32, w // 32, 32, 3).mean((1, 3)).permute(2, 0, 1)

    def head(self, pooled):
        return pooled

    def encode_text(self, prompts):
        self.prompts += len(prompts)
        return torch.tensor([next(v for k, v in COLOURS.items() if f" {k}" in f" {p}")
                             for p in prompts])


def _quadrants(path, colours=((255, 0, 0), (0, 200, 0), (0, 0, 255), (230, 230, 0))):
    img = np.zeros((96, 128, 3), np.uint8)
    for k, (ys, xs) in enumerate([(slice(0, 48), slice(0, 64)), (slice(0, 48), slice(64, 128)),
                                  (slice(48, 96), slice(0, 64)), (slice(48, 96), slice(64, 128))]):
        img[ys, xs] = colours[k]
    Image.fromarray(img).save(path)
    return img


def test_classes_name_planted_quadrants_and_merge(tmp_path):
    _quadrants(tmp_path / "q.png", colours=((255, 0, 0), (0, 200, 0), (0, 0, 255), (240, 10, 10)))
    clip = ColourClip()
    seg = Segmenter("ncut", clip=clip, clip_size=256, refine=False)
    plain = seg.segment(tmp_path / "q.png")
    assert plain.num_segments == 4
    named = seg.segment(tmp_path / "q.png", classes=list(COLOURS), merge=False)
    corner = {n: named.names[int(named.labels[y, x])]
              for n, (y, x) in {"tl": (10, 10), "tr": (10, 100), "bl": (80, 10),
                                "br": (80, 100)}.items()}
    assert corner == {"tl": "red", "tr": "green", "bl": "blue", "br": "red"}
    assert clip.dense_sizes[-1] == (192, 256)  # long side clip_size, multiples of 32, aspect kept
    assert named.config["classes"] == list(COLOURS) and named.config["merge"] is False
    assert all(-1 <= s["score"] <= 1 for s in named.segments)
    np.testing.assert_array_equal(named.labels, plain.labels)  # naming alone changes no pixel

    merged = seg.segment(tmp_path / "q.png", classes=list(COLOURS))
    assert sorted(merged.names.values()) == ["blue", "green", "red"]
    red = [s for s in merged.segments if s["name"] == "red"][0]
    assert len(red["merged_from"]) == 2 and red["area"] == 2 * 48 * 64
    assert red["score"] == pytest.approx(1.0, abs=1e-5)  # the pure red quadrant
    assert merged.hierarchy is None and merged.config["merge"] is True
    # the text classifier is built once per class list, not per image
    assert clip.prompts == 4 * 14


def test_api_equals_the_pure_functions(tmp_path, small_photo, one_thread):
    from diffuseg.labels.clip_model import load_clip

    from tiny_clip import make_tiny_clip
    folder = make_tiny_clip(tmp_path / "clip")
    seg = Segmenter("ncut", clip=str(folder), clip_size=128)
    names = ["cat", "dog", "grass", "sky, clouds"]
    result = seg.segment(small_photo, classes=names, merge=False)
    base = seg.segment(small_photo)
    clip = load_clip(folder)
    image = np.asarray(Image.open(small_photo).convert("RGB"))
    clf = build_text_classifier(clip.encode_text, names)
    _, want, sims = classify_segments(clip.dense(image, (96, 128)), base.labels, clf, clip.head,
                                      merge=False)
    assert [s["name"] for s in result.segments] == want
    assert [s["score"] for s in result.segments] == pytest.approx(
        [float(sims[k].max()) for k in range(len(want))], abs=1e-5)


def test_name_needs_exactly_one_way():
    seg = Segmenter("ncut", clip=ColourClip())
    plain = seg.segment(np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="exactly one"):
        seg.name(plain, np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="diffusion method"):
        seg.name(plain, np.zeros((64, 64, 3), np.uint8), caption="a cat")
    with pytest.raises(ValueError, match="non-empty"):
        seg.name(plain, np.zeros((64, 64, 3), np.uint8), classes=["cat", " "])
    with pytest.raises(ValueError, match="clip_size"):
        Segmenter("ncut", clip_size=8)


def test_cli_classes_write_names_into_every_format(tmp_path, one_thread):
    from tiny_clip import make_tiny_clip

    _quadrants(tmp_path / "q.png")
    folder = make_tiny_clip(tmp_path / "clip")
    (tmp_path / "classes.txt").write_text("# colours\ncat\n\ndog, puppy\ngrass\n")
    out = tmp_path / "out"
    result = runner.invoke(app, ["segment", str(tmp_path / "q.png"), "--method", "ncut",
                                 "--classes-file", str(tmp_path / "classes.txt"),
                                 "--classes", "sky", "--clip", str(folder), "--clip-size", "128",
                                 "--no-merge", "-o", str(out), "-f", "png,coco,npz"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "q.json").read_text())
    assert doc["config"]["classes"] == ["sky", "cat", "dog, puppy", "grass"]
    names = [s["name"] for s in doc["segments"]]
    assert len(names) == doc["num_segments"] == 4
    assert set(names) <= {"sky", "cat", "dog, puppy", "grass"}
    masks = json.loads((out / "q.masks.json").read_text())
    assert [a["name"] for a in masks["annotations"]] == names
    with np.load(out / "q.npz", allow_pickle=False) as f:
        meta = json.loads(str(f["meta"]))
    assert [s["name"] for s in meta["segments"]] == names


@pytest.mark.parametrize("args, message", [
    (["--classes", "cat", "--caption", "a cat"], "not both"),
    (["--classes", "cat,cat"], "given twice"),
    (["--classes", " , "], "no class names"),
    (["--classes", "cat", "--clip", "/nonexistent/clip"], "does not exist"),
])
def test_cli_class_errors_are_one_line(tmp_path, args, message):
    _quadrants(tmp_path / "q.png")
    result = runner.invoke(app, ["segment", str(tmp_path / "q.png"), "--method", "ncut",
                                 "-o", str(tmp_path / "o"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len([ln for ln in result.output.splitlines() if ln.startswith("error")]) == 1


def test_caption_auto_uses_the_captioner(tmp_path, tiny_sd1, small_photo, one_thread):
    """caption="auto": the captioning model's caption, then DiffSeg's cross-attention naming."""
    from tiny_blip import make_tiny_blip

    from diffuseg.labels.captioner import load_captioner
    from diffuseg.labels.tokens import caption_words

    blip = make_tiny_blip(tmp_path / "blip")
    seg = Segmenter("diffseg", backbone=str(tiny_sd1), captioner=str(blip))
    enc = seg.encode(small_photo)
    named = seg.segment(enc, caption="auto")
    want = load_captioner(blip).caption(enc.image)
    assert named.config["caption"] == want and named.config["captioner"] == str(blip)
    words = caption_words(want)
    assert words and {s["name"] for s in named.segments} <= set(words)
    # the same caption given by hand names the segments the same way
    by_hand = seg.segment(enc, caption=want)
    assert [s["name"] for s in by_hand.segments] == [s["name"] for s in named.segments]


def test_cli_caption_auto(tmp_path, tiny_sd1, small_photo, one_thread):
    from tiny_blip import make_tiny_blip

    blip = make_tiny_blip(tmp_path / "blip")
    out = tmp_path / "out"
    result = runner.invoke(app, ["segment", str(small_photo), "--method", "diffseg",
                                 "--backbone", str(tiny_sd1), "--caption", "auto",
                                 "--captioner", str(blip), "-o", str(out), "-f", "png,coco"])
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "photo.json").read_text())
    caption = doc["config"]["caption"]
    assert caption and caption != "auto" and doc["config"]["captioner"] == str(blip)
    names = [s["name"] for s in doc["segments"]]
    assert all(n in caption for n in names)
    masks = json.loads((out / "photo.masks.json").read_text())
    assert [a["name"] for a in masks["annotations"]] == names
    missing = runner.invoke(app, ["segment", str(small_photo), "--method", "diffseg",
                                  "--backbone", str(tiny_sd1), "--caption", "auto",
                                  "--captioner", str(tmp_path / "nowhere"), "-o",
                                  str(tmp_path / "out2")])
    assert missing.exit_code == 2 and "captioning model" in missing.output
