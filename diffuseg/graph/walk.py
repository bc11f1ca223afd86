"""Random walks on self-attention, and the graphs a normalized cut runs on (DWC).

DWC (Ivanova et al., WACV 2026) reads aggregated self-attention as a Markov chain: row q of the
(N, N) attention matrix P is a probability distribution over the N tokens, i.e. the transition
probabilities of a random walk leaving token q. This module holds the chain-side pieces, all pure
tensor functions:

* :func:`transition_matrix` - checked row-stochastic P from aggregated attention.
* :func:`stationary_distribution` - pi with pi P = pi (power iteration; a teleport only for
  reducible chains; a direct solve when the iteration does not converge).
* :func:`matrix_power_walk` - the k-step walk P^k by binary exponentiation.
* graph builders for :func:`diffuseg.graph.ncut.recursive_ncut`:
  :func:`reversible_symmetrisation` (the random-walk NCut; the default),
  :func:`plain_symmetrisation` and :func:`feature_affinity`; :func:`walk_graph` dispatches.
* :func:`random_walk_ncut` - the random-walk NCut of a split from its definition (for tests).

Why the reversible symmetrisation cuts the random walk (Meila & Shi 2001, generalised). For a
chain P with a stationary distribution pi (pi P = pi) let W = (Pi P + P^T Pi) / 2, Pi = diag(pi).
Then

* W is symmetric, non-negative, sums to 1, and its degrees are d_i = (pi_i + (pi P)_i) / 2 = pi_i;
* cut_W(A, B) = (F(A->B) + F(B->A)) / 2 with the probability flow F(A->B) = sum_{i in A, j in B}
  pi_i P_ij; at stationarity F(A->B) = F(B->A), because pi(A) = F(A->A) + F(A->B) (mass leaving
  A) = F(A->A) + F(B->A) (mass arriving in A);
* hence the Shi-Malik NCut of W, cut/vol(A) + cut/vol(B), equals
  F(A->B)/pi(A) + F(B->A)/pi(B) = P(A -> B | A) + P(B -> A | B), the random-walk NCut of
  Meila & Shi, *exactly*, for every split, whether or not P is reversible. (For a reversible P,
  Pi P is already symmetric and W = Pi P.) The identity needs pi to be P's stationary distribution:
  with an approximate pi it holds up to the residual |pi P - pi|.

Self-attention rows come from a softmax, so P is strictly positive in exact arithmetic: the chain
is irreducible and aperiodic and pi is unique. Entries can underflow to exact zeros (float16
capture, very peaked maps); only then can P be reducible, and only then is the teleport used.
"""

from __future__ import annotations

import torch

from diffuseg.graph.affinity import cosine_affinity

#: Teleport probability used for reducible chains (diffuseg's choice; the paper is silent).
#: A reducible P has no unique stationary distribution; the teleported chain
#: (1 - t) P + t/N 1 1^T (PageRank with damping 1 - t, uniform restart) has one, which gives each
#: closed class mass proportional to its size and, within a class, differs from the class's own
#: stationary distribution by O(t). 1e-4 keeps that perturbation far below the NCut values that
#: matter (~1e-2..1) while t/N (2.4e-8 at N = 4096) is still a normal float32.
TELEPORT = 1e-4

#: How far a row sum of aggregated attention may drift from 1 and still be renormalised silently.
ROW_SUM_ATOL = 1e-3

#: Graphs :func:`walk_graph` can build from a walk.
GRAPHS = ("reversible", "plain", "features")

STATIONARY_METHODS = ("auto", "power", "solve")


def _float(t: torch.Tensor) -> torch.Tensor:
    """float32 unless already float32/float64 (half precision is upcast; ints rejected)."""
    if not torch.is_floating_point(t):
        raise ValueError(f"expected a floating-point tensor, got {t.dtype}")
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _check_square(p: torch.Tensor, name: str = "P") -> None:
    if p.ndim != 2 or p.shape[0] != p.shape[1] or p.shape[0] < 1:
        raise ValueError(f"{name} must be a square (N, N) matrix, got {tuple(p.shape)}")


def transition_matrix(
    aggregated: torch.Tensor, atol: float = ROW_SUM_ATOL, normalize: bool = False
) -> torch.Tensor:
    """The random walk's transition matrix P from aggregated self-attention.

    Args:
        aggregated: (N, h, w) with N = h * w (the output of
            :func:`diffuseg.methods.diffseg.aggregate_attention`: row q is the key map of query
            q = i * w + j) or (N, N); non-negative float, rows summing to 1. Any device.
        atol: largest tolerated |row sum - 1|; rows within it are renormalised (float drift).
        normalize: renormalise every row with a positive sum, whatever it sums to (for inputs
            that are affinities rather than probabilities).
    Returns:
        (N, N) float32 (float64 if the input is float64) row-stochastic P, rows summing to 1
        up to rounding; a new tensor (the input is not modified).
    Raises:
        ValueError: wrong shape, non-finite or negative entries, a zero row, or (unless
            ``normalize``) a row sum off by more than ``atol``.
    """
    a = _float(aggregated)
    if a.ndim == 3:
        n, h, w = a.shape
        if n != h * w:
            raise ValueError(
                f"aggregated attention (N, h, w) needs N = h * w, got {tuple(a.shape)}"
            )
        a = a.reshape(n, n)
    _check_square(a, "aggregated attention")
    if not bool(torch.isfinite(a).all()):
        raise ValueError("attention holds NaN or inf entries")
    if bool((a < 0).any()):
        raise ValueError(
            f"attention holds negative entries (min {float(a.min()):.3g}): not a transition matrix"
        )
    sums = a.sum(dim=1, keepdim=True)
    zero = torch.nonzero(sums.squeeze(1) <= 0).squeeze(1)
    if zero.numel():
        raise ValueError(
            f"{zero.numel()} attention row(s) sum to zero (first: token {int(zero[0])}): "
            "a walk cannot leave them"
        )
    if not normalize:
        drift = float((sums - 1).abs().max())
        if drift > atol:
            raise ValueError(
                f"attention rows must sum to 1 (largest deviation {drift:.3g} > {atol}); "
                "pass normalize=True to renormalise arbitrary non-negative rows"
            )
    return a / sums


def check_stochastic(p: torch.Tensor, atol: float = 1e-4) -> None:
    """Raise ``ValueError`` unless ``p`` is a square non-negative matrix with rows summing to 1
    within ``atol``."""
    _check_square(p)
    if not torch.is_floating_point(p):
        raise ValueError(f"P must be floating point, got {p.dtype}")
    if bool((p < 0).any()):
        raise ValueError("P holds negative entries")
    drift = float((p.sum(dim=1) - 1).abs().max())
    if not drift <= atol:
        raise ValueError(f"P is not row-stochastic (largest |row sum - 1| = {drift:.3g})")


def is_reducible(p: torch.Tensor) -> bool:
    """Whether the chain P is reducible (its support graph is not strongly connected).

    A strictly positive P (softmax attention) is irreducible without further work; otherwise the
    strongly connected components of the support {P_ij > 0} are counted with scipy.
    """
    if bool((p > 0).all()):
        return False
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    support = csr_matrix((p > 0).cpu().numpy())
    count, _ = connected_components(support, directed=True, connection="strong")
    return count > 1


def stationary_distribution(
    p: torch.Tensor,
    teleport: float = TELEPORT,
    tol: float | None = None,
    max_iter: int = 300,
    method: str = "auto",
) -> torch.Tensor:
    """The stationary distribution pi of a row-stochastic P (pi P = pi, pi >= 0, sum 1).

    The chain actually solved is

    * P itself when P is strictly positive (irreducible and aperiodic: unique pi, and power
      iteration converges);
    * the lazy chain (I + P) / 2 when P has zeros but is still irreducible (it may be periodic;
      the lazy chain has the same pi and is aperiodic);
    * the teleported chain (1 - t) P + t/N 1 1^T when P is reducible (no unique pi otherwise;
      see :data:`TELEPORT`). So ``teleport`` only matters for reducible chains.

    Methods: "power" iterates pi <- pi Q from the uniform distribution until the L1 residual
    |pi Q - pi|_1 < ``tol`` or ``max_iter`` steps (then returns the last iterate); "solve" solves
    pi (I - Q + 1 1^T) = 1^T directly in float64 (O(N^3): about 4 s at N = 4096 on 2 CPU cores);
    "auto" runs "power" and falls back to "solve" when it has not converged. Power iteration
    converges like |lambda_2|^t: fast on well-mixing attention, slow on nearly decomposable
    chains (regions that almost never exchange walkers), which is what the fallback is for.

    Args:
        p: (N, N) row-stochastic float matrix (checked), any device.
        teleport: restart probability t in (0, 1) for reducible chains; 0 makes a reducible
            chain an error.
        tol: L1 residual to stop at; None: 1e-6 in float32 (rounding leaves a residual floor of
            ~1e-7 at N = 4096-9216, measured on planted attention), 1e-12 in float64.
        max_iter: power-iteration budget: one (N,) x (N, N) product per step, ~8 ms at N = 4096
            in float32 on 2 CPU cores, so the default 300 steps cost ~2.4 s before "auto" falls
            back to the direct solve. Planted attention with realistic mixing converges in
            ~50 steps; a nearly decomposable one (temperature 0.1) needs ~450.
        method: "auto" | "power" | "solve".
    Returns:
        (N,) tensor, P's dtype (float32 at least) and device, non-negative, summing to 1.
    """
    if method not in STATIONARY_METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {STATIONARY_METHODS}")
    if not 0 <= teleport < 1:
        raise ValueError(f"teleport must be in [0, 1), got {teleport}")
    p = _float(p)
    check_stochastic(p)
    n = p.shape[0]
    if tol is None:
        tol = 1e-12 if p.dtype == torch.float64 else 1e-6
    positive = bool((p > 0).all())
    reducible = not positive and is_reducible(p)
    if reducible and teleport <= 0:
        raise ValueError(
            "the chain is reducible: it has no unique stationary distribution (pass teleport > 0)"
        )
    t = teleport if reducible else 0.0
    lazy = not positive and not reducible

    if method in ("auto", "power"):
        pi = torch.full((n,), 1.0 / n, dtype=p.dtype, device=p.device)
        for _ in range(max_iter):
            nxt = pi @ p
            if lazy:
                nxt = 0.5 * (pi + nxt)
            if t:
                nxt = (1 - t) * nxt + t / n
            nxt = nxt / nxt.sum()
            residual = float((nxt - pi).abs().sum())
            pi = nxt
            if residual < tol:
                return pi
        if method == "power":
            return pi
    # Direct solve: pi (I - Q) = 0 and pi 1 = 1 together read pi (I - Q + 1 1^T) = 1^T, a
    # non-singular system for an irreducible Q.
    q = p.double()
    if t:
        q = (1 - t) * q + t / n
    system = torch.eye(n, dtype=torch.float64, device=p.device) - q + 1.0
    pi = torch.linalg.solve(system.T, torch.ones(n, dtype=torch.float64, device=p.device))
    pi = pi.clamp_min(0)
    return (pi / pi.sum()).to(p.dtype)


def matrix_power_walk(p: torch.Tensor, k: int) -> torch.Tensor:
    """The k-step transition matrix P^k by binary exponentiation (repeated squaring).

    Every product is computed in float32 (float64 if P is float64) and its rows are renormalised
    to sum 1, so rounding never lets the walk drift off the simplex. k = 2^m costs m products
    (k = 8: three squarings); any other positive k costs at most 2 log2(k). Each product is an
    (N, N) x (N, N) matmul: ~0.8 s at N = 4096 in float32 on 2 idle CPU cores (k = 8 measured
    2.5 s; ~3 s per product when the cores are shared), milliseconds on a GPU.

    Args:
        p: (N, N) row-stochastic float matrix, any device.
        k: number of steps, a positive int.
    Returns:
        (N, N) row-stochastic P^k, same device; for k = 1 the input itself (not a copy) when it is
        float32/float64.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    _check_square(p)
    base = _float(p)
    result: torch.Tensor | None = None
    while True:
        if k & 1:
            result = base if result is None else _renormalise(result @ base)
        k >>= 1
        if not k:
            break
        base = _renormalise(base @ base)
    assert result is not None
    return result


def _renormalise(m: torch.Tensor) -> torch.Tensor:
    return m.div_(m.sum(dim=1, keepdim=True).clamp_min(torch.finfo(m.dtype).tiny))


def reversible_symmetrisation(p: torch.Tensor, pi: torch.Tensor) -> torch.Tensor:
    """W = (Pi P + P^T Pi) / 2: the graph whose Shi-Malik NCut is the random-walk NCut.

    See the module docstring: with pi stationary for P, W's degrees are pi and its NCut of any
    split equals P(A -> B | A) + P(B -> A | B) under pi.

    Args:
        p: (N, N) row-stochastic float matrix.
        pi: (N,) its stationary distribution (non-negative, sums to 1).
    Returns:
        (N, N) symmetric non-negative tensor in P's dtype, summing to 1 (W_ij is the probability
        that a stationary walker crosses the edge {i, j} in one step, either way, halved).
    """
    _check_square(p)
    if pi.shape != (p.shape[0],):
        raise ValueError(f"pi must have shape ({p.shape[0]},), got {tuple(pi.shape)}")
    flow = p * pi.to(device=p.device, dtype=p.dtype)[:, None]
    return (flow + flow.T).mul_(0.5)


def plain_symmetrisation(p: torch.Tensor) -> torch.Tensor:
    """W = (P + P^T) / 2: every token weighted equally (pi ignored); an option, not the default.

    Returns:
        (N, N) symmetric non-negative tensor in P's dtype; degrees (1 + column sums of P) / 2.
    """
    _check_square(p)
    return (p + p.T).mul_(0.5)


def feature_affinity(p: torch.Tensor, alpha: float = 10.0) -> torch.Tensor:
    """Affinity of tokens whose walks go to the same places: rows of P (or P^k) as features.

    Each token's feature is its row (where its walk lands); affinity = cosine similarity of
    rows, global min-max to [0, 1], power alpha (:func:`diffuseg.graph.affinity.cosine_affinity`,
    DiffCut's recipe). Costs one (N, N) x (N, N) product.

    Returns:
        (N, N) float32 symmetric affinity in [0, 1].
    """
    _check_square(p)
    return cosine_affinity(p, alpha=alpha)


def walk_graph(
    p: torch.Tensor, graph: str = "reversible", pi: torch.Tensor | None = None, alpha: float = 10.0
) -> torch.Tensor:
    """Build the graph to cut from a (k-step) walk P.

    Args:
        p: (N, N) row-stochastic matrix (P or P^k).
        graph: "reversible" (:func:`reversible_symmetrisation`, needs ``pi``), "plain"
            (:func:`plain_symmetrisation`) or "features" (:func:`feature_affinity` with
            ``alpha``).
        pi: stationary distribution of ``p`` (only for "reversible"; computed if None).
    Returns:
        (N, N) symmetric non-negative affinity.
    """
    if graph == "reversible":
        return reversible_symmetrisation(p, stationary_distribution(p) if pi is None else pi)
    if graph == "plain":
        return plain_symmetrisation(p)
    if graph == "features":
        return feature_affinity(p, alpha)
    raise ValueError(f"unknown graph {graph!r}; choose from {GRAPHS}")


def random_walk_ncut(p: torch.Tensor, pi: torch.Tensor, mask: torch.Tensor) -> float:
    """Random-walk NCut of a split, from its definition (Meila & Shi 2001), in float64.

    NCut(A, B) = P(X_1 in B | X_0 in A) + P(X_1 in A | X_0 in B) with X_0 ~ pi:
    sum_{i in A, j in B} pi_i P_ij / pi(A) + sum_{i in B, j in A} pi_i P_ij / pi(B).

    Args:
        p: (N, N) row-stochastic matrix.
        pi: (N,) distribution of the walker's start.
        mask: (N,) bool, True for A.
    Returns:
        The value in [0, 2]; inf if a side is empty or has zero mass.
    """
    q = p.double()
    w = pi.double().to(q.device)
    a = mask.bool().to(q.device)
    b = ~a
    mass_a, mass_b = w[a].sum(), w[b].sum()
    if mass_a <= 0 or mass_b <= 0:
        return float("inf")
    flow_ab = (w[a][:, None] * q[a][:, b]).sum()
    flow_ba = (w[b][:, None] * q[b][:, a]).sum()
    return float(flow_ab / mass_a + flow_ba / mass_b)


__all__ = [
    "GRAPHS",
    "ROW_SUM_ATOL",
    "STATIONARY_METHODS",
    "TELEPORT",
    "check_stochastic",
    "feature_affinity",
    "is_reducible",
    "matrix_power_walk",
    "plain_symmetrisation",
    "random_walk_ncut",
    "reversible_symmetrisation",
    "stationary_distribution",
    "transition_matrix",
    "walk_graph",
]
