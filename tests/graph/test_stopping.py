"""Stopping rules: each rule's decision, the registry, pruning an explored tree, tree rules."""

import numpy as np
import pytest
import torch

from diffuseg.graph.affinity import cosine_affinity
from diffuseg.graph.ncut import ConstantTau, SplitCandidate, recursive_ncut
from diffuseg.graph.stopping import (
    STOPPING_RULES,
    RelativeToRoot,
    SpectralGap,
    SweepContrast,
    TreeGap,
    TreeRule,
    cut_with_rule,
    make_stopping_rule,
    prune_cut,
    rule_params,
)

from planted import adjusted_rand_index, planted_features, planted_labels


def candidate(ncut=0.3, depth=1, eigenvalue=0.8, sweep=(0.3, 0.6, 0.9, 1.0, float("inf")),
              root_ncut=0.1, size=10) -> SplitCandidate:
    return SplitCandidate(
        ncut=ncut,
        depth=depth,
        size=size,
        eigenvalue=eigenvalue,
        sweep=torch.tensor(sweep, dtype=torch.float64),
        root_ncut=root_ncut,
        mask=torch.arange(size) < size // 2,
    )


def test_per_candidate_rules_decide_as_documented():
    # sweep median of the finite values (0.3, 0.6, 0.9, 1.0) is 0.6 (torch's lower median)
    assert SweepContrast(0.6)(candidate(ncut=0.3))  # 0.3 < 0.36
    assert not SweepContrast(0.4)(candidate(ncut=0.3))  # 0.3 >= 0.24
    assert not SweepContrast()(candidate(sweep=(float("inf"),)))
    with pytest.raises(ValueError):
        SweepContrast(0.0)
    rule = RelativeToRoot(factor=2.0, floor=0.05)
    assert rule(candidate(ncut=0.19, root_ncut=0.1)) and not rule(candidate(ncut=0.21))
    assert rule(candidate(ncut=0.09, root_ncut=0.001))  # the floor: 2 * 0.05
    assert not rule(candidate(ncut=0.11, root_ncut=0.001))
    assert rule(candidate(ncut=0.9, depth=0, root_ncut=0.9))  # the root: better than random
    assert not rule(candidate(ncut=1.1, depth=0, root_ncut=1.1))
    assert SpectralGap(0.7)(candidate(eigenvalue=0.8))
    assert not SpectralGap(0.9)(candidate(eigenvalue=0.8))
    with pytest.raises(ValueError, match="fast cut mode"):
        SpectralGap()(candidate(eigenvalue=float("nan")))


def test_tree_gap_threshold_sits_in_the_widest_gap():
    values = torch.tensor([0.9, 0.05, 0.95, 0.07, 0.85, 0.06])
    tau = TreeGap().threshold(values)
    assert tau == pytest.approx(float(np.sqrt(0.07 * 0.85)))  # geometric middle of the gap
    assert TreeGap(space="linear").threshold(values) == pytest.approx((0.07 + 0.85) / 2)
    # log gaps are scale-free: the same structure 100x smaller gives the same split, down to
    # the floor (values below it count as equal)
    assert TreeGap().threshold(values * 1e-2) == pytest.approx(tau * 1e-2)
    assert TreeGap(floor=0.1).threshold(values) == pytest.approx(float(np.sqrt(0.1 * 0.85)))
    assert TreeGap().threshold(torch.tensor([0.3])) == 1.0  # one value: explore_tau decides
    assert TreeGap().threshold(torch.tensor([])) == 0.0
    assert isinstance(TreeGap(), TreeRule) and not isinstance(ConstantTau(0.5), TreeRule)
    with pytest.raises(ValueError):
        TreeGap(space="cubic")


def test_registry():
    assert set(STOPPING_RULES) == {"constant", "gap", "sweep", "root", "spectral"}
    assert make_stopping_rule("constant", tau=0.3) == ConstantTau(0.3)
    assert make_stopping_rule("sweep", ratio=0.5) == SweepContrast(0.5)
    assert make_stopping_rule("gap") == TreeGap()
    with pytest.raises(ValueError, match="unknown stopping rule"):
        make_stopping_rule("otsu")
    with pytest.raises(ValueError, match="bad parameters"):
        make_stopping_rule("constant")
    with pytest.raises(ValueError, match="bad parameters"):
        make_stopping_rule("sweep", tau=0.3)
    assert rule_params(("ratio=0.8", "space=log", "explore_depth=none")) == {
        "ratio": 0.8, "space": "log", "explore_depth": None}
    assert rule_params({"ratio": 0.8}) == {"ratio": 0.8}
    assert rule_params([("factor", 3)]) == {"factor": 3}
    with pytest.raises(ValueError, match="name=value"):
        rule_params(("ratio",))


def _graph() -> tuple[np.ndarray, torch.Tensor]:
    labels = planted_labels(24, 24, 6, seed=4)
    return labels, cosine_affinity(planted_features(labels, noise=0.08, dim=32), alpha=4)


@pytest.mark.parametrize("tau", [0.05, 0.2, 0.5, 0.9])
def test_pruning_an_explored_tree_equals_cutting_with_that_tau(tau):
    _, w = _graph()
    explored = recursive_ncut(w, 1.0, self_loops=False, max_depth=6)
    direct = recursive_ncut(w, tau, self_loops=False, max_depth=6)
    pruned = prune_cut(explored, tau)
    assert torch.equal(pruned.labels, direct.labels)
    assert pruned.hierarchy.to_dict() == direct.hierarchy.to_dict()


def test_cut_with_rule_dispatches_on_the_rule_kind():
    labels, w = _graph()
    plain = cut_with_rule(w, ConstantTau(0.5), self_loops=False)
    assert plain.tau is None
    assert torch.equal(plain.cut.labels, recursive_ncut(w, 0.5, self_loops=False).labels)
    auto = cut_with_rule(w, TreeGap(), self_loops=False)
    assert auto.tau is not None
    assert auto.cut.num_segments == 6 and adjusted_rand_index(labels, auto.cut.labels) == 1.0
    # the chosen tau reproduces the result as a constant rule
    again = recursive_ncut(w, auto.tau, self_loops=False, max_depth=TreeGap().explore_depth)
    assert torch.equal(again.labels, auto.cut.labels)
    # max_depth still limits a tree rule's exploration
    assert cut_with_rule(w, TreeGap(), self_loops=False, max_depth=1).cut.num_segments == 2
