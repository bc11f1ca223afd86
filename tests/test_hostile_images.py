"""Hostile inputs, built in tmp_path, through the CLI (subprocesses, the way a user runs it) and
through ``diffuseg.io.load_image``: names the file system or JSON chokes on, things that are not
regular files, decompression bombs, PNGs with flipped bits, random bytes, truncated images.

Each class gets: no traceback, exactly one ``error:`` line per bad input naming it and its cause,
the good inputs of the same batch processed, exit code 1, and no temp file left behind.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffuseg import pipeline
from diffuseg.io import ImageLoadError, _temp_affixes, iter_image_paths, load_image

POSIX = os.name == "posix"
posix_only = pytest.mark.skipif(not POSIX, reason="POSIX file system semantics")


# ---------------------------------------------------------------------------------------------
# builders
# ---------------------------------------------------------------------------------------------
def picture(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """Two flat halves plus a little noise: segments quickly, compresses poorly enough that a
    PNG of it has a long IDAT."""
    rng = np.random.default_rng(seed)
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = (200, 40, 30)
    image[:, w // 2 :] = (30, 60, 210)
    return np.clip(image + rng.integers(0, 12, image.shape), 0, 255).astype(np.uint8)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_bomb(path: Path, width: int = 10000, height: int = 9000) -> None:
    """A valid RGB PNG declaring width x height, all zeros: 270 MB of pixels in ~260 kB."""
    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * width)  # filter byte + the row
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
                     + png_chunk(b"IEND", b""))


def idat_span(data: bytes) -> tuple[int, int]:
    """(start, end) byte offsets of the first IDAT chunk's data."""
    pos = 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IDAT":
            return pos + 8, pos + 8 + length
        pos += 12 + length
    raise AssertionError("no IDAT")


def flipped(data: bytes, offset: int, bit: int) -> bytes:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return bytes(out)


#: The child's own peak RSS. Not getrusage's ru_maxrss: on Linux it keeps the high-water mark
#: of the process image before exec, i.e. of the forked copy of this (large) test process.
PEAK_RSS_KB = ("def peak_rss_kb():\n"
               "    try:\n"
               "        lines = open('/proc/self/status').read().splitlines()\n"
               "    except OSError:  # no /proc (not Linux): nothing to measure\n"
               "        return 0\n"
               "    return next((int(x.split()[1]) for x in lines if x.startswith('VmHWM:')), 0)\n")


def run_cli(args: list, cwd: Path, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m diffuseg.cli segment ... --method ncut -p grid=16`` in a subprocess; args may
    hold bytes (undecodable names). Reports the child's peak RSS on its stderr."""
    code = ("import atexit, runpy, sys\n"
            f"{PEAK_RSS_KB}"
            "atexit.register(lambda: sys.stderr.write('maxrss_kb=%d\\n' % peak_rss_kb()))\n"
            "sys.argv = ['diffuseg'] + sys.argv[1:]\n"
            "runpy.run_module('diffuseg.cli', run_name='__main__')\n")
    argv = [sys.executable, "-c", code, "segment", *args, "--method", "ncut", "-p", "grid=16"]
    full_env = {**os.environ, "PYTHONIOENCODING": "utf-8:backslashreplace", **(env or {})}
    return subprocess.run(argv, cwd=cwd, env=full_env, capture_output=True, timeout=timeout)


def text_of(proc: subprocess.CompletedProcess) -> str:
    return (proc.stdout + proc.stderr).decode("utf-8", "backslashreplace")


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in proc.stderr.decode("utf-8", "backslashreplace").splitlines()
            if ln.startswith("error:")]


def shown(name: str) -> str:
    """How a name appears on a stderr with errors=backslashreplace."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def assert_clean_folder(out: Path) -> None:
    names = os.listdir(os.fsencode(out))
    assert not [n for n in names if b".tmp" in n], names


def maxrss_mb(proc: subprocess.CompletedProcess) -> float:
    for line in proc.stderr.decode("utf-8", "replace").splitlines():
        if line.startswith("maxrss_kb="):
            return int(line.split("=")[1]) / 1024
    raise AssertionError("no maxrss line")


# ---------------------------------------------------------------------------------------------
# one batch with every kind of bad input, through the CLI
# ---------------------------------------------------------------------------------------------
@posix_only
def test_cli_batch_of_hostile_inputs(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    good = {"good": src / "good.png", "photo": src / "photo.jpg"}
    Image.fromarray(picture()).save(good["good"])
    Image.fromarray(picture(seed=1)).save(good["photo"], quality=95)
    long_a = src / ("a" * 240 + "-first.png")  # 250 bytes: a temp name would pass 255
    long_b = src / ("a" * 240 + "-other.png")  # shares 240 bytes with long_a
    long_u = src / ("é" * 120 + ".png")  # 244 bytes, 2 per character
    for k, p in enumerate((long_a, long_b, long_u)):
        Image.fromarray(picture(seed=k)).save(p)
    odd = os.fsencode(src) + b"/odd\xe9\xff.png"  # not UTF-8
    Image.fromarray(picture(seed=5)).save(os.fsdecode(odd), format="PNG")

    png = good["good"].read_bytes()
    start, end = idat_span(png)
    bad = {  # name -> a word of its cause
        "flip1.png": "CRC", "flip2.png": "CRC", "trunc.png": "truncated", "trunc.jpg": "corrupt",
        "random.png": "not an image", "random.jpg": "not an image", "fifo.png": "FIFO",
        "zero.png": "character device", "loop.png": "symbolic link loop",
        "dangling.png": "broken symbolic link", "folder.png": "is a directory",
        "bomb.png": "too large", "missing.png": "no such file",
    }
    (src / "flip1.png").write_bytes(flipped(png, start + 5, 3))
    (src / "flip2.png").write_bytes(flipped(png, end - 7, 0))
    (src / "trunc.png").write_bytes(png[: len(png) // 2])
    jpg = good["photo"].read_bytes()
    (src / "trunc.jpg").write_bytes(jpg[: len(jpg) // 2])
    rng = np.random.default_rng(0)
    (src / "random.png").write_bytes(rng.bytes(3000))
    (src / "random.jpg").write_bytes(rng.bytes(3000))
    os.mkfifo(src / "fifo.png")
    os.symlink("/dev/zero", src / "zero.png")
    os.symlink("loop.png", src / "loop.png")
    os.symlink("nowhere.png", src / "dangling.png")
    (src / "folder.png").mkdir()
    write_bomb(src / "bomb.png")

    out = tmp_path / "out"
    args = [str(src), str(src / "folder.png"), str(src / "missing.png"), "--out", str(out)]
    proc = run_cli(args, tmp_path, {"DIFFUSEG_MAX_PIXELS": ""})
    text = text_of(proc)
    assert proc.returncode == 1, text
    assert "Traceback" not in text
    errors = error_lines(proc)
    assert len(errors) == len(bad), errors
    for name, cause in bad.items():
        mine = [e for e in errors if f"{name}:" in e]
        assert len(mine) == 1 and cause in mine[0], (name, errors)
    assert proc.stderr.count(b"error:") == len(bad)

    # the good inputs, whatever their names, have complete output sets
    manifest = json.loads((out / "manifest.json").read_bytes().decode("utf-8"))
    outputs = {o["input"]: o for o in manifest["outputs"]}
    expected = [good["good"], good["photo"], long_a, long_b, long_u, Path(os.fsdecode(odd))]
    assert sorted(outputs) == sorted(str(p) for p in expected)
    assert len(manifest["failed"]) == len(bad)
    stems = [o["stem"] for o in manifest["outputs"]]
    assert len(set(stems)) == len(stems)
    for record in manifest["outputs"]:
        for name in record["files"]:
            assert len(name.encode("utf-8")) <= 200, name
            assert (out / name).is_file()
        data = (out / f"{record['stem']}.json").read_bytes()
        assert json.loads(data.decode("utf-8"))["input"] == record["input"]  # the full path
    odd_record = outputs[os.fsdecode(odd)]
    assert odd_record["stem"] == "odd%E9%FF"
    assert os.fsencode(odd_record["input"]) == odd  # lossless: the very bytes of the name
    assert_clean_folder(out)
    assert maxrss_mb(proc) < 1000  # the bomb is refused from its header


@posix_only
def test_cli_long_names_and_resume(tmp_path):
    """A long name does not fail its writes nor stop the batch, and a resumed run finds its
    (shortened) outputs done."""
    src = tmp_path / "in"
    src.mkdir()
    names = ["b" * 251 + ".png", "c" * 100 + ".png"]  # 255 bytes: the longest name there is
    for k, name in enumerate(names):
        Image.fromarray(picture(seed=k)).save(src / name)
    out = tmp_path / "out"
    proc = run_cli([str(src), "--format", "png,coco,npz", "--out", str(out)], tmp_path)
    assert proc.returncode == 0, text_of(proc)
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert [o["input"] for o in manifest["outputs"]] == [str(src / n) for n in names]
    assert all(len(o["files"]) == 5 for o in manifest["outputs"])
    assert_clean_folder(out)
    again = run_cli([str(src), "--out", str(out), "--resume", "--format", "png,coco,npz"],
                    tmp_path)
    assert again.returncode == 0 and b"2 already done" in again.stderr, text_of(again)


@posix_only
@pytest.mark.skipif(POSIX and os.geteuid() == 0, reason="root reads every file")
def test_cli_unreadable_file_and_subfolder(tmp_path):
    src = tmp_path / "in"
    (src / "locked").mkdir(parents=True)
    Image.fromarray(picture()).save(src / "good.png")
    Image.fromarray(picture()).save(src / "secret.png")
    Image.fromarray(picture()).save(src / "locked" / "inside.png")
    os.chmod(src / "secret.png", 0)
    os.chmod(src / "locked", 0)
    try:
        proc = run_cli([str(src), "--recursive", "--out", str(tmp_path / "out")], tmp_path)
    finally:
        os.chmod(src / "locked", 0o755)
    assert proc.returncode == 1, text_of(proc)
    errors = error_lines(proc)
    assert len(errors) == 2, errors
    assert any("secret.png" in e and "permission denied" in e for e in errors)
    assert any("locked" in e and "cannot be read" in e for e in errors)
    assert (tmp_path / "out" / "good.labels.png").is_file()


def test_cli_unreadable_file_and_subfolder_simulated(tmp_path, monkeypatch):
    """The same through the CLI in this process, with the permission errors simulated (the test
    above cannot run as root): one error line each, the rest processed, exit code 1."""
    from typer.testing import CliRunner

    from diffuseg.cli import app

    src = tmp_path / "in"
    (src / "locked").mkdir(parents=True)
    Image.fromarray(picture()).save(src / "good.png")
    Image.fromarray(picture()).save(src / "secret.png")
    Image.fromarray(picture()).save(src / "locked" / "inside.png")
    real_open, real_scandir = os.open, os.scandir

    def deny_open(path, flags, *args, **kwargs):
        if os.fspath(path) == str(src / "secret.png"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    def deny_scandir(path="."):
        if os.fspath(path) == str(src / "locked"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "open", deny_open)
    monkeypatch.setattr(os, "scandir", deny_scandir)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["segment", str(src), "--recursive", "--method", "ncut",
                                      "-p", "grid=16", "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 2, errors
    assert any("secret.png" in e and "permission denied" in e for e in errors)
    assert any(e.startswith(f"error: {src / 'locked'}:") and "cannot be read" in e
               for e in errors)
    assert (out / "good.labels.png").is_file() and (out / "good.json").is_file()


# ---------------------------------------------------------------------------------------------
# decode bombs: refused from the header, in little memory
# ---------------------------------------------------------------------------------------------
def test_bomb_refused_in_little_memory(tmp_path):
    bomb = tmp_path / "bomb.png"
    write_bomb(bomb)
    assert bomb.stat().st_size < 1_000_000
    code = ("import sys\n"
            f"{PEAK_RSS_KB}"
            "from diffuseg.io import load_image, ImageLoadError\n"
            "try:\n"
            "    load_image(sys.argv[1])\n"
            "    print('loaded')\n"
            "except ImageLoadError as exc:\n"
            "    print(exc)\n"
            "print('maxrss_kb=%d' % peak_rss_kb())\n")
    env = {k: v for k, v in os.environ.items() if k != "DIFFUSEG_MAX_PIXELS"}
    proc = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "too large: 10000x9000" in proc.stdout and "DIFFUSEG_MAX_PIXELS" in proc.stdout
    rss_mb = int(proc.stdout.split("maxrss_kb=")[1]) / 1024
    # refused from its header: the child's peak is its imports (about 240-290 MB); decoding the
    # bomb would take 1.1 GB
    assert rss_mb < 500, rss_mb


def test_bomb_through_cli_in_little_memory(tmp_path):
    bomb = tmp_path / "bomb.png"
    write_bomb(bomb)
    Image.fromarray(picture()).save(tmp_path / "ok.png")
    proc = run_cli([str(bomb), str(tmp_path / "ok.png"), "--out", str(tmp_path / "out")],
                   tmp_path, {"DIFFUSEG_MAX_PIXELS": ""})
    assert proc.returncode == 1, text_of(proc)
    errors = error_lines(proc)
    assert len(errors) == 1 and "bomb.png" in errors[0] and "too large" in errors[0]
    assert (tmp_path / "out" / "ok.labels.png").is_file()
    assert maxrss_mb(proc) < 500  # see test_bomb_refused_in_little_memory


def test_max_pixels_override(tmp_path, monkeypatch):
    path = tmp_path / "wide.png"
    Image.fromarray(picture(20, 300)).save(path)
    monkeypatch.setenv("DIFFUSEG_MAX_PIXELS", "5000")
    with pytest.raises(ImageLoadError, match="too large: 300x20"):
        load_image(path)
    assert load_image(path, max_pixels=6000).shape == (20, 300, 3)  # an explicit value wins
    monkeypatch.setenv("DIFFUSEG_MAX_PIXELS", "none")
    assert load_image(path).shape == (20, 300, 3)
    monkeypatch.setenv("DIFFUSEG_MAX_PIXELS", "lots")
    with pytest.raises(ImageLoadError, match="DIFFUSEG_MAX_PIXELS"):
        load_image(path)


def test_reduce_to_on_load(tmp_path):
    image = np.kron(picture(60, 80), np.ones((20, 20, 1), np.uint8))  # 1200 x 1600
    Image.fromarray(image).save(tmp_path / "big.jpg", quality=90)
    Image.fromarray(image).save(tmp_path / "big.png")
    jpg = load_image(tmp_path / "big.jpg", reduce_to=400)  # DCT scaling 1/4
    assert jpg.shape == (300, 400, 3)
    png = load_image(tmp_path / "big.png", reduce_to=500)  # 1600 // 500 = 3
    assert png.shape == (400, 534, 3)
    np.testing.assert_array_equal(png[:6, :6], image[:1, :1].repeat(6, 0).repeat(6, 1))
    assert load_image(tmp_path / "big.png", reduce_to=2000).shape == image.shape
    # a JPEG larger than max_pixels is accepted when reduced on load under it
    assert load_image(tmp_path / "big.jpg", reduce_to=400, max_pixels=200_000).shape[1] == 400
    with pytest.raises(ImageLoadError, match="too large"):
        load_image(tmp_path / "big.png", reduce_to=400, max_pixels=200_000)


# ---------------------------------------------------------------------------------------------
# flipped bits in PNG data, through the API
# ---------------------------------------------------------------------------------------------
def test_every_flipped_bit_in_png_data_is_caught(tmp_path):
    path = tmp_path / "clean.png"
    Image.fromarray(picture(64, 64)).save(path)
    data = path.read_bytes()
    start, end = idat_span(data)
    rng = np.random.default_rng(0)
    offsets = rng.integers(start, end + 4, 15)  # the data and the stored CRC
    for k, offset in enumerate(offsets.tolist()):
        bad = tmp_path / f"flip{k}.png"
        bad.write_bytes(flipped(data, offset, k % 8))
        with pytest.raises(ImageLoadError, match="corrupt") as info:
            load_image(bad)
        assert f"flip{k}.png" in str(info.value)
    # a flip in an ancillary chunk is damage as well
    text = data[:33] + png_chunk(b"tEXt", b"Comment\x00hello") + data[33:]
    pos = text.index(b"hello")
    (tmp_path / "text.png").write_bytes(flipped(text, pos, 1))
    with pytest.raises(ImageLoadError, match="CRC"):
        load_image(tmp_path / "text.png")
    (tmp_path / "text_ok.png").write_bytes(text)
    np.testing.assert_array_equal(load_image(tmp_path / "text_ok.png"), load_image(path))


def test_png_with_huge_declared_chunk_length(tmp_path):
    data = bytearray(png_chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)))
    bad = b"\x89PNG\r\n\x1a\n" + bytes(data) + struct.pack(">I4s", 0x7FFFFFF0, b"IDAT") + b"x" * 40
    (tmp_path / "long.png").write_bytes(bad)
    with pytest.raises(ImageLoadError, match="corrupt or truncated"):
        load_image(tmp_path / "long.png")


# ---------------------------------------------------------------------------------------------
# what is not a regular file, through the API
# ---------------------------------------------------------------------------------------------
@posix_only
def test_not_regular_files_named_by_their_kind(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(ImageLoadError, match="not a regular file: it is a FIFO"):
        load_image(tmp_path / "pipe.png")  # and it does not block
    with pytest.raises(ImageLoadError, match="character device"):
        load_image("/dev/zero")
    os.symlink("me.png", tmp_path / "me.png")
    with pytest.raises(ImageLoadError, match="symbolic link loop"):
        load_image(tmp_path / "me.png")
    os.symlink(tmp_path / "gone.png", tmp_path / "link.png")
    with pytest.raises(ImageLoadError, match="broken symbolic link"):
        load_image(tmp_path / "link.png")
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(ImageLoadError, match="is a directory"):
        load_image(tmp_path / "dir.png")
    with pytest.raises(ImageLoadError, match="no such file"):
        load_image(tmp_path / "nothing.png")


@posix_only
def test_iter_image_paths_drops_nothing_silently(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    Image.fromarray(picture()).save(d / "a.png")
    os.mkfifo(d / "f.png")
    os.symlink("l.png", d / "l.png")
    (d / "sub" / "x.png").mkdir()  # a folder named like an image, inside a folder
    empty = tmp_path / "empty.png"
    empty.mkdir()
    assert iter_image_paths([d, empty]) == [d / "a.png", d / "f.png", d / "l.png", empty]
    assert iter_image_paths(d, recursive=True) == [d / "a.png", d / "f.png", d / "l.png"]


@posix_only
def test_undecodable_names_through_the_api(tmp_path):
    name = os.fsencode(tmp_path) + b"/\xe9\xff.png"
    Image.fromarray(picture()).save(os.fsdecode(name), format="PNG")
    np.testing.assert_array_equal(load_image(name), picture())  # a bytes path
    assert iter_image_paths([name]) == [Path(os.fsdecode(name))]
    assert iter_image_paths(os.fsencode(tmp_path)) == [Path(os.fsdecode(name))]


# ---------------------------------------------------------------------------------------------
# output stems
# ---------------------------------------------------------------------------------------------
def test_plan_stems_are_short_valid_unique_and_stable():
    long_a = Path("x") / ("a" * 240 + "-1.png")
    long_b = Path("y") / ("a" * 240 + "-2.png")
    long_a2 = Path("z") / long_a.name  # the same long name in another folder
    accents = Path("é" * 200 + ".jpg")
    odd = Path(os.fsdecode(b"\xe9\xff.png"))
    enc = Path("e" * 300 + ".safetensors")
    paths = [Path("a.png"), long_a, long_b, long_a2, accents, odd, enc, Path(".safetensors")]
    items = pipeline.plan(paths)
    stems = [it.stem for it in items]
    assert stems == [it.stem for it in pipeline.plan(paths)]  # deterministic
    assert len(set(stems)) == len(stems)
    assert stems[0] == "a"
    for stem in stems:
        raw = stem.encode("utf-8")  # strict: valid UTF-8
        assert 0 < len(raw) <= pipeline.STEM_MAX_BYTES + 3
        for suffix in (".labels.png", ".overlay.png", ".masks.json", ".npz", ".json"):
            # the atomic writer's temp name ".<name>.<8 random>.tmp<ext>" fits 255 bytes, and
            # keeps the whole name (the pattern prepare_folder cleans up after a kill)
            name = stem + suffix
            target = Path("out") / name
            tmp = f".{name}.XXXXXXXX.tmp{Path(name).suffix}".encode()
            assert len(tmp) <= 255
            assert _temp_affixes(target)["prefix"] == f".{name}."
    assert stems[1] != stems[2] and stems[1].startswith("a" * 160)
    assert stems[3] == stems[1] + "-2"
    assert stems[4].startswith("é" * 80) and "~" in stems[4]
    assert stems[5] == "%E9%FF"
    assert stems[6].startswith("eee") and stems[7] == "_"
    # the stem of an input is decided over the whole list: shards agree with it
    assert [it.stem for it in pipeline.shard(items, 1, 3)] == stems[1::3]
