"""The open-vocabulary metric as DiffCut reports it: per-image Jaccard, averaged over images.

DiffCut's ``eval_diffcut_openvoc.py`` calls torchmetrics' ``JaccardIndex(task="multiclass",
num_classes=N)`` (macro average) once per image and averages those values over the images. The
macro average of one image is the mean IoU over the classes present in its ground truth or its
prediction (a class absent from both has no union and is left out). No matching: predictions are
class ids. That is not the dataset-level mIoU of the unsupervised protocol (one confusion matrix
over all images); :class:`OpenVocabScores` reports both.

Class names (with background where the dataset has one) come from ``eval/labelmaps.py``:
VOC 21, Pascal Context 60, COCO-Object 81.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from diffuseg.eval import labelmaps as lm

__all__ = ["OPEN_VOCAB_CLASSES", "OpenVocabScores", "image_jaccard"]

#: dataset name -> class names in class-id order (background first).
OPEN_VOCAB_CLASSES: dict[str, tuple[str, ...]] = {
    "voc": tuple(lm.VOC_CLASSES),
    "context-59": tuple(lm.CONTEXT59_CLASSES),
    "coco-object": ("background", *lm.COCO_THING_CLASSES),
}


def _confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int,
               ignore_index: int | None) -> np.ndarray:
    gt = np.asarray(gt).astype(np.int64).ravel()
    pred = np.asarray(pred).astype(np.int64).ravel()
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred differ in size: {gt.size} vs {pred.size}")
    keep = np.ones(gt.shape, dtype=bool) if ignore_index is None else gt != ignore_index
    gt, pred = gt[keep], pred[keep]
    if gt.size and (gt.min() < 0 or gt.max() >= num_classes):
        raise ValueError(f"ground-truth class ids outside 0..{num_classes - 1}")
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predicted class ids outside 0..{num_classes - 1}")
    return np.bincount(gt * num_classes + pred, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def _macro_iou(hist: np.ndarray) -> float:
    inter = np.diag(hist).astype(np.float64)
    union = hist.sum(0) + hist.sum(1) - inter
    seen = union > 0
    if not seen.any():
        return float("nan")
    return float((inter[seen] / union[seen]).mean())


def image_jaccard(gt: np.ndarray, pred: np.ndarray, num_classes: int,
                  ignore_index: int | None = 255) -> float:
    """Mean IoU of one image over the classes present in ``gt`` or ``pred``.

    Args:
        gt: (H, W) int class ids 0..num_classes-1, or ``ignore_index`` for pixels not scored.
        pred: (H, W) int predicted class ids 0..num_classes-1.
        num_classes: N.
        ignore_index: ground-truth value whose pixels are left out (None: none; DiffCut's code
            has none, its loaders map void to a class).
    Returns:
        float in [0, 1]; NaN if no pixel is scored.
    """
    return _macro_iou(_confusion(gt, pred, num_classes, ignore_index))


@dataclass
class OpenVocabScores:
    """Accumulates per-image Jaccard (DiffCut's number) and a dataset confusion matrix.

    Usage::

        scores = OpenVocabScores(num_classes=21)
        for gt, pred in pairs:
            scores.add(gt, pred)
        scores.miou             # mean of per-image Jaccard (images with no scored pixel skipped)
        scores.dataset_miou     # mIoU of the summed confusion matrix
    """

    num_classes: int
    ignore_index: int | None = 255
    per_image: list[float] = field(default_factory=list)
    hist: np.ndarray | None = None

    def add(self, gt: np.ndarray, pred: np.ndarray) -> float:
        """Score one image; returns its Jaccard (NaN if nothing scored)."""
        h = _confusion(gt, pred, self.num_classes, self.ignore_index)
        self.hist = h if self.hist is None else self.hist + h
        value = _macro_iou(h)
        self.per_image.append(value)
        return value

    @property
    def miou(self) -> float:
        """Per-image Jaccard averaged over the images that have scored pixels (NaN if none)."""
        vals = [v for v in self.per_image if not np.isnan(v)]
        return float(np.mean(vals)) if vals else float("nan")

    @property
    def dataset_miou(self) -> float:
        """Mean IoU over the classes seen in the summed confusion matrix."""
        return float("nan") if self.hist is None else _macro_iou(self.hist)

    def to_dict(self) -> dict[str, float | int]:
        return {
            "miou_per_image": self.miou,
            "miou_dataset": self.dataset_miou,
            "images": len(self.per_image),
        }
