"""Naming segments by class: diffuseg's one-pass classification against DiffCut's per-segment loop.

DiffCut's ``associate_label`` names one segment at a time: it resizes that segment's full-size
mask to CLIP's grid (``F.interpolate``, nearest-exact), pools, runs the head and the text
classifier, and writes the class into the label map. diffuseg reads the label at each grid
cell's centre once (the same cells), pools every segment with one matrix product, and runs the
head and the classifier once for all of them. Both sides use the same ConvNeXt-L-sized head
(1536 -> 1536 -> 768) and a 60-class text classifier; the script checks that they name every
segment alike, and prints their times (one thread) and the ratio.

    .venv/bin/python bench/bench_naming.py [--quick]
"""

from __future__ import annotations

import argparse

import common  # noqa: F401  (one thread, before numpy/torch)
import numpy as np
import torch
import torch.nn.functional as F
from common import timed

from diffuseg.labels.clip import TextClassifier, classify_segments
from diffuseg.labels.clip_model import ClipConfig, ClipModel

#: ConvNeXt-L's last width and DiffCut's embedding size, with a token trunk and text tower.
CFG = ClipConfig(embed_dim=768, depths=(1, 1, 1, 1), dims=(8, 16, 32, 1536), norm_eps=1e-6,
                 proj="mlp", proj_bias=False, image_size=320, context_length=8, vocab_size=64,
                 width=8, heads=1, layers=1)


def regions(size: int, k: int, seed: int) -> np.ndarray:
    """(size, size) labels 0..k-1: the nearest of k random sites (Voronoi cells), all present."""
    rng = np.random.default_rng(seed)
    sites = rng.uniform(0, size, size=(k, 2))
    yy, xx = np.mgrid[0:size, 0:size]
    d = (yy[..., None] - sites[:, 0]) ** 2 + (xx[..., None] - sites[:, 1]) ** 2
    lab = d.argmin(-1)
    _, lab = np.unique(lab, return_inverse=True)
    return lab.reshape(size, size)


def diffcut_loop(model: ClipModel, features: torch.Tensor, labels: np.ndarray,
                 classifier: TextClassifier) -> list[int]:
    """DiffCut's ``associate_label``: one segment at a time (its MaskPooling, head, argmax)."""
    lab = torch.from_numpy(labels)
    out = []
    emb = classifier.embeddings
    for i in torch.unique(lab):
        mask = (lab == i).to(torch.float32)[None, None]
        mask = F.interpolate(mask, size=features.shape[-2:], mode="nearest-exact")
        mask = (mask > 0).to(torch.float32)
        pooled = torch.einsum("chw,bqhw->bqc", features, mask / (mask.sum((-1, -2),
                                                                          keepdim=True) + 1e-8))
        x = F.normalize(model.head(pooled.reshape(1, -1)), dim=-1)
        sims = x @ emb.t()
        per_class = torch.stack([sims[:, classifier.class_of == c].max(-1).values
                                 for c in range(classifier.num_classes)], -1)
        out.append(int(per_class.argmax()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small case")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = ClipModel(CFG).eval()
    g = torch.Generator().manual_seed(1)
    emb = F.normalize(torch.randn(60, 768, generator=g), dim=-1)
    classifier = TextClassifier(names=tuple(f"class {c}" for c in range(60)), embeddings=emb,
                                class_of=torch.arange(60))
    cases = [(512, 20)] if args.quick else [(1024, 20), (1024, 60), (1024, 150)]
    print("one thread; features (1536, 32, 32), head 1536 -> 1536 -> 768, 60 classes")
    print(f"{'labels':>9} {'K':>4} {'DiffCut loop ms':>16} {'diffuseg ms':>12} {'ratio':>6} "
          f"{'same classes':>13}")
    for size, k in cases:
        labels = regions(size, k, seed=k)
        features = torch.randn(1536, 32, 32, generator=g)
        t_ref, ref = timed(lambda f=features, lab=labels: diffcut_loop(model, f, lab, classifier),
                           repeats=3)
        t_ours, ours = timed(lambda f=features, lab=labels: classify_segments(
            f, lab, classifier, model.head, merge=False), repeats=3)
        ours_classes = [classifier.names.index(n) for n in ours[1]]
        print(f"{size:>4}x{size:<4} {k:>4} {t_ref * 1e3:>16.1f} {t_ours * 1e3:>12.1f} "
              f"{t_ref / t_ours:>5.1f}x {str(ours_classes == ref):>13}")


if __name__ == "__main__":
    main()
