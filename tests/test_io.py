"""diffuseg.io: robust loading of every image kind, atomic writers, label PNGs, COCO RLE."""

from __future__ import annotations

import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from diffuseg.io import (
    ImageLoadError,
    atomic_path,
    coco_rle_to_mask,
    iter_image_paths,
    labels_to_coco_rle,
    load_image,
    read_label_png,
    write_json,
    write_label_png,
    write_masks_json,
    write_npz,
    write_overlay_png,
)

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def quadrants(h: int = 32, w: int = 48) -> np.ndarray:
    """(h, w, 3) uint8: top-left red, top-right green, bottom-left blue, bottom-right white."""
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2, : w // 2] = RED
    img[: h // 2, w // 2 :] = GREEN
    img[h // 2 :, : w // 2] = BLUE
    img[h // 2 :, w // 2 :] = WHITE
    return img


def noise_image(h: int = 64, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------------------------
# load_image: file kinds
# ----------------------------------------------------------------------------------------------


def test_truncated_flag_left_false():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_rgb_png_exact(tmp_path):
    img = noise_image()
    Image.fromarray(img).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (64, 64, 3)
    np.testing.assert_array_equal(out, img)
    np.testing.assert_array_equal(load_image(str(tmp_path / "a.png")), img)  # str path


def test_cmyk_jpeg(tmp_path):
    img = quadrants()
    Image.fromarray(img).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = load_image(tmp_path / "c.jpg")
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8
    # Block interiors survive JPEG within a few levels.
    for (y, x), colour in zip(
        [(8, 12), (8, 36), (24, 12), (24, 36)], [RED, GREEN, BLUE, WHITE], strict=True
    ):
        assert np.abs(out[y, x].astype(int) - colour).max() <= 6, (y, x, out[y, x])


def test_16bit_png_scaling(tmp_path):
    values = np.array([0, 257, 1000, 32768, 65535, 65278, 128, 129], np.uint16)
    arr = np.tile(values, (8, 1))  # (8, 8)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    out = load_image(tmp_path / "g16.png")
    expected = np.array([0, 1, 4, 128, 255, 254, 0, 1], np.uint8)  # round(v * 255 / 65535)
    assert out.shape == (8, 8, 3)
    np.testing.assert_array_equal(out[0, :, 0], expected)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_16bit_mode_i_and_array():
    arr = np.full((8, 8), 32768, np.int32)
    arr[0, 0] = 65535
    pil = Image.fromarray(arr)
    assert pil.mode == "I"
    out = load_image(pil)
    assert out[0, 0, 0] == 255 and out[1, 1, 0] == 128
    out = load_image(np.full((8, 8), 65535, np.uint16))
    assert (out == 255).all()


def test_palette_png_with_transparency(tmp_path):
    idx = np.zeros((10, 10), np.uint8)
    idx[:, 5:] = 1
    idx[5:, :] = 2
    img = Image.fromarray(idx)
    img.putpalette([0, 0, 0, 255, 0, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    img.info["transparency"] = 0  # index 0 fully transparent
    img.save(tmp_path / "p.png", transparency=0)
    loaded = Image.open(tmp_path / "p.png")
    assert loaded.mode == "P" and "transparency" in loaded.info
    out = load_image(tmp_path / "p.png")
    assert tuple(out[0, 0]) == WHITE  # transparent black -> white background
    assert tuple(out[0, 9]) == RED
    assert tuple(out[9, 0]) == BLUE


def test_palette_png_per_entry_alpha(tmp_path):
    idx = np.ones((8, 8), np.uint8)
    img = Image.fromarray(idx)
    img.putpalette([0, 0, 0, 0, 0, 0] + [0] * (256 * 3 - 6))
    img.save(tmp_path / "pa.png", transparency=bytes([255, 128]))
    out = load_image(tmp_path / "pa.png")
    # black at alpha 128 over white: round(255 * 127 / 255) = 127
    assert tuple(out[0, 0]) == (127, 127, 127)


def test_rgba_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = (200, 100, 0)
    rgba[:, :4, 3] = 0
    rgba[:4, 4:, 3] = 255
    rgba[4:, 4:, 3] = 128
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    out = load_image(tmp_path / "rgba.png")
    assert tuple(out[0, 0]) == WHITE
    assert tuple(out[0, 7]) == (200, 100, 0)
    expected = tuple(int(round((c * 128 + 255 * 127) / 255)) for c in (200, 100, 0))
    assert tuple(out[7, 7]) == expected
    np.testing.assert_array_equal(load_image(rgba), out)  # the array path agrees


def test_la_composited_on_white(tmp_path):
    la = np.zeros((8, 8, 2), np.uint8)
    la[..., 0] = 100
    la[:, 4:, 1] = 255
    Image.fromarray(la).save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    out = load_image(tmp_path / "la.png")
    assert tuple(out[0, 0]) == WHITE and tuple(out[0, 7]) == (100, 100, 100)


def test_grayscale_and_one_bit(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(gray).save(tmp_path / "l.png")
    out = load_image(tmp_path / "l.png")
    assert out.shape == (8, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)
    bits = np.zeros((8, 8), bool)
    bits[::2] = True
    Image.fromarray(bits).save(tmp_path / "b.png")
    assert Image.open(tmp_path / "b.png").mode == "1"
    out = load_image(tmp_path / "b.png")
    np.testing.assert_array_equal(out[..., 1], bits.astype(np.uint8) * 255)


def test_exif_orientation_6(tmp_path):
    stored = quadrants(32, 48)  # H=32, W=48 as stored
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95, subsampling=0)
    out = load_image(tmp_path / "rot.jpg")
    assert out.shape == (48, 32, 3)  # displayed: transposed shape
    expected = np.rot90(stored, k=-1)  # clockwise
    assert np.abs(out.astype(int) - expected).mean() < 3
    # corners: displayed top-left is stored bottom-left (blue), top-right stored top-left (red)
    assert np.abs(out[4, 4].astype(int) - BLUE).max() < 12
    assert np.abs(out[4, 28].astype(int) - RED).max() < 12
    assert np.abs(out[44, 4].astype(int) - WHITE).max() < 12
    assert np.abs(out[44, 28].astype(int) - GREEN).max() < 12


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, GREEN, BLUE)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(tmp_path / "anim.gif").n_frames == 3
    out = load_image(tmp_path / "anim.gif")
    assert out.shape == (16, 16, 3) and (out == RED).all()
    pil = Image.open(tmp_path / "anim.gif")
    pil.seek(2)
    assert (load_image(pil) == RED).all()  # a PIL image is read from frame 0 too


# ----------------------------------------------------------------------------------------------
# load_image: errors
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt,suffix", [("JPEG", ".jpg"), ("PNG", ".png")])
def test_truncated_file_raises(tmp_path, fmt, suffix):
    path = tmp_path / f"full{suffix}"
    Image.fromarray(noise_image(128, 128)).save(path, format=fmt)
    data = path.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="corrupt or truncated") as info:
        load_image(cut)
    assert str(cut) in str(info.value)


def test_random_bytes_with_png_extension(tmp_path):
    path = tmp_path / "fake.png"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(ImageLoadError, match="not an image") as info:
        load_image(path)
    assert "fake.png" in str(info.value)


def test_text_file(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("hello, I am not a picture\n" * 20)
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.touch()
    with pytest.raises(ImageLoadError, match="empty") as info:
        load_image(path)
    assert "empty.png" in str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageLoadError, match="no such file") as info:
        load_image(tmp_path / "nope.png")
    assert "nope.png" in str(info.value)
    with pytest.raises(ImageLoadError, match="directory"):
        load_image(tmp_path)


def test_too_small(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "tiny.png")
    with pytest.raises(ImageLoadError, match="too small: 4x4"):
        load_image(tmp_path / "tiny.png")
    assert load_image(tmp_path / "tiny.png", min_size=4).shape == (4, 4, 3)
    with pytest.raises(ImageLoadError, match="too small"):
        load_image(np.zeros((4, 20, 3), np.uint8))


def test_too_large(tmp_path):
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(tmp_path / "big.png", max_pixels=5000)
    assert load_image(tmp_path / "big.png", max_pixels=10000).shape == (100, 100, 3)
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(np.zeros((100, 100, 3), np.uint8), max_pixels=5000)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (no pixel data): a decompression-bomb stand-in."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def test_decompression_bomb(tmp_path):
    path = tmp_path / "bomb.png"
    _png_header_only(path, 30000, 30000)  # 900 Mpx claimed, 60 bytes on disk
    with pytest.raises(ImageLoadError, match="too large") as info:
        load_image(path)
    assert "bomb.png" in str(info.value)
    with pytest.raises(ImageLoadError, match="decompression bomb"):
        load_image(path, max_pixels=None)  # Pillow's own hard limit still applies


def test_header_ok_but_no_data(tmp_path):
    path = tmp_path / "hollow.png"
    _png_header_only(path, 64, 64)
    with pytest.raises(ImageLoadError, match="corrupt or truncated"):
        load_image(path)


# ----------------------------------------------------------------------------------------------
# load_image: arrays and PIL images
# ----------------------------------------------------------------------------------------------


def test_arrays():
    rgb = noise_image(16, 16)
    out = load_image(rgb)
    np.testing.assert_array_equal(out, rgb)
    assert not np.shares_memory(out, rgb)
    gray = rgb[..., 0]
    np.testing.assert_array_equal(load_image(gray)[..., 2], gray)
    f = np.full((8, 8, 3), 0.5)
    assert (load_image(f) == 128).all()
    assert (load_image(np.ones((8, 8), np.float32)) == 255).all()
    with pytest.raises(ImageLoadError, match=r"\[0, 1\]"):
        load_image(np.full((8, 8, 3), 2.0))
    with pytest.raises(ImageLoadError, match="NaN"):
        load_image(np.full((8, 8, 3), np.nan))
    with pytest.raises(ImageLoadError, match="not an image"):
        load_image(np.zeros((8, 8, 5), np.uint8))
    with pytest.raises(ImageLoadError, match=r"\[0, 255\]"):
        load_image(np.full((8, 8), 300, np.int64))
    assert (load_image(np.full((8, 8), 7, np.int64)) == 7).all()


def test_pil_image_input():
    pil = Image.fromarray(quadrants()).convert("L")
    out = load_image(pil)
    assert out.shape == (32, 48, 3)
    np.testing.assert_array_equal(out[..., 0], np.asarray(pil))
    with pytest.raises(ImageLoadError):
        load_image(12345)


# ----------------------------------------------------------------------------------------------
# iter_image_paths
# ----------------------------------------------------------------------------------------------


def test_iter_image_paths(tmp_path):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    (d / ".hidden").mkdir()
    for name in ["b.png", "a.JPG", "notes.txt", "sub/c.webp", ".hidden/x.png", ".y.png"]:
        (d / name).write_bytes(b"x")
    single = tmp_path / "single.data"
    single.write_bytes(b"x")
    missing = tmp_path / "missing.png"
    out = iter_image_paths([single, d, missing, d / "b.png"])
    assert out == [single, d / "a.JPG", d / "b.png", missing]
    out = iter_image_paths(d, recursive=True)
    assert out == [d / "a.JPG", d / "b.png", d / "sub" / "c.webp"]
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(missing)


# ----------------------------------------------------------------------------------------------
# Writers
# ----------------------------------------------------------------------------------------------


def test_atomic_path_success_and_suffix(tmp_path):
    target = tmp_path / "deep" / "out.png"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".png" and tmp != target
        Image.new("RGB", (8, 8)).save(tmp)  # Pillow infers PNG from the suffix
    assert target.is_file() and sorted(p.name for p in target.parent.iterdir()) == ["out.png"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not the temp file's 0o600


def test_atomic_path_failure_leaves_nothing(tmp_path):
    target = tmp_path / "labels.png"
    with pytest.raises(RuntimeError, match="disk on fire"):
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as fh:
                fh.write(b"\x89PNG half of a file")
            raise RuntimeError("disk on fire")
    assert list(tmp_path.iterdir()) == []
    # An existing file is left untouched by a failed rewrite.
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"new, partial")
            raise RuntimeError("again")
    assert target.read_bytes() == b"old" and list(tmp_path.iterdir()) == [target]


@pytest.mark.parametrize("name", ["a" * 251 + ".png", "é" * 125 + ".json", "b" * 255])
def test_atomic_path_long_target_names(tmp_path, name):
    """A target name up to the 255-byte limit still gets a temp name that fits it: hidden, in
    the same folder, with the same suffix."""
    target = tmp_path / name
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".")
        assert tmp.name.endswith(f".tmp{target.suffix}")
        assert len(os.fsencode(tmp.name)) <= 255
        tmp.write_bytes(b"data")
    assert target.read_bytes() == b"data" and os.listdir(tmp_path) == [name]
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == [name]


def test_writer_failing_midway_leaves_no_file(tmp_path, monkeypatch):
    """A label PNG whose encoder dies halfway (after writing some bytes) leaves nothing behind."""
    real_save = Image.Image.save

    def dying_save(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)
        Path(fp).write_bytes(Path(fp).read_bytes()[:20])
        raise OSError("simulated crash in the middle of writing")

    monkeypatch.setattr(Image.Image, "save", dying_save)
    with pytest.raises(OSError, match="simulated"):
        write_label_png(tmp_path / "l.png", np.zeros((8, 8), np.int32))
    assert list(tmp_path.iterdir()) == []


def test_label_png_round_trip_palette(tmp_path):
    labels = np.random.default_rng(0).integers(0, 5, (30, 40))
    write_label_png(tmp_path / "k5.png", labels)
    img = Image.open(tmp_path / "k5.png")
    assert img.mode == "P"
    pal = np.array(img.getpalette()[: 5 * 3]).reshape(5, 3)
    assert len({tuple(c) for c in pal}) == 5  # distinct colours
    back = read_label_png(tmp_path / "k5.png")
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, labels)


def test_label_png_round_trip_16bit(tmp_path):
    labels = np.random.default_rng(1).integers(0, 300, (30, 40))
    labels[0, 0] = 299
    write_label_png(tmp_path / "k300.png", labels)
    assert Image.open(tmp_path / "k300.png").mode == "I;16"
    np.testing.assert_array_equal(read_label_png(tmp_path / "k300.png"), labels)
    labels[1, 1] = 65535
    write_label_png(tmp_path / "max.png", labels)
    np.testing.assert_array_equal(read_label_png(tmp_path / "max.png"), labels)


def test_label_png_errors(tmp_path):
    with pytest.raises(ValueError, match="65535"):
        write_label_png(tmp_path / "x.png", np.full((4, 4), 70000))
    with pytest.raises(ValueError, match="non-negative"):
        write_label_png(tmp_path / "x.png", np.full((4, 4), -1))
    with pytest.raises(ValueError, match="integer"):
        write_label_png(tmp_path / "x.png", np.zeros((4, 4), np.float32))
    assert list(tmp_path.iterdir()) == []
    Image.new("RGB", (8, 8)).save(tmp_path / "rgb.png")
    with pytest.raises(ImageLoadError, match="not a label map"):
        read_label_png(tmp_path / "rgb.png")


def test_label_png_accepts_torch(tmp_path):
    torch = pytest.importorskip("torch")
    labels = torch.randint(0, 7, (12, 9))
    write_label_png(tmp_path / "t.png", labels)
    np.testing.assert_array_equal(read_label_png(tmp_path / "t.png"), labels.numpy())


def test_write_overlay_png(tmp_path):
    image = noise_image(40, 60)
    labels = np.zeros((20, 30), np.int32)
    labels[:, 15:] = 1
    write_overlay_png(tmp_path / "ov.png", image, labels)
    out = np.asarray(Image.open(tmp_path / "ov.png"))
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert (out[:, 14] == 255).all()  # the boundary column, white


def test_write_json(tmp_path):
    torch = pytest.importorskip("torch")
    obj = {
        "i": np.int64(3),
        "f": np.float32(0.5),
        "b": np.bool_(True),
        "arr": np.arange(3),
        "t": torch.tensor([1.5, 2.0]),
        "nan": float("nan"),
        "miou": np.float64("nan"),
        "path": Path("a/b.png"),
        "tup": (1, 2),
        5: "int key",
    }
    write_json(tmp_path / "r.json", obj)
    back = json.loads((tmp_path / "r.json").read_text())
    assert back == {
        "i": 3, "f": 0.5, "b": True, "arr": [0, 1, 2], "t": [1.5, 2.0], "nan": None,
        "miou": None, "path": "a/b.png", "tup": [1, 2], "5": "int key",
    }  # fmt: skip
    with pytest.raises(TypeError):
        write_json(tmp_path / "bad.json", {"x": object()})
    assert not (tmp_path / "bad.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_json_writers_keep_undecodable_names(tmp_path):
    """A path holding bytes that are not UTF-8 (lone surrogates in Python, PEP 383) is written
    with \\udcXX escapes: valid UTF-8 files, and json.load gives back the same str."""
    odd = os.fsdecode(b"photos/caf\xe9-\xff.png")
    obj = {"input": odd, "path": Path(odd), odd: [odd], "ok": "café"}
    write_json(tmp_path / "r.json", obj)
    data = (tmp_path / "r.json").read_bytes()
    back = json.loads(data.decode("utf-8"))  # strict UTF-8
    assert back == {"input": odd, "path": odd, odd: [odd], "ok": "café"}
    assert os.fsencode(back["input"]) == b"photos/caf\xe9-\xff.png"
    assert b"\\udce9" in data and "café".encode() in data  # other text stays as it is
    labels = np.zeros((4, 6), np.int32)
    labels[:, 3:] = 1
    write_masks_json(tmp_path / "m.json", labels, {"method": "x"}, input=odd)
    masks = json.loads((tmp_path / "m.json").read_bytes().decode("utf-8"))
    assert masks["input"] == odd and len(masks["annotations"]) == 2
    write_npz(tmp_path / "l.npz", labels, {"input": odd})
    with np.load(tmp_path / "l.npz", allow_pickle=False) as f:
        meta = str(f["meta"])
        meta.encode("utf-8")
        assert json.loads(meta)["input"] == odd
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_encoding_save_uses_atomic_path(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from diffuseg.types import Encoding

    enc = Encoding(features=torch.randn(4, 2, 3), meta={"backbone": "tiny"})
    enc.save(tmp_path / "e.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.safetensors"]
    back = Encoding.load(tmp_path / "e.safetensors")
    assert torch.equal(back.features, enc.features) and back.meta == {"backbone": "tiny"}


# ----------------------------------------------------------------------------------------------
# COCO RLE
# ----------------------------------------------------------------------------------------------


def _random_labels(seed: int, h: int, w: int, k: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # blocky regions plus scattered noise: long runs, short runs, runs wrapping across columns
    coarse = rng.integers(0, k, (h // 4 + 1, w // 4 + 1))
    labels = np.kron(coarse, np.ones((4, 4), np.int64))[:h, :w]
    flip = rng.random((h, w)) < 0.05
    labels[flip] = rng.integers(0, k, flip.sum())
    return labels


@pytest.mark.parametrize("backend", ["numpy", "pycocotools"])
def test_coco_rle_round_trip(backend):
    if backend == "pycocotools":
        pytest.importorskip("pycocotools")
    from diffuseg.types import segment_records

    labels = _random_labels(0, 37, 53, 6)
    labels[labels == 3] = 9  # non-consecutive labels are kept as they are
    recs = labels_to_coco_rle(labels, backend=backend)
    assert [r["label"] for r in recs] == sorted(np.unique(labels).tolist())
    for rec, ref in zip(recs, segment_records(labels), strict=True):
        mask = coco_rle_to_mask(rec)
        np.testing.assert_array_equal(mask, labels == rec["label"])
        assert rec["segmentation"]["size"] == [37, 53]
        assert isinstance(rec["segmentation"]["counts"], str)
        assert rec["area"] == ref["area"] and rec["bbox"] == ref["bbox"]
    json.dumps(recs)  # serialisable as is


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools decode vs numpy 2
def test_coco_rle_numpy_matches_pycocotools():
    mask_utils = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(42)
    for trial in range(25):
        h, w = rng.integers(1, 60, 2)
        k = int(rng.integers(1, 5))
        labels = (
            _random_labels(trial, int(h), int(w), k) if trial % 2 else rng.integers(0, k, (h, w))
        )
        ours = labels_to_coco_rle(labels, backend="numpy")
        theirs = labels_to_coco_rle(labels, backend="pycocotools")
        assert ours == theirs
        for rec in ours:
            m = (labels == rec["label"]).astype(np.uint8)
            ref = mask_utils.encode(np.asfortranarray(m))
            assert rec["segmentation"]["counts"] == ref["counts"].decode("ascii")
            assert rec["area"] == int(mask_utils.area(ref))
            assert rec["bbox"] == [int(v) for v in mask_utils.toBbox(ref)]
            dec = mask_utils.decode(
                {
                    "size": rec["segmentation"]["size"],
                    "counts": rec["segmentation"]["counts"].encode(),
                }
            )
            np.testing.assert_array_equal(dec, m)
    # large runs need several 5-bit groups and negative deltas
    big = np.zeros((300, 400), np.int64)
    big[10:290, 5:395] = 1
    big[100:105, 100:300] = 2
    assert labels_to_coco_rle(big, "numpy") == labels_to_coco_rle(big, "pycocotools")


def test_coco_rle_uncompressed_counts():
    mask = coco_rle_to_mask({"size": [2, 3], "counts": [1, 2, 3]})
    np.testing.assert_array_equal(mask, [[False, True, False], [True, False, False]])
    with pytest.raises(ValueError, match="cover"):
        coco_rle_to_mask({"size": [2, 3], "counts": [1, 2]})


def test_bundled_example_photo():
    import diffuseg.io

    path = Path(diffuseg.io.__file__).parent / "assets" / "example.jpg"
    img = load_image(path)
    assert img.shape == (480, 640, 3) and img.dtype == np.uint8
    assert img.std() > 30  # a real photo, not a flat placeholder
