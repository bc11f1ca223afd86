"""The official evaluation's scoring, transcribed literally from the rules of the evaluation-parity
issue (facts of DiffCut's ``eval_diffcut.py`` / ``tools/utils.py``, DiffSeg's ``utils.py``), in
the official layout: class ids 0..n-1 with the background *last* and unlabelled pixels -1.

This is the tests' oracle, written straight from the rules and kept deliberately plain (no shared
code with ``diffuseg.eval.matching``, which works in our class order and maps).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def fast_hist(label_true: np.ndarray, label_pred: np.ndarray, n_class: int) -> np.ndarray:
    """Rule 1: rows the n_class classes (labels outside 0..n_class-1 left out), columns
    max(n_class, pred.max() + 1) over the raw prediction ids."""
    pred_n_class = max(n_class, int(label_pred.max()) + 1)
    mask = (label_true >= 0) & (label_true < n_class)
    hist = np.bincount(pred_n_class * label_true[mask] + label_pred[mask],
                       minlength=n_class * pred_n_class)
    return hist.reshape(n_class, pred_n_class)


def hungarian_matching(pred: np.ndarray, label: np.ndarray, n_class: int):
    """Rule 2 on one image: (tp, fp, fn, the column-reordered histogram, col_ind)."""
    hist = fast_hist(label.flatten(), pred.flatten(), n_class)
    row_ind, col_ind = linear_sum_assignment(hist, maximize=True)
    fn = np.sum(hist, 1) - hist[row_ind, col_ind]
    tp = hist[row_ind, col_ind]
    hist = hist[:, col_ind]
    fp = np.sum(hist, 0) - np.diag(hist)
    return tp, fp, fn, hist, col_ind


def background_merge(pred: np.ndarray, label: np.ndarray, n_class: int) -> np.ndarray:
    """Rule 3 before the final matching: ``label`` has the background as -1 (as the official
    loader gives it), n_class counts the background. Returns the merged prediction."""
    pred = pred.copy()
    _, _, _, hist, col_ind = hungarian_matching(pred, label, n_class - 1)
    assigned_gt_clusters = np.where(hist.max(axis=1) > 0)[0].tolist()
    assigned_pred_clusters = [col_ind[i] for i in assigned_gt_clusters]
    background_clusters = list(set(np.unique(pred)) - set(assigned_pred_clusters))
    bg_label = pred.max() + 1
    for bg_cls in background_clusters:
        pred[pred == bg_cls] = bg_label
    return pred


def official_counts(pred: np.ndarray, label: np.ndarray, n_class: int, background: bool):
    """One image's (tp, fp, fn) in the official layout. With ``background``, ``label`` holds the
    background as -1 (and no ignored pixel): merge, then label it n_class - 1 and match."""
    if background:
        pred = background_merge(pred, label, n_class)
        label = label.copy()
        label[label == -1] = n_class - 1
    tp, fp, fn, _, _ = hungarian_matching(pred, label, n_class)
    return tp, fp, fn
