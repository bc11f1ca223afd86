"""DWC at SD 1.x scale: the recursive random-walk cut on 64x64 = 4,096 tokens, fast vs reference.

Planted attention (``planted_attention``: 8 regions, temperature 0.25, noise 0.2, query grids
64/32/16/8 as SD 1.x at 512): regions exchange walkers at every step, so the spectrum is
realistic (root NCut ~0.1-0.3, no eigenvalue exactly 1). Every stage of ``run_dwc`` is timed on
its own; the cut runs in the fast mode (Lanczos + exact sweep) and in the engine's reference mode
(dense ``eigh`` + 100 sampled thresholds, the official DiffCut cut) and with the dense solver
(``solver="dense"``: exact sweep, float64 ``eigh``) in this process, on the same graph with the
same stopping rule, and the ratios are printed.

    python bench/bench_dwc.py [--quick] [--k K] [--graph G] [--stopping NAME] [--repeats N]
    python bench/bench_dwc.py --choose-defaults [--seeds 0,1]   # the stopping-rule table

``--choose-defaults`` reproduces the measurement behind DWC's default stopping rule (see
diffuseg/graph/stopping.py): for planted partitions and hierarchies at several noise levels and
walk lengths, explore the tree once per image and count, per rule, the images whose segmentation
equals a planted level exactly (ARI 1). About 8 minutes per seed on 2 CPU cores.
"""

from __future__ import annotations

# isort: off
from common import timed  # first: pins one thread before numpy and torch load
# isort: on

import argparse
import sys

import torch

from diffuseg.graph.ncut import ConstantTau, CutResult, recursive_ncut
from diffuseg.graph.stopping import (
    RelativeToRoot,
    SpectralGap,
    SweepContrast,
    TreeGap,
    cut_with_rule,
    prune_cut,
)
from diffuseg.graph.walk import (
    matrix_power_walk,
    stationary_distribution,
    transition_matrix,
    walk_graph,
)
from diffuseg.methods.assign import assign_concepts
from diffuseg.methods.diffseg import aggregate_attention
from diffuseg.methods.dwc import DWCConfig
from diffuseg.types import Hierarchy, HierarchyNode

from planted import adjusted_rand_index, planted_attention, planted_labels


def bench(args: argparse.Namespace) -> None:
    side, repeats = (32, 1) if args.quick else (64, args.repeats)
    factors = (1, 2, 4) if args.quick else (1, 2, 4, 8)
    config = DWCConfig(k=args.k, graph=args.graph, stopping=args.stopping)
    rule = config.stopping_rule()
    labels = planted_labels(side, side, args.regions, seed=0)
    attention = planted_attention(labels, temperature=args.temperature, noise=args.noise,
                                  factors=factors)

    rows: list[tuple[str, float, str]] = []
    t, aggregated = timed(lambda: aggregate_attention(attention), repeats)
    rows.append(("aggregation", t, f"{side}x{side} from grids {sorted(attention)}"))
    t, p = timed(lambda: transition_matrix(aggregated), repeats)
    rows.append(("transition matrix", t, "checked row-stochastic"))
    t, walk = timed(lambda: matrix_power_walk(p, config.k), repeats)
    rows.append(("walk P^k", t, f"k={config.k}"))
    pi = None
    if config.graph == "reversible":
        t, pi = timed(lambda: stationary_distribution(walk), repeats)
        rows.append(("stationary pi", t, f"residual {float((pi @ walk - pi).abs().sum()):.1e}"))
    t, weights = timed(lambda: walk_graph(walk, config.graph, pi=pi, alpha=config.alpha),
                       repeats)
    rows.append(("graph", t, config.graph))

    def cut(mode: str, solver: str = "auto"):
        return cut_with_rule(weights, rule, mode=mode, solver=solver,
                             self_loops=config.self_loops)

    cut("fast")  # warm-up (scipy import, allocator)
    t_fast, fast = timed(lambda: cut("fast"), repeats)
    nodes = len(fast.cut.hierarchy.nodes)
    rows.append(("cut fast", t_fast, f"{fast.cut.num_segments} segments, "
                 f"ARI {adjusted_rand_index(labels, fast.cut.labels):.4f}, {nodes} nodes, "
                 f"tau {_fmt(fast.tau)}"))
    t_ref, ref = timed(lambda: cut("reference"), 1)
    rows.append(("cut reference", t_ref, f"{ref.cut.num_segments} segments, "
                 f"ARI {adjusted_rand_index(labels, ref.cut.labels):.4f}, "
                 f"{len(ref.cut.hierarchy.nodes)} nodes, tau {_fmt(ref.tau)}"))
    t_dense, dense = timed(lambda: cut("fast", "dense"), 1)
    rows.append(("cut dense eigh", t_dense, f"{dense.cut.num_segments} segments, "
                 f"ARI {adjusted_rand_index(labels, dense.cut.labels):.4f} (fast sweep, "
                 "dense solver)"))
    out_size = (8 * side, 8 * side)
    features = walk.T.reshape(side * side, side, side)
    t, full = timed(lambda: assign_concepts(features, fast.cut.labels, out_size), repeats)
    up = torch.as_tensor(labels).repeat_interleave(8, 0).repeat_interleave(8, 1)
    rows.append(("assignment", t, f"{out_size[0]}x{out_size[1]}, ARI "
                 f"{adjusted_rand_index(up, full):.4f}"))

    print(f"DWC on {side}x{side} = {side * side} tokens, {args.regions} planted regions, "
          f"temperature {args.temperature}, noise {args.noise}, rule {args.stopping}, "
          f"self_loops {config.self_loops}, threads {torch.get_num_threads()}")
    for name, seconds, note in rows:
        print(f"  {name:18s} {seconds * 1e3:10.1f} ms   {note}")
    print(f"  speed-up of the cut, fast/reference: {t_ref / t_fast:.1f}x (target >= 20x)")
    print(f"  speed-up of the cut, fast/dense solver: {t_dense / t_fast:.1f}x")
    total = sum(s for n, s, _ in rows if n not in ("cut reference", "cut dense eigh"))
    print(f"  total (fast path): {total:.2f} s")


def _fmt(tau: float | None) -> str:
    return "-" if tau is None else f"{tau:.4f}"


# --------------------------------------------------------------------------------------------
# --choose-defaults: the stopping-rule measurement
# --------------------------------------------------------------------------------------------


def _rules() -> dict[str, object]:
    rules: dict[str, object] = {"gap (log, default)": TreeGap(),
                                "gap (linear)": TreeGap(space="linear")}
    rules.update({f"root {f}/0.05": RelativeToRoot(factor=f) for f in (1.5, 2.0)})
    rules.update({f"sweep {r}": SweepContrast(r) for r in (0.85, 0.9)})
    rules["spectral 0.5"] = SpectralGap(0.5)
    rules.update({f"constant {t}": ConstantTau(t) for t in (0.3, 0.5, 0.7)})
    return rules


def _apply(explored: CutResult, candidates: list, rule) -> CutResult:
    """The cut ``rule`` gives, from a permissive exploration and its recorded candidates."""
    split_nodes = [n for n in explored.hierarchy.nodes if n.ncut is not None]
    if isinstance(rule, TreeGap):
        values = torch.tensor([n.ncut for n in split_nodes], dtype=torch.float64)
        return prune_cut(explored, rule.threshold(values))
    accept = {n.id: bool(rule(c)) for n, c in zip(split_nodes, candidates, strict=True)}
    nodes = [HierarchyNode(n.id, n.parent, n.children, n.depth, n.size,
                           0.0 if accept.get(n.id) else 1.0, n.leaves)
             for n in explored.hierarchy.nodes]
    return prune_cut(CutResult(explored.labels, Hierarchy(nodes)), 0.5)


def choose_defaults(args: argparse.Namespace) -> None:
    from planted import planted_hierarchy_attention

    rules = _rules()
    seeds = [int(s) for s in args.seeds.split(",")]
    graphs = ("reversible", "plain", "features")
    wins = {name: dict.fromkeys(graphs, 0) for name in (*rules, "best constant (oracle)")}
    total = dict.fromkeys(graphs, 0)
    oracle = [ConstantTau(t / 20) for t in range(1, 20)]
    for seed in seeds:
        for kind in ("hierarchy 0.6", "hierarchy 0.4", "flat 5", "flat 8"):
            for noise in (0.1, 0.2, 0.3):
                coarse = None
                if kind.startswith("hierarchy"):
                    attention, fine, coarse = planted_hierarchy_attention(
                        32, 32, noise=noise, fine_scale=float(kind.split()[1]), seed=seed)
                else:
                    fine = planted_labels(32, 32, int(kind.split()[1]), seed=seed)
                    attention = planted_attention(fine, temperature=0.1 + noise, noise=noise,
                                                  seed=seed, factors=(1, 2, 4))
                p = transition_matrix(aggregate_attention(attention))
                for k in (1, 2, 4, 8):
                    walk = matrix_power_walk(p, k)
                    pi = stationary_distribution(walk)
                    for graph in graphs:
                        weights = walk_graph(walk, graph, pi=pi)
                        candidates: list = []

                        def explore(c, seen=candidates):
                            seen.append(c)
                            return c.ncut < 1.0 and c.size >= 8

                        explored = recursive_ncut(weights, explore, self_loops=False,
                                                  max_depth=8)
                        total[graph] += 1

                        def exact(cut: CutResult, fine=fine, coarse=coarse) -> bool:
                            levels = [fine] if coarse is None else [fine, coarse]
                            return any(adjusted_rand_index(lv, cut.labels) == 1.0
                                       for lv in levels)

                        for name, rule in rules.items():
                            wins[name][graph] += exact(_apply(explored, candidates, rule))
                        wins["best constant (oracle)"][graph] += any(
                            exact(_apply(explored, candidates, r)) for r in oracle)
            print(f"  seed {seed} {kind} done", file=sys.stderr, flush=True)
    print(f"images recovered exactly (ARI 1 with a planted level), of {total['reversible']} per "
          "graph, no self-loops:")
    print("  " + "rule".ljust(24) + "".join(g.ljust(12) for g in graphs))
    for name, row in wins.items():
        print("  " + name.ljust(24) + "".join(f"{row[g]:<12d}" for g in graphs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32x32 tokens, 1 repeat")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--regions", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=0.25)
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--k", type=int, default=DWCConfig.k)
    parser.add_argument("--graph", default=DWCConfig.graph)
    parser.add_argument("--stopping", default=DWCConfig.stopping)
    parser.add_argument("--choose-defaults", action="store_true")
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args()
    if args.choose_defaults:
        choose_defaults(args)
    else:
        bench(args)


if __name__ == "__main__":
    main()
