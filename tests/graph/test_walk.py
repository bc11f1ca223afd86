"""Random walks on attention: transition matrices, stationary distributions, k-step walks, and
the identity between the random-walk NCut and the Shi-Malik NCut of the symmetrised chain."""

import numpy as np
import pytest
import torch

from diffuseg.graph.affinity import cosine_affinity
from diffuseg.graph.ncut import ncut_value
from diffuseg.graph.walk import (
    TELEPORT,
    check_stochastic,
    feature_affinity,
    is_reducible,
    matrix_power_walk,
    plain_symmetrisation,
    random_walk_ncut,
    reversible_symmetrisation,
    stationary_distribution,
    transition_matrix,
    walk_graph,
)


def random_chain(n: int, seed: int, sharpness: float = 3.0) -> torch.Tensor:
    """A dense non-reversible chain: random positive rows, normalised."""
    gen = torch.Generator().manual_seed(seed)
    p = torch.rand(n, n, generator=gen, dtype=torch.float64) ** sharpness + 1e-3
    return p / p.sum(1, keepdim=True)


def random_reversible_chain(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """P = D^-1 W from a random symmetric W; its stationary distribution is d / sum d."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.rand(n, n, generator=gen, dtype=torch.float64) ** 2
    w = w + w.T
    d = w.sum(1)
    return w / d[:, None], d / d.sum()


def random_mask(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 100)
    mask = torch.rand(n, generator=gen) < 0.4
    mask[0], mask[1] = True, False
    return mask


# --- the random-walk NCut identity ---------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_reversible_chain_random_walk_ncut_equals_shi_malik_ncut(seed):
    p, pi = random_reversible_chain(60, seed)
    w = reversible_symmetrisation(p, pi)
    # for a reversible chain Pi P is already symmetric: the symmetrisation changes nothing
    torch.testing.assert_close(w, pi[:, None] * p, rtol=0, atol=1e-15)
    torch.testing.assert_close(w.sum(1), pi, rtol=0, atol=1e-15)  # degrees = pi
    for s in range(10):
        mask = random_mask(60, 10 * seed + s)
        assert random_walk_ncut(p, pi, mask) == pytest.approx(ncut_value(w, mask), abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_non_reversible_chain_identity_holds_with_its_stationary_distribution(seed):
    """W = (Pi P + P^T Pi)/2 has degrees (pi + pi P)/2 = pi, and at stationarity the flow A->B
    equals the flow B->A, so cut_W(A, B) = flow(A->B): the Shi-Malik NCut of W is the
    random-walk NCut of P for every split, though P is not reversible."""
    p = random_chain(60, seed)
    pi = stationary_distribution(p)
    flow = pi[:, None] * p
    assert float((flow - flow.T).abs().max()) > 1e-4  # genuinely non-reversible
    w = reversible_symmetrisation(p, pi)
    torch.testing.assert_close(w, w.T)
    torch.testing.assert_close(w.sum(1), pi, rtol=0, atol=1e-12)
    for s in range(10):
        mask = random_mask(60, 10 * seed + s)
        a, b = mask, ~mask
        assert float(flow[a][:, b].sum()) == pytest.approx(float(flow[b][:, a].sum()), abs=1e-12)
        assert random_walk_ncut(p, pi, mask) == pytest.approx(ncut_value(w, mask), abs=1e-6)
    # with a distribution that is not stationary the identity fails: pi matters
    uniform = torch.full((60,), 1 / 60, dtype=torch.float64)
    w_wrong = reversible_symmetrisation(p, uniform)
    masks = [random_mask(60, s) for s in range(10)]
    gaps = [abs(random_walk_ncut(p, pi, m) - ncut_value(w_wrong, m)) for m in masks]
    assert max(gaps) > 1e-3


def test_random_walk_ncut_of_two_blocks_is_the_escape_probability():
    # two blocks of 3 and 5 states; from each state the walk leaves its block with prob 0.1 / 0.3
    p = torch.zeros(8, 8, dtype=torch.float64)
    p[:3, :3], p[:3, 3:] = 0.9 / 3, 0.1 / 5
    p[3:, :3], p[3:, 3:] = 0.3 / 3, 0.7 / 5
    pi = stationary_distribution(p)
    mask = torch.arange(8) < 3
    assert random_walk_ncut(p, pi, mask) == pytest.approx(0.1 + 0.3, abs=1e-9)
    assert random_walk_ncut(p, pi, torch.zeros(8, dtype=torch.bool)) == float("inf")
    # the blocks are lumpable (every state of a block leaves it with the same probability), so the
    # k-step walk's NCut is exactly 1 - (1 - NCut_1)^k: boundaries fade as the walk lengthens
    for k in (2, 4, 8, 32):
        pk = matrix_power_walk(p, k)
        assert random_walk_ncut(pk, pi, mask) == pytest.approx(1 - 0.6**k, abs=1e-9)


# --- transition matrix ---------------------------------------------------------------------


def test_transition_matrix_checks_and_renormalises():
    p = random_chain(12, 0).float()
    attn = p.reshape(12, 3, 4) * (1 + 1e-4)  # tiny drift
    out = transition_matrix(attn)
    assert out.shape == (12, 12) and out.dtype == torch.float32
    torch.testing.assert_close(out.sum(1), torch.ones(12), rtol=0, atol=1e-6)
    torch.testing.assert_close(out, p, rtol=1e-5, atol=1e-7)
    assert transition_matrix(p.double()).dtype == torch.float64
    assert transition_matrix(p.half()).dtype == torch.float32
    with pytest.raises(ValueError, match="sum to 1"):
        transition_matrix(p * 2)
    torch.testing.assert_close(transition_matrix(p * 2, normalize=True), p)
    bad = p.clone()
    bad[3, 4] = -1e-3
    with pytest.raises(ValueError, match="negative"):
        transition_matrix(bad)
    zero = p.clone()
    zero[5] = 0
    with pytest.raises(ValueError, match="sum to zero"):
        transition_matrix(zero, normalize=True)
    nan = p.clone()
    nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        transition_matrix(nan)
    with pytest.raises(ValueError, match="N = h \\* w"):
        transition_matrix(torch.rand(12, 3, 5))
    with pytest.raises(ValueError, match="square"):
        transition_matrix(torch.rand(12, 5))
    with pytest.raises(ValueError, match="floating"):
        transition_matrix(torch.ones(4, 4, dtype=torch.int64))


# --- stationary distribution ---------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("method", ["auto", "power", "solve"])
def test_stationary_distribution_is_stationary(seed, method):
    p = random_chain(80, seed)
    pi = stationary_distribution(p, method=method)
    assert pi.dtype == torch.float64 and float(pi.min()) > 0
    assert float(pi.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float((pi @ p - pi).abs().max()) < 1e-6
    # float32 too
    pi32 = stationary_distribution(p.float(), method=method)
    assert pi32.dtype == torch.float32
    assert float((pi32 @ p.float() - pi32).abs().max()) < 1e-6


def test_slowly_mixing_chain_falls_back_to_the_direct_solve():
    # two blocks (10 and 30 states) exchanging walkers with probability 1e-5 / 3e-5 per step:
    # the flows balance at block masses 3/4 and 1/4, but from the uniform start (1/4, 3/4) the
    # power iteration needs ~1e5 steps to move the mass across
    p = torch.zeros(40, 40, dtype=torch.float64)
    p[:10, :10], p[10:, 10:] = (1 - 1e-5) / 10, (1 - 3e-5) / 30
    p[:10, 10:], p[10:, :10] = 1e-5 / 30, 3e-5 / 10
    pi = stationary_distribution(p)
    assert float(pi[:10].sum()) == pytest.approx(0.75, abs=1e-9)
    assert float((pi @ p - pi).abs().max()) < 1e-12
    stuck = stationary_distribution(p, method="power", max_iter=50)
    assert float(stuck[:10].sum()) < 0.26  # the power iteration alone is nowhere near


def test_reducible_chain_gets_the_teleport():
    # two closed classes of sizes 4 and 6 plus 2 transient states feeding both
    n = 12
    p = torch.zeros(n, n, dtype=torch.float64)
    p[:4, :4] = random_chain(4, 1)
    p[4:10, 4:10] = random_chain(6, 2)
    p[10:, :] = 1 / n
    assert is_reducible(p) and not is_reducible(random_chain(5, 0))
    pi = stationary_distribution(p)
    # the teleported chain (1 - t) P + t/N 1 1^T: its stationary distribution is PageRank's
    t = TELEPORT
    q = (1 - t) * p + t / n
    assert float((pi @ q - pi).abs().max()) < 1e-12
    expected = (t / n) * torch.linalg.solve((torch.eye(n, dtype=torch.float64) - (1 - t) * p).T,
                                            torch.ones(n, dtype=torch.float64))
    torch.testing.assert_close(pi, expected, rtol=1e-6, atol=1e-12)
    # each closed class keeps (almost exactly) its own stationary distribution; its mass is what
    # restarts send it: 4/12 directly, plus 4/12 of the restarts through the transient states
    # (their mass m solves m = t 2/12 + m 2/12 -> t/5, re-emitted at rate ~1): 4/12 (1 + 1/5)
    own = stationary_distribution(p[:4, :4])
    torch.testing.assert_close(pi[:4] / pi[:4].sum(), own, rtol=0, atol=1e-4)
    assert float(pi[:4].sum()) == pytest.approx(0.4, abs=1e-4)
    assert float(pi[10:].sum()) == pytest.approx(t / 5, rel=0.01)  # transient states: O(t)
    with pytest.raises(ValueError, match="reducible"):
        stationary_distribution(p, teleport=0.0)


def test_periodic_irreducible_chain_uses_the_lazy_walk():
    p = torch.roll(torch.eye(5, dtype=torch.float64), 1, dims=1)  # a 5-cycle: period 5
    assert not is_reducible(p)
    pi = stationary_distribution(p, method="power")
    torch.testing.assert_close(pi, torch.full((5,), 0.2, dtype=torch.float64))


def test_check_stochastic():
    check_stochastic(random_chain(5, 0))
    with pytest.raises(ValueError, match="row-stochastic"):
        check_stochastic(random_chain(5, 0) * 1.01)
    with pytest.raises(ValueError, match="square"):
        check_stochastic(torch.rand(3, 4))


# --- k-step walks --------------------------------------------------------------------------


def test_power_walk_matches_naive_matrix_powers_and_stays_stochastic():
    p = random_chain(50, 3).float()
    p8 = matrix_power_walk(p, 8)
    naive = p.double()
    for _ in range(7):
        naive = naive @ p.double()
    squared = p.double() @ p.double()
    squared = squared @ squared
    squared = squared @ squared  # three squarings
    torch.testing.assert_close(p8.double(), naive, rtol=0, atol=1e-6)
    torch.testing.assert_close(p8.double(), squared, rtol=0, atol=1e-6)
    torch.testing.assert_close(p8.double(), torch.linalg.matrix_power(p.double(), 8), rtol=0,
                               atol=1e-6)
    for k in (1, 2, 3, 5, 8, 13, 64):
        pk = matrix_power_walk(p, k)
        assert pk.dtype == torch.float32
        assert float((pk.sum(1) - 1).abs().max()) < 1e-5
        assert float(pk.min()) >= 0
        torch.testing.assert_close(pk.double(), torch.linalg.matrix_power(p.double(), k),
                                   rtol=0, atol=1e-5)
    assert matrix_power_walk(p, 1) is p
    with pytest.raises(ValueError, match="positive int"):
        matrix_power_walk(p, 0)
    with pytest.raises(ValueError, match="positive int"):
        matrix_power_walk(p, 2.0)


def test_stationary_distribution_is_shared_by_the_k_step_walk():
    p = random_chain(40, 5)
    pi = stationary_distribution(p)
    torch.testing.assert_close(stationary_distribution(matrix_power_walk(p, 4)), pi, rtol=0,
                               atol=1e-10)


# --- graph builders ------------------------------------------------------------------------


def test_graph_builders():
    p = random_chain(30, 7)
    pi = stationary_distribution(p)
    w = walk_graph(p, "reversible", pi)
    torch.testing.assert_close(w, reversible_symmetrisation(p, pi))
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(walk_graph(p, "reversible"), w)  # pi computed when not given
    plain = walk_graph(p, "plain")
    torch.testing.assert_close(plain, (p + p.T) / 2)
    torch.testing.assert_close(plain, plain_symmetrisation(p))
    feats = walk_graph(p, "features", alpha=3)
    torch.testing.assert_close(feats, cosine_affinity(p, alpha=3))
    torch.testing.assert_close(feats, feature_affinity(p, 3))
    assert float(feats.min()) == 0.0 and float(feats.max()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown graph"):
        walk_graph(p, "knn")
    with pytest.raises(ValueError, match="pi must have shape"):
        reversible_symmetrisation(p, pi[:-1])


def test_reversible_graph_weights_tokens_by_their_stationary_mass():
    # plain symmetrisation ignores pi; the reversible graph's degrees are exactly pi
    p = random_chain(20, 9, sharpness=6.0)
    pi = stationary_distribution(p)
    np.testing.assert_allclose(reversible_symmetrisation(p, pi).sum(1).numpy(), pi.numpy(),
                               atol=1e-12)
    np.testing.assert_allclose(plain_symmetrisation(p).sum(1).numpy(),
                               ((1 + p.sum(0)) / 2).numpy(), atol=1e-12)
