"""What the methods do with inputs that are not what they claim to be.

Attention (DiffSeg, the k-means baseline, DWC): one shared check,
:func:`diffuseg.graph.affinity.check_attention`, run by DiffSeg's aggregation: finite,
non-negative, each key map summing to 1 within a tolerance; otherwise a ValueError naming the
grid and the fault (before, one NaN gave DiffSeg 1 segment and negative attention 247).

Features (DiffCut): the cosine affinity is scale-invariant and safe from overflow and underflow
(features x 1e37 gave 1 segment, x 1e-30 moved the root NCut from 0.195 to 0.091), and NaN / inf,
0 channels or an empty grid are clear errors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffuseg.graph.affinity import (
    ATTENTION_SUM_ATOL,
    attention_sum_atol,
    check_attention,
    check_features,
    cosine_affinity,
    max_abs_scaled,
)
from diffuseg.methods.baselines import KMeansConfig, kmeans_attention, run_kmeans
from diffuseg.methods.diffcut import DiffCutConfig, run_diffcut
from diffuseg.methods.diffseg import (
    DiffSegConfig,
    aggregate_attention,
    run_diffseg,
    segment_aggregated,
)
from diffuseg.methods.dwc import DWCConfig, run_dwc
from diffuseg.types import Encoding

from planted import planted_attention, planted_labels, smooth_planted_features

RUNS = {
    "diffseg": lambda enc: run_diffseg(enc, DiffSegConfig()),
    "kmeans": lambda enc: run_kmeans(enc, KMeansConfig(k=4)),
    "dwc": lambda enc: run_dwc(enc, DWCConfig(refine=False)),
}
NAN = r"attention for grid 16x16 holds NaN or inf entries"


def attention() -> dict[tuple[int, int], torch.Tensor]:
    return planted_attention(planted_labels(16, 16, 4, seed=0), temperature=0.1, noise=0.05)


def _nan_one(a):
    a[3, 4, 5] = float("nan")


def _nan_half(a):
    a[: a.shape[0] // 2] = float("nan")


def _nan_all(a):
    a[:] = float("nan")


def _inf_column(a):
    a[:, :, 7] = float("inf")


def _zero_map(a):
    a[17] = 0


def _zero_all(a):
    a[:] = 0


def _negative(a):
    a -= 1e-3


def _unnormalised(a):
    a *= 1.5


FAULTS = {
    "one NaN": (_nan_one, rf"^{NAN} \(1 NaN, 0 inf of 65536; first in the key map of query 3 = "
                          r"row 0, column 3\)$"),
    "half NaN": (_nan_half, rf"^{NAN} \(32768 NaN, 0 inf of 65536; first in the key map of "
                            r"query 0 = row 0, column 0\)$"),
    "all NaN": (_nan_all, rf"^{NAN} \(65536 NaN, 0 inf of 65536;"),
    "inf column": (_inf_column, rf"^{NAN} \(0 NaN, 4096 inf of 65536;"),
    "zero map": (_zero_map, r"^attention for grid 16x16: 1 key map\(s\) sum to zero \(first: "
                            r"query 17\): attention maps are probabilities$"),
    "all zero": (_zero_all, r"^attention for grid 16x16: 256 key map\(s\) sum to zero \(first: "
                            r"query 0\)"),
    "negative": (_negative, r"^attention for grid 16x16 holds negative entries \(\d+ of 65536, "
                            r"min -0\.001; first in the key map of query \d+\): attention maps are "
                            r"probabilities$"),
    "unnormalised": (_unnormalised, r"^attention for grid 16x16: key maps must sum to 1 \(query "
                                    r"\d+ sums to 1\.5, tolerance 0\.001\): attention maps are "
                                    r"probabilities$"),
}


@pytest.mark.parametrize("method", sorted(RUNS))
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_attention_methods_reject_broken_attention(method, fault):
    edit, message = FAULTS[fault]
    att = attention()
    edit(att[(16, 16)])
    enc = Encoding(attention=att, meta={"original_size": [32, 32]})
    with pytest.raises(ValueError, match=message):
        RUNS[method](enc)


@pytest.mark.parametrize("method", sorted(RUNS))
def test_a_broken_coarse_grid_is_named(method):
    att = attention()
    att[(4, 4)][0, 0, 0] = float("nan")
    enc = Encoding(attention=att, meta={"original_size": [32, 32]})
    with pytest.raises(ValueError, match=r"^attention for grid 4x4 holds NaN or inf entries"):
        RUNS[method](enc)


def test_check_attention_shapes_and_dtypes():
    good = attention()[(16, 16)]
    check_attention(good)
    check_attention(good, (16, 16))
    check_attention(good.double())
    check_attention(good.half())  # float16 rounding: within its widened tolerance
    with pytest.raises(ValueError, match=r"^attention for grid 8x32 must be \(h\*w, h, w\) = "
                                         r"\(256, 8, 32\) with h, w >= 1, got \(256, 16, 16\)$"):
        check_attention(good, (8, 32))
    with pytest.raises(ValueError, match=r"^attention maps must be \(h\*w, h, w\) with h, w >= 1, "
                                         r"got \(256, 256\)$"):
        check_attention(good.reshape(256, 256))
    with pytest.raises(ValueError, match=r"^attention maps must be \(h\*w, h, w\)"):
        check_attention(torch.rand(0, 0, 0))
    with pytest.raises(ValueError, match=r"must be a floating-point tensor, got torch\.int64"):
        check_attention(torch.ones(4, 2, 2, dtype=torch.int64))
    # tolerances: 1e-3 in float32 / float64, 4 epsilons in half precision
    assert attention_sum_atol(torch.float32) == ATTENTION_SUM_ATOL == 1e-3
    assert attention_sum_atol(torch.float16) == pytest.approx(4 * 2**-10)
    assert attention_sum_atol(torch.bfloat16) == pytest.approx(4 * 2**-7)
    check_attention(good * (1 + 9e-4))
    with pytest.raises(ValueError, match="must sum to 1"):
        check_attention(good * (1 + 2e-3))
    check_attention(good * (1 + 2e-3), atol=3e-3)


def test_aggregation_renormalises_maps_within_the_tolerance():
    """DiffSeg's own rule: each resized map is renormalised, so a drift inside the tolerance
    changes nothing (up to rounding) and the output rows are distributions."""
    att = attention()
    drifted = {g: a * (1 + 8e-4) for g, a in att.items()}
    torch.testing.assert_close(aggregate_attention(drifted), aggregate_attention(att),
                               atol=1e-7, rtol=1e-5)
    out = run_diffseg(Encoding(attention=drifted, meta={"original_size": [16, 16]}))
    ref = run_diffseg(Encoding(attention=att, meta={"original_size": [16, 16]}))
    np.testing.assert_array_equal(out.labels, ref.labels)


def test_aggregated_inputs_are_checked_too():
    bad = aggregate_attention(attention()).clone()
    bad[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"^attention for grid 16x16 holds NaN or inf"):
        segment_aggregated(bad)
    with pytest.raises(ValueError, match=r"^attention for grid 16x16 holds NaN or inf"):
        kmeans_attention(bad, 4)
    with pytest.raises(ValueError, match=r"target grid must be \(H, W\) >= 1"):
        aggregate_attention(attention(), target=(0, 4))


# ---------------------------------------------------------------------------------------------
# DiffCut: features
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smooth():
    features, _ = smooth_planted_features(24, regions=6, dim=64, seed=0)
    return features


@pytest.mark.parametrize("scale", [1e-30, 1e-3, 1e3, 1e37])
def test_diffcut_does_not_depend_on_the_scale_of_the_features(smooth, scale):
    config = DiffCutConfig(refine=False)
    ref = run_diffcut(Encoding(features=smooth, meta={"original_size": [48, 48]}), config)
    scaled = smooth * scale
    assert bool(torch.isfinite(scaled).all())
    out = run_diffcut(Encoding(features=scaled, meta={"original_size": [48, 48]}), config)
    assert ref.num_segments >= 4
    np.testing.assert_array_equal(out.labels, ref.labels)
    np.testing.assert_array_equal(out.token_labels, ref.token_labels)
    assert abs(out.hierarchy.nodes[0].ncut - ref.hierarchy.nodes[0].ncut) <= 1e-6
    # x * scale rounds each feature (relative 6e-8); alpha = 10 magnifies that to ~5e-6
    torch.testing.assert_close(cosine_affinity(scaled), cosine_affinity(smooth),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("scale", [2.0**-60, 2.0**100])
def test_power_of_two_scales_give_the_identical_affinity(smooth, scale):
    """Scaling by 2^k rounds nothing (while no value turns subnormal), and neither does the
    max-abs rescaling: bit for bit. (Before, x 2^100 overflowed the L2 norm.)"""
    assert torch.equal(cosine_affinity(smooth * scale), cosine_affinity(smooth))


def test_float64_features_far_outside_float32_range(smooth):
    config = DiffCutConfig(refine=False)
    ref = run_diffcut(Encoding(features=smooth, meta={"original_size": [24, 24]}), config)
    for scale in (1e300, 1e-300):
        out = run_diffcut(Encoding(features=smooth.double() * scale,
                                   meta={"original_size": [24, 24]}), config)
        np.testing.assert_array_equal(out.labels, ref.labels)


def test_max_abs_scaled_keeps_directions_and_zero_tokens():
    x = torch.tensor([[3.0, -6.0], [0.0, 0.0], [1e-40, 0.0]])
    y = max_abs_scaled(x, dim=1)
    torch.testing.assert_close(y, torch.tensor([[0.5, -1.0], [0.0, 0.0], [1.0, 0.0]]))
    assert max_abs_scaled(x.half(), 1).dtype == torch.float32
    assert max_abs_scaled(x.double(), 1).dtype == torch.float64
    # an all-zero token has cosine 0 with everything (min-max maps the lowest to 0)
    aff = cosine_affinity(torch.tensor([[1.0, 0.0], [0.0, 0.0], [2.0, 0.0]]), alpha=1.0)
    torch.testing.assert_close(aff, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0],
                                                  [1.0, 0.0, 1.0]]))


@pytest.mark.parametrize(("value", "counts"), [(float("nan"), "1 NaN and 0 inf"),
                                               (float("inf"), "0 NaN and 1 inf")])
def test_non_finite_features_are_rejected(smooth, value, counts):
    bad = smooth.clone()
    bad[5, 3, 2] = value
    message = rf"^non-finite features: {counts} value\(s\) of 36864 \(shape \(64, 24, 24\)\)$"
    with pytest.raises(ValueError, match=message):
        cosine_affinity(bad)
    with pytest.raises(ValueError, match=message):
        run_diffcut(Encoding(features=bad, meta={"original_size": [24, 24]}),
                    DiffCutConfig(refine=False))


def test_empty_features_are_clear_errors():
    with pytest.raises(ValueError, match=r"^features have 0 channels \(shape \(0, 4, 4\)\)"):
        cosine_affinity(torch.rand(0, 4, 4))
    with pytest.raises(ValueError, match=r"^features have 0 channels \(shape \(16, 0\)\)"):
        cosine_affinity(torch.rand(16, 0))
    with pytest.raises(ValueError, match=r"^features hold an empty token grid \(shape "
                                         r"\(8, 0, 0\)\)$"):
        cosine_affinity(torch.rand(8, 0, 0))
    with pytest.raises(ValueError, match=r"features must be \(C, h, w\) or \(N, C\)"):
        check_features(torch.rand(2, 3, 4, 5))
    with pytest.raises(ValueError, match="alpha must be positive"):
        cosine_affinity(torch.rand(4, 3), alpha=float("nan"))
