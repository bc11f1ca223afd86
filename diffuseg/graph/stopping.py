"""Stopping rules for the recursive normalized cut: when is a candidate split accepted?

DiffCut accepts a split when its NCut is below a constant tau that must be tuned per backbone and
dataset. DWC (Ivanova et al., WACV 2026) determines the threshold automatically; its exact rule
is not public, so the automatic rules here are diffuseg's own. Every rule is pluggable:

* per-candidate rules are callables ``rule(candidate: SplitCandidate) -> bool`` handed to
  :func:`diffuseg.graph.ncut.recursive_ncut` as ``stop``;
* tree rules (:class:`TreeGap`) need the NCut values of the whole image before deciding: they
  explore a tree with a permissive rule, pick tau from it, and prune the tree at tau.
  :func:`cut_with_rule` runs either kind.

Registered rules (:data:`STOPPING_RULES`, :func:`make_stopping_rule`):

========== ============================================================================
"constant" :class:`ConstantTau` - NCut < tau (DiffCut's rule; needs a tuned tau).
"gap"      :class:`TreeGap` - tau at the widest gap of the image's NCut values (automatic;
           the DWC default).
"sweep"    :class:`SweepContrast` - the best NCut is an outlier of its own sweep:
           NCut < ratio * median(sweep).
"root"     :class:`RelativeToRoot` - NCut < factor * max(root NCut, floor) below the root.
"spectral" :class:`SpectralGap` - the relaxed NCut 1 - lambda_2 is small (lambda_2 >= value).
========== ============================================================================

Why "gap" is the default. Measured with ``python bench/bench_dwc.py --choose-defaults`` on planted
attention (32 x 32 tokens, query grids 32/16/8; 2 seeds x {two-level hierarchy of 2 groups x 3
regions with a strong (0.6) or weak (0.4) region contrast, 5 flat regions, 8 flat regions} x
noise {0.1, 0.2, 0.3} x walk length k in {1, 2, 4, 8} = 96 images per graph, no self-loops).
Counted: images whose segmentation equals a planted level exactly (ARI 1 with the regions, or
with the groups of a hierarchy)::

    rule                              reversible   plain   features
    gap, log (the default)                63         65        65
    gap, linear                           58         50        55
    root, factor 1.5, floor 0.05          64         67        55
    sweep, ratio 0.85                     49         40        50
    spectral, lambda_2 >= 0.5             50         45        51
    constant tau 0.3 / 0.5 / 0.7       45/49/50   46/45/44  52/51/50
    best constant per image (oracle)      64         67        59

(oracle: tau tuned per image on 0.05, 0.10, ..., 0.95; the feature graph's NCuts fall below that
grid, hence gap > oracle there.) The gap rule is within 1-2 images of the per-image oracle on the
walk graphs and the only rule that is good on all three graphs; no constant comes close, because
the best tau moves with k (for two lumped blocks the k-step NCut is exactly 1 - (1 - NCut_1)^k),
with the noise and with the graph. Nearly all images no rule recovers are at noise 0.3, where no
threshold gives ARI 1 (0.97-0.99: a few noisy tokens on the wrong side).

Known behaviour: the log gap is scale-free, so in a hierarchy it returns the level separated by
the largest *relative* jump; with the weak region contrast it returns the 2 groups where the
linear gap more often returns the 6 regions. Steer granularity with k (coarser) or the
"constant" rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from diffuseg.graph.ncut import (
    ConstantTau,
    CutResult,
    SplitCandidate,
    StoppingRule,
    build_hierarchy,
    diffcut_leaf_order,
    recursive_ncut,
)

# --------------------------------------------------------------------------------------------
# per-candidate rules
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepContrast:
    """Accept a split whose NCut stands out of its own threshold sweep.

    The sweep scores every threshold along the Fiedler vector (``candidate.sweep``). Inside a
    homogeneous region the NCut barely changes along it (a shallow bowl: best/median ~ 0.9-1);
    across a real boundary the best value is far below the typical one. Accept when
    ``ncut < ratio * median(admissible sweep values)``.

    Attributes:
        ratio: in (0, 1]; smaller is stricter.
    """

    ratio: float = 0.85

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")

    def __call__(self, candidate: SplitCandidate) -> bool:
        sweep = candidate.sweep[torch.isfinite(candidate.sweep)]
        if sweep.numel() == 0:
            return False
        return candidate.ncut < self.ratio * float(sweep.median())


@dataclass(frozen=True)
class RelativeToRoot:
    """Accept a split whose NCut is within ``factor`` of the image's cleanest cut.

    The root split is the cheapest cut of the image; below the root accept
    ``ncut < factor * max(root_ncut, floor)`` (``floor`` stops a perfectly separable root, NCut
    ~ 0, from rejecting everything). The root itself is accepted when ``ncut < root_tau``
    (default 1: better than a random split, whose random-walk NCut is ~1).
    """

    factor: float = 2.0
    floor: float = 0.05
    root_tau: float = 1.0

    def __post_init__(self) -> None:
        if self.factor <= 0 or self.floor < 0 or self.root_tau <= 0:
            raise ValueError("factor and root_tau must be > 0 and floor >= 0")

    def __call__(self, candidate: SplitCandidate) -> bool:
        if candidate.depth == 0:
            return candidate.ncut < self.root_tau
        return candidate.ncut < self.factor * max(candidate.root_ncut, self.floor)


@dataclass(frozen=True)
class SpectralGap:
    """Accept a split when the node's second eigenvalue is close to 1.

    ``lambda_2`` of D^-1/2 W D^-1/2 is 1 for a disconnected node and 1 - (the relaxed NCut)
    in general: accept when ``lambda_2 >= min_eigenvalue``. Needs the fast cut mode (the
    reference mode does not report eigenvalues).
    """

    min_eigenvalue: float = 0.5

    def __call__(self, candidate: SplitCandidate) -> bool:
        if math.isnan(candidate.eigenvalue):
            raise ValueError("the spectral rule needs eigenvalues: use the fast cut mode")
        return candidate.eigenvalue >= self.min_eigenvalue


# --------------------------------------------------------------------------------------------
# tree rules
# --------------------------------------------------------------------------------------------


@runtime_checkable
class TreeRule(Protocol):
    """A rule that picks tau from the whole explored tree (see :func:`cut_with_rule`)."""

    explore_depth: int | None

    def explore(self, candidate: SplitCandidate) -> bool:
        """Whether to keep exploring below this candidate."""
        ...

    def threshold(self, ncuts: torch.Tensor) -> float:
        """tau from the (M,) float64 NCut values of every explored node."""
        ...


@dataclass(frozen=True)
class TreeGap:
    """Dynamic threshold at the widest gap between the image's NCut values.

    1. Explore: recursively cut while ``ncut < explore_tau`` (default 1, "better than a random
       split"), down to ``explore_depth``; every explored node records the NCut of its best
       split, accepted or not.
    2. Sort those values; tau is the middle of the widest gap between consecutive values, gaps
       measured on log(max(ncut, floor)) (``space="log"``, scale-free: works for the random-walk
       graphs, whose NCuts live near 0.01..1, and for the sharpened feature graph, whose NCuts
       are orders of magnitude smaller) or on the values themselves (``space="linear"``).
    3. Prune the explored tree at tau: splits with NCut < tau whose ancestors were all
       accepted are kept (exactly what :class:`ConstantTau` (tau) would give, within the
       explored depth).

    Splits along real boundaries have NCuts far below splits of homogeneous regions within one
    image, whatever the scale; the widest gap falls between the two groups, or between two
    levels of a hierarchy (then a coarser level is returned). With a single value (one explored
    split) the rule accepts it when it is below ``explore_tau``.

    Attributes:
        explore_tau: exploration accepts splits with NCut below it.
        explore_depth: exploration depth limit (None: unlimited). Each level costs at most
            what the level above cost (a node of n tokens costs ~n^2), so deep exploration is
            cheap in arithmetic but not in Python overhead per node.
        space: "log" or "linear".
        floor: values are floored here before taking logs (NCuts of disconnected nodes are ~0).
    """

    explore_tau: float = 1.0
    explore_depth: int | None = 8
    space: str = "log"
    floor: float = 1e-4

    def __post_init__(self) -> None:
        if self.space not in ("log", "linear"):
            raise ValueError(f"space must be 'log' or 'linear', got {self.space!r}")
        if self.floor <= 0 or self.explore_tau <= 0:
            raise ValueError("floor and explore_tau must be > 0")

    def explore(self, candidate: SplitCandidate) -> bool:
        return candidate.ncut < self.explore_tau

    def threshold(self, ncuts: torch.Tensor) -> float:
        values = torch.sort(ncuts.double()[torch.isfinite(ncuts)]).values
        if values.numel() == 0:
            return 0.0
        if values.numel() == 1:
            return self.explore_tau
        x = values.clamp_min(self.floor).log() if self.space == "log" else values
        gaps = x[1:] - x[:-1]
        i = int(torch.argmax(gaps))
        mid = 0.5 * (x[i] + x[i + 1])
        return float(mid.exp() if self.space == "log" else mid)


# --------------------------------------------------------------------------------------------
# running a rule, pruning a tree
# --------------------------------------------------------------------------------------------


def prune_cut(cut: CutResult, tau: float) -> CutResult:
    """Cut an explored hierarchy at ``tau``: what :class:`ConstantTau` (tau) would have given.

    From the root down, a node is split when it was split in ``cut`` and its NCut < tau;
    otherwise it becomes a leaf. Nodes are renumbered in pre-order and leaves labelled in
    DiffCut's order, as :func:`recursive_ncut` does.

    Args:
        cut: the explored :class:`CutResult`.
        tau: threshold.
    Returns:
        A new :class:`CutResult` (labels on the same device).
    """
    old = cut.hierarchy.nodes
    keep: list[int] = []  # old ids of the kept nodes, in pre-order
    split: dict[int, bool] = {}
    stack = [0]
    while stack:
        node = stack.pop()
        keep.append(node)
        n = old[node]
        split[node] = bool(n.children) and n.ncut is not None and n.ncut < tau
        if split[node]:
            stack.extend(reversed(n.children))  # A side first
    new_id = {o: i for i, o in enumerate(keep)}
    children = [tuple(new_id[c] for c in old[o].children) if split[o] else () for o in keep]
    leaf_label = {node: k for k, node in enumerate(diffcut_leaf_order(children))}
    remap = torch.empty(max(max(n.leaves) for n in old) + 1, dtype=torch.int64)
    for o in keep:
        if not split[o]:
            remap[list(old[o].leaves)] = leaf_label[new_id[o]]
    hierarchy = build_hierarchy(
        parents=[None if old[o].parent is None else new_id[old[o].parent] for o in keep],
        children=children,
        depths=[old[o].depth for o in keep],
        sizes=[old[o].size for o in keep],
        ncuts=[old[o].ncut for o in keep],
        leaf_label=leaf_label,
    )
    labels = remap.to(cut.labels.device)[cut.labels]
    return CutResult(labels=labels, hierarchy=hierarchy)


@dataclass
class RuleCut:
    """A cut plus what the rule decided: ``tau`` is the threshold a tree rule chose (None for a
    per-candidate rule)."""

    cut: CutResult
    tau: float | None


def cut_with_rule(
    weights: torch.Tensor,
    rule: StoppingRule | TreeRule | float,
    *,
    mode: str = "fast",
    sweep: str = "exact",
    drop_zero_rows: bool = False,
    min_size: int = 1,
    max_depth: int | None = None,
    self_loops: bool = True,
    solver: str = "auto",
) -> RuleCut:
    """Recursive normalized cut with any rule: per-candidate rules go straight to
    :func:`recursive_ncut`; a :class:`TreeRule` explores (depth limited by both ``max_depth``
    and its ``explore_depth``), picks tau and prunes. Arguments as :func:`recursive_ncut`."""
    kwargs: dict[str, Any] = dict(mode=mode, sweep=sweep, drop_zero_rows=drop_zero_rows,
                                  min_size=min_size, self_loops=self_loops, solver=solver)
    if not isinstance(rule, TreeRule):
        return RuleCut(recursive_ncut(weights, rule, max_depth=max_depth, **kwargs), None)
    depths = [d for d in (max_depth, rule.explore_depth) if d is not None]
    explored = recursive_ncut(weights, rule.explore, max_depth=min(depths) if depths else None,
                              **kwargs)
    values = torch.tensor([n.ncut for n in explored.hierarchy.nodes if n.ncut is not None],
                          dtype=torch.float64)
    tau = rule.threshold(values)
    return RuleCut(prune_cut(explored, tau), tau)


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------

#: name -> factory(**params) of a stopping rule.
STOPPING_RULES: dict[str, Callable[..., StoppingRule | TreeRule]] = {
    "constant": ConstantTau,
    "gap": TreeGap,
    "sweep": SweepContrast,
    "root": RelativeToRoot,
    "spectral": SpectralGap,
}


def make_stopping_rule(name: str, **params: Any) -> StoppingRule | TreeRule:
    """Build a registered rule: ``make_stopping_rule("constant", tau=0.5)``.

    Raises:
        ValueError: unknown name, or parameters the rule does not take (or lacks).
    """
    try:
        factory = STOPPING_RULES[name]
    except KeyError:
        raise ValueError(
            f"unknown stopping rule {name!r}; available: {sorted(STOPPING_RULES)}"
        ) from None
    try:
        return factory(**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters {params} for stopping rule {name!r}: {exc}") from None


def rule_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Parameters given as a mapping or as ``("name=value", ...)`` strings (the CLI form), with
    numeric strings parsed. Returns a plain dict."""
    if params is None:
        return {}
    if isinstance(params, Mapping):
        return dict(params)
    out: dict[str, Any] = {}
    for item in params:
        if isinstance(item, str):
            if "=" not in item:
                raise ValueError(f"expected name=value, got {item!r}")
            key, raw = (s.strip() for s in item.split("=", 1))
            out[key] = _parse_number(raw)
        else:
            key, value = item
            out[str(key)] = value
    return out


def _parse_number(raw: str) -> Any:
    if raw.lower() in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            continue
    return raw


__all__ = [
    "STOPPING_RULES",
    "ConstantTau",
    "RelativeToRoot",
    "RuleCut",
    "SpectralGap",
    "SweepContrast",
    "TreeGap",
    "TreeRule",
    "cut_with_rule",
    "make_stopping_rule",
    "prune_cut",
    "rule_params",
]
