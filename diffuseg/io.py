"""Reading images robustly and writing results safely.

Reading: :func:`load_image` turns a path, a PIL image or an array into one (H, W, 3) uint8 RGB
array, whatever the file's mode (EXIF rotation, CMYK, 16-bit, palette with transparency, alpha,
grayscale, 1-bit, multi-frame), and turns every failure (missing, not an image, corrupt or
truncated, too small, too large) into one :class:`ImageLoadError` that names the file and the
real cause:

* **What is opened.** A path is opened once, non-blocking (``O_NONBLOCK``: a FIFO never blocks
  the reader), and the open file is what gets checked: a directory, a FIFO, a device (/dev/zero)
  or a socket is "not a regular file" (saying which), a symlink loop, a broken symlink, a
  missing file or a file we may not read each get their own message.
* **Memory (decompression bombs).** A file's width x height is read from its header before any
  pixel is decoded and refused above ``max_pixels``, by default :data:`DEFAULT_MAX_PIXELS` =
  50 Mpx (every phone's full 48 Mpx mode; about 12 bytes per pixel at the peak of a decode, so
  ~600 MB at the limit). A 10000x9000 PNG that takes 270 kB on disk is refused at once, in
  kilobytes of memory, instead of taking 1.5 GB (RGB) to 4.8 GB (RGBA) and half a minute to
  decode. Trusted large files: pass ``max_pixels=`` (``None``: no limit but Pillow's own), or
  set the environment variable ``DIFFUSEG_MAX_PIXELS`` (an integer, or ``none``), which the CLI
  and every caller that keeps the default then use. A caller that processes the image at a
  known size passes ``reduce_to`` (long side in pixels): a JPEG is then decoded already reduced
  (DCT scaling, ``Image.draft``: 1/2, 1/4 or 1/8, memory and time saved, and the limit applies
  to the reduced size), other formats are decoded and then reduced by an integer factor
  (``Image.reduce``; the limit applies to the full size, which is what gets decoded).
* **Damaged PNG data.** Pillow does not check the CRC of the image data (IDAT), so flipped bits
  decode to wrong pixels silently. Every PNG's chunks are walked and each chunk's CRC-32 is
  checked (``zlib.crc32``, streamed in 1 MiB reads) before decoding; a mismatch makes the file
  "corrupt". The walk reads the compressed file once more (from the page cache), a few percent
  of the decode time.

Writing: every writer goes through :func:`atomic_path` (write a temp file in the same folder,
rename it over the target on success, remove it on failure), so an interrupted run never leaves a
half-written output that a resumed run would mistake for a finished one. Temp names are kept
within the file system's name limit whatever the target's name.

JSON and file names that are not valid UTF-8: on POSIX a file name is bytes, and Python maps
the bytes that are not UTF-8 to lone surrogates U+DC80..U+DCFF (PEP 383, "surrogateescape").
:func:`write_json` (and the masks JSON, the npz metadata) write each lone surrogate with JSON's
own ``\\uXXXX`` escape (``"\\udce9"``), so the file is valid UTF-8 (pure ASCII there) and the
escape is lossless: ``json.load`` gives back the very same ``str`` and ``os.fsencode`` of it
the original bytes of the name.

COCO RLE: :func:`labels_to_coco_rle` encodes a label map as one record per segment with the field
names of SAM's automatic mask generator (``segmentation`` {"size", "counts"}, ``area``, ``bbox``
XYWH), with pycocotools when installed and an identical pure-numpy encoder otherwise.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
import stat
import struct
import tempfile
import warnings
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage

from diffuseg.viz import overlay, palette

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "ImageLoadError",
    "atomic_path",
    "coco_rle_to_mask",
    "iter_image_paths",
    "labels_to_coco_rle",
    "load_image",
    "masks_document",
    "read_label_png",
    "write_json",
    "write_label_png",
    "write_masks_json",
    "write_npz",
    "write_overlay_png",
]

#: File name endings (lower case) that :func:`iter_image_paths` picks up inside a directory.
IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp",
        ".ppm", ".pgm", ".pbm", ".pnm",
    }
)  # fmt: skip

#: Largest width x height :func:`load_image` decodes by default (see the module docstring);
#: the environment variable ``DIFFUSEG_MAX_PIXELS`` (an integer, or "none") overrides it.
DEFAULT_MAX_PIXELS = 50_000_000
MAX_PIXELS_ENV = "DIFFUSEG_MAX_PIXELS"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Pillow's ImageFile.LOAD_TRUNCATED_IMAGES defaults to False: a truncated file then raises in
# img.load() instead of being padded with grey. diffuseg never changes it (see load_image).

# What Pillow and its codecs raise on damaged data (beside UnidentifiedImageError).
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    IndexError,
    KeyError,
    TypeError,
)


class ImageLoadError(ValueError):
    """An input could not be turned into an RGB image; the message names the input and why."""


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def _fail(name: str, reason: str) -> ImageLoadError:
    return ImageLoadError(f"cannot load image {name}: {reason}")


def _scale_to_uint8(arr: np.ndarray, full_scale: float) -> np.ndarray:
    """Linear map [0, full_scale] -> [0, 255], rounded to nearest (65535 -> 255, 32768 -> 128)."""
    out = np.round(arr.astype(np.float64) * (255.0 / full_scale))
    return np.clip(out, 0, 255).astype(np.uint8)


def _minmax_to_uint8(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _composite_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """rgb (H, W, 3) uint8 over white with alpha (H, W) uint8, rounded to nearest.

    Done in bands of about a million pixels, so that the uint32 temporaries stay a few MB
    whatever the image size."""
    out = np.empty(rgb.shape, dtype=np.uint8)
    rows = max(1, (1 << 20) // max(1, rgb.shape[1]))
    for y in range(0, rgb.shape[0], rows):
        a = alpha[y : y + rows].astype(np.uint32)[..., None]
        x = rgb[y : y + rows].astype(np.uint32) * a + 255 * (255 - a)
        out[y : y + rows] = (x + 127) // 255  # 255 is odd: x / 255 never ends in exactly .5
    return out


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2)


def _pil_to_rgb(img: Image.Image, owned: bool = False) -> np.ndarray:
    """A loaded PIL image (any mode) -> (H, W, 3) uint8; EXIF orientation applied.

    ``owned``: the image is ours (opened from a file) and may be rotated in place, which spares
    the full copy ``exif_transpose`` otherwise makes even of an image that needs no rotation."""
    if owned:
        ImageOps.exif_transpose(img, in_place=True)
    else:
        img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode.startswith("I;16"):
        return _gray_to_rgb(_scale_to_uint8(np.asarray(img), 65535.0))
    if mode == "I":
        # 32-bit integer mode: what 16-bit PNG/TIFF data decode to in some Pillow versions and
        # formats. Values in [0, 65535] are read as 16-bit data; anything else is min-max scaled.
        arr = np.asarray(img)
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return _gray_to_rgb(_scale_to_uint8(arr, 65535.0))
        return _gray_to_rgb(_minmax_to_uint8(arr))
    if mode == "F":
        arr = np.asarray(img)
        if not np.isfinite(arr).all():
            raise ValueError("float image holds NaN or infinite values")
        if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
            return _gray_to_rgb(_scale_to_uint8(arr, 1.0))
        return _gray_to_rgb(_minmax_to_uint8(arr))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = np.asarray(img if mode == "RGBA" else img.convert("RGBA"))
        return _composite_on_white(rgba[..., :3], rgba[..., 3])
    if mode == "RGB":
        return np.array(img, dtype=np.uint8)
    if mode == "1":
        return _gray_to_rgb(np.asarray(img.convert("L")))
    # L, P, CMYK, YCbCr, LAB, HSV: Pillow's own conversions.
    return np.array(img.convert("RGB"), dtype=np.uint8)


def _array_to_rgb(arr: np.ndarray, name: str) -> np.ndarray:
    """An array in one of the accepted layouts -> (H, W, 3) uint8."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (2, 3, 4)):
        raise _fail(
            name,
            f"array of shape {arr.shape} is not an image; expected (H, W), (H, W, 3) or "
            "(H, W, 4) (channels last)",
        )
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise _fail(name, "float array holds NaN or infinite values")
        if arr.size and (arr.min() < 0.0 or arr.max() > 1.0):
            raise _fail(
                name,
                f"float array values must lie in [0, 1], got [{arr.min():g}, {arr.max():g}]",
            )
        arr = _scale_to_uint8(arr, 1.0)
    elif arr.dtype == np.uint16:
        arr = _scale_to_uint8(arr, 65535.0)
    elif np.issubdtype(arr.dtype, np.integer):
        if arr.dtype != np.uint8:
            if arr.size and (arr.min() < 0 or arr.max() > 255):
                raise _fail(
                    name,
                    f"{arr.dtype} array values must lie in [0, 255], got "
                    f"[{arr.min()}, {arr.max()}] (use uint16 for 16-bit data)",
                )
            arr = arr.astype(np.uint8)
    else:
        raise _fail(name, f"unsupported array dtype {arr.dtype}")
    if arr.ndim == 2:
        return _gray_to_rgb(arr)
    if arr.shape[2] == 3:
        return np.ascontiguousarray(arr)
    if arr.shape[2] == 2:  # gray + alpha
        return _composite_on_white(_gray_to_rgb(arr[..., 0]), arr[..., 1])
    return _composite_on_white(arr[..., :3], arr[..., 3])


def _check_size(name: str, width: int, height: int, min_size: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise _fail(
            name,
            f"image is too large: {width}x{height} = {width * height:,} pixels exceeds "
            f"max_pixels={max_pixels:,}, a bound on decoding memory (if the file is trusted, "
            f"raise it: set {MAX_PIXELS_ENV}={width * height} or pass max_pixels=)",
        )
    if width < min_size or height < min_size:
        raise _fail(
            name,
            f"image is too small: {width}x{height} pixels, at least {min_size} px per side needed",
        )


def _file_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return f"of file type {stat.S_IFMT(mode):#o}"


def _directory_reason(path: Path) -> str:
    try:
        with os.scandir(path) as entries:
            next(entries, None)
    except OSError as exc:
        return f"is a directory that cannot be read ({exc.strerror or exc})"
    return "is a directory, not an image file"


def _open_failure(path: Path, exc: OSError) -> ImageLoadError:
    """The real cause of a failed open, in words."""
    name, code = str(path), exc.errno
    if code == errno.ELOOP:
        return _fail(name, "symbolic link loop (too many levels of symbolic links)")
    if os.path.isdir(path):  # Windows refuses to open a directory with EACCES
        return _fail(name, _directory_reason(path))
    if code == errno.ENOENT:
        with contextlib.suppress(OSError):
            if stat.S_ISLNK(os.lstat(path).st_mode):
                return _fail(name, f"broken symbolic link: its target {os.readlink(path)} "
                                   "does not exist")
        return _fail(name, "no such file")
    if code == errno.ENOTDIR:
        return _fail(name, "no such file (a part of the path is not a directory)")
    if code in (errno.EACCES, errno.EPERM):
        return _fail(name, "permission denied: the file cannot be read")
    if code == errno.ENAMETOOLONG:
        return _fail(name, "file name too long")
    return _fail(name, f"cannot open the file ({exc.strerror or exc})")


def _open_regular(path: Path) -> Any:
    """Open ``path`` for reading if it is a non-empty regular file, else ImageLoadError saying
    what it is. The open is non-blocking, so a FIFO (or a device) never blocks, and the checks
    are made on the opened file (fstat), not on the name, so nothing can be swapped in between."""
    name = str(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _open_failure(path, exc) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise _fail(name, _directory_reason(path))
        if not stat.S_ISREG(st.st_mode):
            raise _fail(name, f"not a regular file: it is {_file_kind(st.st_mode)}")
        if st.st_size == 0:
            raise _fail(name, "the file is empty")
        with contextlib.suppress(OSError, AttributeError):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _verify_png_chunks(fh: Any, name: str) -> None:
    """Walk a PNG's chunks and check each one's CRC-32 (Pillow skips IDAT's); the file position
    is restored. Streams in 1 MiB reads, so a chunk's declared length costs no memory."""
    pos = fh.tell()
    try:
        fh.seek(0)
        if fh.read(8) != _PNG_SIGNATURE:
            return
        offset = 8
        while True:
            head = fh.read(8)
            if not head:
                return  # no IEND: Pillow decides whether the data it needs is all there
            cut = f"the file is corrupt or truncated (the PNG chunk at byte {offset} is cut short)"
            if len(head) < 8:
                raise _fail(name, cut)
            length, kind = struct.unpack(">I4s", head)
            if length > 0x7FFFFFFF or not kind.isalpha():
                raise _fail(name, f"the file is corrupt (bad PNG chunk header at byte {offset})")
            cut = cut.replace("the PNG chunk", f"PNG chunk {kind.decode('ascii')}")
            crc = zlib.crc32(kind)
            left = length
            while left:
                buf = fh.read(min(left, 1 << 20))
                if not buf:
                    raise _fail(name, cut)
                crc = zlib.crc32(buf, crc)
                left -= len(buf)
            stored = fh.read(4)
            if len(stored) < 4:
                raise _fail(name, cut)
            if struct.unpack(">I", stored)[0] != crc:
                raise _fail(name, f"the file is corrupt: PNG chunk {kind.decode('ascii')} at "
                                  f"byte {offset} fails its CRC check (damaged data)")
            if kind == b"IEND":
                return
            offset += 12 + length
    finally:
        fh.seek(pos)


def _resolve_max_pixels(max_pixels: int | str | None) -> int | None:
    if max_pixels != "default":
        return None if max_pixels is None else int(max_pixels)
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    if raw.lower() == "none":
        return None
    try:
        return int(raw.replace("_", ""))
    except ValueError:
        raise ImageLoadError(
            f"{MAX_PIXELS_ENV} must be a pixel count or 'none', got {raw!r}") from None


def _reduce(rgb: np.ndarray, reduce_to: int | None) -> np.ndarray:
    """Reduce by the largest integer factor that keeps the long side >= reduce_to."""
    factor = max(rgb.shape[:2]) // reduce_to if reduce_to else 1
    if factor < 2:
        return rgb
    return np.array(Image.fromarray(rgb).reduce(factor), dtype=np.uint8)


def _open_file(path: Path, min_size: int, max_pixels: int | None,
               reduce_to: int | None = None) -> np.ndarray:
    name = str(path)
    try:
        with _open_regular(path) as fh:
            # PNG: size from the header, then every chunk's CRC, before Pillow reads anything
            # (Pillow would call a damaged ancillary chunk "not an image")
            head = fh.read(24)
            fh.seek(0)
            if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
                width, height = struct.unpack(">II", head[16:24])
                _check_size(name, width, height, 0, max_pixels)
                _verify_png_chunks(fh, name)
            # Our own max_pixels check below is the limit that counts; Pillow's softer bomb
            # warning (at Image.MAX_IMAGE_PIXELS) would only duplicate it. Its hard error (twice
            # that) is turned into a clear message below.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(fh) as img:
                    if reduce_to and img.format == "JPEG" and max(img.size) > reduce_to:
                        scale = reduce_to / max(img.size)  # DCT scaling: decoded smaller
                        img.draft(img.mode, (max(1, math.ceil(img.width * scale)),
                                             max(1, math.ceil(img.height * scale))))
                    _check_size(name, img.width, img.height, 0, max_pixels)  # before decoding
                    img.load()  # decode now, inside the try: truncation and corruption raise
                    rgb = _pil_to_rgb(img, owned=True)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:
        raise _fail(
            name,
            f"image is too large, refused as a possible decompression bomb ({exc})",
        ) from exc
    except UnidentifiedImageError as exc:
        raise _fail(name, "not an image, or an image format Pillow cannot read") from exc
    except MemoryError as exc:
        raise _fail(name, "not enough memory to decode the image") from exc
    except _DECODE_ERRORS as exc:
        reason = f"the file is corrupt or truncated ({type(exc).__name__}: {exc})"
        raise _fail(name, reason) from exc
    rgb = _reduce(rgb, reduce_to)
    _check_size(name, rgb.shape[1], rgb.shape[0], min_size, None)
    return rgb


def load_image(
    src: str | bytes | os.PathLike | Image.Image | np.ndarray,
    *,
    min_size: int = 8,
    max_pixels: int | str | None = "default",
    reduce_to: int | None = None,
) -> np.ndarray:
    """Load an image as RGB, whatever it is stored as.

    Args:
        src: a path (str, bytes or PathLike: bytes are a file name, as for ``open``, never
            image data); a PIL image; or a channels-last array: (H, W, 3) or
            (H, W) gray or (H, W, 4) RGBA or (H, W, 2) gray+alpha, of dtype uint8, uint16 (16-bit,
            scaled by 255/65535), bool, another integer type with values in [0, 255], or float
            with values in [0, 1].
        min_size: smallest accepted width and height in pixels (after EXIF rotation).
        max_pixels: largest accepted width x height, checked from the file header before any
            pixel is decoded (a decompression-bomb guard that bounds memory); "default":
            ``$DIFFUSEG_MAX_PIXELS`` if set (an integer or "none"), else
            :data:`DEFAULT_MAX_PIXELS` (50 Mpx); None disables this check (Pillow's own hard
            limit, twice ``PIL.Image.MAX_IMAGE_PIXELS``, still applies to files).
        reduce_to: the long side (px) the caller will process the image at, or None (full
            size). A larger image is reduced by the largest integer factor that keeps its long
            side >= ``reduce_to``: a JPEG while decoding (``Image.draft``, factors 2, 4, 8, then
            ``reduce`` for the rest; ``max_pixels`` then applies to the reduced size), any other
            image after decoding (``Image.reduce``, box filter; ``max_pixels`` applies to the
            full size, which is what gets decoded).
    Returns:
        (H, W, 3) uint8 RGB array, a new array (never a view of ``src``).

    File handling: EXIF orientation is applied; CMYK, YCbCr and LAB are converted by Pillow;
    16-bit grayscale data (modes I;16*, and I within [0, 65535]) are scaled with 65535 -> 255
    rounded to nearest (16-bit RGB/RGBA files reach us already reduced to 8 bits by Pillow, which
    keeps the high byte); float images (mode F) in [0, 1] scale by 255, others are min-max
    scaled; palette images and every image with alpha or a transparency key are composited on
    white; 1-bit and grayscale are replicated to three channels; of a multi-frame file (GIF,
    TIFF, ...) the first frame is read (a PIL image passed in is seeked to frame 0).

    Raises:
        ImageLoadError (a ValueError): missing file, directory, not a regular file (FIFO,
            device, socket), symlink loop or broken symlink, unreadable, empty file, not an
            image, corrupt or truncated data (Pillow's ``LOAD_TRUNCATED_IMAGES`` is left False,
            so truncated files raise; PNG chunk CRCs are checked, IDAT's included), too small,
            too large, or an unsupported array.
    """
    limit = _resolve_max_pixels(max_pixels)
    if isinstance(src, bytes):
        src = os.fsdecode(src)
    if isinstance(src, (str, os.PathLike)):
        return _open_file(Path(src), min_size, limit, reduce_to)
    if isinstance(src, Image.Image):
        name = "<PIL image>"
        _check_size(name, src.width, src.height, 0, limit)
        try:
            if getattr(src, "n_frames", 1) > 1 and src.tell() != 0:
                src.seek(0)
            src.load()
            rgb = _pil_to_rgb(src)
        except _DECODE_ERRORS as exc:
            raise _fail(name, f"the image data is corrupt or truncated ({exc})") from exc
        rgb = _reduce(rgb, reduce_to)
        _check_size(name, rgb.shape[1], rgb.shape[0], min_size, None)
        return rgb
    if hasattr(src, "detach"):  # a torch tensor: channels-last like any other array
        src = src.detach().cpu().numpy()
    if isinstance(src, np.ndarray) or hasattr(src, "__array__"):
        name = "<array>"
        arr = np.asarray(src)
        if arr.ndim in (2, 3):
            _check_size(name, arr.shape[1], arr.shape[0], 0, limit)
        rgb = _reduce(_array_to_rgb(arr, name), reduce_to)
        if rgb is arr or np.shares_memory(rgb, arr):
            rgb = rgb.copy()
        _check_size(name, rgb.shape[1], rgb.shape[0], min_size, None)
        return rgb
    raise ImageLoadError(
        f"cannot load image from a {type(src).__name__}: pass a path, a PIL image or an array"
    )


def iter_image_paths(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    recursive: bool = False,
) -> list[Path]:
    """Expand a list of files and directories into the image files to process.

    Args:
        inputs: paths, or one path. A file is kept as given, whatever its extension (the loader
            then says whether it is an image). A directory is replaced by the files inside it whose
            suffix is in :data:`IMAGE_EXTENSIONS` (case-insensitive), sorted by path; hidden
            entries (name starting with ".") are skipped. Nothing named is dropped silently:
            whatever cannot be listed or read is kept as an input, so that :func:`load_image`
            reports it, with its cause, next to the other inputs' results: a path that does not
            exist ("no such file"); a directory that holds no image file (an ``x.png/`` folder:
            "is a directory"); a directory that cannot be listed, given or met in a recursive
            walk ("is a directory that cannot be read"), which therefore counts as a failed input
            (its images were asked for and not segmented); and inside a directory, every
            non-hidden entry with an image suffix that is not a directory (a FIFO, a device, a
            broken symlink, a symlink loop: "not a regular file", ...). Symlinked directories
            are not descended into (no loops).
        recursive: also descend into sub-directories.
    Returns:
        list of Paths, in input order, duplicates removed (first occurrence kept).
    """
    if isinstance(inputs, (str, bytes, os.PathLike)):
        inputs = [inputs]
    out: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        if p not in seen:
            seen.add(p)
            out.append(p)

    for item in inputs:
        path = Path(os.fsdecode(item))
        try:
            is_dir = stat.S_ISDIR(os.stat(path).st_mode)
        except (OSError, ValueError):
            is_dir = False  # missing, a loop, a name too long, ...: the loader says which
        if not is_dir:
            add(path)
            continue
        found = _walk_images(path, recursive)
        if not found:
            add(path)  # a directory with no image in it was named: the loader says so
        for f in found:
            add(f)
    return out


def _walk_images(root: Path, recursive: bool) -> list[Path]:
    """The non-hidden entries of ``root`` (and its sub-folders if ``recursive``) with an image
    suffix that are not directories, and the sub-folders that cannot be listed, sorted."""
    found: list[Path] = []

    def unreadable(exc: OSError) -> None:
        found.append(Path(exc.filename) if exc.filename is not None else root)

    for top, dirs, files in os.walk(root, onerror=unreadable, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")] if recursive else []
        for name in files:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(top) / name)
    return sorted(found)


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()

_NAME_MAX = 255  # bytes per file name: ext4, XFS, Btrfs, APFS, NTFS (UTF-16 units), tmpfs
_TEMP_RANDOM = 8  # characters of tempfile.mkstemp's random part


def _name_max(folder: Path) -> int:
    with contextlib.suppress(OSError, ValueError, AttributeError):
        value = os.pathconf(folder, "PC_NAME_MAX")
        if value and value > 0:
            return min(int(value), _NAME_MAX)
    return _NAME_MAX


def _temp_affixes(path: Path) -> dict[str, str]:
    """mkstemp's prefix and suffix for ``path``: ``.<name>.`` and ``.tmp<suffix>``, the name
    cut (on a byte count, in the file system's encoding) so that the whole temp name fits the
    folder's name limit; a suffix longer than 16 bytes is dropped (no format is named so)."""
    suffix = path.suffix if len(os.fsencode(path.suffix)) <= 16 else ""
    tail = f".tmp{suffix}"
    room = _name_max(path.parent) - len(os.fsencode(tail)) - _TEMP_RANDOM - 2
    name = os.fsencode(path.name)
    if len(name) > room:
        name = name[: max(room, 1)].decode("utf-8", "ignore").encode() or b"_"
    return {"prefix": f".{os.fsdecode(name)}.", "suffix": tail}


def checksum(payload: Any) -> str:
    """16 hex digits of the SHA-256 of ``payload`` as canonical JSON (sorted keys, compact)."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def checked_line(record: dict) -> bytes:
    """One JSONL line of ``record`` with its :func:`checksum` under ``"check"``: what the
    append-only logs of evaluation records and of segmented collections are made of."""
    return (json.dumps({**record, "check": checksum(record)}, sort_keys=True,
                       separators=(",", ":")) + "\n").encode()


def parse_checked_line(line: bytes | str) -> dict | None:
    """The record of a :func:`checked_line`, or None if the line is not JSON, not an object,
    or fails its checksum (a line cut by a crash, or damaged)."""
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict) or record.pop("check", None) != checksum(record):
        return None
    return record


def ensure_folder(path: str | os.PathLike, what: str, probe: bool = True) -> None:
    """Create ``path`` (with its parents) and, when ``probe``, check that a file can be written
    in it; else one ValueError that names ``what``, the path and the cause (a file in the way,
    no permission, a read-only or virtual file system such as /proc). ``probe=False`` for
    folders only read from (a read-only Encoding cache that holds every Encoding is fine)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a folder")
    for parent in path.parents:  # the nearest existing ancestor must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{what} {path} cannot be created: {parent} is a file, "
                                 "not a folder")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{what} {path} cannot be created: {exc.strerror or exc}") from exc
    if not probe:
        return
    test_file = path / f".diffuseg-write-test-{os.getpid()}"
    try:
        test_file.write_bytes(b"")
        test_file.unlink()
    except OSError as exc:
        raise ValueError(f"{what} {path} is not writable: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """Write a file all-or-nothing.

    Yields a fresh temporary path in the same folder as ``path`` (so the final rename never
    crosses file systems) with the same suffix (so libraries that infer the format from the name
    work), named ``.<name>.<random>.tmp<suffix>`` (hidden; ``<name>`` is cut short, on a
    character boundary, where the whole would pass the file system's 255-byte name limit, so a
    long target name never makes the write fail). When the ``with`` block ends normally the temp
    file is flushed to disk (if ``fsync``) and renamed over ``path`` (atomic on POSIX and Windows);
    if the block raises (any exception, KeyboardInterrupt included) the temp file is removed and
    ``path`` is left as it was. Missing parent folders are created. The final file gets the usual
    permissions (0o666 minus the umask), not the 0o600 of a temp file.

    Example::

        with atomic_path("out/labels.png") as tmp:
            Image.fromarray(arr).save(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, **_temp_affixes(path))
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_labels(labels: Any) -> np.ndarray:
    lab = _as_numpy(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {lab.shape}")
    if lab.dtype == np.bool_:
        lab = lab.astype(np.uint8)
    if not np.issubdtype(lab.dtype, np.integer):
        raise ValueError(f"labels must have an integer dtype, got {lab.dtype}")
    if lab.size and lab.min() < 0:
        raise ValueError(f"labels must be non-negative, got minimum {lab.min()}")
    return lab


def write_label_png(path: str | os.PathLike, labels: Any) -> None:
    """Write a label map as a lossless PNG, atomically.

    Args:
        path: output file (.png).
        labels: (H, W) non-negative integer array (numpy or torch).

    Max label <= 255: an 8-bit palette PNG (mode P) whose pixel values are the labels and whose
    palette is :func:`diffuseg.viz.palette` (viewers show distinct colours). Max label <= 65535:
    a 16-bit grayscale PNG (mode I;16), pixel value = label. Larger labels raise ValueError.
    :func:`read_label_png` reads both back exactly.
    """
    lab = _check_labels(labels)
    top = int(lab.max()) if lab.size else 0
    if top <= 255:
        img = Image.fromarray(lab.astype(np.uint8))
        img.putpalette(palette(256).ravel().tolist())  # L -> P, pixel values unchanged
    elif top <= 65535:
        img = Image.fromarray(lab.astype(np.uint16))
    else:
        raise ValueError(f"labels up to 65535 fit in a PNG, got max label {top}")
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a label PNG (palette, 8-bit or 16-bit grayscale) back as (H, W) int32 labels.

    Palette PNGs give their palette indices (not colours). RGB(A) PNGs are refused: colours are
    not labels.
    """
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise _fail(name, "no such file")
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode not in ("P", "L", "1", "I", "I;16", "I;16B", "I;16L", "I;16N"):
                raise _fail(name, f"not a label map: mode {mode} (expected P, L or I;16)")
            arr = np.asarray(img)
    except ImageLoadError:
        raise
    except UnidentifiedImageError as exc:
        raise _fail(name, "not an image, or an image format Pillow cannot read") from exc
    except _DECODE_ERRORS as exc:
        raise _fail(name, f"the file is corrupt or truncated ({exc})") from exc
    return arr.astype(np.int32)


def write_overlay_png(
    path: str | os.PathLike,
    image: Any,
    labels: Any,
    alpha: float = 0.5,
    boundary_color: tuple[int, int, int] | None = (255, 255, 255),
) -> None:
    """Write :func:`diffuseg.viz.overlay` (image (H0, W0, 3) uint8, labels (H, W)) as an RGB PNG,
    atomically; the PNG has the labels' size."""
    out = overlay(image, labels, alpha=alpha, boundary_color=boundary_color)
    with atomic_path(path) as tmp:
        Image.fromarray(out).save(tmp, format="PNG")


def _jsonable(obj: Any) -> Any:
    """Plain-Python copy of obj: numpy/torch scalars and arrays, Paths, tuples, sets, dataclasses;
    non-finite floats become None (JSON has no NaN)."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, str) else k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return [_jsonable(v) for v in sorted(obj, key=repr)]
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if hasattr(obj, "detach") and hasattr(obj, "tolist"):  # torch.Tensor
        return _jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(asdict(obj))
    if hasattr(obj, "to_dict"):
        return _jsonable(obj.to_dict())
    raise TypeError(f"cannot write a {type(obj).__name__} to JSON")


_SURROGATE = re.compile("[\ud800-\udfff]")


def _json_text(obj: Any, indent: int | None = None) -> str:
    """JSON text of :func:`_jsonable` ``(obj)``, non-ASCII characters kept as they are except
    lone surrogates (the undecodable bytes of a file name, PEP 383), which get JSON's ``\\uXXXX``
    escape: the text then encodes to UTF-8, and ``json.loads`` gives back the same strings."""
    text = json.dumps(_jsonable(obj), indent=indent, ensure_ascii=False, allow_nan=False)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as UTF-8 JSON, atomically.

    numpy and torch scalars/arrays become numbers/lists, Paths strings, tuples and sets lists,
    dataclasses and objects with ``to_dict()`` dicts; NaN and infinities become null (strict JSON).
    Strings holding the undecodable bytes of a file name (lone surrogates) are written with
    ``\\udcXX`` escapes, losslessly (see the module docstring).
    The whole text is built before the file is touched, so an unserialisable object leaves no file.
    """
    text = _json_text(obj, indent)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# COCO run-length encoding
# ----------------------------------------------------------------------------------------------


def _rle_counts_to_string(counts: Iterable[int]) -> str:
    """COCO's compressed RLE string: each count (after the first two, as the difference to the
    count two places before) in little-endian groups of 5 bits, 0x20 = "more groups follow",
    the last group's 0x10 bit carrying the sign, each group offset by 48 into printable ASCII."""
    counts = [int(c) for c in counts]
    chars: list[str] = []
    for i, value in enumerate(counts):
        x = value - counts[i - 2] if i > 2 else value
        while True:
            group = x & 0x1F
            x >>= 5  # arithmetic shift: negative deltas end at -1
            more = (x != -1) if (group & 0x10) else (x != 0)
            if more:
                group |= 0x20
            chars.append(chr(group + 48))
            if not more:
                break
    return "".join(chars)


def _rle_string_to_counts(s: str | bytes) -> list[int]:
    """Inverse of :func:`_rle_counts_to_string`."""
    if isinstance(s, bytes):
        s = s.decode("ascii")
    counts: list[int] = []
    p = 0
    while p < len(s):
        x = 0
        shift = 0
        while True:
            group = ord(s[p]) - 48
            p += 1
            x |= (group & 0x1F) << shift
            shift += 5
            if not group & 0x20:
                if group & 0x10:
                    x -= 1 << shift  # sign-extend
                break
            if p >= len(s):
                raise ValueError("truncated COCO RLE string")
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _runs_fortran(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of equal labels in column-major order: (start, end, label) per run."""
    flat = labels.ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [flat.size]])
    return starts, ends, flat[starts]


def _counts_from_runs(starts: np.ndarray, ends: np.ndarray, total: int) -> list[int]:
    """COCO counts (zeros first, alternating) of a mask whose 1-runs are [starts, ends)."""
    gaps = starts - np.concatenate([[0], ends[:-1]])
    counts = np.empty(2 * starts.size, dtype=np.int64)
    counts[0::2] = gaps
    counts[1::2] = ends - starts
    out = counts.tolist()
    if ends[-1] < total:
        out.append(int(total - ends[-1]))
    return out


def _encode_pycocotools(mask: np.ndarray) -> str:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    counts = rle["counts"]
    return counts.decode("ascii") if isinstance(counts, bytes) else counts


def labels_to_coco_rle(labels: Any, backend: str = "auto") -> list[dict[str, Any]]:
    """One COCO-RLE record per label present, in increasing label order.

    Args:
        labels: (H, W) non-negative integer label map (numpy or torch).
        backend: "pycocotools", "numpy", or "auto" (pycocotools if importable, else numpy).
            Both give identical records.
    Returns:
        list of {"label": int, "segmentation": {"size": [H, W], "counts": str}, "area": int
        (pixels), "bbox": [x, y, w, h] ints (XYWH, w = x_max - x_min + 1)}: the field names of
        SAM's automatic mask generator output. ``counts`` is COCO's compressed RLE string (column-
        major runs, zeros first), so ``pycocotools.mask.decode`` reads every segmentation.
    """
    lab = _check_labels(labels)
    if backend == "auto":
        try:
            import pycocotools.mask  # noqa: F401

            backend = "pycocotools"
        except ImportError:
            backend = "numpy"
    if backend not in ("pycocotools", "numpy"):
        raise ValueError(f"backend must be 'auto', 'pycocotools' or 'numpy', got {backend!r}")
    h, w = lab.shape
    if lab.size == 0:
        return []
    starts, ends, run_labels = _runs_fortran(lab)
    boxes = ndimage.find_objects(lab.astype(np.int64) + 1)  # boxes[k]: slices of label k
    order = np.argsort(run_labels, kind="stable")
    present, first = np.unique(run_labels[order], return_index=True)
    bounds = np.append(first, order.size)
    records = []
    for i, k in enumerate(present.tolist()):
        idx = order[bounds[i] : bounds[i + 1]]  # this label's runs, in scan order
        s, e = starts[idx], ends[idx]
        if backend == "numpy":
            counts = _rle_counts_to_string(_counts_from_runs(s, e, lab.size))
        else:
            counts = _encode_pycocotools(lab == k)
        ys, xs = boxes[k]
        y0, x0 = ys.start, xs.start
        records.append(
            {
                "label": int(k),
                "segmentation": {"size": [h, w], "counts": counts},
                "area": int((e - s).sum()),
                "bbox": [int(x0), int(y0), int(xs.stop - x0), int(ys.stop - y0)],
            }
        )
    return records


def coco_rle_to_mask(rle: dict[str, Any]) -> np.ndarray:
    """Decode one COCO RLE ({"size": [H, W], "counts": str | bytes | list[int]}) to (H, W) bool.

    A SAM-style record ({"segmentation": {...}, ...}) is accepted too. Pure numpy.
    """
    if "segmentation" in rle:
        rle = rle["segmentation"]
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    counts = list(counts) if isinstance(counts, (list, tuple)) else _rle_string_to_counts(counts)
    counts_arr = np.asarray(counts, dtype=np.int64)
    if counts_arr.size and counts_arr.min() < 0:
        raise ValueError("corrupt COCO RLE: negative run length")
    if int(counts_arr.sum()) != h * w:
        covered = int(counts_arr.sum())
        raise ValueError(f"corrupt COCO RLE: runs cover {covered} pixels, not {h * w}")
    values = (np.arange(counts_arr.size) % 2).astype(bool)
    flat = np.repeat(values, counts_arr)
    return flat.reshape(w, h).T.copy()


# ----------------------------------------------------------------------------------------------
# Interchange formats: COCO RLE masks JSON, NumPy .npz
# ----------------------------------------------------------------------------------------------

#: ``format`` field of the files written by :func:`write_masks_json` and :func:`write_npz`.
MASKS_FORMAT = "diffuseg.masks/1"
NPZ_FORMAT = "diffuseg.npz/1"


def masks_document(labels: Any, config: Any = None, names: Any = None,
                   **extra: Any) -> dict[str, Any]:
    """The masks JSON document of a label map (what :func:`write_masks_json` writes).

    Args:
        labels: (H, W) non-negative integer label map.
        config: the resolved settings (dict or dataclass), stored as ``config``.
        names: optional {label: name} (class or caption word): each annotation gets ``name``.
        **extra: more top-level fields (e.g. ``input="photo.jpg"``).
    Returns:
        {"format": MASKS_FORMAT, "image": {"height": H, "width": W}, "config": ...,
        "annotations": :func:`labels_to_coco_rle` records (SAM's field names), **extra}.
    """
    lab = _check_labels(labels)
    annotations = labels_to_coco_rle(lab)
    for ann in annotations if names else []:
        ann["name"] = names.get(ann["label"])
    return {
        "format": MASKS_FORMAT,
        **extra,
        "image": {"height": int(lab.shape[0]), "width": int(lab.shape[1])},
        "config": _jsonable(config) if config is not None else {},
        "annotations": annotations,
    }


def write_masks_json(path: str | os.PathLike, labels: Any, config: Any = None,
                     names: Any = None, **extra: Any) -> None:
    """Write :func:`masks_document` as JSON, atomically (compact: masks files get large).

    Each annotation's ``segmentation`` decodes with ``pycocotools.mask.decode`` or
    :func:`coco_rle_to_mask`; the label map is ``sum(k * mask_k)``.
    """
    write_json(path, masks_document(labels, config, names, **extra), indent=None)


def write_npz(path: str | os.PathLike, labels: Any, meta: dict[str, Any] | None = None) -> None:
    """Write a label map and its metadata as a compressed ``.npz``, atomically, with no pickles.

    The archive holds ``labels`` ((H, W) int32) and ``meta`` (a 0-d unicode array: the JSON text
    of ``meta``, e.g. segments, hierarchy and config), so ``np.load(path, allow_pickle=False)``
    reads it; ``json.loads(str(f["meta"]))`` gives the metadata back.
    """
    lab = _check_labels(labels).astype(np.int32)
    text = _json_text({"format": NPZ_FORMAT, **_jsonable(meta or {})})
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, labels=lab, meta=np.array(text))
