"""DWC: random walks on planted attention, the walk length as a granularity knob, the automatic
threshold, the three graphs, the method end to end and its registration."""

import numpy as np
import pytest
import torch

from diffuseg.graph.ncut import ConstantTau
from diffuseg.graph.stopping import SweepContrast, TreeGap
from diffuseg.methods import get_method
from diffuseg.methods.diffseg import aggregate_attention
from diffuseg.methods.dwc import DWCConfig, dwc_tokens, dwc_walk_and_cut, run_dwc
from diffuseg.types import Encoding

from planted import (
    adjusted_rand_index,
    planted_attention,
    planted_hierarchy_attention,
    planted_labels,
)


@pytest.fixture(scope="module")
def hierarchy():
    return planted_hierarchy_attention(32, 32)


# --- the walk length and the automatic threshold --------------------------------------------


def test_longer_walks_give_coarser_segmentations(hierarchy):
    """Measured with the default automatic rule: k = 1..8 give the 6 regions, k = 16 and 32 the 2
    groups (the k-step escape probability from a region within its group grows to ~2/3, while
    leaving the group stays unlikely). No tau was tuned: the rule picked it per walk."""
    attention, fine, coarse = hierarchy
    segments = {}
    for k in (1, 4, 32):
        result = dwc_walk_and_cut(attention, DWCConfig(k=k))
        labels = result.cut.labels
        segments[k] = result.cut.num_segments
        level = fine if segments[k] == 6 else coarse
        assert adjusted_rand_index(level, labels) == 1.0, (k, segments[k])
        assert result.tau is not None
    assert segments == {1: 6, 4: 6, 32: 2}


def test_a_constant_tau_must_follow_the_walk_length(hierarchy):
    """The k-step NCut of a boundary grows with k (for two lumped blocks exactly
    1 - (1 - NCut_1)^k), so a constant tau tuned for one k fails at another: tau = 0.5 gives the
    6 regions at k = 1 but one segment at k = 32, where the automatic rule finds the 2 groups."""
    attention, fine, _ = hierarchy
    k1 = dwc_tokens(attention, DWCConfig(k=1, stopping="constant", tau=0.5))
    assert k1.num_segments == 6 and adjusted_rand_index(fine, k1.labels) == 1.0
    assert dwc_tokens(attention, DWCConfig(k=32, stopping="constant", tau=0.5)).num_segments == 1


# --- the three graphs on planted partitions --------------------------------------------------


@pytest.mark.parametrize("graph", ["reversible", "plain", "features"])
def test_each_graph_recovers_planted_regions(graph):
    labels = planted_labels(32, 32, 5, seed=1)
    attention = planted_attention(labels, temperature=0.1, noise=0.05, factors=(1, 2, 4))
    cut = dwc_tokens(attention, DWCConfig(graph=graph))
    assert cut.num_segments == 5
    assert adjusted_rand_index(labels, cut.labels) == 1.0


def test_aggregated_attention_is_accepted_directly():
    labels = planted_labels(16, 16, 3, seed=2)
    attention = planted_attention(labels, temperature=0.1, noise=0.05, factors=(1, 2))
    aggregated = aggregate_attention(attention)
    a = dwc_tokens(attention, DWCConfig())
    b = dwc_tokens(aggregated, DWCConfig())
    assert torch.equal(a.labels, b.labels) and adjusted_rand_index(labels, a.labels) == 1.0
    with pytest.raises(ValueError, match="needs self-attention"):
        dwc_tokens({}, DWCConfig())


# --- end to end ---------------------------------------------------------------------------


def test_run_dwc_labels_the_requested_size():
    labels = planted_labels(32, 32, 4, seed=3)
    enc = Encoding(attention=planted_attention(labels, temperature=0.1, noise=0.05,
                                               factors=(1, 2, 4)),
                   meta={"original_size": [96, 128]})
    seg = run_dwc(enc)
    assert seg.labels.shape == (96, 128) and seg.labels.dtype == np.int32
    assert seg.num_segments == 4
    assert adjusted_rand_index(labels, seg.token_labels) == 1.0
    # concept assignment (prototype rows of P^k, bilinear scores): blocky regions upsample
    up = np.kron(labels, np.ones((3, 4), dtype=np.int64))
    assert adjusted_rand_index(up, seg.labels) > 0.97
    assert seg.config["method"] == "dwc" and seg.config["stopping"] == "gap"
    assert 0 < seg.config["tau_chosen"] < 1
    assert seg.config["output_size"] == [96, 128]
    assert len(np.unique(seg.labels_at_depth(0))) == 1
    at_tokens = run_dwc(enc, DWCConfig(stopping="constant", tau=0.5), output_size=(32, 32))
    assert adjusted_rand_index(labels, at_tokens.labels) == 1.0
    assert "tau_chosen" not in at_tokens.config
    with pytest.raises(ValueError, match="needs Encoding.attention"):
        run_dwc(Encoding(image=np.zeros((8, 8, 3), np.uint8)))
    with pytest.raises(ValueError, match="needs the image"):
        run_dwc(enc, DWCConfig(refine=True))


def test_registration_and_config():
    spec = get_method("dwc")
    assert spec.needs == {"attention"} and spec.default_backbone == "sd14"
    assert spec.config_cls is DWCConfig
    cfg = spec.make_config({"k": 4, "graph": "features"})
    assert (cfg.k, cfg.graph) == (4, "features")
    with pytest.raises(ValueError, match="unknown setting"):
        spec.make_config({"kk": 4})
    # stopping rules and their parameters, Python and CLI forms
    assert DWCConfig().stopping_rule() == TreeGap()
    assert DWCConfig(stopping="constant", tau=0.3).stopping_rule() == ConstantTau(0.3)
    by_dict = DWCConfig(stopping="sweep", stopping_params={"ratio": 0.7})
    by_cli = DWCConfig(stopping="sweep", stopping_params=("ratio=0.7",))
    assert by_dict == by_cli and by_dict.stopping_params == (("ratio", 0.7),)
    assert by_dict.stopping_rule() == SweepContrast(0.7)
    hash(by_dict)  # frozen configs stay hashable
    for bad, match in [
        ({"graph": "knn"}, "graph must be one of reversible, plain, features"),
        ({"k": 0}, "k must be >= 1"),
        ({"k": 2.5}, "k must be an integer"),
        ({"stopping": "otsu"}, "stopping must be one of constant, gap"),
        ({"stopping": "sweep", "stopping_params": {"tau": 1}}, "bad parameters"),
        ({"stopping": "constant", "stopping_params": {"tau": 1}}, "DWCConfig.tau"),
    ]:
        with pytest.raises(ValueError, match=match):
            DWCConfig(**bad)
