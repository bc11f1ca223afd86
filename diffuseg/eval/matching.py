"""Scoring unsupervised segmentations: match segments to classes, accumulate, report.

Per-image Hungarian matching (the papers' protocol, METHODS.md §6): per image, the confusion
histogram of ground-truth class x predicted segment, a one-to-one assignment maximising overlap
(``scipy.optimize.linear_sum_assignment``), then TP / FP / FN per class accumulated over the
dataset. A pixel of class c in segment s is a TP of c if s was assigned to c; otherwise it is an
FN of c, and an FP of the class s was assigned to (if any): unmatched segments count against the
classes they overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


def confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int,
              ignore_index: int | None = 255) -> np.ndarray:
    """Histogram of ground-truth class x predicted segment.

    Args:
        gt: (H, W) int class ids in 0..num_classes-1, or ``ignore_index``.
        pred: (H, W) int segment ids >= 0 (any number of segments).
        num_classes: number of classes.
        ignore_index: pixels with this gt value are skipped (None: none are).
    Returns:
        (num_classes, num_segments) int64 pixel counts, num_segments = pred.max() + 1.
    """
    gt = np.asarray(gt).reshape(-1).astype(np.int64)
    pred = np.asarray(pred).reshape(-1).astype(np.int64)
    if gt.shape != pred.shape:
        raise ValueError(f"gt and pred differ in size: {gt.shape} vs {pred.shape}")
    valid = gt != ignore_index if ignore_index is not None else np.ones_like(gt, dtype=bool)
    gt, pred = gt[valid], pred[valid]
    if gt.size and (gt.min() < 0 or gt.max() >= num_classes):
        raise ValueError(f"gt holds class ids outside 0..{num_classes - 1}")
    if pred.size and pred.min() < 0:
        raise ValueError("pred holds negative segment ids")
    num_segments = int(pred.max()) + 1 if pred.size else 1
    flat = np.bincount(gt * num_segments + pred, minlength=num_classes * num_segments)
    return flat.reshape(num_classes, num_segments)


def hungarian_assignment(hist: np.ndarray) -> np.ndarray:
    """One-to-one segment -> class assignment maximising the matched pixels.

    Args:
        hist: (num_classes, num_segments) confusion counts.
    Returns:
        (num_segments,) int64 class of each segment, -1 for unassigned segments.
    """
    rows, cols = linear_sum_assignment(hist, maximize=True)
    assign = np.full(hist.shape[1], -1, dtype=np.int64)
    assign[cols] = rows
    return assign


def counts_from_assignment(hist: np.ndarray, assign: np.ndarray) -> tuple[np.ndarray, ...]:
    """TP, FP, FN per class (each (num_classes,) int64) of a segment -> class assignment."""
    num_classes = hist.shape[0]
    tp = np.zeros(num_classes, dtype=np.int64)
    fp = np.zeros(num_classes, dtype=np.int64)
    per_class = hist.sum(axis=1)
    for seg, cls in enumerate(assign):
        if cls < 0:
            continue
        tp[cls] += hist[cls, seg]
        fp[cls] += hist[:, seg].sum() - hist[cls, seg]
    fn = per_class - tp
    return tp, fp, fn


@dataclass
class Scores:
    """Accumulated TP / FP / FN per class; ``miou`` and ``pixel_accuracy`` derive from them."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray

    @classmethod
    def zeros(cls, num_classes: int) -> Scores:
        z = np.zeros(num_classes, dtype=np.int64)
        return cls(z.copy(), z.copy(), z.copy())

    def add(self, other: Scores) -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn

    @property
    def iou(self) -> np.ndarray:
        """(num_classes,) float IoU per class, nan for classes never seen nor predicted."""
        denom = (self.tp + self.fp + self.fn).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(denom > 0, self.tp / denom, np.nan)

    @property
    def miou(self) -> float:
        """Mean IoU over classes (nan-mean), in [0, 1]."""
        iou = self.iou
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")

    @property
    def pixel_accuracy(self) -> float:
        """Matched pixels over labelled pixels, in [0, 1]."""
        total = int((self.tp + self.fn).sum())
        return float(self.tp.sum() / total) if total else float("nan")


def hungarian_scores(gt: np.ndarray, pred: np.ndarray, num_classes: int,
                     ignore_index: int | None = 255) -> Scores:
    """Per-image Hungarian matching of one image: its TP / FP / FN per class."""
    hist = confusion(gt, pred, num_classes, ignore_index)
    return Scores(*counts_from_assignment(hist, hungarian_assignment(hist)))
