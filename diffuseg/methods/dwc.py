"""DWC (Ivanova et al., "Unsupervised Segmentation by Diffusing, Walking and Cutting", WACV 2026).

The paper has no public code; this is its first public implementation. What the paper
establishes, and what diffuseg chose where it is silent (METHODS.md section 4), step by step:

1. **Aggregate** the self-attention of every query grid onto the finest grid, as DiffSeg does
   (:func:`diffuseg.methods.diffseg.aggregate_attention`; weights proportional to resolution
   unless ``weights`` is given). Row q is a probability map over the N = h * w tokens.
2. **Walk.** The aggregated attention is the transition matrix P of a random walk between
   tokens (:func:`diffuseg.graph.walk.transition_matrix`: checked row-stochastic); the k-step
   walk P^k (:func:`~diffuseg.graph.walk.matrix_power_walk`, repeated squaring, rows kept
   stochastic) brings in multi-hop relations: larger k, coarser segments.
3. **Graph** to cut (``graph``):

   * "reversible" (default; ours where the paper is silent): W = (Pi P^k + P^k^T Pi) / 2 with
     pi the stationary distribution of P^k (power iteration, a teleport only if the chain is
     reducible). Its Shi-Malik NCut equals the random-walk NCut P(A -> B | A) + P(B -> A | B)
     of Meila & Shi *exactly* (graph/walk.py proves it), so the cut is the paper's random-walk
     normalized cut on the (non-reversible) attention chain.
   * "plain": W = (P^k + P^k^T) / 2 (tokens weighted equally).
   * "features": rows of P^k as token features, cosine similarity, min-max, power ``alpha``
     (DiffCut's recipe applied to where the walks go).
4. **Cut** recursively with the shared engine (:func:`diffuseg.graph.ncut.recursive_ncut`),
   stopped by a pluggable rule (graph/stopping.py). Default: "gap", an automatic per-image
   threshold (the widest gap in the image's NCut values), no tau to tune; "constant" with
   ``tau`` reproduces a DiffCut-style fixed threshold.
5. **Concept assignment** to the output resolution: prototype of a segment = mean of its
   tokens' L2-normalised rows of P^k; the (K, h, w) maps of cosine scores are upsampled
   bilinearly and each pixel takes the argmax (:func:`diffuseg.methods.assign.assign_concepts`,
   shared with DiffCut). Optional PAMR + median filter (``refine``, off by default).

Timesteps: the paper optionally averages attention over several timesteps. That is the
backbone's job (an Encoding holds one attention dict); DWC consumes whatever attention the
Encoding holds.

Defaults and the measurements behind them (planted attention, 96 images per setting, see
graph/stopping.py and ``python bench/bench_dwc.py --choose-defaults``):

* ``graph="reversible"``: the paper's random-walk NCut. The three graphs recover about as many
  planted images with the default rule (63 / 65 / 65 of 96); the reversible one is the principled
  one and needs no extra (N, N) x (N, N) product (the feature graph does).
* ``k=1``: with the default rule, exact recoveries 15 / 16 / 16 / 16 of 24 images for
  k = 1 / 2 / 4 / 8 on the reversible graph, and k = 8 lowers the mean ARI of flat partitions at
  the heaviest noise from 0.98 to 0.74 (walks leak across boundaries). Each doubling of k costs one
  (N, N) x (N, N) product, ~0.8 s at N = 4096 in float32 on 2 CPU cores (k = 8: 2.5 s, more than
  the rest of the method together): no measured gain for a real cost. Raise k to merge regions
  that the walk connects in a few hops (coarser segments; on a planted hierarchy k = 1..8 gives
  the 6 regions and k = 16, 32 the 2 groups, tests/methods/test_dwc.py).
* ``stopping="gap"``: an automatic per-image threshold, within 1-2 images of the per-image best
  constant (graph/stopping.py); ``stopping="constant"`` with ``tau`` for a fixed one.
* ``self_loops=False``: equal on planted attention (63 of 96 either way), whose diagonal is not
  special. Real self-attention puts much of a row on the query itself; with self-loops a token
  with P_ii = 0.5 can be cut off alone at a random-walk NCut of ~0.5 (the shattering NOTES.md
  measured for DiffCut's features).
* ``refine=False``, PAMR settings and ``max_side`` as DiffCut's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from diffuseg.graph.eigen import SOLVERS
from diffuseg.graph.ncut import MODES, SWEEPS, CutResult, StoppingRule
from diffuseg.graph.stopping import (
    STOPPING_RULES,
    ConstantTau,
    TreeRule,
    cut_with_rule,
    make_stopping_rule,
    rule_params,
)
from diffuseg.graph.walk import (
    GRAPHS,
    TELEPORT,
    matrix_power_walk,
    stationary_distribution,
    transition_matrix,
    walk_graph,
)
from diffuseg.methods import MethodSpec, register
from diffuseg.methods.assign import assign_concepts
from diffuseg.methods.common import finish, output_size_for, working_size
from diffuseg.methods.config import MethodConfig, setting
from diffuseg.types import Encoding, Segmentation


@dataclass(frozen=True)
class DWCConfig(MethodConfig):
    """DWC settings (the paper publishes no code; defaults are diffuseg's, chosen by measurement
    on planted attention - see the module docstring).

    Attributes:
        graph: "reversible" (random-walk NCut), "plain" or "features".
        k: walk length, a positive int (P^k); larger k merges regions the walk connects in a few
            hops, i.e. coarser segments. Powers of two cost log2(k) matrix products.
        alpha: exponent of the "features" graph (DiffCut's 10).
        stopping: a stopping rule name from :data:`diffuseg.graph.stopping.STOPPING_RULES`.
        stopping_params: the rule's parameters: a mapping, or "name=value" strings (the CLI
            form, ``-p stopping_params=ratio=0.8``); normalised to sorted (name, value) pairs.
        tau: the threshold of the "constant" rule.
        min_size: smallest segment in tokens.
        max_depth: recursion depth limit (None: unlimited).
        self_loops: keep the graph's diagonal (a walker staying put). False cuts the walk
            conditioned on moving.
        mode, solver: cut mode ("fast" | "reference") and Fiedler solver (see graph/ncut.py).
        sweep: threshold sweep of the fast mode, "exact" (every threshold; ours, the default:
            DWC has no official code) or "sampled" (DiffCut's 100 thresholds).
        teleport: restart probability for a reducible chain (graph/walk.py; unused otherwise).
        weights: aggregation weight per attention grid, finest first; None = by resolution.
        refine, refine_iterations, refine_dilations, median: PAMR + median filter, as DiffCut.
        max_side: labels are assigned (and refined) at the output size capped to this long side,
            then upsampled nearest.
    """

    graph: str = setting("reversible", choices=GRAPHS)
    k: int = setting(1, ge=1)
    alpha: float = setting(10.0, gt=0)
    stopping: str = setting("gap", choices=tuple(sorted(STOPPING_RULES)))
    stopping_params: tuple[tuple[str, Any], ...] = ()
    tau: float = setting(0.5, gt=0)
    min_size: int = setting(1, ge=1)
    max_depth: int | None = setting(None, ge=0)
    self_loops: bool = False
    mode: str = setting("fast", choices=MODES)
    sweep: str = setting("exact", choices=SWEEPS)
    solver: str = setting("auto", choices=SOLVERS)
    teleport: float = setting(TELEPORT, ge=0, lt=1)
    weights: tuple[float, ...] | None = setting(None, ge=0)
    refine: bool = False
    refine_iterations: int = setting(10, ge=1)
    refine_dilations: tuple[int, ...] = setting((1, 2, 4, 8), ge=1)
    median: int = setting(3, ge=1, odd=True)
    max_side: int | None = setting(1024, ge=1)

    def __post_init__(self) -> None:
        params = self.stopping_params
        if isinstance(params, Mapping) or (params and not _is_pairs(params)):
            params = rule_params(params)
        pairs = tuple(sorted((str(k), v) for k, v in dict(params).items()))
        object.__setattr__(self, "stopping_params", pairs)
        super().__post_init__()  # types and ranges of every field (methods/config.py)
        self.stopping_rule()  # fail now on bad rule parameters

    def stopping_rule(self) -> StoppingRule | TreeRule:
        """The configured rule object."""
        params = dict(self.stopping_params)
        if self.stopping == "constant":
            if "tau" in params:
                raise ValueError("give the constant rule's threshold as DWCConfig.tau")
            return ConstantTau(self.tau)
        return make_stopping_rule(self.stopping, **params)


def _is_pairs(params: Any) -> bool:
    return all(isinstance(p, tuple | list) and len(p) == 2 for p in params)


@dataclass
class DWCResult:
    """Everything :func:`dwc_walk_and_cut` computed.

    Attributes:
        cut: the :class:`CutResult` (token labels (N,), hierarchy).
        walk: (N, N) row-stochastic P^k (rows = where each token's k-step walk lands).
        grid: the token grid (h, w), N = h * w.
        tau: the threshold a tree rule chose (None for a per-candidate rule).
    """

    cut: CutResult
    walk: torch.Tensor
    grid: tuple[int, int]
    tau: float | None


def dwc_walk_and_cut(
    attention: Mapping[tuple[int, int], torch.Tensor] | torch.Tensor, config: DWCConfig
) -> DWCResult:
    """Steps 1-4: aggregate, walk, build the graph, cut.

    Args:
        attention: an ``Encoding.attention`` dict (query grid (h, w) -> (h*w, h, w)), or
            attention already aggregated to one grid, (N, h, w).
        config: the settings.
    Returns:
        :class:`DWCResult` on the attention's device.
    """
    if isinstance(attention, torch.Tensor):
        if attention.ndim != 3:
            raise ValueError("aggregated attention must be (N, h, w)")
        aggregated = attention
    else:
        from diffuseg.methods.diffseg import aggregate_attention

        if not attention:
            raise ValueError("DWC needs self-attention maps: encode with attention capture on")
        aggregated = aggregate_attention(attention, config.weights)
    _, h, w = aggregated.shape
    p = transition_matrix(aggregated)
    del aggregated
    walk = matrix_power_walk(p, config.k)
    del p
    pi = stationary_distribution(walk, teleport=config.teleport) if config.graph == "reversible" \
        else None
    weights = walk_graph(walk, config.graph, pi=pi, alpha=config.alpha)
    ruled = cut_with_rule(
        weights,
        config.stopping_rule(),
        mode=config.mode,
        sweep=config.sweep,
        min_size=config.min_size,
        max_depth=config.max_depth,
        self_loops=config.self_loops,
        solver=config.solver,
    )
    return DWCResult(cut=ruled.cut, walk=walk, grid=(h, w), tau=ruled.tau)


def dwc_tokens(
    attention: Mapping[tuple[int, int], torch.Tensor] | torch.Tensor, config: DWCConfig
) -> CutResult:
    """Token-level DWC: the recursive random-walk cut of the attention (steps 1-4).

    Returns:
        :class:`CutResult` whose ``labels`` are (h*w,) int64 token labels.
    """
    return dwc_walk_and_cut(attention, config).cut


def run_dwc(
    encoding: Encoding, config: DWCConfig | None = None, output_size: tuple[int, int] | None = None
) -> Segmentation:
    """Segment an Encoding's self-attention with DWC.

    Args:
        encoding: needs ``attention``; ``image`` too when ``config.refine``.
        config: the settings (default :class:`DWCConfig`).
        output_size: (H, W) of the labels; default the original image size.
    Returns:
        Segmentation with labels (H, W) int32, the cut hierarchy, (h, w) token labels; its config
        records ``tau_chosen`` when an automatic rule picked the threshold.
    """
    config = config or DWCConfig()
    if not encoding.attention:
        raise ValueError("DWC needs Encoding.attention (encode with attention capture on)")
    out = output_size_for(encoding, output_size)
    result = dwc_walk_and_cut(encoding.attention, config)
    h, w = result.grid
    n = h * w
    # rows of P^k as token features: channel c of token q is P^k[q, c] (a view, no copy)
    features = result.walk.T.reshape(n, h, w)
    labels = assign_concepts(features, result.cut.labels, working_size(out, config.max_side))
    seg = finish(
        labels,
        encoding,
        out,
        config,
        "dwc",
        hierarchy=result.cut.hierarchy,
        token_labels=result.cut.labels.reshape(h, w),
    )
    if result.tau is not None:
        seg.config["tau_chosen"] = result.tau
    return seg


register(
    MethodSpec(
        name="dwc",
        config_cls=DWCConfig,
        run=run_dwc,
        needs=frozenset({"attention"}),
        summary="random walks on self-attention, recursive random-walk normalized cut with an "
        "automatic threshold (Ivanova et al., WACV 2026)",
        default_backbone="sd14",
    )
)

__all__ = ["DWCConfig", "DWCResult", "dwc_tokens", "dwc_walk_and_cut", "run_dwc"]
