"""Criteria find the channel planted in a tiny model (a duplicate, a dead or a constant
channel), and compensation repairs the consumers exactly where that is possible: checked
against the original outputs and a least-squares oracle computed here in numpy."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from criteria_helpers import (
    assert_same_outputs,
    calibration_file,
    dead_model,
    duplicate_model,
    group_of,
    images,
    normal,
    output,
    removed,
)
from criteria_models import (
    concat_activation,
    conv_relu_conv,
    gemm_mlp,
    initializers,
    mlp,
    split_branches,
)

import spa


@pytest.mark.parametrize("criterion", ["obs", "greedy"])
@pytest.mark.parametrize("consumer_bias, kernel", [(True, 1), (False, 1), (True, 3)])
def test_duplicate_channel_is_removed_and_moved_onto_its_twin(tmp_path, criterion, consumer_bias, kernel):
    model = duplicate_model(consumer_bias, kernel)
    data = images(np.random.default_rng(10))
    result = spa.prune(model, 0.25, criterion=criterion, round_to=1, calib=calibration_file(tmp_path, data),
                       correct_stats=False, damping=1e-8)
    assert removed(result) in ([0], [2])
    scores = result.report["groups"][0]["scores"]
    assert min(scores[0], scores[2]) == pytest.approx(0, abs=1e-4)  # nothing lost without one twin
    assert_same_outputs(result.model, model, data, 1e-5)
    twin = 2 - removed(result)[0]
    kept = [c for c in range(4) if c != removed(result)[0]]
    original, pruned = initializers(model), initializers(result.model)
    np.testing.assert_allclose(  # the twin's consumer columns now carry both
        pruned["conv2_w"][:, kept.index(twin)], original["conv2_w"][:, 0] + original["conv2_w"][:, 2],
        rtol=1e-4, atol=1e-4)
    for c in kept:
        if c != twin:  # the others are left alone
            np.testing.assert_allclose(pruned["conv2_w"][:, kept.index(c)], original["conv2_w"][:, c], atol=1e-4)


@pytest.mark.parametrize("criterion", ["obs", "greedy"])
def test_duplicate_channel_with_default_damping_and_correction(tmp_path, criterion):
    """With the default ridge the duplicate still goes and compensation recovers most of
    it: far closer to the original than removing it without compensation."""
    model = duplicate_model()
    data = images(np.random.default_rng(10))
    result = spa.prune(model, 0.25, criterion=criterion, round_to=1, calib=calibration_file(tmp_path, data))
    assert result.report["correct_stats"] is True
    assert removed(result) in ([0], [2])
    uncompensated = spa.prune(model, 0.25, criterion="l2", round_to=1, verify=False)  # removes channel 3
    zeroed_twin = _zeroed(model, removed(result)[0])
    want = output(model, data)
    error = np.abs(output(result.model, data) - want).max()
    assert error < 0.2 * np.abs(output(zeroed_twin, data) - want).max()
    assert error < 0.2 * np.abs(output(uncompensated.model, data) - want).max()


def _zeroed(model: onnx.ModelProto, channel: int) -> onnx.ModelProto:
    """Copy of a conv_relu_conv model with conv1's `channel` silenced (as removing it without
    compensation does)."""
    values = initializers(model)
    w1, b1 = values["conv1_w"].copy(), values["conv1_b"].copy()
    w1[channel], b1[channel] = 0, 0
    return conv_relu_conv(w1, b1, values["conv2_w"], values.get("conv2_b"))


def test_l2_ignores_the_duplicate_and_removes_the_smallest_weights(tmp_path):
    model = duplicate_model()
    data = images(np.random.default_rng(10))
    result = spa.prune(model, 0.25, criterion="l2", round_to=1, calib=calibration_file(tmp_path, data),
                       correct_stats=False)
    scores = result.report["groups"][0]["scores"]
    assert removed(result) == [3] and int(np.argmin(scores)) == 3
    assert min(scores[0], scores[2]) > 1.1 * scores[3]  # the twins are not low: l2 cannot see redundancy
    want = output(model, data)
    assert np.abs(output(result.model, data) - want).max() > 0.05 * np.abs(want).max()


@pytest.mark.parametrize("criterion", ["activation", "wanda", "fluctuation", "obs", "greedy"])
def test_dead_channel_is_removed_exactly(tmp_path, criterion):
    model = dead_model()
    data = images(np.random.default_rng(11))
    result = spa.prune(model, 0.25, criterion=criterion, round_to=1, calib=calibration_file(tmp_path, data))
    assert removed(result) == [1]
    assert result.report["groups"][0]["scores"][1] == pytest.approx(0, abs=1e-6)
    assert_same_outputs(result.model, model, data, 1e-5)
    assert initializers(result.model)["conv2_w"].shape == (3, 3, 3, 3)


def constant_model(consumer_bias: bool) -> onnx.ModelProto:
    """conv1 (1 -> 4) -> relu -> conv2 1x1 (4 -> 3): channel 1 has a zero filter and bias +2,
    so it is the constant 2 (the largest mean |x| of the four, variance 0)."""
    rng = np.random.default_rng(2)
    w1, b1 = normal(rng, 4, 1, 3, 3, scale=0.5), normal(rng, 4, scale=0.2)
    w1[1], b1[1] = 0, 2
    return conv_relu_conv(w1, b1, normal(rng, 3, 4, 1, 1), normal(rng, 3) if consumer_bias else None)


@pytest.mark.parametrize("consumer_bias", [True, False])
@pytest.mark.parametrize("criterion, damping", [("fluctuation", 0.01), ("obs", 1e-8), ("greedy", 1e-8)])
def test_constant_channel_is_folded_into_the_bias(tmp_path, criterion, damping, consumer_bias):
    model = constant_model(consumer_bias)
    data = images(np.random.default_rng(12))
    result = spa.prune(model, 0.25, criterion=criterion, round_to=1, calib=calibration_file(tmp_path, data),
                       correct_stats=False, damping=damping)
    assert removed(result) == [1]
    assert_same_outputs(result.model, model, data, 1e-5)
    original, pruned = initializers(model), initializers(result.model)
    bias = pruned["conv2_b" if consumer_bias else "spa_bias_conv2"]  # spa added one where there was none
    before = original["conv2_b"] if consumer_bias else np.zeros(3, np.float32)
    np.testing.assert_allclose(bias, before + 2 * original["conv2_w"][:, 1, 0, 0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("consumer_bias", [True, False])
@pytest.mark.parametrize("criterion, damping", [("fluctuation", 0.01), ("obs", 1e-8)])
def test_constant_unit_into_a_gemm_bias(tmp_path, trans_b, consumer_bias, criterion, damping):
    """The same through Gemm layers (either weight layout): hidden unit 2 is the constant 1.5."""
    rng = np.random.default_rng(21)
    w1, b1 = normal(rng, 5, 4, scale=0.5), normal(rng, 4, scale=0.2)
    w1[:, 2], b1[2] = 0, 1.5
    w2, b2 = normal(rng, 4, 2), normal(rng, 2)
    model = gemm_mlp(w1, b1, w2, b2 if consumer_bias else None, trans_b)
    data = normal(rng, 64, 5)
    result = spa.prune(model, 0.25, criterion=criterion, round_to=1, calib=calibration_file(tmp_path, data),
                       correct_stats=False, damping=damping)
    assert removed(result) == [2]
    assert_same_outputs(result.model, model, data, 1e-5)
    pruned = initializers(result.model)
    assert pruned["gemm2_w"].shape == ((2, 3) if trans_b else (3, 2))
    bias = pruned["gemm2_b" if consumer_bias else "spa_bias_gemm2"]
    np.testing.assert_allclose(bias, (b2 if consumer_bias else 0) + 1.5 * w2[2], rtol=1e-4, atol=1e-4)


def test_constant_channel_with_obs_at_default_damping(tmp_path):
    model = constant_model(consumer_bias=True)
    data = images(np.random.default_rng(12))
    result = spa.prune(model, 0.25, criterion="obs", round_to=1, calib=calibration_file(tmp_path, data))
    assert removed(result) == [1]


def test_activation_keeps_the_constant_channel(tmp_path):
    """Mean |x| ranks the constant 2 highest although it carries no information."""
    model = constant_model(consumer_bias=True)
    data = images(np.random.default_rng(12))
    result = spa.prune(model, 0.25, criterion="activation", round_to=1, calib=calibration_file(tmp_path, data))
    scores = result.report["groups"][0]["scores"]
    assert int(np.argmax(scores)) == 1
    assert removed(result) == [int(np.argmin(scores))] and 1 not in removed(result)
    # the scores are the mean |activation| per channel (normalized by their mean)
    hidden = output(model, data, "relu1")
    mean_abs = np.abs(hidden).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(scores, mean_abs / mean_abs.mean(), rtol=1e-4)


def test_wanda_scores_are_weight_magnitude_times_input_norm(tmp_path):
    """Per hidden channel c: sum over conv2's k x k columns of c of |W| times RMS(x_c); the
    constant channel (RMS 2) scores by its weights like any other."""
    model = constant_model(consumer_bias=True)
    data = images(np.random.default_rng(12))
    result = spa.prune(model, 0.25, criterion="wanda", round_to=1, calib=calibration_file(tmp_path, data))
    hidden = output(model, data, "relu1")
    rms = np.sqrt(np.square(hidden).mean(axis=(0, 2, 3)))
    magnitude = np.abs(initializers(model)["conv2_w"]).sum(axis=(0, 2, 3))
    want = magnitude * rms
    np.testing.assert_allclose(result.report["groups"][0]["scores"], want / want.mean(), rtol=1e-4)
    assert removed(result) == [int(np.argmin(want))]


def mlp_setup(tmp_path, seed: int = 3, samples: int = 200):
    rng = np.random.default_rng(seed)
    model = mlp(normal(rng, 6, 8), normal(rng, 8, 3))
    data = normal(rng, samples, 6)
    return model, data, calibration_file(tmp_path, data)


def least_squares_refit(model: onnx.ModelProto, data: np.ndarray, kept: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """W2 rows of the kept hidden units and a bias, fitted to the original outputs."""
    values = initializers(model)
    hidden = np.maximum(data.astype(np.float64) @ values["w1"], 0)
    target = hidden @ values["w2"]
    design = np.concatenate([hidden[:, kept], np.ones((len(hidden), 1))], axis=1)
    solution = np.linalg.lstsq(design, target, rcond=None)[0]
    return solution[:-1], solution[-1]


@pytest.mark.parametrize("criterion", ["obs", "greedy"])
def test_refit_is_the_least_squares_solution(tmp_path, criterion):
    model, data, path = mlp_setup(tmp_path)
    result = spa.prune(model, 0.5, criterion=criterion, round_to=1, calib=path, correct_stats=False, damping=1e-8)
    gone = removed(result)
    assert len(gone) == 4
    kept = [c for c in range(8) if c not in gone]
    pruned = initializers(result.model)
    assert set(pruned) == {"w1", "w2", "spa_bias_matmul2"}  # matmul1's zero bias was dropped again
    np.testing.assert_array_equal(pruned["w1"], initializers(model)["w1"][:, kept])
    weight, bias = least_squares_refit(model, data, kept)
    scale = np.abs(weight).max()
    np.testing.assert_allclose(pruned["w2"], weight, rtol=1e-4, atol=1e-5 * scale)
    np.testing.assert_allclose(pruned["spa_bias_matmul2"], bias, rtol=1e-4, atol=1e-5 * scale)
    assert np.abs(bias).max() > 1e-3  # the added bias really took part


def _refit_error(model, data, kept) -> float:
    values = initializers(model)
    hidden = np.maximum(data.astype(np.float64) @ values["w1"], 0)
    weight, bias = least_squares_refit(model, data, kept)
    return float(np.sum((hidden[:, kept] @ weight + bias - hidden @ values["w2"]) ** 2))


def test_obs_removes_the_cheapest_single_unit(tmp_path):
    """One removal: obs's pick is the unit whose least-squares refit loses least."""
    model, data, path = mlp_setup(tmp_path, seed=4)
    result = spa.prune(model, 1 / 8, criterion="obs", round_to=1, calib=path, correct_stats=False, damping=1e-8)
    errors = [_refit_error(model, data, [c for c in range(8) if c != gone]) for gone in range(8)]
    assert removed(result) == [int(np.argmin(errors))]


def test_greedy_keeps_the_best_single_unit(tmp_path):
    """Keep one: greedy's first pick is the unit that alone (with the bias) fits best."""
    model, data, path = mlp_setup(tmp_path, seed=5)
    result = spa.prune(model, 7 / 8, criterion="greedy", round_to=1, calib=path, correct_stats=False, damping=1e-8)
    errors = [_refit_error(model, data, [c]) for c in range(8)]
    assert [c for c in range(8) if c not in removed(result)] == [int(np.argmin(errors))]


@pytest.mark.parametrize("criterion", ["obs", "greedy"])
@pytest.mark.parametrize("activation", ["Relu", "Sigmoid"])
def test_compensation_keeps_removed_channels_of_other_groups_removed(tmp_path, criterion, activation):
    """conv_a's and conv_b's channels meet in one consumer (Concat -> activation -> conv_c).
    After a conv_a channel is zeroed, Sigmoid still gives it the constant 0.5: conv_b's
    compensation must not put weight back on that column, which the rewrite then cuts."""
    model = concat_activation(activation)
    data = images(np.random.default_rng(22))
    result = spa.prune(model, 0.5, criterion=criterion, round_to=1, calib=calibration_file(tmp_path, data),
                       correct_stats=False)  # the built-in check compares with the zeroed model
    assert len(group_of(result, "conv_a")["removed"]) == 1 and len(group_of(result, "conv_b")["removed"]) == 1
    assert initializers(result.model)["conv_c_w"].shape == (2, 2, 1, 1)


def split_model() -> onnx.ModelProto:
    """split_branches with channel 3 dead (zero filter, bias -1, then Relu)."""
    rng = np.random.default_rng(4)
    w1, b1 = normal(rng, 4, 1, 3, 3, scale=0.5), normal(rng, 4, scale=0.2)
    w1[3], b1[3] = 0, -1
    return split_branches(w1, b1)


@pytest.mark.parametrize("criterion", ["activation", "wanda", "fluctuation", "obs", "greedy"])
def test_split_group_read_by_two_consumers(tmp_path, criterion):
    """Channels 0, 1 are read by conv_x only, 2, 3 by conv_y only: each channel's score
    comes from the layer that reads it (finite), and the dead channel 3 goes."""
    model = split_model()
    data = images(np.random.default_rng(23))
    result = spa.prune(model, 0.25, criterion=criterion, round_to=1, calib=calibration_file(tmp_path, data))
    scores = result.report["groups"][0]["scores"]
    assert np.isfinite(scores).all(), scores
    assert removed(result) == [3]
    assert_same_outputs(result.model, model, data, 1e-5)
