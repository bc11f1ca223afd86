"""K-means baselines (K-Means-C / K-Means-S) and the shared Lloyd k-means."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffuseg.methods import get_method
from diffuseg.methods.baselines import (
    KMEANS_C_K,
    KMeansConfig,
    kmeans,
    kmeans_attention,
    kmeans_pp_init,
    lloyd_kmeans,
    run_kmeans,
)
from diffuseg.methods.diffseg import aggregate_attention
from diffuseg.types import Encoding

from planted import adjusted_rand_index, planted_attention, planted_labels


def test_adjusted_rand_index_helper():
    a = np.array([0, 0, 1, 1, 2, 2])
    assert adjusted_rand_index(a, np.array([5, 5, 3, 3, 9, 9])) == 1.0
    # hand-computed: contingency [[2,0],[1,1],[0,2]] -> index 2, rows 3, cols 6, n 6
    expected = (2 - 3 * 6 / 15) / ((3 + 6) / 2 - 3 * 6 / 15)
    assert adjusted_rand_index(a, np.array([0, 0, 0, 1, 1, 1])) == pytest.approx(expected)


def test_lloyd_by_hand():
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]])
    labels, centres = lloyd_kmeans(x, torch.tensor([[0.0], [2.0], [100.0]]))
    # step 1: {0, 1} (1 is equidistant: ties go to the lowest index), {2, 10, 11, 12}, {}
    #   -> centres 0.5, 8.75, 100 (the empty cluster stays put)
    # step 2: {0, 1, 2}, {10, 11, 12} -> centres 1, 11; step 3: no change
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_allclose(centres.numpy().ravel(), [1.0, 11.0, 100.0])
    # one iteration only: the centres are the means of the first assignment
    labels, centres = lloyd_kmeans(x, torch.tensor([[0.0], [2.0], [100.0]]), iterations=1)
    assert labels.tolist() == [0, 0, 1, 1, 1, 1]
    np.testing.assert_allclose(centres.numpy().ravel(), [0.5, 8.75, 100.0])


def test_kmeans_pp_is_seeded_and_stops_at_distinct_points():
    x = torch.tensor([[0.0, 0.0]] * 5 + [[1.0, 1.0]] * 5)
    centres = kmeans_pp_init(x, 4, torch.Generator().manual_seed(0))
    assert centres.shape == (2, 2)  # only two distinct points
    assert sorted(centres[:, 0].tolist()) == [0.0, 1.0]
    gen_x = torch.rand(200, 8, generator=torch.Generator().manual_seed(1))
    a = kmeans_pp_init(gen_x, 5, torch.Generator().manual_seed(7))
    b = kmeans_pp_init(gen_x, 5, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    labels, centres = kmeans(gen_x, 5, seed=3)
    labels2, centres2 = kmeans(gen_x, 5, seed=3)
    assert torch.equal(labels, labels2) and torch.equal(centres, centres2)


@pytest.mark.parametrize("shape,k,seed", [((32, 32), 5, 0), ((24, 32), 4, 2)])
def test_kmeans_recovers_planted_regions_deterministically(shape, k, seed):
    labels = planted_labels(*shape, k, seed=seed)
    agg = aggregate_attention(planted_attention(labels, temperature=0.1, noise=0.05, seed=seed))
    first = kmeans_attention(agg, k, seed=0)
    assert first.shape == shape
    assert adjusted_rand_index(first, labels) == 1.0
    assert torch.equal(first, kmeans_attention(agg, k, seed=0))
    assert adjusted_rand_index(kmeans_attention(agg, k, seed=11), labels) == 1.0


def test_kmeans_method_c_and_s():
    labels = planted_labels(24, 32, 4, seed=2)
    enc = Encoding(attention=planted_attention(labels, noise=0.05, seed=2),
                   meta={"image_size": [48, 64]})
    spec = get_method("kmeans")
    assert spec.config_cls is KMeansConfig and spec.needs == frozenset({"attention"})
    # K-Means-S: K from the ground truth of the image
    seg = spec.run(enc, spec.make_config({"k": 4}))
    assert seg.labels.shape == (48, 64) and seg.labels.dtype == np.int32
    assert seg.num_segments == 4 and seg.token_labels.shape == (24, 32)
    assert adjusted_rand_index(seg.token_labels, labels) == 1.0
    truth = np.repeat(np.repeat(labels, 2, 0), 2, 1)
    assert adjusted_rand_index(seg.labels, truth) == 1.0  # x2: one-hot bilinear = nearest
    assert seg.config["method"] == "kmeans" and seg.config["k"] == 4
    again = run_kmeans(enc, KMeansConfig(k=4))
    assert np.array_equal(seg.labels, again.labels)
    # K-Means-C: the fixed default K over-segments this 4-region image
    assert KMeansConfig().k == KMEANS_C_K == 6
    seg_c = run_kmeans(enc, output_size=(20, 30))
    assert seg_c.labels.shape == (20, 30) and seg_c.num_segments <= 6
    assert seg_c.token_labels.min() >= 0 and seg_c.token_labels.max() < seg_c.num_segments
    with pytest.raises(ValueError):
        KMeansConfig(k=0)
