"""Evaluation datasets read from their standard folder layouts (METHODS.md section 6).

Nothing is ever downloaded: each loader reads a ``root`` folder laid out as the dataset's own
release (or the field's preparation scripts) leaves it, and fails with one ``ValueError`` that
names the expected layout when it is not there.

Every dataset gives ``(image_id, image, label)``: image (H, W, 3) uint8 RGB, label (H, W) int64
class ids in 0..num_classes-1 or ``ignore_index`` (255) for pixels not scored.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from diffuseg.eval import labelmaps as lm

#: What reading one damaged file can raise: PIL's UnidentifiedImageError and truncated data are
#: OSErrors, some decoders raise SyntaxError / EOFError, oversized images DecompressionBombError.
READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class SampleError(ValueError):
    """One sample of a dataset cannot be read (a damaged image or label file, or the two of
    different sizes). The evaluation records it as a failed image and goes on.

    Attributes:
        image_id: the sample's image id.
        path: the file that could not be read (None when the pair disagrees).
        cause: what went wrong, one line.
    """

    def __init__(self, image_id: str, path: Path | None, cause: str) -> None:
        self.image_id, self.path, self.cause = image_id, path, cause
        where = f" ({path})" if path is not None else ""
        super().__init__(f"image {image_id!r}{where}: {cause}")


def describe_error(exc: BaseException) -> str:
    """One line for an exception: its type and message (whitespace folded)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class SegDataset:
    """A list of (image_id, image path, label path) and the label map of a dataset.

    Attributes:
        name: registry name (``coco-stuff-27``, ...).
        num_classes: number of scored classes (background included when there is one).
        ignore_index: label value of pixels not scored (255).
        has_background: class 0 is a background class (scored with the many-to-one rule).
        class_names: one name per class id.
        layout: the expected folder layout, shown in errors.
    """

    name = ""
    num_classes = 0
    ignore_index = lm.IGNORE
    has_background = False
    class_names: tuple[str, ...] = ()
    layout = ""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            self._fail(f"{self.root} is not a folder")
        self.items: list[tuple[str, Path, Path]] = self._list()
        if not self.items:
            self._fail(f"no images found under {self.root}")
        self._lut = self._table()

    # -- to override ---------------------------------------------------------------------------
    def _list(self) -> list[tuple[str, Path, Path]]:
        raise NotImplementedError

    def _table(self) -> np.ndarray:
        return lm.lookup_table(self.name)

    # -- shared --------------------------------------------------------------------------------
    def _fail(self, reason: str) -> None:
        raise ValueError(
            f"{self.name}: {reason}. Expected under --root:\n{self.layout}"
        )

    def _from_list(self, list_file: str, image_tpl: str, label_tpl: str) -> list:
        path = self.root / list_file
        if not path.is_file():
            self._fail(f"missing image list {path}")
        ids = [line.strip().split()[0] for line in path.read_text().splitlines() if line.strip()]
        items = []
        for i in ids:
            img, lab = self.root / image_tpl.format(id=i), self.root / label_tpl.format(id=i)
            if not img.is_file() or not lab.is_file():
                self._fail(f"image or label of {i!r} listed in {list_file} is missing "
                           f"({img if not img.is_file() else lab})")
            items.append((i, img, lab))
        return items

    def __len__(self) -> int:
        return len(self.items)

    def image_ids(self) -> list[str]:
        return [i for i, _, _ in self.items]

    def read_label(self, path: Path) -> np.ndarray:
        """Raw label PNG (palette indices, not colours) -> (H, W) int64 class ids."""
        with Image.open(path) as im:
            raw = np.asarray(im)
        if raw.ndim != 2:
            raise ValueError(f"{path}: expected a single-channel label PNG, got {raw.shape}")
        if raw.dtype != np.uint8:
            if raw.min() < 0 or raw.max() > 255:
                raise ValueError(f"{path}: label values outside 0..255")
            raw = raw.astype(np.uint8)
        return self._lut[raw]

    def __getitem__(self, index: int) -> tuple[str, np.ndarray, np.ndarray]:
        """``(image_id, image, label)``; raises :class:`SampleError` (naming the image id, the
        file and the cause) when the image or label file is damaged or the two differ in
        size."""
        image_id, img_path, lab_path = self.items[index]
        try:
            with Image.open(img_path) as im:
                image = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except READ_ERRORS as exc:
            raise SampleError(image_id, img_path, describe_error(exc)) from exc
        try:
            label = self.read_label(lab_path)
        except READ_ERRORS as exc:
            raise SampleError(image_id, lab_path, describe_error(exc)) from exc
        if label.shape != image.shape[:2]:
            raise SampleError(image_id, None, f"image {image.shape[:2]} and label "
                                              f"{label.shape} differ in size")
        return image_id, image, label

    def describe(self) -> dict:
        return {"name": self.name, "root": str(self.root), "num_images": len(self),
                "num_classes": self.num_classes, "has_background": self.has_background}


_COCO_LAYOUT = (
    "  curated/val2017/Coco164kFull_Stuff_Coarse_7.txt   (the 2,175 curated image ids)\n"
    "  images/val2017/<id>.jpg\n"
    "  annotations/val2017/<id>.png   (stuffthingmaps: fine ids 0..181, 255 unlabeled)"
)


class CocoStuff27(SegDataset):
    """COCO-Stuff-27: the curated 2,175 val2017 images, 182 fine -> 27 coarse, 255 ignored."""

    name = "coco-stuff-27"
    num_classes = 27
    class_names = lm.COCO_STUFF27_CLASSES
    layout = _COCO_LAYOUT
    list_file = "curated/val2017/Coco164kFull_Stuff_Coarse_7.txt"

    def _list(self):
        return self._from_list(self.list_file, "images/val2017/{id}.jpg",
                               "annotations/val2017/{id}.png")


class CocoObject(CocoStuff27):
    """COCO-Object: the same 2,175 images, 80 things + background (stuff and 255 -> 0)."""

    name = "coco-object"
    num_classes = 81
    has_background = True
    class_names = ("background", *lm.COCO_THING_CLASSES)


class Cityscapes27(SegDataset):
    """Cityscapes-27: val (500 images), gtFine labelIds 7..33 -> 0..26, all else ignored."""

    name = "cityscapes-27"
    num_classes = 27
    class_names = lm.CITYSCAPES27_CLASSES
    layout = (
        "  leftImg8bit/val/<city>/<name>_leftImg8bit.png\n"
        "  gtFine/val/<city>/<name>_gtFine_labelIds.png"
    )

    def _list(self):
        img_dir = self.root / "leftImg8bit" / "val"
        if not img_dir.is_dir():
            self._fail(f"missing folder {img_dir}")
        items = []
        for img in sorted(img_dir.glob("*/*_leftImg8bit.png")):
            stem = img.name[: -len("_leftImg8bit.png")]
            lab = self.root / "gtFine" / "val" / img.parent.name / f"{stem}_gtFine_labelIds.png"
            if not lab.is_file():
                self._fail(f"missing label {lab}")
            items.append((stem, img, lab))
        return items


class PascalVOC(SegDataset):
    """Pascal VOC 2012 val (1,449): 20 classes + background, void (255) -> background."""

    name = "voc"
    num_classes = 21
    has_background = True
    class_names = lm.VOC_CLASSES
    layout = (
        "  ImageSets/Segmentation/val.txt\n"
        "  JPEGImages/<id>.jpg\n"
        "  SegmentationClass/<id>.png   (palette PNG, 255 void)"
    )

    def _list(self):
        return self._from_list("ImageSets/Segmentation/val.txt", "JPEGImages/{id}.jpg",
                               "SegmentationClass/{id}.png")


class PascalContext59(SegDataset):
    """Pascal Context-59 val (5,105): 59 classes + background (0)."""

    name = "context-59"
    num_classes = 60
    has_background = True
    class_names = lm.CONTEXT59_CLASSES
    layout = (
        "  ImageSets/SegmentationContext/val.txt\n"
        "  JPEGImages/<id>.jpg\n"
        "  SegmentationClassContext/<id>.png   (0 background, 1..59)"
    )

    def _list(self):
        return self._from_list("ImageSets/SegmentationContext/val.txt", "JPEGImages/{id}.jpg",
                               "SegmentationClassContext/{id}.png")


class ADE20K150(SegDataset):
    """ADE20K-150 val (2,000): 0 ignored, 1..150 -> 0..149.

    Args:
        diffcut_compat: score as DiffCut's code does (raw 0..149 as classes, 150 dropped).
    """

    name = "ade20k-150"
    num_classes = 150
    class_names = lm.ADE20K150_CLASSES
    layout = (
        "  images/validation/<id>.jpg\n"
        "  annotations/validation/<id>.png   (0 other, 1..150)"
    )

    def __init__(self, root: str | Path, diffcut_compat: bool = False) -> None:
        self.diffcut_compat = bool(diffcut_compat)
        super().__init__(root)

    def _table(self):
        return lm.ade20k150_table(diffcut_compat=self.diffcut_compat)

    def _list(self):
        img_dir = self.root / "images" / "validation"
        if not img_dir.is_dir():
            self._fail(f"missing folder {img_dir}")
        items = []
        for img in sorted(img_dir.glob("*.jpg")):
            lab = self.root / "annotations" / "validation" / f"{img.stem}.png"
            if not lab.is_file():
                self._fail(f"missing label {lab}")
            items.append((img.stem, img, lab))
        return items

    def describe(self) -> dict:
        return {**super().describe(), "diffcut_compat": self.diffcut_compat}


DATASETS: dict[str, type[SegDataset]] = {
    cls.name: cls
    for cls in (CocoStuff27, CocoObject, Cityscapes27, PascalVOC, PascalContext59, ADE20K150)
}


def get_dataset(name: str, root: str | Path, **kw) -> SegDataset:
    """A dataset by registry name (:data:`DATASETS`), read from ``root``.

    Raises:
        ValueError: unknown name, or ``root`` not in the expected layout (the message shows it).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    return DATASETS[name](root, **kw)
