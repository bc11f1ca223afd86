"""The one recursive normalized-cut engine, shared by DiffCut, DWC and the classical baseline.

Given a symmetric non-negative affinity W over N tokens, split the token set in two by the
Fiedler vector (Shi & Malik 2000), score the split by

    NCut(A, B) = cut(A, B) / assoc(A, V) + cut(A, B) / assoc(B, V),

ask a stopping rule whether to accept it, and recurse into both sides. The leaves are the
segments; the tree of accepted splits is the hierarchy.

The fast mode runs one depth of the recursion at a time (:func:`split_level`): the nodes of a
depth are grouped by size into padded batches, each batch's Fiedler vectors come from one solver
call and its thresholds from one batched sweep, and only the chosen sizes and NCut values reach
the host, once per batch; children get views into their parent's sorted block. Launches and host
syncs therefore grow with the depth of the tree, not with its number of splits, and nothing but
that decision leaves the device.

Two things decide a split, and they are separate settings:

* the **eigensolver** (``solver``, graph/eigen.py): "auto" solves nodes below 64 tokens densely
  and larger ones with the torch Lanczos on accelerators, with ARPACK on the CPU (measured
  faster there); "lanczos", "arpack" and "dense" force one;
* the **threshold sweep** (``sweep``), both scored at once with prefix sums of the affinity
  sorted along the Fiedler vector (cut = volume - internal association):

  - ``"sampled"``: DiffCut's rule, 100 thresholds linearly spaced on [0.99 min v, 0.99 max v];
    the first threshold with the smallest NCut wins, so the split is the official one;
  - ``"exact"``: every threshold along the sorted vector, so the best split of the form
    {v > t} is found, not a sample of them (ours: fewer, cleaner cuts on some graphs).

Two modes:

* ``"fast"`` (default): the level-batched engine with the solver and sweep above; one-sided
  thresholds are skipped.
* ``"reference"``: the official DiffCut code step by step, kept for bit-level comparison: dense
  ``eigh`` of L_sym, the 100 sampled thresholds scored one by one as generalized Rayleigh
  quotients, and, below the root, tokens whose affinity row holds an exact zero are left out of
  the eigenproblem and put on the B side (the official code's quirk; we ignore the diagonal in
  that test so that ``self_loops=False`` stays meaningful). A threshold that leaves one side
  empty scores NaN there, and the official ``min()`` over the list then returns NaN when such a
  threshold comes first (an all-positive Fiedler vector, as on nearly disconnected graphs), so
  the node is a leaf; the reference sweep reproduces that. Unlike the official code, leaves map
  to labels one to one (its label-code arithmetic overflows when a cut shatters into hundreds of
  leaves) and an eigensolver failure falls back instead of crashing.

DiffCut's zero-row quirk is a setting of its own (``drop_zero_rows``; always on in the reference
mode): the fast mode reproduces it by leaving those tokens out of every cut below the root and
carrying them down the B side, so that DiffCut's default (fast solver, sampled sweep, quirk)
gives the reference mode's leaves token for token (tests/graph/test_ncut.py, and the real ARC2017
features in tests/methods/test_diffcut.py), except where the spectrum is nearly degenerate and
the solvers legitimately return different Fiedler vectors.

Leaves are labelled in DiffCut's order (:func:`diffcut_leaf_order`), not depth-first: the label
ids are the columns of the evaluation's confusion histogram, and Hungarian ties break by them.

Self-loops: with alpha = 10 the diagonal of a min-max cosine affinity is 1 while off-diagonal
entries are raised towards 0, so with noisy features a token's own weight dominates its degree and
isolated tokens look like cheap cuts: the recursion shatters into single tokens.
``self_loops=False`` zeroes the diagonal; planted partitions are then recovered up to much
heavier noise (see tests/graph/test_ncut.py). The official code keeps self-loops, so that is the
DiffCut default.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from diffuseg.graph.eigen import fiedler_batch, fiedler_vector, fix_sign, solver_kind
from diffuseg.types import Hierarchy, HierarchyNode

MODES = ("fast", "reference")
SWEEPS = ("sampled", "exact")
REFERENCE_THRESHOLDS = 100
#: DiffCut's thresholds span [SAMPLED_SPAN * min v, SAMPLED_SPAN * max v].
SAMPLED_SPAN = 0.99


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
    weights: torch.Tensor, vector: torch.Tensor, min_size: int = 1, sweep: str = "exact"
) -> tuple[torch.Tensor | None, float, torch.Tensor]:
    """Best split of the form A = {v > t} of one graph, every threshold scored by prefix sums
    (:func:`_sweep_sorted`, the engine's own sweep on a batch of one).

    Args:
        weights: (n, n) symmetric non-negative affinity, n >= 2.
        vector: (n,) the Fiedler vector.
        min_size: smallest admissible side.
        sweep: "exact" (every threshold) or "sampled" (DiffCut's 100 thresholds, scored from
            the same prefix sums).
    Returns:
        mask: (n,) bool A side of the best split, or None when no threshold is admissible (all
            entries equal, or the node too small for ``min_size``).
        ncut: its NCut (inf when mask is None).
        sweep: float64 NCut of every threshold considered, inf where not admissible: (n - 1,)
            prefixes for "exact", (100,) thresholds in ascending order for "sampled".
    """
    order = torch.argsort(vector, descending=True, stable=True)
    wp = weights.index_select(0, order).index_select(1, order)
    counts = torch.tensor([weights.shape[0]], device=weights.device)
    size, value, values = _sweep_sorted(wp[None], vector[order][None], counts, min_size, sweep)
    if not bool(torch.isfinite(value[0])):
        return None, float("inf"), values[0]
    mask = torch.zeros(weights.shape[0], dtype=torch.bool, device=weights.device)
    mask[order[: int(size[0])]] = True
    return mask, float(value[0]), values[0]


def sampled_thresholds(vector: torch.Tensor, num: int = REFERENCE_THRESHOLDS) -> torch.Tensor:
    """DiffCut's thresholds: (num,) in the vector's dtype, linearly spaced on
    [0.99 min v, 0.99 max v], computed in that dtype as its code does (``torch.linspace`` of
    ``y.min() * 0.99`` and ``y.max() * 0.99``), so that ``v > t`` compares alike."""
    low, high = vector.min() * SAMPLED_SPAN, vector.max() * SAMPLED_SPAN
    return torch.linspace(float(low), float(high), num, dtype=vector.dtype, device=vector.device)


def sampled_sweep(
    weights: torch.Tensor, vector: torch.Tensor, num: int = REFERENCE_THRESHOLDS
) -> tuple[torch.Tensor | None, float, torch.Tensor]:
    """The official DiffCut sweep: ``num`` thresholds linearly spaced on [0.99 min, 0.99 max].

    Each threshold is scored on its own, as the official code does (the generalized Rayleigh
    quotient y^T (D - W) y / y^T D y of Shi & Malik's indicator, which equals the NCut). A
    threshold with one side empty scores NaN, as there; the best value is Python's ``min`` over
    the list and the split ``numpy.argmin``'s, so a NaN first in the list gives no split (and a
    NaN later makes argmin pick it: a one-sided split, also no split here).
    Returns the same triple as :func:`exact_sweep` (the sweep with its NaNs).
    """
    w = weights.double()
    degrees = w.sum(dim=1)
    laplacian = torch.diag(degrees) - w
    total = degrees.sum()
    thresholds = sampled_thresholds(vector, num)
    values = []
    for t in thresholds:
        x = vector > t
        k = degrees[x].sum() / total
        if k <= 0 or k >= 1:
            values.append(float("nan"))
            continue
        b = k / (1 - k)
        y = torch.where(x, 1.0, -b).to(torch.float64)
        values.append(float((y @ laplacian @ y) / (y @ (degrees * y))))
    sweep = torch.tensor(values, dtype=torch.float64)
    best_value = min(values)  # Python's min: a NaN first in the list wins
    best = int(np.argmin(np.asarray(values)))  # numpy's argmin: the first NaN wins
    if math.isnan(best_value) or math.isnan(values[best]):
        return None, float("inf"), sweep
    return vector > thresholds[best], float(best_value), sweep


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
    return fix_sign(v)


def diffcut_leaf_order(children: list[tuple[int, ...]]) -> list[int]:
    """The leaves of a cut tree in DiffCut's label order.

    DiffCut's code (``assemble_clusters``) gives every token the sum, over the accepted splits in
    the order they were made (pre-order, A side explored first), of a weight larger than every
    code so far when the token lies on that split's A side; labels are the ranks of the distinct
    codes. The weights grow faster than any sum of earlier ones, so a code compares like a binary
    number whose bit k says "on the A side of split k": that is what we sort by. Label ids matter
    to evaluation: Hungarian ties break by the order of the histogram's columns.

    Args:
        children: per node, in pre-order with A children first (node 0 the root): its
            (A child, B child), or () for a leaf.
    Returns:
        The leaf node ids; position = label.
    """
    code = [0] * len(children)
    split = 0
    for node, kids in enumerate(children):  # pre-order: a parent's code is set before its kids'
        if kids:
            a, b = kids
            code[a] = code[node] | (1 << split)
            code[b] = code[node]
            split += 1
    return sorted((n for n, kids in enumerate(children) if not kids), key=code.__getitem__)


def build_hierarchy(parents: list[int | None], children: list[tuple[int, ...]],
                    depths: list[int], sizes: list[int], ncuts: list[float | None],
                    leaf_label: dict[int, int]) -> Hierarchy:
    """A :class:`Hierarchy` from per-node lists (pre-order, A first) and the leaves' labels."""
    leaves: list[tuple[int, ...]] = [()] * len(parents)
    for node in range(len(parents) - 1, -1, -1):  # children have larger ids than parents
        if children[node]:
            a, b = children[node]
            leaves[node] = tuple(sorted(leaves[a] + leaves[b]))
        else:
            leaves[node] = (leaf_label[node],)
    return Hierarchy([
        HierarchyNode(id=i, parent=parents[i], children=tuple(children[i]), depth=depths[i],
                      size=sizes[i], ncut=ncuts[i], leaves=leaves[i])
        for i in range(len(parents))
    ])


def recursive_ncut(
    weights: torch.Tensor,
    stop: StoppingRule | float = 0.5,
    *,
    mode: str = "fast",
    sweep: str = "exact",
    drop_zero_rows: bool = False,
    min_size: int = 1,
    max_depth: int | None = None,
    self_loops: bool = True,
    solver: str = "auto",
) -> CutResult:
    """Recursive two-way normalized cut with a pluggable stopping rule.

    The recursion runs one depth at a time: every node of a depth is solved in one batched call
    (:func:`split_level`), so the launches and host syncs per image grow with the depth of the
    tree, not with its number of splits. Which splits are accepted does not depend on that order:
    the result is the depth-first recursion's.

    Args:
        weights: (N, N) symmetric non-negative float affinity, any device.
        stop: a :data:`StoppingRule`, or a float tau meaning ``ConstantTau(tau)``. Rules are
            asked depth by depth (A side before B side within a parent).
        mode: "fast" or "reference" (see the module docstring).
        sweep: the fast mode's threshold sweep, "exact" (every threshold) or "sampled"
            (DiffCut's 100); the reference mode always samples.
        drop_zero_rows: DiffCut's quirk in the fast mode (the reference mode always has it):
            below the root, tokens whose affinity row holds an exact off-diagonal zero take no
            part in any cut and follow the B side down to a leaf.
        min_size: smallest admissible segment in tokens (fast mode restricts the sweep; both modes
            make nodes with fewer than 2 * min_size cut tokens leaves).
        max_depth: nodes at this depth are leaves (None: unlimited).
        self_loops: False zeroes the diagonal of ``weights`` first.
        solver: Fiedler solver of the fast mode (:func:`diffuseg.graph.eigen.solver_kind`).
    Returns:
        :class:`CutResult` with per-token leaf labels (in DiffCut's order,
        :func:`diffcut_leaf_order`) and the hierarchy (node ids in pre-order, A side first).
    """
    if mode not in MODES:
        raise ValueError(f"unknown cut mode {mode!r}; choose from {MODES}")
    if sweep not in SWEEPS:
        raise ValueError(f"unknown threshold sweep {sweep!r}; choose from {SWEEPS}")
    solver_kind(2, solver)  # validates the name
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

    dropped = None
    if mode == "reference" or drop_zero_rows:
        # Which tokens leave the cut below the root (the diagonal does not count, so that
        # self_loops=False keeps its meaning). Computed once: in DiffCut's code a token's row keeps
        # its natural zeros at every depth, while masking only zeroes pairs of tokens that are both
        # outside the node.
        dropped = _zero_rows(w)

    # Nodes in creation order (breadth first); renumbered in pre-order at the end.
    parents: list[int | None] = [None]
    children: list[tuple[int, ...]] = [()]
    depths: list[int] = [0]
    sizes: list[int] = [n_total]
    ncuts: list[float | None] = [None]
    members: dict[int, list[torch.Tensor]] = {}  # leaf node -> its token index tensors
    root_ncut: float | None = None
    empty = torch.empty(0, dtype=torch.int64, device=device)
    # A level entry: (node, tokens that take part in the cut, their affinity block (fast mode:
    # a view into the parent's sorted block), tokens carried to the B-most leaf by the quirk).
    level = [_Pending(0, torch.arange(n_total, device=device), w, empty)]
    depth = 0
    while level:
        open_ = [p for p in level if p.idx.numel() >= max(2, 2 * min_size)
                 and (max_depth is None or depth < max_depth)]
        if mode == "fast":
            splits = split_level([p.block for p in open_], min_size, sweep, solver)
        else:
            splits = [_split_reference(w, p.idx) for p in open_]
        found = {p.node: s for p, s in zip(open_, splits, strict=True) if s is not None}
        if depth == 0 and 0 in found:
            root_ncut = found[0].ncut
        following = []
        for p in level:
            split = found.get(p.node)
            ncuts[p.node] = None if split is None else split.ncut
            if split is None or not rule(split.candidate(depth, root_ncut)):
                members[p.node] = [p.idx, p.carried]
                continue
            kids = [(p.idx[split.order_a], split.block_a), (p.idx[split.order_b], split.block_b)]
            carry = [empty, p.carried]  # the B side takes what this node carries
            if depth == 0 and dropped is not None:  # below the root the quirk starts
                for k, (kid_idx, block) in enumerate(kids):
                    gone = dropped[kid_idx]
                    if bool(gone.any()):
                        keep = torch.nonzero(~gone).squeeze(1)
                        if block is not None:
                            block = block.index_select(0, keep).index_select(1, keep)
                        kids[k] = (kid_idx[keep], block)
                        carry[k] = torch.cat([carry[k], kid_idx[gone]])
            for (kid_idx, block), carried in zip(kids, carry, strict=True):
                node = len(parents)
                parents.append(p.node)
                children.append(())
                depths.append(depth + 1)
                sizes.append(int(kid_idx.numel() + carried.numel()))
                ncuts.append(None)
                children[p.node] += (node,)
                following.append(_Pending(node, kid_idx, block, carried))
        level = following
        depth += 1

    # pre-order ids, A side first
    preorder: list[int] = []
    stack = [0]
    while stack:
        node = stack.pop()
        preorder.append(node)
        stack.extend(reversed(children[node]))
    new = {old: i for i, old in enumerate(preorder)}
    tree = [tuple(new[c] for c in children[old]) for old in preorder]
    leaf_label = {node: k for k, node in enumerate(diffcut_leaf_order(tree))}
    labels = torch.full((n_total,), -1, dtype=torch.int64, device=device)
    for old, parts in members.items():
        for part in parts:
            labels[part] = leaf_label[new[old]]
    hierarchy = build_hierarchy(
        parents=[None if parents[o] is None else new[parents[o]] for o in preorder],
        children=tree,
        depths=[depths[o] for o in preorder],
        sizes=[sizes[o] for o in preorder],
        ncuts=[ncuts[o] for o in preorder],
        leaf_label=leaf_label,
    )
    return CutResult(labels=labels, hierarchy=hierarchy)


@dataclass
class _Pending:
    node: int
    idx: torch.Tensor
    block: torch.Tensor | None
    carried: torch.Tensor


@dataclass
class NodeSplit:
    """The best bipartition of one node, in the node's own token order.

    Attributes:
        ncut: its NCut; eigenvalue: top eigenvalue of the node's deflated M' (nan: reference).
        mask: (n,) bool, the A side; sweep: the NCut of every threshold considered.
        order_a, order_b: positions of the A and B tokens (fast mode: in Fiedler order);
        block_a, block_b: their affinity blocks (fast mode: views into the node's sorted block;
            None in the reference mode, which gathers from the whole matrix).
    """

    ncut: float
    eigenvalue: float
    mask: torch.Tensor
    sweep: torch.Tensor
    order_a: torch.Tensor
    order_b: torch.Tensor
    block_a: torch.Tensor | None = None
    block_b: torch.Tensor | None = None

    def candidate(self, depth: int, root_ncut: float | None) -> SplitCandidate:
        return SplitCandidate(ncut=self.ncut, depth=depth, size=int(self.mask.numel()),
                              eigenvalue=self.eigenvalue, sweep=self.sweep,
                              root_ncut=self.ncut if root_ncut is None else root_ncut,
                              mask=self.mask)


#: At most this many affinity entries in one padded batch (256 MiB of float32).
BATCH_ELEMENTS = 1 << 26


def _buckets(sizes: list[int], kinds: list[str]) -> list[list[int]]:
    """Groups of node positions solved together: one solver kind each, sizes within a factor
    of 2 of the group's largest (padding wastes at most 3/4 of a product), and at most
    :data:`BATCH_ELEMENTS` padded entries."""
    groups: list[list[int]] = []
    for kind in dict.fromkeys(kinds):
        members = sorted((i for i, k in enumerate(kinds) if k == kind),
                         key=lambda i: -sizes[i])
        current: list[int] = []
        for i in members:
            top = sizes[current[0]] if current else sizes[i]
            if current and (2 * sizes[i] < top or (len(current) + 1) * top * top > BATCH_ELEMENTS):
                groups.append(current)
                current = []
            current.append(i)
        if current:
            groups.append(current)
    return groups


def split_level(blocks: list[torch.Tensor], min_size: int = 1, sweep: str = "exact",
                solver: str = "auto") -> list[NodeSplit | None]:
    """Best bipartitions of several nodes at once (one depth of the recursion).

    Nodes are grouped by solver and size (:func:`_buckets`), each group is copied into a padded
    (B, N, N) batch, its Fiedler vectors solved in one call, each row's tokens sorted by
    descending Fiedler value, the batch reordered accordingly and every threshold scored with
    prefix sums (:func:`_sweep_sorted`); the chosen sizes, NCut values and eigenvalues reach the
    host in one transfer per group.

    Args:
        blocks: per node, its (n, n) affinity block (n >= 2), all on one device.
        min_size: smallest admissible side; sweep: "exact" or "sampled"; solver: as
            :func:`diffuseg.graph.eigen.solver_kind`.
    Returns:
        Per node a :class:`NodeSplit`, or None when no threshold is admissible.
    """
    out: list[NodeSplit | None] = [None] * len(blocks)
    if not blocks:
        return out
    sizes = [int(b.shape[0]) for b in blocks]
    kinds = [solver_kind(n, solver, blocks[0].device) for n in sizes]
    for group in _buckets(sizes, kinds):
        device, dtype = blocks[group[0]].device, blocks[group[0]].dtype
        n = max(sizes[i] for i in group)
        if len(group) == 1:  # nothing to pad: the block itself (a view) is the batch
            padded = blocks[group[0]].unsqueeze(0)
        else:
            padded = torch.zeros(len(group), n, n, dtype=dtype, device=device)
            for row, i in enumerate(group):
                padded[row, : sizes[i], : sizes[i]] = blocks[i]
        counts = torch.tensor([sizes[i] for i in group], device=device)
        vectors, eigenvalues = fiedler_batch(padded, counts, kinds[group[0]])
        valid = torch.arange(n, device=device)[None, :] < counts[:, None]
        keyed = torch.where(valid, vectors, torch.full_like(vectors, -float("inf")))
        order = torch.argsort(keyed, dim=1, descending=True, stable=True)
        sorted_v = keyed.gather(1, order)
        wp = _reorder(padded, order)
        best_size, best_value, values = _sweep_sorted(wp, sorted_v, counts, min_size, sweep)
        host = torch.stack([best_size.double(), best_value, eigenvalues.double()]).tolist()
        for row, i in enumerate(group):
            size, value, eigenvalue = int(host[0][row]), host[1][row], host[2][row]
            if not np.isfinite(value):
                continue
            m = sizes[i]
            positions = order[row, :m]
            mask = torch.zeros(m, dtype=torch.bool, device=device)
            mask[positions[:size]] = True
            row_values = values[row, : m - 1] if sweep == "exact" else values[row]
            out[i] = NodeSplit(ncut=value, eigenvalue=eigenvalue, mask=mask, sweep=row_values,
                               order_a=positions[:size], order_b=positions[size:],
                               block_a=wp[row, :size, :size], block_b=wp[row, size:m, size:m])
    return out


def _reorder(padded: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """(B, N, N) with rows and columns of each graph permuted by its ``order`` row. Large graphs
    one at a time with ``index_select`` (a gather with an (N, N) index tensor moves 3x the
    bytes); small ones in one batched gather."""
    b, n, _ = padded.shape
    if n >= 64:
        rows = [padded[i].index_select(0, order[i]).index_select(1, order[i]) for i in range(b)]
        return rows[0].unsqueeze(0) if b == 1 else torch.stack(rows)
    rows = padded.gather(1, order[:, :, None].expand(-1, -1, n))
    return rows.gather(2, order[:, None, :].expand(-1, n, -1))


def _sweep_sorted(wp: torch.Tensor, sorted_v: torch.Tensor, counts: torch.Tensor, min_size: int,
                  kind: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every threshold of each row of a padded batch sorted by descending v, by prefix sums.

    Sorting v in descending order, A is a prefix of the sorted tokens. With Wp the reordered
    affinity, assoc(A_m, A_m) is a running sum of 2 * (row m of tril(Wp)) - Wp[m, m], the volume
    a running sum of degrees, and cut = volume - assoc: O(n^2) for all thresholds together. The
    running sums are float64: cut is a small difference of large sums.

    Args:
        wp: (B, N, N) sorted padded affinities; sorted_v: (B, N) descending, -inf on padding;
        counts: (B,) sizes; min_size: smallest side; kind: "exact" or "sampled".
    Returns:
        size of A (B,) int64, its NCut (B,) float64 (inf when no threshold is admissible), and
        the NCut of every threshold considered (B, N - 1) or (B, 100), inf where inadmissible.
        The first smallest value wins, as DiffCut's ``argmin``.
    """
    b, n, _ = wp.shape
    degrees = wp.sum(dim=-1).double()
    lower = torch.tril(wp).sum(dim=-1).double()
    internal = torch.cumsum(2.0 * lower - wp.diagonal(dim1=1, dim2=2).double(), dim=1)
    volume_a = torch.cumsum(degrees, dim=1)
    total = volume_a[:, -1:]
    if kind == "sampled":
        # threshold t keeps A = {v > t}, the first #{v > t} tokens: read those prefixes only
        real = sorted_v.masked_fill(~torch.isfinite(sorted_v), 0.0)
        lows = (sorted_v.gather(1, (counts - 1)[:, None]).squeeze(1) * SAMPLED_SPAN).tolist()
        highs = (real[:, 0] * SAMPLED_SPAN).tolist()
        thresholds = torch.stack([
            torch.linspace(lo, hi, REFERENCE_THRESHOLDS, dtype=sorted_v.dtype,
                           device=sorted_v.device) for lo, hi in zip(lows, highs, strict=True)])
        sizes = n - torch.searchsorted(sorted_v.flip(1).contiguous(), thresholds, right=True)
        prefix = (sizes - 1).clamp(0, max(n - 2, 0))
    else:
        sizes = torch.arange(1, n, device=wp.device)[None, :].expand(b, -1)
        prefix = sizes - 1
    vol_a = volume_a.gather(1, prefix)
    vol_b = total - vol_a
    cut = (vol_a - internal.gather(1, prefix)).clamp_min(0.0)
    values = cut / vol_a + cut / vol_b
    admissible = ((sizes >= min_size) & (counts[:, None] - sizes >= min_size)
                  & (vol_a > 0) & (vol_b > 0))
    if kind == "exact":  # a threshold lies between two distinct values
        admissible &= sorted_v[:, :-1] > sorted_v[:, 1:]
    values = torch.where(admissible, values, torch.full_like(values, float("inf")))
    best = torch.argmin(values, dim=1, keepdim=True)
    return sizes.gather(1, best).squeeze(1), values.gather(1, best).squeeze(1), values


def _zero_rows(w: torch.Tensor) -> torch.Tensor | None:
    """(N,) bool: rows of ``w`` with an exact zero off the diagonal, or None if there are none.
    A row minimum is a cheap reduction; only rows whose minimum is 0 are looked at closely."""
    candidates = torch.nonzero(w.amin(dim=1) == 0).squeeze(1)
    if candidates.numel() == 0:
        return None
    rows = w.index_select(0, candidates) == 0
    rows[torch.arange(candidates.numel(), device=w.device), candidates] = False  # the diagonal
    dropped = torch.zeros(w.shape[0], dtype=torch.bool, device=w.device)
    dropped[candidates] = rows.any(dim=1)
    return dropped if bool(dropped.any()) else None


def _split_reference(w, idx) -> NodeSplit | None:
    """The official split of the node whose cut tokens are ``idx`` (dropped tokens already left
    out by the caller): dense eigh, the 100 thresholds scored one by one."""
    sub = w[idx][:, idx]
    vector = reference_fiedler(sub)
    mask, ncut, sweep = sampled_sweep(sub, vector)
    if mask is None:
        return None
    return NodeSplit(ncut=ncut, eigenvalue=float("nan"), mask=mask, sweep=sweep,
                     order_a=torch.nonzero(mask).squeeze(1),
                     order_b=torch.nonzero(~mask).squeeze(1))
