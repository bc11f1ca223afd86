"""Scoring unsupervised segmentations: match segments to classes, accumulate, report.

Per-image Hungarian matching is the papers' protocol, and we score exactly as their evaluation
code does: DiffCut's ``eval_diffcut.py`` with ``tools/utils.py`` (whose ``_fast_hist`` and
``hungarian_matching`` DiffSeg's ``utils.py`` shares verbatim, both adapted from PiCIE). Per
image, in the *official layout*:

1. **Histogram** (:func:`official_histogram`): rows are the ``n`` classes (pixels labelled outside
   ``0..n-1`` are left out), columns ``max(n, pred.max() + 1)`` indexed by the raw prediction ids:
   ids absent from the image are empty columns, and with fewer segments than classes the matrix
   is padded with empty columns up to ``n``. ``pred.max()`` is taken over every pixel, ignored
   ones included.
2. **Assignment** (:func:`official_match`): ``scipy.optimize.linear_sum_assignment(hist,
   maximize=True)`` on that whole matrix, so every class row gets a column (maybe an empty one);
   TP = the matched cell, FN = row sum - TP, FP = the matched column's sum - TP. Which of several
   optimal assignments comes back depends on the matrix's layout (an absent class matched to a
   leftover segment counts its pixels as FP; matched to an empty column, nothing): that is why the
   raw ids, the padding and the class order are reproduced and not just "a" Hungarian matching.
3. **Background rule** (:func:`merge_background`; VOC, Pascal Context, COCO-Object): the
   background is the *last* class of the official layout. Steps 1-2 over the ``n - 1`` foreground
   classes (background pixels left out); the classes whose row has a pixel in a matched column
   keep their matched segments; every other prediction id present in the image becomes one new
   id, ``pred.max() + 1``; then the final matching (1-2) over all ``n`` classes.

Our label maps keep our own class ids (background 0 in our loaders, ``ignore_index`` for
unlabelled pixels); :func:`official_layout` maps them to the official order (foreground classes
in order, background last, ignored pixels -1) and counts come back in our order. The runner puts
refinement (PAMR) between steps 3 and the final matching, as DiffCut's evaluation does
(eval/runner.py).

Dataset-level matching (:func:`dataset_scores`), the STEGO / PiCIE convention, is the other
protocol: one assignment over the (classes x clusters) histogram accumulated over the whole
dataset. It only means something when a cluster id means the same thing in every image (a fixed
number of clusters with global identity, e.g. k-means over the dataset); the per-image segment
ids of DiffSeg / DiffCut / DWC carry no such identity, so per-image Hungarian is their protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


def official_layout(gt: np.ndarray, num_classes: int, ignore_index: int | None = 255,
                    background: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Our class ids -> the official evaluation's.

    Args:
        gt: (H, W) int class ids in 0..num_classes-1, or ``ignore_index``.
        num_classes: number of classes, background included.
        ignore_index: value of unlabelled pixels (None: there are none).
        background: our id of the background class, or None (no background rule).
    Returns:
        gt: (H*W,) int64 official ids: foreground classes in our order, the background last
            (``num_classes - 1``), ignored pixels -1.
        ours: (num_classes,) int64, ``ours[j]`` is our class id of official class j.
    Raises:
        ValueError: a label outside 0..num_classes-1 that is not ``ignore_index``.
    """
    flat = np.asarray(gt).reshape(-1).astype(np.int64)
    ignored = flat == ignore_index if ignore_index is not None else np.zeros(flat.shape, bool)
    valid = flat[~ignored]
    if valid.size and (valid.min() < 0 or valid.max() >= num_classes):
        raise ValueError(f"gt holds class ids outside 0..{num_classes - 1}")
    ours = np.arange(num_classes, dtype=np.int64)
    if background is not None:
        if not 0 <= background < num_classes:
            raise ValueError(f"background class {background} is not in 0..{num_classes - 1}")
        ours = np.concatenate([ours[ours != background], [background]])
    official = np.empty(num_classes, dtype=np.int64)
    official[ours] = np.arange(num_classes)
    out = np.full(flat.shape, -1, dtype=np.int64)
    out[~ignored] = official[valid]
    return out, ours


def _as_prediction(pred: np.ndarray, size: int) -> np.ndarray:
    flat = np.asarray(pred).reshape(-1)
    if flat.size != size:
        raise ValueError(f"gt and pred differ in size: {size} vs {flat.size} pixels")
    if flat.size and not np.issubdtype(flat.dtype, np.integer):
        raise ValueError(f"pred must hold integer segment ids, got {flat.dtype}")
    flat = flat.astype(np.int64)
    if flat.size and flat.min() < 0:
        raise ValueError("pred holds negative segment ids")
    return flat


def official_histogram(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Step 1: the (num_classes, max(num_classes, pred.max() + 1)) int64 histogram.

    Args:
        gt: official class ids (any shape); values outside 0..num_classes-1 are left out.
        pred: raw segment ids >= 0, same number of pixels.
        num_classes: the rows.
    """
    gt = np.asarray(gt).reshape(-1).astype(np.int64)
    pred = _as_prediction(pred, gt.size)
    columns = max(num_classes, int(pred.max()) + 1 if pred.size else 0)
    keep = (gt >= 0) & (gt < num_classes)
    flat = np.bincount(columns * gt[keep] + pred[keep], minlength=num_classes * columns)
    return flat.reshape(num_classes, columns)


def official_match(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Step 2 on an official histogram: (tp, fp, fn, column matched to each class), each
    (num_classes,) int64."""
    rows, cols = linear_sum_assignment(hist, maximize=True)
    # with at least as many columns as rows every class row is matched, rows in order
    tp = hist[rows, cols]
    fn = hist.sum(axis=1) - tp
    fp = hist[:, cols].sum(axis=0) - tp
    return tp.astype(np.int64), fp.astype(np.int64), fn.astype(np.int64), cols.astype(np.int64)


def merge_background(gt: np.ndarray, pred: np.ndarray, num_classes: int,
                     ignore_index: int | None = 255, background: int = 0) -> np.ndarray:
    """Step 3, the many-to-one background rule: the segments not matched to a present foreground
    class become one segment, id ``pred.max() + 1``.

    Args:
        gt: (H, W) our class ids (``background`` one of them; ``ignore_index`` left out).
        pred: (H, W) raw segment ids >= 0.
        num_classes: number of classes, background included.
        ignore_index, background: as :func:`official_layout`.
    Returns:
        (H, W) int64 prediction, matched ids kept, every other id replaced by the new one (the
        same ids as ``pred`` when every segment is matched).
    """
    pred = np.asarray(pred)
    off, _ = official_layout(gt, num_classes, ignore_index, background)
    fg = num_classes - 1
    off[off == fg] = -1  # the background takes no part in the first matching
    flat = _as_prediction(pred, off.size)
    hist = official_histogram(off, flat, fg)
    cols = official_match(hist)[3]
    present = hist[:, cols].max(axis=1) > 0  # classes with a pixel in a matched column
    merged = flat.copy()
    if flat.size:
        leftover = np.setdiff1d(np.unique(flat), cols[present])
        merged[np.isin(flat, leftover)] = int(flat.max()) + 1
    return merged.reshape(pred.shape)


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


def official_scores(gt: np.ndarray, pred: np.ndarray, num_classes: int,
                    ignore_index: int | None = 255, background: int | None = None) -> Scores:
    """The final matching of one image (steps 1-2 over all classes, the background last):
    TP / FP / FN per class in our class order. The background rule's merge
    (:func:`merge_background`) must already have been applied to ``pred``."""
    off, ours = official_layout(gt, num_classes, ignore_index, background)
    tp, fp, fn, _ = official_match(official_histogram(off, pred, num_classes))
    out = Scores.zeros(num_classes)
    out.tp[ours], out.fp[ours], out.fn[ours] = tp, fp, fn
    return out


def image_scores(gt: np.ndarray, pred: np.ndarray, num_classes: int,
                 ignore_index: int | None = 255, background: int | None = None) -> Scores:
    """TP / FP / FN of one image as the official evaluation counts them: the background rule
    first when ``background`` (our background class id) is given, then the final matching.

    Args:
        gt: (H, W) class ids in 0..num_classes-1, or ``ignore_index``.
        pred: (H, W) segment ids >= 0, raw (the ids decide how ties break; see the module
            docstring).
    """
    if background is not None:
        pred = merge_background(gt, pred, num_classes, ignore_index, background)
    return official_scores(gt, pred, num_classes, ignore_index, background)


def cluster_histogram(gt: np.ndarray, pred: np.ndarray, num_classes: int, num_clusters: int,
                      ignore_index: int | None = 255) -> np.ndarray:
    """(num_classes, num_clusters) int64 histogram of one image for dataset-level matching.

    Raises ValueError if ``pred`` holds a cluster id >= ``num_clusters`` (dataset-level matching
    needs a fixed number of clusters shared by all images).
    """
    off, _ = official_layout(gt, num_classes, ignore_index)
    flat = _as_prediction(pred, off.size)
    if flat.size and int(flat.max()) >= num_clusters:
        raise ValueError(
            f"prediction has cluster id {int(flat.max())} but dataset-level matching was set "
            f"up for {num_clusters} clusters (ids 0..{num_clusters - 1})"
        )
    hist = official_histogram(off, flat, num_classes)
    out = np.zeros((num_classes, num_clusters), dtype=np.int64)
    k = min(num_clusters, hist.shape[1])
    out[:, :k] = hist[:, :k]
    return out


def dataset_scores(hist: np.ndarray) -> Scores:
    """Dataset-level matching (STEGO / PiCIE): one Hungarian assignment over the accumulated
    (num_classes, num_clusters) histogram, TP / FP / FN from it."""
    hist = np.asarray(hist, dtype=np.int64)
    if hist.shape[1] < hist.shape[0]:  # as in the per-image histogram: pad to a column a class
        hist = np.pad(hist, ((0, 0), (0, hist.shape[0] - hist.shape[1])))
    tp, fp, fn, _ = official_match(hist)
    return Scores(tp, fp, fn)
