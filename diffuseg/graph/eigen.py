"""Fiedler vectors of graph affinities, batched, on the affinity's device.

For a symmetric non-negative affinity W (n x n) with degrees d, the normalized-cut relaxation
(Shi & Malik 2000) wants the second-smallest eigenvector u of L_sym = I - D^-1/2 W D^-1/2, i.e.
the second-*largest* eigenvector of M = D^-1/2 W D^-1/2, mapped back as v = D^-1/2 u. The largest
eigenvector of M is known in closed form (sqrt(d), eigenvalue 1), so we deflate it exactly:
M' = M - 2 q q^T with q = sqrt(d) / |sqrt(d)| (moving eigenvalue 1 to -1, the bottom of the
spectrum), and take the top eigenvector of M'. This makes the result orthogonal to the trivial
vector even when the graph is disconnected (eigenvalue 1 repeated), where an undeflated solver
may return any basis of the repeated eigenspace.

Every solver takes a *padded batch*: B graphs of sizes n_b <= N stored in a (B, N, N) tensor whose
rows and columns past n_b are zero (the recursive cut solves all the nodes of one depth together).

* :func:`lanczos_fiedler` (the default above :data:`DENSE_BELOW` nodes): Lanczos in torch with
  full reorthogonalisation, never forming M' (each step is one batched product with W, the
  scaling and the rank-one deflation applied to vectors), convergence checked every
  :data:`CHECK_EVERY` steps from the tridiagonal matrix, on the device: CPU and CUDA take the
  same path and nothing leaves the device but that check. A graph whose Ritz residual is not
  below :data:`LANCZOS_TOL` after :data:`LANCZOS_MAX_STEPS` steps falls back to the dense solver.
* :func:`dense_fiedler`: ``torch.linalg.eigh`` of M' (float64 on CPU), padding on the diagonal at
  -2, below the spectrum, so that it never wins.
* :func:`arpack_fiedler`: scipy's ARPACK (``eigsh``), one graph at a time on the CPU: the engine's
  solver before the torch Lanczos, kept for comparison (``solver="arpack"``).

Measured on 2 CPU cores (NOTES.md): ARPACK 6 ms at 1,024 nodes and 83 ms at 4,096, dense ``eigh``
76-130 ms and 6-7 s; on CUDA a dense eigh costs tens of milliseconds at 1,024 nodes, the Lanczos
steps a few.
"""

from __future__ import annotations

import numpy as np
import torch

SOLVERS = ("auto", "lanczos", "arpack", "dense")

#: Below this many nodes "auto" solves densely: as fast as Lanczos and never short of steps.
DENSE_BELOW = 64
#: Lanczos stops when every graph's Ritz residual |beta_m s_m| is below this (M' has norm <= 1).
LANCZOS_TOL = 1e-6
#: ARPACK's relative accuracy of the Ritz value (0 would mean machine precision: about a third
#: more steps for Fiedler values that agree to ~1e-5 relative, the dense float32 eigh's own level).
ARPACK_TOL = 1e-6
#: Krylov dimension cap; a graph not converged by then is solved densely.
LANCZOS_MAX_STEPS = 300
#: Convergence is checked (one small eigh and one host sync) every this many steps.
CHECK_EVERY = 10
_TINY_DEGREE = 1e-30
_BREAKDOWN = 1e-6  # a Lanczos beta below this ends a graph's Krylov space (invariant subspace)


def solver_kind(size: int, solver: str, device: torch.device | str = "cpu") -> str:
    """Which solver a graph of ``size`` nodes gets: "dense", "lanczos" or "arpack".

    "auto": dense below :data:`DENSE_BELOW` nodes; above, the torch Lanczos on accelerators and
    ARPACK on the CPU, where it was measured about 2x faster (bench/bench_ncut.py: scipy's
    restarted Lanczos needs fewer products, each a plain numpy mat-vec, than our batched torch
    steps with full reorthogonalisation).
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown eigen solver {solver!r}; choose from {SOLVERS}")
    if solver == "auto":
        if size < DENSE_BELOW:
            return "dense"
        return "arpack" if torch.device(device).type == "cpu" else "lanczos"
    return solver


def _deflation(degrees: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(D^-1/2 zero on padding, q = sqrt(d)/|sqrt(d)|), each (B, N)."""
    n = degrees.shape[-1]
    valid = torch.arange(n, device=degrees.device)[None, :] < sizes[:, None]
    inv_sqrt = torch.where(valid, degrees.clamp_min(_TINY_DEGREE).rsqrt(),
                           torch.zeros_like(degrees))
    q = degrees.clamp_min(0).sqrt()
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(_TINY_DEGREE)
    return inv_sqrt, q


def normalized_affinity(weights: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """M' = D^-1/2 W D^-1/2 - 2 q q^T, the trivial eigenvector deflated.

    Args:
        weights: (n, n) or (B, n, n) symmetric non-negative float tensor.
        degrees: (n,) or (B, n), its row sums (zero degrees are clamped to a tiny value).
    Returns:
        Same shape, dtype and device; symmetric, spectrum in [-1, 1]; the trivial eigenvector at
        -1.
    """
    inv_sqrt = degrees.clamp_min(_TINY_DEGREE).rsqrt()
    m = weights * inv_sqrt[..., :, None]
    m *= inv_sqrt[..., None, :]
    q = degrees.clamp_min(0).sqrt()
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(_TINY_DEGREE)
    # in place: no (n, n) temporary for the rank-one deflation
    if m.ndim == 2:
        return m.addr_(q, q, alpha=-2.0)
    return m.baddbmm_(q.unsqueeze(-1), q.unsqueeze(-2), alpha=-2.0)


def fix_sign(v: torch.Tensor) -> torch.Tensor:
    """Flip each row of ``v`` ((n,) or (B, n)) so that its entry of largest magnitude is
    positive (a zero row is left as it is)."""
    top = v.gather(-1, v.abs().argmax(dim=-1, keepdim=True))
    sign = torch.sign(top)
    return v * torch.where(sign == 0, torch.ones_like(sign), sign)


def dense_fiedler(weights: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Fiedler vectors of a padded batch by a dense eigendecomposition.

    Args:
        weights: (B, N, N) padded affinities; sizes: (B,) int64 graph sizes.
    Returns:
        v: (B, N) sign-fixed D^-1/2 u (zero on padding), weights' dtype;
        eigenvalue: (B,) float64, the top eigenvalue of M'.
    """
    degrees = weights.sum(dim=-1)
    n = weights.shape[-1]
    valid = torch.arange(n, device=weights.device)[None, :] < sizes[:, None]
    m = normalized_affinity(weights, degrees)
    m = m * (valid[:, :, None] & valid[:, None, :])
    m = m + torch.diag_embed(torch.where(valid, 0.0, -2.0).to(m.dtype))  # padding below all
    work = m if m.device.type != "cpu" else m.double()
    values, vectors = torch.linalg.eigh(work)
    u = vectors[..., -1].to(weights.dtype)
    inv_sqrt, _ = _deflation(degrees, sizes)
    return fix_sign(u * inv_sqrt), values[..., -1].double()


def lanczos_fiedler(
    weights: torch.Tensor, sizes: torch.Tensor, tol: float = LANCZOS_TOL,
    max_steps: int = LANCZOS_MAX_STEPS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fiedler vectors of a padded batch by Lanczos with full reorthogonalisation.

    One step for the whole batch: y = D^-1/2 W D^-1/2 x - 2 q (q . x) (a batched product with W,
    M' never formed), Gram-Schmidt against every earlier vector (twice: float32 loses
    orthogonality otherwise), the next vector. Every :data:`CHECK_EVERY` steps the tridiagonal
    matrices are diagonalised and the top Ritz pairs' residuals |beta_m s_m| compared with
    ``tol``. Padding stays exactly zero (zero start entries, zero rows of W), so each graph's
    Krylov space lives in its own n_b coordinates; a graph whose beta vanishes (its Krylov space
    is invariant, e.g. n_b steps taken) keeps the Ritz pair it has.

    Args:
        weights: (B, N, N) padded symmetric non-negative affinities; sizes: (B,) int64.
        tol: residual bound; max_steps: Krylov dimension cap.
    Returns:
        v: (B, N) sign-fixed D^-1/2 u (zero on padding), weights' dtype;
        eigenvalue: (B,) float64 top Ritz values of M';
        converged: (B,) bool (False: the caller solves that graph another way).
    """
    b, n, _ = weights.shape
    device, dtype = weights.device, weights.dtype
    degrees = weights.sum(dim=-1)
    inv_sqrt, q = _deflation(degrees, sizes)
    steps = int(min(max_steps, n))
    gen = torch.Generator().manual_seed(0)  # a fixed start: deterministic run to run
    start = torch.randn(n, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    x = start[None, :] * (inv_sqrt > 0)
    basis = torch.zeros(b, steps + 1, n, dtype=dtype, device=device)
    basis[:, 0] = x / x.norm(dim=-1, keepdim=True).clamp_min(_TINY_DEGREE)
    alpha = torch.zeros(b, steps, dtype=torch.float64, device=device)
    beta = torch.zeros(b, steps, dtype=torch.float64, device=device)
    alive = torch.ones(b, dtype=torch.bool, device=device)  # Krylov space still growing
    length = torch.full((b,), steps, dtype=torch.int64, device=device)
    ritz = None
    for k in range(steps):
        x = basis[:, k]
        y = inv_sqrt * torch.bmm(weights, (inv_sqrt * x).unsqueeze(-1)).squeeze(-1)
        y = y - 2.0 * q * (q * x).sum(dim=-1, keepdim=True)
        alpha[:, k] = (x * y).sum(dim=-1).double()
        span = basis[:, : k + 1]
        for _ in range(2):
            y = y - torch.bmm(torch.bmm(y.unsqueeze(1), span.transpose(1, 2)), span).squeeze(1)
        norm = y.norm(dim=-1)
        ended = alive & (norm.double() < _BREAKDOWN)
        length = torch.where(ended, k + 1, length)
        alive = alive & ~ended
        beta[:, k] = torch.where(alive, norm.double(), 0.0)
        basis[:, k + 1] = torch.where(alive[:, None],
                                      y / norm.clamp_min(_TINY_DEGREE)[:, None], 0.0)
        if (k + 1) % CHECK_EVERY and k + 1 < steps:
            continue
        ritz = _top_ritz(alpha[:, : k + 1], beta[:, : k + 1], length.clamp_max(k + 1))
        residual = ritz[2]
        if bool((residual <= tol).all()):
            break
    theta, s, residual = ritz
    m = s.shape[-1]
    u = torch.bmm(s.to(dtype).unsqueeze(1), basis[:, :m]).squeeze(1)
    u = u / u.norm(dim=-1, keepdim=True).clamp_min(_TINY_DEGREE)
    return fix_sign(u * inv_sqrt), theta, residual <= tol


def _top_ritz(alpha: torch.Tensor, beta: torch.Tensor, length: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top Ritz value, its (B, m) coordinates and residual |beta_last s_last| of each graph's
    tridiagonal matrix; entries past a graph's ``length`` are pushed below the spectrum."""
    m = alpha.shape[-1]
    inside = torch.arange(m, device=alpha.device)[None, :] < length[:, None]
    diag = torch.where(inside, alpha, -10.0)
    off = torch.where(inside[:, 1:], beta[:, : m - 1], 0.0)
    t = torch.diag_embed(diag) + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    values, vectors = torch.linalg.eigh(t)
    s = vectors[..., -1]
    last = (length - 1).clamp_min(0)
    residual = (beta.gather(1, last[:, None]).squeeze(1) * s.gather(1, last[:, None]).squeeze(1))
    return values[:, -1], s, residual.abs()


def arpack_fiedler(weights: torch.Tensor, sizes: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fiedler vectors by scipy's ARPACK, one graph at a time on the CPU. M' is handed over in
    float64: in float32, ARPACK's vector moved tokens across DiffCut's thresholds on 2,304-node
    graphs where the dense float32 ``eigh`` of the official code and float64 agree
    (bench/bench_ncut.py, 48x48 tokens). Returns what :func:`lanczos_fiedler` returns; a graph
    ARPACK does not converge on is marked so."""
    from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, eigsh

    b, n, _ = weights.shape
    v = torch.zeros(b, n, dtype=weights.dtype, device=weights.device)
    theta = torch.zeros(b, dtype=torch.float64)
    converged = torch.zeros(b, dtype=torch.bool)
    for i, size in enumerate(sizes.tolist()):
        w = weights[i, :size, :size]
        d = w.sum(dim=-1)
        a = normalized_affinity(w.double(), d.double()).detach().cpu().numpy()
        v0 = np.random.default_rng(0).standard_normal(size).astype(a.dtype)
        try:
            values, vectors = eigsh(a, k=1, which="LA", v0=v0, maxiter=size * 20,
                                    tol=ARPACK_TOL)
        except (ArpackNoConvergence, ArpackError):
            continue
        u = torch.from_numpy(np.ascontiguousarray(vectors[:, 0])).to(weights.device)
        v[i, :size] = fix_sign(u * d.clamp_min(_TINY_DEGREE).rsqrt())
        theta[i] = float(values[0])
        converged[i] = True
    return v, theta.to(weights.device), converged.to(weights.device)


def fiedler_batch(weights: torch.Tensor, sizes: torch.Tensor, kind: str
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Fiedler vectors of a padded batch with one solver kind ("dense", "lanczos", "arpack");
    graphs an iterative solver leaves unconverged are solved densely.

    Returns:
        v: (B, N) sign-fixed, zero on padding; eigenvalue: (B,) float64 (top of M').
    """
    if kind == "dense":
        return dense_fiedler(weights, sizes)
    solve = lanczos_fiedler if kind == "lanczos" else arpack_fiedler
    v, theta, converged = solve(weights, sizes)
    if not bool(converged.all()):
        failed = torch.nonzero(~converged).squeeze(1)
        v_dense, theta_dense = dense_fiedler(weights.index_select(0, failed),
                                             sizes.index_select(0, failed))
        v = v.index_copy(0, failed, v_dense)
        theta = theta.index_copy(0, failed, theta_dense.to(theta.dtype))
    return v, theta


def fiedler_vector(
    weights: torch.Tensor, degrees: torch.Tensor | None = None, solver: str = "auto"
) -> tuple[torch.Tensor, float]:
    """The generalized Fiedler vector of one graph, sign-fixed.

    Args:
        weights: (n, n) symmetric non-negative float tensor, n >= 2, any device.
        degrees: ignored (the row sums are taken from ``weights``); kept for callers that pass
            them.
        solver: "auto" (dense below :data:`DENSE_BELOW` nodes, else the torch Lanczos),
            "lanczos", "arpack" or "dense"; an iterative solver that does not converge falls
            back to the dense one.
    Returns:
        v: (n,) float tensor on the input's device, v = D^-1/2 u, sign fixed so that its entry
           of largest magnitude is positive (deterministic across solvers).
        eigenvalue: the second-largest eigenvalue of D^-1/2 W D^-1/2 (1 minus the second-smallest
           eigenvalue of L_sym): close to 1 when the graph has a clean two-way split.
    """
    n = weights.shape[0]
    if n < 2:
        raise ValueError("a Fiedler vector needs at least 2 nodes")
    kind = solver_kind(n, solver, weights.device)
    sizes = torch.tensor([n], device=weights.device)
    v, theta = fiedler_batch(weights[None], sizes, kind)
    return v[0], float(theta[0])
