"""DiffCut's official mask generation, re-implemented step by step for cost comparison.

What ``DiffCut.generate_masks`` (PaulCouairon/DiffCut, ``diffcut/recursive_normalized_cut.py``)
does to one image's features, operation for operation, written from reading it (no code copied),
so that ``bench_end_to_end.py`` can time *the official procedure* and not our own reference mode:

1. features (h*w, C) reshaped to (1, C, h, w), L2-normalised over channels; the affinity
   F^T F, global min-max, power alpha;
2. the recursion, one call per node, each on the whole (N, N) matrix: ``painting + mask`` and the
   outer product of the painting zero every pair of already explored tokens; the rows holding a
   zero are found with ``torch.where`` and Python sets and left out below the root; the kept
   block is gathered; D is a dense diagonal matrix; L_sym is formed with two dense (n, n) matrix
   products ``D^-1/2 (D - A) D^-1/2`` and diagonalised with ``eigh``; v = D^-1/2 u (a third
   product); 100 thresholds, each scored as y^T (D - A) y / y^T D y with dense products; the first
   smallest wins (Python ``min``, numpy ``argmin``); accepted splits append their (h, w) mask;
3. ``assemble_clusters``: masks summed with growing codes, ranks of the codes;
4. per cluster, masked average pooling of the normalised features (one einsum per cluster);
5. the normalised features upsampled bilinearly to the mask size (C, 128, 128), the (H*W, C) x
   (C, K) similarity, argmax.

The official code runs on CUDA in float32; this runs wherever the tensors are. It exists only in
bench/ (never imported by the package).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _masked_affinity(painting, affinity, mask):
    painting = painting + mask.unsqueeze(0)
    painting = (painting > 0).to(painting.dtype)
    flat = painting.reshape(1, -1)
    return affinity * (1 - flat.T @ flat), painting


def _bipartition(y, a, d):
    thresholds = torch.linspace(float(y.min() * 0.99), float(y.max() * 0.99), 100,
                                dtype=y.dtype, device=y.device)
    laplacian = d - a
    total = torch.sum(d)
    degrees = torch.diag(d)
    values, partitions = [], []
    for t in thresholds:
        x = (y > t).to(y.dtype)
        partitions.append(x)
        x = 2 * x - 1
        k = torch.sum(degrees * (x > 0)) / total
        b = k / (1 - k)
        z = (1 + x) - b * (1 - x)
        values.append(float((z @ laplacian @ z) / (z @ d @ z)))
    return partitions[int(np.argmin(values))], min(values)


def _recurse(affinity, tau, dims, painting, mask, masks, level):
    affinity, painting = _masked_affinity(painting, affinity, mask)
    n = affinity.shape[0]
    zero_rows = set(torch.unique(torch.where(affinity == 0)[0]).tolist())
    keep = sorted(set(range(n)) - zero_rows) if level > 0 else list(range(n))
    a = affinity[:, keep][keep, :]
    if a.shape[0] <= 1:
        return
    d = torch.diag(a.sum(dim=1))
    inv_sqrt = torch.diag(1 / torch.diag(d) ** 0.5)
    try:
        _, vectors = torch.linalg.eigh(inv_sqrt @ (d - a) @ inv_sqrt)
    except RuntimeError:
        return  # the official code crashes here; a bench must not
    v = inv_sqrt @ vectors[:, 1]
    v = v * torch.sign(v[torch.argmax(torch.abs(v))])
    part, ncut = _bipartition(v, a, d)
    full = torch.zeros(n, dtype=affinity.dtype, device=affinity.device)
    full[keep] = part
    bipartition = full.reshape(dims)
    if ncut < tau:
        masks.append(bipartition)
        _recurse(affinity, tau, dims, painting, 1 - bipartition, masks, level + 1)
        _recurse(affinity, tau, dims, painting, bipartition, masks, level + 1)


def generate_masks(features: torch.Tensor, tau: float = 0.5, alpha: float = 10.0,
                   mask_size: tuple[int, int] = (128, 128)) -> np.ndarray:
    """The official procedure on one image's (C, h, w) features: (1, 1, H, W) int labels."""
    c, h, w = features.shape
    feats = F.normalize(features.reshape(1, c, h, w).float(), dim=1)
    x = feats.reshape(c, h * w)
    x = F.normalize(x, p=2, dim=0)
    affinity = x.T @ x
    affinity = (affinity - affinity.min()) / (affinity.max() - affinity.min())
    affinity = affinity ** alpha
    masks: list[torch.Tensor] = []
    zeros = torch.zeros((h, w), dtype=affinity.dtype, device=affinity.device)
    _recurse(affinity, tau, (h, w), zeros, zeros, masks, 0)
    if not masks:
        masks.append(zeros)
    code = torch.zeros((h, w), device=affinity.device)
    step = 1.0
    for m in masks:
        code = code + step * m
        step = float(code.max()) + 1
    labels = torch.zeros((h, w), device=affinity.device)
    for k, value in enumerate(torch.unique(code)):
        labels[code == value] = k
    labels = labels[None, None]
    prototypes = torch.zeros(len(torch.unique(labels)), c, device=affinity.device)
    for k, value in enumerate(torch.unique(labels)):
        m = (labels == value).to(feats.dtype)
        pooled = m / (m.sum(dim=(-1, -2), keepdim=True) + 1e-8)
        prototypes[k] = torch.einsum("bchw,bqhw->bqc", feats, pooled)[0, 0]
    up = F.interpolate(feats, size=mask_size, mode="bilinear")
    scores = up.reshape(c, mask_size[0] * mask_size[1]).T @ prototypes.T
    return scores.argmax(dim=1).reshape(1, 1, *mask_size).cpu().numpy().astype(int)
