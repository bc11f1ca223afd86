"""Affinity matrices built from token features (shared by DiffCut and DWC's feature graph)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_affinity(features: torch.Tensor, alpha: float = 10.0) -> torch.Tensor:
    """DiffCut's affinity: min-max normalised cosine similarity raised to the power alpha.

    Args:
        features: (C, h, w) feature map or (N, C) token features, float, any device.
        alpha: exponent (DiffCut: 10); larger values sharpen the graph.
    Returns:
        (N, N) float32 symmetric affinity in [0, 1], N = h * w; its minimum is exactly 0 and
        its maximum 1 (unless all similarities are equal, then all ones).
    """
    if features.ndim == 3:
        tokens = features.flatten(1).T
    elif features.ndim == 2:
        tokens = features
    else:
        raise ValueError(f"features must be (C, h, w) or (N, C), got {tuple(features.shape)}")
    if alpha <= 0:
        raise ValueError("alpha must be positive")
    tokens = F.normalize(tokens.float(), dim=1)
    sim = tokens @ tokens.T
    lo, hi = sim.min(), sim.max()
    if hi - lo <= 0:
        return torch.ones_like(sim)
    sim = (sim - lo) / (hi - lo)
    return sim.pow_(alpha)
