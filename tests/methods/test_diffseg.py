"""DiffSeg: aggregation, anchors, symmetric KL, merging, labelling, config and registration."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import diffuseg.methods.assign as assign
from diffuseg.methods import get_method
from diffuseg.methods.assign import upsample_argmax
from diffuseg.methods.diffseg import (
    DIFFSEG_PRESETS,
    DiffSegConfig,
    aggregate_attention,
    aggregation_weights,
    anchor_indices,
    anchor_positions,
    label_proposals,
    merge_attention,
    merge_proposals,
    relabel_consecutive,
    run_diffseg,
    segment_aggregated,
    symmetric_kl,
)
from diffuseg.types import Encoding, Segmentation

from planted import adjusted_rand_index, planted_attention, planted_labels

# 1-D bilinear (half-pixel centres) upsampling x2 of a delta on 2 samples, worked out by hand:
# output sample j sits at source coordinate j/2 - 1/4, clamped to [0, 1].
_DELTA_UP = {0: np.array([1.0, 0.75, 0.25, 0.0]), 1: np.array([0.0, 0.25, 0.75, 1.0])}


def _identity_attention(h: int, w: int) -> torch.Tensor:
    """Every query attends only to itself: row q is a delta at key q."""
    return torch.eye(h * w).reshape(h * w, h, w)


@pytest.fixture(scope="module")
def planted_32():
    labels = planted_labels(32, 32, 5, seed=0)
    return labels, planted_attention(labels, temperature=0.1, noise=0.05, seed=0)


@pytest.fixture(scope="module")
def planted_24x32():
    labels = planted_labels(24, 32, 5, seed=1)
    return labels, planted_attention(labels, temperature=0.1, noise=0.05, seed=1)


# ---------------------------------------------------------------- aggregation


def test_default_weights_are_proportional_to_resolution():
    w = aggregation_weights([(8, 8), (64, 64), (16, 16), (32, 32)])
    assert list(w) == [(64, 64), (32, 32), (16, 16), (8, 8)]
    np.testing.assert_allclose(list(w.values()), np.array([64, 32, 16, 8]) / 120)
    assert aggregation_weights([(4, 4), (2, 2)], [3.0, 1.0]) == {(4, 4): 0.75, (2, 2): 0.25}
    assert aggregation_weights([(4, 4), (2, 2)], {(2, 2): 2.0}) == {(4, 4): 0.0, (2, 2): 1.0}
    with pytest.raises(ValueError):
        aggregation_weights([(4, 4), (2, 2)], [1.0])
    with pytest.raises(ValueError):
        aggregation_weights([(4, 4)], [-1.0])


def test_aggregation_two_grids_by_hand():
    attention = {(4, 4): _identity_attention(4, 4), (2, 2): _identity_attention(2, 2)}
    out = aggregate_attention(attention)
    assert out.shape == (16, 4, 4) and out.dtype == torch.float32
    # weights 4/6 and 2/6; the 2x2 delta at key (a, b) upsampled is outer(up[a], up[b]), sum 4;
    # query (r, c) of the 4x4 grid takes query (r//2, c//2) of the 2x2 grid.
    for r in range(4):
        for c in range(4):
            expected = np.zeros((4, 4))
            expected[r, c] += 4 / 6
            expected += (2 / 6) * np.outer(_DELTA_UP[r // 2], _DELTA_UP[c // 2]) / 4
            np.testing.assert_allclose(out[r * 4 + c].numpy(), expected, atol=1e-7)
    np.testing.assert_allclose(out.sum((1, 2)).numpy(), 1.0, atol=1e-6)
    # hand values at one query: (0, 0) -> delta 2/3 + 1/3 * 1/4 on key (0, 0)
    assert out[0, 0, 0].item() == pytest.approx(4 / 6 + (2 / 6) / 4)
    assert out[0, 1, 1].item() == pytest.approx((2 / 6) * 0.75 * 0.75 / 4)
    # user weights override (normalised): only the coarse grid
    coarse_only = aggregate_attention(attention, weights=[0.0, 5.0])
    np.testing.assert_allclose(
        coarse_only[5].numpy(), np.outer(_DELTA_UP[0], _DELTA_UP[0]) / 4, atol=1e-7
    )


def test_aggregation_non_square_and_low_precision():
    # 4x6 identity and 2x3 uniform: weights sqrt(24) : sqrt(6) = 2/3 : 1/3
    attention = {
        (4, 6): _identity_attention(4, 6).half(),
        (2, 3): torch.full((6, 2, 3), 1 / 6).half(),
    }
    out = aggregate_attention(attention)
    assert out.shape == (24, 4, 6) and out.dtype == torch.float32
    expected = (2 / 3) * torch.eye(24) + (1 / 3) / 24
    np.testing.assert_allclose(out.reshape(24, 24).numpy(), expected.numpy(), atol=1e-6)
    # non-square pyramid 48x64 .. 6x8 from a planted map: rows are distributions
    labels = planted_labels(48, 64, 4, seed=3)
    pyramid = planted_attention(labels, factors=(1, 2, 4, 8))
    assert set(pyramid) == {(48, 64), (24, 32), (12, 16), (6, 8)}
    agg = aggregate_attention(pyramid)
    assert agg.shape == (48 * 64, 48, 64)
    np.testing.assert_allclose(agg.sum((1, 2)).numpy(), 1.0, atol=1e-5)


def test_aggregation_explicit_target_tiles_queries_by_nearest():
    attention = {(2, 2): _identity_attention(2, 2)}
    out = aggregate_attention(attention, target=(4, 4))
    assert out.shape == (16, 4, 4)
    # queries (0,0), (0,1), (1,0), (1,1) of the 4x4 grid all read source query (0, 0)
    for q in (0, 1, 4, 5):
        np.testing.assert_allclose(out[q].numpy(), np.outer(_DELTA_UP[0], _DELTA_UP[0]) / 4)


# ---------------------------------------------------------------- anchors


def test_anchor_positions_match_official_and_generalise():
    assert anchor_positions(64, 16) == list(range(1, 62, 4))  # official: 1, 5, ..., 61
    assert anchor_positions(32, 16) == list(range(0, 31, 2))
    assert anchor_positions(48, 16) == list(range(1, 47, 3))
    # the integer stride would leave rows 0..3 and 20..23 empty: spread instead
    assert anchor_positions(24, 16) == [(i * 23) // 15 for i in range(16)]
    assert anchor_positions(8, 16) == list(range(8))
    assert anchor_positions(7, 1) == [3]
    idx = anchor_indices((24, 32), 16)
    assert idx.shape == (256,)
    assert idx[:2].tolist() == [0 * 32 + 0, 0 * 32 + 2]  # row-major, as the official meshgrid
    assert idx[16].item() == 1 * 32 + 0


# ---------------------------------------------------------------- symmetric KL


def _direct_kl(p: np.ndarray, q: np.ndarray, eps: float) -> np.ndarray:
    out = np.zeros((len(p), len(q)))
    for i, a in enumerate(p):
        for j, b in enumerate(q):
            out[i, j] = 0.5 * np.sum(a * np.log((a + eps) / (b + eps))) + 0.5 * np.sum(
                b * np.log((b + eps) / (a + eps))
            )
    return out


def test_vectorised_kl_equals_direct_formula():
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(3 * torch.randn(17, 256, generator=gen), 1)
    q = torch.softmax(3 * torch.randn(40, 256, generator=gen), 1)
    q[3, :100] = 0.0  # exact zeros stay finite thanks to epsilon
    q[3] /= q[3].sum()
    expected = _direct_kl(p.double().numpy(), q.double().numpy(), 1e-8)
    fast = symmetric_kl(p, q, epsilon=1e-8, mode="fast", chunk=7)
    ref = symmetric_kl(p, q, epsilon=1e-8, mode="reference", chunk=5)
    assert fast.dtype == torch.float32 and fast.shape == (17, 40)
    assert torch.isfinite(fast).all()
    np.testing.assert_allclose(fast.numpy(), expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ref.numpy(), expected, atol=1e-5, rtol=0)
    self_d = symmetric_kl(p, p)
    np.testing.assert_allclose(torch.diagonal(self_d).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(self_d.numpy(), self_d.T.numpy(), atol=1e-5)


# ---------------------------------------------------------------- merging


def test_merge_proposals_takes_absorbed_ones_too():
    # three distributions on 2 keys: D(p0, p1) and D(p1, p2) small, D(p0, p2) large
    p = torch.tensor([[0.50, 0.50], [0.35, 0.65], [0.20, 0.80]])
    d = symmetric_kl(p, p)
    tau = float((d[0, 1] + d[0, 2]) / 2)
    assert d[0, 1] < tau and d[1, 2] < tau and d[0, 2] > tau
    merged = merge_proposals(p, tau)
    # walk: 0 takes {0, 1}; 1 is absorbed; 2 takes {1, 2} (1 again, although absorbed)
    expected = torch.stack([p[[0, 1]].mean(0), p[[1, 2]].mean(0)])
    np.testing.assert_allclose(merged.numpy(), expected.numpy(), atol=1e-7)
    # a tiny tau keeps every proposal (each is in its own group)
    np.testing.assert_allclose(merge_proposals(p, 1e-9).numpy(), p.numpy())


def test_first_iteration_has_one_proposal_per_anchor(planted_32):
    labels, attention = planted_32
    agg = aggregate_attention(attention)
    first = merge_attention(agg, (0.9,), anchor_grid=16)
    assert first.shape == (256, 32, 32)
    np.testing.assert_allclose(first.sum((1, 2)).numpy(), 1.0, atol=1e-5)
    assert merge_attention(agg, (0.9, 0.9), anchor_grid=16).shape[0] == 5
    assert merge_attention(agg, (0.9, 0.9), anchor_grid=4).shape[0] == len(np.unique(labels[
        np.ix_(anchor_positions(32, 4), anchor_positions(32, 4))]))


@pytest.mark.parametrize("case", ["planted_32", "planted_24x32"])
def test_planted_regions_recovered_exactly_fast_equals_reference(case, request):
    labels, attention = request.getfixturevalue(case)
    h, w = labels.shape
    agg = aggregate_attention(attention)
    fast = segment_aggregated(agg, DiffSegConfig(tau=0.9))
    ref = segment_aggregated(agg, DiffSegConfig(tau=0.9, mode="reference"))
    assert fast.labels.shape == (h, w) and fast.token_labels.shape == (h, w)
    assert fast.proposals.shape == (5, h, w)
    assert adjusted_rand_index(fast.labels, labels) == 1.0
    assert adjusted_rand_index(fast.token_labels, labels) == 1.0
    assert torch.equal(fast.labels, ref.labels)
    np.testing.assert_allclose(fast.proposals.numpy(), ref.proposals.numpy(), atol=1e-6)
    # COCO preset tau and the K-means refinement find the same regions here
    assert adjusted_rand_index(
        segment_aggregated(agg, DiffSegConfig(tau=DIFFSEG_PRESETS["coco-stuff-27"])).labels,
        labels,
    ) == 1.0
    refined = segment_aggregated(agg, DiffSegConfig(refine_kmeans=True))
    assert adjusted_rand_index(refined.labels, labels) == 1.0


def test_upsampled_labels_follow_the_regions(planted_32):
    labels, attention = planted_32
    out = segment_aggregated(aggregate_attention(attention), DiffSegConfig(), (96, 80))
    assert out.labels.shape == (96, 80)
    assert sorted(torch.unique(out.labels).tolist()) == list(range(5))
    truth = F.interpolate(torch.as_tensor(labels)[None, None].float(), size=(96, 80),
                          mode="nearest")[0, 0]
    # bilinear proposal maps move boundaries by at most about a token
    assert adjusted_rand_index(out.labels, truth) > 0.95


def test_tau_monotonicity_on_noisy_attention():
    labels = planted_labels(32, 32, 7, seed=2)
    agg = aggregate_attention(planted_attention(labels, temperature=0.1, noise=0.3, seed=2))
    counts = [merge_attention(agg, (tau,) * 3).shape[0] for tau in (0.2, 0.5, 0.9, 1.5, 3, 8)]
    assert counts == sorted(counts, reverse=True)
    assert counts[0] > 7 and counts[-1] == 1


# ---------------------------------------------------------------- labelling


def test_upsample_argmax_chunked_equals_direct(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    maps = torch.rand(23, 6, 5, generator=gen)
    direct = F.interpolate(maps[None], size=(13, 11), mode="bilinear",
                           align_corners=False)[0].argmax(0)
    monkeypatch.setattr(assign, "_UPSAMPLE_CHUNK_ELEMS", 3 * 13 * 11)  # chunks of 3 maps
    assert torch.equal(upsample_argmax(maps, (13, 11)), direct)
    assert torch.equal(upsample_argmax(maps, (6, 5)), maps.argmax(0))


def test_labels_are_consecutive_by_proposal_index():
    # proposal 1 never wins: labels 0, 1 are proposals 0 and 2
    maps = torch.zeros(3, 2, 2)
    maps[0, 0] = 1.0
    maps[2, 1] = 1.0
    maps[1] = 0.1
    labels, token_labels, kept = label_proposals(maps, (2, 2))
    assert kept.tolist() == [0, 2]
    assert labels.tolist() == [[0, 0], [1, 1]]
    assert token_labels.tolist() == [[0, 0], [1, 1]]
    relabelled, kept = relabel_consecutive(torch.tensor([5, 2, 5, 9]), 10)
    assert relabelled.tolist() == [1, 0, 1, 2] and kept.tolist() == [2, 5, 9]


# ---------------------------------------------------------------- config, registry, run


def test_config_defaults_validation_and_registry():
    spec = get_method("diffseg")
    assert spec.config_cls is DiffSegConfig and spec.needs == frozenset({"attention"})
    cfg = spec.make_config({"tau": 1.1})
    assert cfg.tau == 1.1 and cfg.resolved_taus() == (1.1, 1.1, 1.1)
    assert DiffSegConfig().tau == 0.9 and DiffSegConfig().anchor_grid == 16
    assert not DiffSegConfig().refine_kmeans and DiffSegConfig().mode == "fast"
    assert DiffSegConfig(taus=[1.0, 1.2]).resolved_taus() == (1.0, 1.2)
    assert DiffSegConfig(weights=[1, 2]).weights == (1, 2)
    assert DIFFSEG_PRESETS == {"coco-stuff-27": 1.1, "cityscapes": 0.9}
    for bad in ({"tau": 0.0}, {"taus": []}, {"mode": "slow"}, {"iterations": 0},
                {"kl_epsilon": 0.0}, {"anchor_grid": 0}):
        with pytest.raises(ValueError):
            DiffSegConfig(**bad)
    with pytest.raises(ValueError, match="valid"):
        spec.make_config({"threshold": 1.0})


def test_run_diffseg_on_planted_encoding(planted_24x32):
    labels, attention = planted_24x32
    enc = Encoding(attention=attention, meta={"image_size": [96, 128]})
    seg = run_diffseg(enc, DiffSegConfig())
    assert isinstance(seg, Segmentation)
    assert seg.labels.shape == (96, 128) and seg.labels.dtype == np.int32
    assert seg.num_segments == 5 and seg.hierarchy is None
    assert seg.token_labels.shape == (24, 32)
    assert adjusted_rand_index(seg.token_labels, labels) == 1.0
    assert seg.config["method"] == "diffseg" and seg.config["tau"] == 0.9
    # requested size wins over the config's, which wins over meta["original_size"]
    assert run_diffseg(enc, DiffSegConfig(), output_size=(30, 40)).labels.shape == (30, 40)
    assert run_diffseg(enc, DiffSegConfig(output_size=(12, 16))).labels.shape == (12, 16)
    enc.meta["original_size"] = [48, 50]
    seg = get_method("diffseg").run(enc, get_method("diffseg").make_config({"tau": 1.1}))
    assert seg.labels.shape == (48, 50) and seg.config["tau"] == 1.1
    assert math.isclose(seg.config["kl_epsilon"], DiffSegConfig().kl_epsilon)
    with pytest.raises(ValueError, match="attention"):
        run_diffseg(Encoding(features=torch.zeros(3, 4, 4)), DiffSegConfig())


def test_group_means_average_each_distinct_group_once():
    """Anchors of one region select the same group; averaging each distinct group once gives
    exactly the per-anchor means."""
    from diffuseg.methods.diffseg import _group_means

    gen = torch.Generator().manual_seed(0)
    flat = torch.softmax(torch.randn(50, 30, generator=gen), 1)
    base = torch.rand(6, 50, generator=gen) < 0.4
    base[:, 0] = True  # no empty group
    member = base[torch.randint(0, 6, (40,), generator=gen)]  # 40 anchors, 6 distinct groups
    plain = torch.stack([flat[row].mean(0) for row in member])
    torch.testing.assert_close(_group_means(member, flat), plain, rtol=1e-6, atol=1e-7)
