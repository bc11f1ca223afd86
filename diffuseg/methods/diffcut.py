"""DiffCut (Couairon et al., NeurIPS 2024): recursive normalized cut on diffusion features.

1. Affinity: L2-normalised token features of the UNet encoder's last self-attention block,
   cosine similarity, global min-max to [0, 1], power alpha (10).
2. Recursive two-way normalized cut (graph/ncut.py), accepting splits with NCut < tau.
3. Concept assignment: segment prototypes (mean normalised features), bilinear feature
   upsampling, per-pixel dot-product argmax at the output size.
4. Optional PAMR + 3x3 median filter (the paper's "with PAMR" numbers).

Per-backbone defaults (tau 0.5 on SSD-1B / Vega, 0.2 on SD 1.x) come from the backbone preset;
see diffuseg/backbones/registry.py. ``mode="reference"`` reproduces the official cut (see
graph/ncut.py for what differs and why).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from diffuseg.graph.affinity import cosine_affinity
from diffuseg.graph.eigen import SOLVERS
from diffuseg.graph.ncut import MODES, SWEEPS, CutResult, recursive_ncut
from diffuseg.methods import MethodSpec, register
from diffuseg.methods.assign import assign_concepts
from diffuseg.methods.common import finish, output_size_for, working_size
from diffuseg.methods.config import MethodConfig, setting
from diffuseg.types import Encoding, Segmentation


@dataclass(frozen=True)
class DiffCutConfig(MethodConfig):
    """DiffCut settings; defaults are the paper's SSD-1B values.

    Attributes:
        tau: accept a split when its NCut < tau (SSD-1B 0.5, SD 1.x 0.2).
        alpha: affinity exponent.
        mode: "fast" (our engine: Lanczos, prefix-sum sweeps) or "reference" (the official
            cut step by step: dense eigh, thresholds scored one by one, its zero-row quirk).
        sweep: "sampled" (default: DiffCut's 100 thresholds on [0.99 min v, 0.99 max v], so the
            leaves are the published method's) or "exact" (every threshold: ours, documented
            improvement); the reference mode always samples.
        drop_zero_rows: DiffCut's code's quirk (default, as published): below the root, tokens
            whose affinity row holds an exact zero (the least similar pair after min-max, and
            entries that underflow after the power) take no part in any cut and follow the B
            side down to a leaf. False cuts every token (ours); the reference mode always drops.
        self_loops: keep the affinity diagonal (the official code does).
        min_size: smallest segment in tokens.
        max_depth: depth limit of the recursion (None: unlimited).
        solver: Fiedler solver, "auto" | "lanczos" | "arpack" | "dense" (graph/eigen.py).
        refine: PAMR + median filter after concept assignment.
        refine_iterations, refine_dilations, median: PAMR iterations and dilations, median size.
        max_side: labels are computed (and refined) at the output size capped to this long side,
            then upsampled nearest; bounds the cost of PAMR on very large images.
    """

    tau: float = setting(0.5, gt=0)
    alpha: float = setting(10.0, gt=0)
    mode: str = setting("fast", choices=MODES)
    sweep: str = setting("sampled", choices=SWEEPS)
    drop_zero_rows: bool = True
    self_loops: bool = True
    min_size: int = setting(1, ge=1)
    max_depth: int | None = setting(None, ge=0)
    solver: str = setting("auto", choices=SOLVERS)
    refine: bool = True
    refine_iterations: int = setting(10, ge=1)
    refine_dilations: tuple[int, ...] = setting((1, 2, 4, 8), ge=1)
    median: int = setting(3, ge=1, odd=True)
    max_side: int | None = setting(1024, ge=1)


def diffcut_tokens(features: torch.Tensor, config: DiffCutConfig) -> CutResult:
    """Steps 1-2: the affinity of (C, h, w) features and its recursive cut.

    Returns:
        :class:`CutResult` whose ``labels`` are (h*w,) int64 token labels.
    """
    weights = cosine_affinity(features, alpha=config.alpha)
    return recursive_ncut(
        weights,
        config.tau,
        mode=config.mode,
        sweep=config.sweep,
        drop_zero_rows=config.drop_zero_rows,
        min_size=config.min_size,
        max_depth=config.max_depth,
        self_loops=config.self_loops,
        solver=config.solver,
    )


def run_diffcut(
    encoding: Encoding, config: DiffCutConfig, output_size: tuple[int, int] | None = None
) -> Segmentation:
    """Segment an Encoding's features with DiffCut.

    Args:
        encoding: needs ``features`` (C, h, w); ``image`` too when ``config.refine``.
        config: the settings.
        output_size: (H, W) of the labels; default the original image size.
    Returns:
        Segmentation with labels (H, W), the cut hierarchy and (h, w) token labels.
    Raises:
        ValueError: no features, 0 channels, an empty grid, NaN or inf values
            (:func:`diffuseg.graph.affinity.check_features`).

    Each token is divided by its largest absolute value first
    (:func:`diffuseg.graph.affinity.max_abs_scaled`): both the affinity and the concept
    assignment use L2-normalised tokens, which that leaves unchanged, but in float32 the raw L2
    norm of features x 1e37 overflows and of x 1e-30 underflows. So the result does not depend
    on the features' scale.
    """
    from diffuseg.graph.affinity import check_features, max_abs_scaled

    if encoding.features is None:
        raise ValueError("DiffCut needs Encoding.features (encode with features=True)")
    check_features(encoding.features)
    features = max_abs_scaled(encoding.features, dim=0).float()
    _, h, w = features.shape
    out = output_size_for(encoding, output_size)
    cut = diffcut_tokens(features, config)
    labels = assign_concepts(features, cut.labels, working_size(out, config.max_side))
    return finish(
        labels,
        encoding,
        out,
        config,
        "diffcut",
        hierarchy=cut.hierarchy,
        token_labels=cut.labels.reshape(h, w),
    )


register(
    MethodSpec(
        name="diffcut",
        config_cls=DiffCutConfig,
        run=run_diffcut,
        needs=frozenset({"features"}),
        summary="recursive normalized cut on UNet encoder features (Couairon et al., NeurIPS 2024)",
        default_backbone="ssd-1b",
        cuda_dtype="float16",  # DiffCut's UNet runs under fp16 autocast on CUDA
    )
)
