"""The public Python API: segment(), Segmenter, Encoding round trips, method listing."""

import numpy as np
import pytest
import torch
from PIL import Image

import diffuseg
from diffuseg import Encoding, Segmenter

from planted import adjusted_rand_index, planted_features, planted_labels


def three_bands(h=60, w=90) -> np.ndarray:
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 3] = (220, 40, 40)
    image[:, w // 3 : 2 * w // 3] = (40, 200, 60)
    image[:, 2 * w // 3 :] = (30, 40, 210)
    return image


def test_every_method_that_needs_a_backbone_names_its_paper_backbone():
    from diffuseg.methods import get_method

    expected = {"diffcut": "ssd-1b", "diffseg": "sd14", "kmeans": "sd14", "ncut": None}
    for name, backbone in expected.items():
        assert get_method(name).default_backbone == backbone
        assert Segmenter(method=name).backbone_name == backbone


def test_listing():
    assert {"diffcut", "diffseg", "ncut", "kmeans"} <= set(diffuseg.list_methods())
    assert diffuseg.list_backbones() == ["sd14", "sd15", "sd21", "sdxl", "ssd-1b", "vega"]


def test_segment_accepts_paths_pil_and_arrays(tmp_path):
    image = three_bands()
    path = tmp_path / "bands.png"
    Image.fromarray(image).save(path)
    results = [
        diffuseg.segment(src, method="ncut")
        for src in (image, path, str(path), Image.fromarray(image))
    ]
    for seg in results:
        assert seg.labels.shape == (60, 90) and seg.labels.dtype == np.int32
        assert seg.num_segments == 3
        np.testing.assert_array_equal(seg.labels, results[0].labels)
    assert results[0].config["method"] == "ncut"
    assert sum(s["area"] for s in results[0].segments) == 60 * 90


def test_output_size_and_overrides():
    seg = diffuseg.segment(three_bands(), method="ncut", output_size=(30, 45), tau=0.001)
    assert seg.labels.shape == (30, 45)
    assert seg.config["tau"] == 0.001
    with pytest.raises(ValueError, match="unknown setting"):
        diffuseg.segment(three_bands(), method="ncut", bogus=1)
    with pytest.raises(ValueError, match="unknown method"):
        Segmenter(method="nope")


def test_segmenter_without_a_model_on_an_encoding(tmp_path):
    """Segmenter(method="diffcut").segment(Encoding(features=f)) works with no model at all."""
    labels = planted_labels(32, 32, 5, seed=1)
    enc = Encoding(features=planted_features(labels, noise=0.05, dim=64),
                   meta={"original_size": [64, 64], "backbone": "sd14", "family": "sd1"})
    segmenter = Segmenter(method="diffcut", refine=False)
    seg = segmenter.segment(enc)
    assert segmenter._backbone is None  # never loaded
    assert seg.config["tau"] == 0.2  # SD 1.x default, read from the Encoding's backbone
    assert seg.labels.shape == (64, 64)
    assert adjusted_rand_index(labels, seg.labels[::2, ::2]) == 1.0
    # (the cut's token labels keep DiffCut's zero-row quirk: a few tokens on a B side)
    assert 0.99 < adjusted_rand_index(labels, seg.token_labels) < 1.0
    # an Encoding saved to disk segments identically
    enc.save(tmp_path / "e.safetensors")
    again = segmenter.segment(Encoding.load(tmp_path / "e.safetensors"))
    np.testing.assert_array_equal(again.labels, seg.labels)
    assert segmenter.segment(enc, tau=0.5).config["tau"] == 0.5
    with pytest.raises(ValueError, match="needs \\['attention'\\]"):
        Segmenter(method="diffseg").segment(enc)


def test_encoding_round_trip(tmp_path):
    enc = Encoding(
        features=torch.randn(8, 4, 6),
        attention={(4, 6): torch.softmax(torch.randn(24, 24), 1).reshape(24, 4, 6)},
        image=np.random.default_rng(0).integers(0, 255, (32, 48, 3), dtype=np.uint8),
        meta={"backbone": "sd14", "image_size": [32, 48]},
    )
    enc.save(tmp_path / "x.safetensors")
    back = Encoding.load(tmp_path / "x.safetensors")
    torch.testing.assert_close(back.features, enc.features)
    torch.testing.assert_close(back.attention[(4, 6)], enc.attention[(4, 6)])
    np.testing.assert_array_equal(back.image, enc.image)
    assert back.meta == enc.meta and back.grid == (4, 6) and back.image_size == (32, 48)
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="cannot read Encoding"):
        Encoding.load(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="must be"):
        Encoding(features=torch.zeros(3, 4))
