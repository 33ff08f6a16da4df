"""l2-balanced: every weight member of a group votes alike, so a large consumer layer does not
decide alone which channels go (tools/results/datafree.md); and the default criterion, l2."""
from __future__ import annotations

import numpy as np
from criteria_helpers import normal, removed
from criteria_models import conv_relu_conv

import spa
from spa.cli import build_parser


def loud_consumer_model():
    """conv1 (1 -> 5) -> relu -> conv2 1x1 (5 -> 3), conv2 100x larger than conv1. Channel 0
    has a near-zero filter (it makes almost nothing) but the largest consumer column;
    channel 1 has the smallest consumer column and an ordinary filter."""
    rng = np.random.default_rng(3)
    w1 = normal(rng, 5, 1, 3, 3)
    w1[0] *= 0.01
    w2 = 100 * np.ones((3, 5, 1, 1), np.float32)
    w2[:, 0] *= 1.1
    w2[:, 1] *= 0.9
    return conv_relu_conv(w1, np.full(5, 0.01, np.float32), w2, None), w1, w2  # equal biases: no vote


def test_l2_balanced_removes_the_channel_that_makes_nothing_where_l2_follows_the_consumer():
    model, _, _ = loud_consumer_model()
    assert removed(spa.prune(model, 0.2, criterion="l2", round_to=1)) == [1]
    assert removed(spa.prune(model, 0.2, criterion="l2-balanced", round_to=1)) == [0]


def test_l2_balanced_scores_are_the_members_energies_over_their_means():
    model, w1, w2 = loud_consumer_model()
    filters = np.square(w1.astype(np.float64)).sum(axis=(1, 2, 3))
    columns = np.square(w2.astype(np.float64)).sum(axis=(0, 2, 3))
    want = filters / filters.mean() + 1 + columns / columns.mean()  # the equal biases add 1 each
    result = spa.prune(model, 0.2, criterion="l2-balanced", round_to=1)
    np.testing.assert_allclose(result.report["groups"][0]["scores"], want / want.mean(), rtol=1e-5, atol=1e-6)


def test_l2_is_the_default_of_the_api_and_the_cli():
    """l2-balanced leaves smaller output errors on untrained models but less accuracy on the
    trained BatchNorm CNNs once their statistics are corrected (README, Data-free pruning)."""
    model, _, _ = loud_consumer_model()
    result = spa.prune(model, 0.2, round_to=1)
    assert result.report["criterion"] == "l2" and removed(result) == [1]
    assert build_parser().parse_args(["prune", "m.onnx"]).criterion == "l2"
    assert build_parser().parse_args(["prune", "m.onnx", "--criterion", "l2-balanced"]).criterion == "l2-balanced"
