"""Scoring unsupervised segmentations: match segments to classes, accumulate, report.

Per-image Hungarian matching (the papers' protocol, METHODS.md §6): per image, the confusion
histogram of ground-truth class x predicted segment, a one-to-one assignment maximising overlap
(``scipy.optimize.linear_sum_assignment``), then TP / FP / FN per class accumulated over the
dataset. A pixel of class c in segment s is a TP of c if s was assigned to c; otherwise it is an
FN of c, and an FP of the class s was assigned to (if any): unmatched segments count against the
classes they overlap.

Two further rules (METHODS.md section 6):
- Many-to-one background (:func:`background_assignment`), for datasets with a background class
  (VOC, Pascal Context, COCO-Object): Hungarian between the *present* foreground classes and the
  segments first; every segment not assigned to a present foreground class is merged into one
  background segment; then the final one-to-one assignment over all classes on the merged
  histogram. This is DiffCut's evaluation code's rule (``eval_segmentation_diffcut.py``).
- Dataset-level matching (:func:`dataset_scores`), the STEGO / PiCIE convention: one assignment
  over the (classes x clusters) histogram accumulated over the whole dataset. It only means
  something when a cluster id means the same thing in every image (a fixed number of clusters
  with global identity, e.g. k-means over the dataset); the per-image segment ids of DiffSeg /
  DiffCut / DWC carry no such identity, so per-image Hungarian is their protocol.
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

    @classmethod
    def from_dict(cls, d: dict) -> Scores:
        """Inverse of :meth:`to_dict` (lists of ints ``tp``, ``fp``, ``fn``)."""
        return cls(*(np.asarray(d[k], dtype=np.int64) for k in ("tp", "fp", "fn")))

    def to_dict(self) -> dict[str, list[int]]:
        """JSON-serialisable counts: {"tp": [...], "fp": [...], "fn": [...]}."""
        return {"tp": self.tp.tolist(), "fp": self.fp.tolist(), "fn": self.fn.tolist()}

    def class_iou(self, names: list[str] | tuple[str, ...]) -> dict[str, float | None]:
        """{class name: IoU in [0, 1]}, None for classes never seen nor predicted."""
        iou = self.iou
        return {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou, strict=True)}

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


def background_assignment(hist: np.ndarray, background: int = 0) -> np.ndarray:
    """Segment -> class assignment with the many-to-one background rule.

    1. Hungarian between the foreground classes present in the image (rows != ``background``
       with pixels) and all segments; background pixels take no part.
    2. Every segment not assigned to a present foreground class is merged into one segment.
    3. Final one-to-one Hungarian over all classes on the merged histogram; all merged segments
       share the class their union got.

    Args:
        hist: (num_classes, num_segments) confusion counts of one image.
        background: row of the background class.
    Returns:
        (num_segments,) int64 class of each segment, -1 for unassigned segments.
    """
    hist = np.asarray(hist, dtype=np.int64)
    num_classes, num_segments = hist.shape
    fg = [c for c in range(num_classes) if c != background and hist[c].sum() > 0]
    keep: list[int] = []
    if fg:
        rows, cols = linear_sum_assignment(hist[fg], maximize=True)
        keep = sorted(int(c) for c in cols)
    kept = set(keep)
    merged = [s for s in range(num_segments) if s not in kept]
    columns = [hist[:, s] for s in keep]
    if merged:
        columns.append(hist[:, merged].sum(axis=1))
    final = hungarian_assignment(np.stack(columns, axis=1))
    assign = np.full(num_segments, -1, dtype=np.int64)
    for j, s in enumerate(keep):
        assign[s] = final[j]
    if merged:
        assign[merged] = final[len(keep)]
    return assign


def image_scores(gt: np.ndarray, pred: np.ndarray, num_classes: int,
                 ignore_index: int | None = 255, background: int | None = None) -> Scores:
    """TP / FP / FN of one image: per-image Hungarian, with the many-to-one background rule when
    ``background`` (the background class id) is given."""
    hist = confusion(gt, pred, num_classes, ignore_index)
    assign = hungarian_assignment(hist) if background is None else background_assignment(
        hist, background)
    return Scores(*counts_from_assignment(hist, assign))


def cluster_histogram(gt: np.ndarray, pred: np.ndarray, num_classes: int, num_clusters: int,
                      ignore_index: int | None = 255) -> np.ndarray:
    """(num_classes, num_clusters) int64 histogram of one image for dataset-level matching.

    Raises ValueError if ``pred`` holds a cluster id >= ``num_clusters`` (dataset-level matching
    needs a fixed number of clusters shared by all images).
    """
    hist = confusion(gt, pred, num_classes, ignore_index)
    if hist.shape[1] > num_clusters:
        raise ValueError(
            f"prediction has cluster id {hist.shape[1] - 1} but dataset-level matching was set "
            f"up for {num_clusters} clusters (ids 0..{num_clusters - 1})"
        )
    out = np.zeros((num_classes, num_clusters), dtype=np.int64)
    out[:, : hist.shape[1]] = hist
    return out


def dataset_scores(hist: np.ndarray) -> Scores:
    """Dataset-level matching (STEGO / PiCIE): one Hungarian assignment over the accumulated
    (num_classes, num_clusters) histogram, TP / FP / FN from it."""
    hist = np.asarray(hist, dtype=np.int64)
    return Scores(*counts_from_assignment(hist, hungarian_assignment(hist)))
