"""Statistics correction: layers that lost inputs get back their output moments, through
a BatchNorm's running statistics or the layer's own rows."""
from __future__ import annotations

import numpy as np
import pytest
from criteria_helpers import (
    calibration_file,
    channel_moments,
    group_of,
    images,
    normal,
    output,
    removed,
    stacked_model,
)
from criteria_models import gemm_mlp, initializers, mlp

import spa


@pytest.mark.parametrize("consumer_bias", [True, False])
def test_correction_restores_the_consumer_statistics(tmp_path, consumer_bias):
    """BN folded into conv2: conv2's rows are rescaled and its bias shifted (a zero bias is
    added where there was none) so each output channel keeps its mean and std."""
    model = stacked_model(consumer_bias)
    data = images(np.random.default_rng(13))
    path = calibration_file(tmp_path, data)
    # --ignore conv3 keeps every channel axis of conv3's weight whole, so conv2's outputs stay
    # (ignoring conv2 would keep conv1's group too: its weight's input axis is that group)
    corrected = spa.prune(model, 0.5, criterion="l2", round_to=1, calib=path, correct_stats=True, ignore=["conv3"])
    plain = spa.prune(model, 0.5, criterion="l2", round_to=1, calib=path, correct_stats=False, ignore=["conv3"])
    assert len(group_of(corrected, "conv1")["removed"]) == 3
    assert group_of(corrected, "conv1")["removed"] == group_of(plain, "conv1")["removed"]
    assert group_of(corrected, "conv2")["removed"] == []
    mean0, std0 = channel_moments(output(model, data, "conv2"))
    mean1, std1 = channel_moments(output(corrected.model, data, "conv2"))
    np.testing.assert_allclose(mean1, mean0, rtol=1e-3, atol=1e-4 * std0.max())
    np.testing.assert_allclose(std1, std0, rtol=1e-3)
    mean2, std2 = channel_moments(output(plain.model, data, "conv2"))
    assert np.abs(mean2 - mean0).max() > 0.1 * std0.max()  # there was something to correct
    assert np.abs(std2 / std0 - 1).max() > 0.05
    assert ("spa_bias_conv2" in initializers(corrected.model)) == (not consumer_bias)


def test_correction_of_two_layers_in_order(tmp_path):
    """Both hidden groups pruned: conv2 is corrected on its kept outputs, then conv3 (whose
    output is the graph output) on the model with conv2 already corrected."""
    model = stacked_model()
    data = images(np.random.default_rng(14))
    result = spa.prune(model, 0.4, criterion="l2", round_to=1, calib=calibration_file(tmp_path, data))
    gone = group_of(result, "conv2")["removed"]
    assert len(group_of(result, "conv1")["removed"]) == 2 and len(gone) == 2
    kept = [c for c in range(5) if c not in gone]
    mean0, std0 = channel_moments(output(model, data, "conv2"))
    mean1, std1 = channel_moments(output(result.model, data, "conv2"))
    np.testing.assert_allclose(mean1, mean0[kept], rtol=1e-3, atol=1e-4 * std0.max())
    np.testing.assert_allclose(std1, std0[kept], rtol=1e-3)
    mean0, std0 = channel_moments(output(model, data))
    mean1, std1 = channel_moments(output(result.model, data))
    np.testing.assert_allclose(mean1, mean0, rtol=1e-3, atol=1e-4 * std0.max())
    np.testing.assert_allclose(std1, std0, rtol=1e-3)


def test_correction_through_a_batchnorm_changes_only_its_statistics(tmp_path):
    model = stacked_model(consumer_bias=False, batch_norm=True)
    data = images(np.random.default_rng(15))
    result = spa.prune(model, 0.5, criterion="l2", round_to=1, calib=calibration_file(tmp_path, data),
                       correct_stats=True, ignore=["conv3"])
    gone = group_of(result, "conv1")["removed"]
    assert len(gone) == 3
    kept = [c for c in range(6) if c not in gone]
    mean0, std0 = channel_moments(output(model, data, "bn2"))
    mean1, std1 = channel_moments(output(result.model, data, "bn2"))
    np.testing.assert_allclose(mean1, mean0, rtol=1e-3, atol=1e-4 * std0.max())
    np.testing.assert_allclose(std1, std0, rtol=1e-3)
    original, pruned = initializers(model), initializers(result.model)
    np.testing.assert_array_equal(pruned["conv2_w"], original["conv2_w"][:, kept])  # l2 and the BN path keep it
    assert "spa_bias_conv2" not in pruned  # the zero bias added for correction stayed unused
    for name in ("bn2_scale", "bn2_shift"):
        np.testing.assert_array_equal(pruned[name], original[name])
    for name in ("bn2_mean", "bn2_var"):
        assert not np.allclose(pruned[name], original[name], rtol=1e-3)


@pytest.mark.parametrize("layout", ["matmul", "gemm", "gemm_trans_b", "gemm_no_bias"])
def test_correction_of_dense_layers(tmp_path, layout):
    """MatMul (spa inserts an Add with a zero bias) and Gemm in both weight layouts (with a
    C input added where there is none): every output column gets its mean and std back."""
    rng = np.random.default_rng(7)
    w1, w2 = normal(rng, 6, 8), normal(rng, 8, 3)
    if layout == "matmul":
        model = mlp(w1, w2)
    else:
        model = gemm_mlp(w1, normal(rng, 8, scale=0.3), w2, None if layout == "gemm_no_bias" else normal(rng, 3),
                         trans_b=int(layout == "gemm_trans_b"))
    data = normal(rng, 200, 6)
    result = spa.prune(model, 0.5, criterion="l2", round_to=1, calib=calibration_file(tmp_path, data))
    assert result.report["correct_stats"] is True and len(removed(result)) == 4
    mean0, std0 = channel_moments(output(model, data), axis=-1)
    mean1, std1 = channel_moments(output(result.model, data), axis=-1)
    np.testing.assert_allclose(mean1, mean0, rtol=1e-3, atol=1e-4 * std0.max())
    np.testing.assert_allclose(std1, std0, rtol=1e-3)
    plain = spa.prune(model, 0.5, criterion="l2", round_to=1, calib=calibration_file(tmp_path, data), correct_stats=False)
    assert np.abs(channel_moments(output(plain.model, data), axis=-1)[0] - mean0).max() > 0.05 * std0.max()


def test_std_ratio_is_clipped_and_ignores_dead_channels():
    from spa.repair.correct import RATIO_LIMITS, _std_ratio
    before = np.array([1.0, 1.0, 1.0, 0.0, 1.0])
    after = np.array([4.0, 0.0001, 1e6, 1.0, 0.0])  # x2, /100 (clipped), x1000 (clipped), dead before, dead after
    ratio = _std_ratio(before, after, np.zeros(5))
    assert ratio.tolist() == [2.0, RATIO_LIMITS[0], RATIO_LIMITS[1], 1.0, 1.0]


def test_std_ratio_leaves_constant_channels_alone():
    """A channel constant up to float32 rounding (pooled after a BatchNorm renormalized per
    sample: a hypothesis oracle example) has noise for a spread: its ratio of noises is no
    change to correct, even where every channel of the layer is like it."""
    from spa.repair.correct import _std_ratio
    ratio = _std_ratio(np.array([1.10e-15, 1.0e-15]), np.array([1.18e-15, 1.3e-15]), np.array([-0.46, 0.20]))
    assert ratio.tolist() == [1.0, 1.0]
    # a small mean summed from larger values: rounding at the scale of the layer's means
    ratio = _std_ratio(np.array([2.63e-16, 1.33e-15]), np.array([2.42e-16, 1.22e-15]), np.array([-0.0144, 0.76]))
    assert ratio.tolist() == [1.0, 1.0]


def test_batchnorm_restore_maps_the_new_distribution_onto_the_old():
    """With running statistics rewritten, BatchNorm of the shifted, rescaled input equals
    BatchNorm (old statistics) of the original input, channel by channel."""
    import onnx_graphsurgeon as gs

    from spa.repair.correct import _restore_batchnorm
    rng = np.random.default_rng(30)
    mean, var, eps = rng.normal(size=4), rng.uniform(0.5, 2, 4), 1e-5
    mu0, s0 = rng.normal(size=4), rng.uniform(0.5, 2, 4)
    mu1, s1 = rng.normal(size=4), rng.uniform(0.5, 2, 4)
    x0 = rng.normal(size=(1000, 4)) * s0 + mu0
    x1 = (x0 - mu0) / s0 * s1 + mu1
    tensors = [gs.Constant(n, v.astype(np.float32)) for n, v in (("scale", np.ones(4)), ("bias", np.zeros(4)),
                                                                   ("mean", mean), ("var", var))]
    node = gs.Node("BatchNormalization", "bn", {"epsilon": eps}, [gs.Variable("x")] + tensors, [gs.Variable("y")])
    _restore_batchnorm(node, mu0, mu1, s1 / s0, np.arange(4))
    new_mean, new_var = (np.asarray(t.values, np.float64) for t in tensors[2:])
    before = (x0 - mean) / np.sqrt(var + eps)
    after = (x1 - new_mean) / np.sqrt(new_var + eps)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)
