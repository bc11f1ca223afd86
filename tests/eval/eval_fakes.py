"""Tiny fake datasets in the standard folder layouts (helpers for the eval tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = np.array([[230, 40, 40], [40, 200, 60], [40, 60, 220], [240, 230, 50],
                    [30, 30, 30], [200, 200, 200]], dtype=np.uint8)


def blocks(h: int, w: int, values: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An image of coloured vertical bands and the band index map (band k -> values[k])."""
    rng = np.random.default_rng(seed)
    n = len(values)
    band = np.minimum(np.arange(w) * n // w, n - 1)
    idx = np.broadcast_to(band[None, :], (h, w))
    image = COLOURS[idx % len(COLOURS)].astype(np.int16) + rng.integers(-6, 7, (h, w, 3))
    label = np.asarray(values, dtype=np.int64)[idx]
    return np.clip(image, 0, 255).astype(np.uint8), label


def save_rgb(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        Image.fromarray(image).save(path, quality=95)
    else:
        Image.fromarray(image).save(path)


def save_label(path: Path, label: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(label.astype(np.uint8), mode="L")
    if palette:
        im = im.convert("P")
        pal = np.zeros((256, 3), dtype=np.uint8)
        pal[:, 0] = np.arange(256)[::-1]  # colours unlike the indices: loaders must read indices
        pal[:, 1] = (np.arange(256) * 7) % 256
        im.putpalette(pal.reshape(-1).tolist())
    im.save(path)


def make_coco(root: Path, samples: dict[str, tuple[np.ndarray, np.ndarray]],
              listed: list[str] | None = None) -> Path:
    """COCO-Stuff layout: samples id -> (image, fine label 0..181 / 255)."""
    lst = root / "curated/val2017/Coco164kFull_Stuff_Coarse_7.txt"
    lst.parent.mkdir(parents=True, exist_ok=True)
    lst.write_text("".join(f"{i}\n" for i in (listed or list(samples))))
    for i, (img, lab) in samples.items():
        save_rgb(root / f"images/val2017/{i}.jpg", img)
        save_label(root / f"annotations/val2017/{i}.png", lab)
    return root


def make_cityscapes(root: Path, samples: dict[tuple[str, str], tuple]) -> Path:
    for (city, name), (img, lab) in samples.items():
        save_rgb(root / f"leftImg8bit/val/{city}/{name}_leftImg8bit.png", img)
        save_label(root / f"gtFine/val/{city}/{name}_gtFine_labelIds.png", lab)
    return root


def make_voc(root: Path, samples: dict[str, tuple], context: bool = False) -> Path:
    sets = "SegmentationContext" if context else "Segmentation"
    labels = "SegmentationClassContext" if context else "SegmentationClass"
    lst = root / f"ImageSets/{sets}/val.txt"
    lst.parent.mkdir(parents=True, exist_ok=True)
    lst.write_text("".join(f"{i}\n" for i in samples))
    for i, (img, lab) in samples.items():
        save_rgb(root / f"JPEGImages/{i}.jpg", img)
        save_label(root / f"{labels}/{i}.png", lab, palette=not context)
    return root


def make_ade(root: Path, samples: dict[str, tuple]) -> Path:
    for i, (img, lab) in samples.items():
        save_rgb(root / f"images/validation/{i}.jpg", img)
        save_label(root / f"annotations/validation/{i}.png", lab)
    return root


def band_dataset(root: Path, n: int = 6, size: tuple[int, int] = (60, 80)) -> Path:
    """A COCO-Stuff-27 fake with ``n`` images of 3-4 coloured bands of fine classes."""
    fine = [0, 2, 15, 156, 148, 168, 95, 177]  # person, car, bird, sky, road, tree, bldg, water
    samples = {}
    for k in range(n):
        values = [fine[(k + j) % len(fine)] for j in range(3 + k % 2)]
        img, lab = blocks(*size, values, seed=k)
        lab[:2] = 255  # an unlabeled strip
        samples[f"{k:012d}"] = (img, lab)
    return make_coco(root, samples)
