"""The one recursive normalized-cut engine, shared by DiffCut, DWC and the classical baseline.

Given a symmetric non-negative affinity W over N tokens, split the token set in two by the
Fiedler vector (Shi & Malik 2000), score the split by

    NCut(A, B) = cut(A, B) / assoc(A, V) + cut(A, B) / assoc(B, V),

ask a stopping rule whether to accept it, and recurse into both sides. The leaves are the
segments; the tree of accepted splits is the hierarchy.

Two modes:

* ``"fast"`` (default): Lanczos Fiedler vectors (dense on GPU), and an *exact* sweep that scores
  every threshold along the sorted Fiedler vector at once with prefix sums
  (cut = volume - internal association), so the best split of the form {v > t} is found, not a
  sample of them.
* ``"reference"``: the official DiffCut behaviour, kept so that published numbers can be
  reproduced and the fast mode compared against it: dense ``eigh`` of L_sym, 100 thresholds
  linearly spaced on [0.99 min v, 0.99 max v] scored one by one, and, below the root, tokens whose
  affinity row holds an exact zero are left out of the eigenproblem and put on the B side (the
  official code's quirk; we ignore the diagonal in that test so that ``self_loops=False`` stays
  meaningful). Unlike the official code, leaves map to labels one to one (its label-code
  arithmetic overflows when a cut shatters into hundreds of leaves) and an eigensolver failure
  falls back instead of crashing.

Self-loops: with alpha = 10 the diagonal of a min-max cosine affinity is 1 while off-diagonal
entries are raised towards 0, so with noisy features a token's own weight dominates its degree and
isolated tokens look like cheap cuts: the recursion shatters into single tokens.
``self_loops=False`` zeroes the diagonal; planted partitions are then recovered up to much
heavier noise (see tests/graph/test_ncut.py). The official code keeps self-loops, so that is the
DiffCut default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from diffuseg.graph.eigen import fiedler_vector
from diffuseg.types import Hierarchy, HierarchyNode

MODES = ("fast", "reference")
REFERENCE_THRESHOLDS = 100


@dataclass(frozen=True)
class SplitCandidate:
    """The best bipartition found for one node, handed to a stopping rule.

    Attributes:
        ncut: its NCut value, in [0, 2].
        depth: depth of the node being split (root 0).
        size: number of tokens in the node.
        eigenvalue: second-largest eigenvalue of D^-1/2 W D^-1/2 on the node (1 - lambda_2).
        sweep: (T,) float64 NCut of every admissible threshold considered, in sweep order.
        root_ncut: the root's best NCut (equals ``ncut`` at the root).
        mask: (size,) bool, the proposed A side.
    """

    ncut: float
    depth: int
    size: int
    eigenvalue: float
    sweep: torch.Tensor
    root_ncut: float
    mask: torch.Tensor


StoppingRule = Callable[[SplitCandidate], bool]
"""Decides whether a candidate split is accepted (True) or the node becomes a leaf (False)."""


@dataclass(frozen=True)
class ConstantTau:
    """Accept a split when its NCut is strictly below ``tau`` (DiffCut's rule)."""

    tau: float

    def __call__(self, candidate: SplitCandidate) -> bool:
        return candidate.ncut < self.tau


@dataclass
class CutResult:
    """Output of :func:`recursive_ncut`.

    Attributes:
        labels: (N,) int64 leaf label per token, 0..K-1 in depth-first order (A side first).
        hierarchy: the tree of accepted splits; node 0 is the root.
    """

    labels: torch.Tensor
    hierarchy: Hierarchy

    @property
    def num_segments(self) -> int:
        return int(self.labels.max()) + 1 if self.labels.numel() else 0


def ncut_value(weights: torch.Tensor, mask: torch.Tensor) -> float:
    """NCut(A, B) of one bipartition, computed directly (the plain definition).

    Args:
        weights: (n, n) symmetric non-negative affinity.
        mask: (n,) bool, True for A.
    Returns:
        cut/assoc(A, V) + cut/assoc(B, V); inf if a side is empty or has zero volume.
    """
    w = weights.double()
    a = mask.bool()
    b = ~a
    cut = w[a][:, b].sum()
    vol_a = w[a].sum()
    vol_b = w[b].sum()
    if vol_a <= 0 or vol_b <= 0:
        return float("inf")
    return float(cut / vol_a + cut / vol_b)


def exact_sweep(
    weights: torch.Tensor, vector: torch.Tensor, min_size: int = 1
) -> tuple[torch.Tensor | None, float, torch.Tensor]:
    """Best split of the form A = {v > t} over *every* threshold t, by prefix sums.

    Sorting v in descending order, A is a prefix of the sorted tokens. With Wp the reordered
    affinity, assoc(A_m, A_m) is a running sum of 2 * (row m of tril(Wp)) - Wp[m, m], the volume a
    running sum of degrees, and cut = volume - assoc: O(n^2) for all n - 1 thresholds together.
    The running sums are float64: cut is a small difference of large sums.

    Args:
        weights: (n, n) symmetric non-negative affinity, n >= 2.
        vector: (n,) the Fiedler vector.
        min_size: smallest admissible side.
    Returns:
        mask: (n,) bool A side of the best split, or None when no threshold is admissible (all
            entries equal, or the node too small for ``min_size``).
        ncut: its NCut (inf when mask is None).
        sweep: (n - 1,) float64 NCut of every prefix (inf where not admissible).
    """
    order = torch.argsort(vector, descending=True, stable=True)
    wp = weights.index_select(0, order).index_select(1, order)
    size, value, sweep = _sorted_sweep(wp, vector[order], min_size)
    if size is None:
        return None, value, sweep
    mask = torch.zeros(weights.shape[0], dtype=torch.bool, device=weights.device)
    mask[order[:size]] = True
    return mask, value, sweep


def _sorted_sweep(
    wp: torch.Tensor, sorted_v: torch.Tensor, min_size: int
) -> tuple[int | None, float, torch.Tensor]:
    """:func:`exact_sweep` on an affinity sorted by descending v: (size of A, NCut, sweep)."""
    n = wp.shape[0]
    # Row sums in the matrix's dtype (sums of non-negative terms are accurate); the running sums
    # and their differences in float64.
    degrees = wp.sum(dim=1).double()
    lower = torch.tril(wp).sum(dim=1).double()
    internal = torch.cumsum(2.0 * lower - wp.diagonal().double(), dim=0)
    volume_a = torch.cumsum(degrees, dim=0)
    total = volume_a[-1]
    cut = (volume_a - internal).clamp_min(0.0)
    volume_b = total - volume_a
    sweep = (cut / volume_a + cut / volume_b)[:-1]
    sizes = torch.arange(1, n, device=wp.device)
    admissible = (
        (sorted_v[:-1] > sorted_v[1:])  # a threshold between two distinct values
        & (sizes >= min_size)
        & (n - sizes >= min_size)
        & (volume_a[:-1] > 0)
        & (volume_b[:-1] > 0)
    )
    sweep = torch.where(admissible, sweep, torch.full_like(sweep, float("inf")))
    if not bool(admissible.any()):
        return None, float("inf"), sweep
    best = int(torch.argmin(sweep))
    return best + 1, float(sweep[best]), sweep


def sampled_sweep(
    weights: torch.Tensor, vector: torch.Tensor, num: int = REFERENCE_THRESHOLDS
) -> tuple[torch.Tensor | None, float, torch.Tensor]:
    """The official DiffCut sweep: ``num`` thresholds linearly spaced on [0.99 min, 0.99 max].

    Each threshold is scored on its own, as the official code does (the generalized Rayleigh
    quotient y^T (D - W) y / y^T D y of Shi & Malik's indicator, which equals the NCut).
    Returns the same triple as :func:`exact_sweep`; the first threshold with the smallest value
    wins ties.
    """
    w = weights.double()
    degrees = w.sum(dim=1)
    laplacian = torch.diag(degrees) - w
    total = degrees.sum()
    v = vector.double()
    thresholds = torch.linspace(float(v.min()) * 0.99, float(v.max()) * 0.99, num,
                                dtype=torch.float64, device=w.device)
    values = []
    for t in thresholds:
        x = v > t
        k = degrees[x].sum() / total
        if k <= 0 or k >= 1:
            values.append(float("inf"))
            continue
        b = k / (1 - k)
        y = torch.where(x, torch.ones_like(v), -b * torch.ones_like(v))
        values.append(float((y @ laplacian @ y) / (y @ (degrees * y))))
    sweep = torch.tensor(values, dtype=torch.float64)
    best = int(torch.argmin(sweep))
    if not torch.isfinite(sweep[best]):
        return None, float("inf"), sweep
    return v > thresholds[best], float(sweep[best]), sweep


def reference_fiedler(weights: torch.Tensor) -> torch.Tensor:
    """The official code's Fiedler vector: dense ``eigh`` of D^-1/2 (D - W) D^-1/2, column 1."""
    degrees = weights.sum(dim=1)
    inv_sqrt = torch.diag(degrees.rsqrt())
    lsym = inv_sqrt @ (torch.diag(degrees) - weights) @ inv_sqrt
    try:
        _, vectors = torch.linalg.eigh(lsym)
        v = inv_sqrt @ vectors[:, 1]
    except torch.linalg.LinAlgError:  # the official code crashes here; fall back
        v, _ = fiedler_vector(weights, degrees, solver="dense")
    return v * torch.sign(v[torch.argmax(v.abs())])


def recursive_ncut(
    weights: torch.Tensor,
    stop: StoppingRule | float = 0.5,
    *,
    mode: str = "fast",
    min_size: int = 1,
    max_depth: int | None = None,
    self_loops: bool = True,
    solver: str = "auto",
) -> CutResult:
    """Recursive two-way normalized cut with a pluggable stopping rule.

    Args:
        weights: (N, N) symmetric non-negative float affinity, any device.
        stop: a :data:`StoppingRule`, or a float tau meaning ``ConstantTau(tau)``.
        mode: "fast" or "reference" (see the module docstring).
        min_size: smallest admissible segment in tokens (fast mode restricts the sweep; both modes
            make nodes smaller than 2 * min_size leaves).
        max_depth: nodes at this depth are leaves (None: unlimited).
        self_loops: False zeroes the diagonal of ``weights`` first.
        solver: Fiedler solver for the fast mode (see :func:`fiedler_vector`).
    Returns:
        :class:`CutResult` with per-token leaf labels and the hierarchy.
    """
    if mode not in MODES:
        raise ValueError(f"unknown cut mode {mode!r}; choose from {MODES}")
    if weights.ndim != 2 or weights.shape[0] != weights.shape[1]:
        raise ValueError(f"weights must be square (N, N), got {tuple(weights.shape)}")
    if not torch.is_floating_point(weights):
        raise ValueError("weights must be a floating-point tensor")
    if min_size < 1:
        raise ValueError("min_size must be >= 1")
    rule: StoppingRule = ConstantTau(float(stop)) if isinstance(stop, int | float) else stop
    w = weights if self_loops else weights.clone().fill_diagonal_(0)
    n_total = w.shape[0]
    device = w.device

    has_zero = None
    if mode == "reference":
        off_diagonal_zero = w == 0
        off_diagonal_zero.fill_diagonal_(False)
        has_zero = off_diagonal_zero.any(dim=1)

    labels = torch.full((n_total,), -1, dtype=torch.int64, device=device)
    parents: list[int | None] = []
    children: list[list[int]] = []
    depths: list[int] = []
    sizes: list[int] = []
    ncuts: list[float | None] = []
    leaf_label: dict[int, int] = {}
    root_ncut: float | None = None

    # Depth-first, A side before B side; node ids in pre-order (root 0).
    # Fast mode hands each child its block of the parent's sorted affinity (a prefix or suffix
    # of the Fiedler order), so no node gathers from the full matrix.
    stack: list[tuple[torch.Tensor, torch.Tensor | None, int, int | None]] = [
        (torch.arange(n_total, device=device), w, 0, None)
    ]
    while stack:
        idx, sub, depth, parent = stack.pop()
        node = len(parents)
        parents.append(parent)
        children.append([])
        depths.append(depth)
        sizes.append(int(idx.numel()))
        if parent is not None:
            children[parent].append(node)

        split = children_blocks = None
        too_small = idx.numel() < max(2, 2 * min_size)
        if not too_small and (max_depth is None or depth < max_depth):
            if mode == "fast":
                split, children_blocks = _split_fast(sub, depth, min_size, solver, root_ncut)
            else:
                split = _split_reference(w, idx, depth, has_zero, root_ncut)
        ncuts.append(None if split is None else split.ncut)
        if split is not None and root_ncut is None:
            root_ncut = split.ncut
        if split is not None and rule(split):
            if children_blocks is None:  # reference mode: children gather from w themselves
                stack.append((idx[~split.mask], None, depth + 1, node))
                stack.append((idx[split.mask], None, depth + 1, node))
            else:  # fast mode: children in Fiedler order, with their blocks of the sorted matrix
                order_a, order_b, block_a, block_b = children_blocks
                stack.append((idx[order_b], block_b, depth + 1, node))
                stack.append((idx[order_a], block_a, depth + 1, node))
        else:
            leaf_label[node] = len(leaf_label)
            labels[idx] = leaf_label[node]

    leaves: list[tuple[int, ...]] = [()] * len(parents)
    for node in range(len(parents) - 1, -1, -1):  # children have larger ids than parents
        if node in leaf_label:
            leaves[node] = (leaf_label[node],)
        else:
            leaves[node] = tuple(sorted(leaves[children[node][0]] + leaves[children[node][1]]))
    hierarchy = Hierarchy(
        [
            HierarchyNode(
                id=i,
                parent=parents[i],
                children=tuple(children[i]),
                depth=depths[i],
                size=sizes[i],
                ncut=ncuts[i],
                leaves=leaves[i],
            )
            for i in range(len(parents))
        ]
    )
    return CutResult(labels=labels, hierarchy=hierarchy)


def _split_fast(sub, depth, min_size, solver, root_ncut):
    """Best bipartition of a node whose affinity block is ``sub``: (candidate, child blocks)."""
    degrees = sub.sum(dim=1)
    vector, eigenvalue = fiedler_vector(sub, degrees, solver=solver)
    order = torch.argsort(vector, descending=True, stable=True)
    wp = sub.index_select(0, order).index_select(1, order)
    size, ncut, sweep = _sorted_sweep(wp, vector[order], min_size)
    if size is None:
        return None, None
    mask = torch.zeros(sub.shape[0], dtype=torch.bool, device=sub.device)
    mask[order[:size]] = True
    candidate = SplitCandidate(
        ncut=ncut,
        depth=depth,
        size=int(sub.shape[0]),
        eigenvalue=eigenvalue,
        sweep=sweep,
        root_ncut=ncut if root_ncut is None else root_ncut,
        mask=mask,
    )
    # Children: the A side is the first ``size`` tokens in Fiedler order, B the rest.
    return candidate, (order[:size], order[size:], wp[:size, :size], wp[size:, size:])


def _split_reference(w, idx, depth, has_zero, root_ncut) -> SplitCandidate | None:
    keep = torch.ones(idx.numel(), dtype=torch.bool, device=w.device)
    if depth > 0:
        keep = ~has_zero[idx]
    kept = idx[keep]
    if kept.numel() <= 1:
        return None
    sub = w[kept][:, kept]
    vector = reference_fiedler(sub)
    mask_kept, ncut, sweep = sampled_sweep(sub, vector)
    if mask_kept is None:
        return None
    # Tokens left out of the eigenproblem go to the B side, as in the official code.
    mask = torch.zeros(idx.numel(), dtype=torch.bool, device=w.device)
    mask[torch.nonzero(keep).squeeze(1)[mask_kept]] = True
    return SplitCandidate(
        ncut=ncut,
        depth=depth,
        size=int(idx.numel()),
        eigenvalue=float("nan"),
        sweep=sweep,
        root_ncut=ncut if root_ncut is None else root_ncut,
        mask=mask,
    )
