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


# -- open vocabulary ----------------------------------------------------------------------------
def flat_bands(size: int, colours: list[int], widths: list[int],
               values: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """A size x size image of flat vertical bands (no noise): band k has colour
    ``COLOURS[colours[k]]``, ``widths[k]`` columns and label ``values[k]``."""
    if sum(widths) != size:
        raise ValueError("the widths must add up to the size")
    image = np.zeros((size, size, 3), dtype=np.uint8)
    label = np.zeros((size, size), dtype=np.int64)
    x = 0
    for colour, width, value in zip(colours, widths, values, strict=True):
        image[:, x : x + width] = COLOURS[colour]
        label[:, x : x + width] = value
        x += width
    return image, label


class FakeClip:
    """A CLIP stand-in whose answers are known by hand (the ``load_clip`` API).

    It "sees" each palette colour as one word, ``seen[k]`` for ``COLOURS[k]``:

    - ``dense(image, size)``: (6, H, W) one-hot of each pixel's nearest palette colour, at the
      image's own resolution (so masked pooling over a segment gives its colour histogram);
      ``size`` is only recorded in ``sizes``.
    - ``head(pooled)``: (K, D) = pooled @ M, colour k -> the unit vector of its word.
    - ``encode_text(prompts)``: the class word of each templated prompt ("a photo of a cat." ->
      "cat") -> the unit vector of that word if it is one of the seen words, else one shared
      "other" direction that no segment has.

    So a segment is named by the word with the largest colour mass in it, and a class wins when
    one of its synonyms is that word.
    """

    name = "fake-clip"

    def __init__(self, seen: tuple[str, ...] = ("background", "cat", "dog", "person",
                                                "background", "cow")) -> None:
        import re

        import torch

        from diffuseg.labels.templates import VILD_TEMPLATES

        self.words = sorted(set(seen))
        self.dim = len(self.words) + 1  # + "other"
        self.matrix = torch.zeros(len(COLOURS), self.dim)
        for k, word in enumerate(seen):
            self.matrix[k, self.words.index(word)] = 1.0
        self.patterns = [re.compile("^" + re.escape(t).replace(r"\{\}", "(.+)") + "$")
                         for t in VILD_TEMPLATES]
        self.sizes: list[int] = []
        self.normalized: list[bool] = []
        self.dense_calls = 0
        self.text_calls = 0

    def word_of(self, prompt: str) -> str:
        found = [m.group(1) for p in self.patterns if (m := p.match(prompt))]
        if not found:
            raise AssertionError(f"not a template prompt: {prompt!r}")
        return min(found, key=len)

    def dense(self, image: np.ndarray, size: int = 1024, normalize: bool = True):
        import torch

        self.sizes.append(int(size))
        self.normalized.append(bool(normalize))
        self.dense_calls += 1
        dist = ((image[:, :, None, :].astype(np.int64) - COLOURS[None, None].astype(np.int64))
                ** 2).sum(-1)
        nearest = torch.from_numpy(dist.argmin(-1))
        return torch.nn.functional.one_hot(nearest, len(COLOURS)).permute(2, 0, 1).float()

    def head(self, pooled):
        return pooled.float() @ self.matrix

    def encode_text(self, prompts: list[str]):
        import torch

        self.text_calls += 1
        out = torch.zeros(len(prompts), self.dim)
        for n, prompt in enumerate(prompts):
            word = self.word_of(prompt)
            out[n, self.words.index(word) if word in self.words else -1] = 1.0
        return out


#: The planted VOC images of the open-vocabulary tests: (colours, widths, VOC class ids) of the
#: bands of 128x128 images. With FakeClip's default words the predictions are, per band:
#: "a": background, cat, dog (all right); "b": person, background, cow, background (the cat band
#: is named cow, the dog band background); "c": cat, dog (right).
OPEN_VOCAB_VOC = {
    "2007_000001": ([0, 1, 2], [48, 48, 32], [0, 8, 12]),
    "2007_000002": ([3, 4, 5, 0], [32, 32, 32, 32], [15, 0, 8, 12]),
    "2007_000003": ([1, 2], [64, 64], [8, 12]),
}


def open_vocab_voc(root: Path) -> Path:
    """A VOC layout with the :data:`OPEN_VOCAB_VOC` images."""
    samples = {i: flat_bands(128, c, w, v) for i, (c, w, v) in OPEN_VOCAB_VOC.items()}
    return make_voc(root, samples)
