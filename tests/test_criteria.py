"""Pruning criteria on models whose right answer is known by construction.

Each test plants a channel that a criterion must find (a duplicate, a dead or a constant
channel, the smallest BatchNorm scale, ...) in a tiny ONNX model, prunes it through
spa.prune with calibration data from an .npz, and checks which channel went and what the
pruned model computes: compensation (obs, greedy, fluctuation) and statistics correction
must restore the original outputs where that is possible exactly. The obs and greedy
refits are also checked against a least-squares oracle computed here in numpy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

import spa
import spa.api
import spa.step
from criteria_models import (concat_activation, conv_bn_relu_conv, conv_relu_conv, gemm_mlp, initializers, mlp,
                             split_branches, three_convs, with_outputs)
from graphgen import cnn_models
from oracle import random_feeds, run
from spa.calibrate.sources import synthetic_calibration
from spa.cli import main
from spa.errors import SpaError
from spa.io.inputs import make_inputs
from spa.verify import verify_equivalent

SAMPLES = 16  # calibration images of [1, 6, 6]


# -- helpers ------------------------------------------------------------------------------------

def normal(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (scale * rng.normal(size=shape)).astype(np.float32)


def calibration_file(tmp_path, data: np.ndarray, name: str = "calib.npz"):
    """An .npz with one array named after the models' input."""
    path = tmp_path / name
    np.savez(path, input=data)
    return path


def images(rng: np.random.Generator, samples: int = SAMPLES, channels: int = 1) -> np.ndarray:
    return normal(rng, samples, channels, 6, 6)


def output(model: onnx.ModelProto, data: np.ndarray, name: str | None = None) -> np.ndarray:
    """The graph output, or the intermediate tensor `name`, on `data`."""
    if name is None:
        return run(model, {"input": data})[0]
    return run(with_outputs(model, [name]), {"input": data})[-1]


def removed(result, group: int = 0) -> list[int]:
    return result.report["groups"][group]["removed"]


def group_of(result, name: str) -> dict:
    return next(g for g in result.report["groups"] if g["name"] == name)


def assert_same_outputs(pruned: onnx.ModelProto, original: onnx.ModelProto, data: np.ndarray,
                        tolerance: float = 1e-5) -> None:
    """Equal up to `tolerance` of the output's scale (float32 arithmetic in both)."""
    want, got = output(original, data), output(pruned, data)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=tolerance * float(np.abs(want).max()))


def channel_moments(values: np.ndarray, axis: int = 1) -> tuple[np.ndarray, np.ndarray]:
    moved = np.moveaxis(values.astype(np.float64), axis, -1).reshape(-1, values.shape[axis])
    return moved.mean(axis=0), moved.std(axis=0)


# -- 1. a duplicate channel ---------------------------------------------------------------------

def duplicate_model(consumer_bias: bool = True, kernel: int = 1) -> onnx.ModelProto:
    """conv1 (1 -> 4) -> relu -> conv2 kxk (4 -> 3): channel 2 is an exact copy of channel 0
    (filter and bias), channel 3 has the smallest weights (0.5x) but matters on the data."""
    rng = np.random.default_rng(0)
    w1, b1 = normal(rng, 4, 1, 3, 3), normal(rng, 4, scale=0.3)
    w1[2], b1[2] = w1[0], b1[0]
    w1[3] *= 0.5
    b1[3] *= 0.5
    w2 = normal(rng, 3, 4, kernel, kernel)
    return conv_relu_conv(w1, b1, w2, normal(rng, 3) if consumer_bias else None)


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


# -- 2. a dead channel --------------------------------------------------------------------------

def dead_model() -> onnx.ModelProto:
    """conv1 (1 -> 4) -> relu -> conv2 3x3 (4 -> 3): channel 1 has a zero filter and bias -1,
    so it is 0 after the Relu on any input; the other channels are ordinary."""
    rng = np.random.default_rng(1)
    w1, b1 = normal(rng, 4, 1, 3, 3, scale=0.5), normal(rng, 4, scale=0.2)
    w1[1], b1[1] = 0, -1
    return conv_relu_conv(w1, b1, normal(rng, 3, 4, 3, 3, scale=0.5), normal(rng, 3))


@pytest.mark.parametrize("criterion", ["activation", "fluctuation", "obs", "greedy"])
def test_dead_channel_is_removed_exactly(tmp_path, criterion):
    model = dead_model()
    data = images(np.random.default_rng(11))
    result = spa.prune(model, 0.25, criterion=criterion, round_to=1, calib=calibration_file(tmp_path, data))
    assert removed(result) == [1]
    assert result.report["groups"][0]["scores"][1] == pytest.approx(0, abs=1e-6)
    assert_same_outputs(result.model, model, data, 1e-5)
    assert initializers(result.model)["conv2_w"].shape == (3, 3, 3, 3)


# -- 3. a constant channel ----------------------------------------------------------------------

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


# -- 4. obs and greedy against the least-squares oracle -----------------------------------------

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


# -- 5. statistics correction -------------------------------------------------------------------

def stacked_model(consumer_bias: bool = True, batch_norm: bool = False) -> onnx.ModelProto:
    """conv1 (1 -> 6) -> relu -> conv2 3x3 (6 -> 5) [-> bn2] -> relu -> conv3 1x1 (5 -> 2)."""
    rng = np.random.default_rng(6)
    bn = None
    if batch_norm:
        bn = dict(scale=normal(rng, 5) + 1, shift=normal(rng, 5), mean=normal(rng, 5),
                  var=np.abs(normal(rng, 5)) + 0.5)
    return three_convs(normal(rng, 6, 1, 3, 3), normal(rng, 6, scale=0.3),
                       normal(rng, 5, 6, 3, 3, scale=0.4), normal(rng, 5, scale=0.3) if consumer_bias else None,
                       normal(rng, 2, 5, 1, 1), normal(rng, 2), bn)


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


# -- 6. bn-scale --------------------------------------------------------------------------------

def test_bn_scale_removes_the_smallest_absolute_gamma(tmp_path):
    rng = np.random.default_rng(7)
    gamma = np.array([0.9, -1.2, -0.05, 0.3, 0.08], np.float32)  # smallest |gamma|: channel 2
    bn = dict(scale=gamma, shift=normal(rng, 5, scale=0.1), mean=normal(rng, 5, scale=0.1),
              var=np.full(5, 1.0, np.float32))
    model = conv_bn_relu_conv(normal(rng, 5, 1, 3, 3), normal(rng, 5), bn, normal(rng, 2, 5, 1, 1), None)
    result = spa.prune(model, 0.2, criterion="bn-scale", round_to=1)
    assert removed(result) == [2]
    np.testing.assert_allclose(result.report["groups"][0]["scores"], np.abs(gamma) / np.abs(gamma).mean(),
                               rtol=1e-5)
    assert removed(spa.prune(model, 0.4, criterion="bn-scale", round_to=1)) == [2, 4]


def test_bn_scale_keeps_groups_without_batchnorm_whole_and_says_why():
    model = stacked_model(batch_norm=True)  # bn2 after conv2; conv1's channels meet no BatchNorm
    result = spa.prune(model, 0.4, criterion="bn-scale", round_to=1)
    conv1, conv2 = group_of(result, "conv1"), group_of(result, "conv2")
    assert conv1["removed"] == [] and not conv1["prunable"] and "scores" not in conv1
    assert conv1["reason"] == "bn-scale: no BatchNormalization scale in this group"
    gamma = np.abs(initializers(model)["bn2_scale"])
    assert conv2["removed"] == sorted(np.argsort(gamma)[:2].tolist())


def test_bn_scale_without_any_batchnorm_explains_and_removes_nothing():
    """No group can be scored: either a one-line SpaError naming the reason, or a result
    that removes nothing and gives the reason per group; never a crash."""
    model = stacked_model()
    try:
        result = spa.prune(model, 0.5, criterion="bn-scale", round_to=1)
    except SpaError as error:
        assert "BatchNormalization" in str(error) and "\n" not in str(error)
        return
    assert result.channels_removed == 0
    hidden = [g for g in result.report["groups"] if g["name"] in ("conv1", "conv2")]
    for group in hidden:
        assert group["removed"] == [] and not group["prunable"]
        assert "BatchNormalization" in group["reason"]


# -- 7. selection: global scope, targets, steps ---------------------------------------------------

def lopsided_model() -> onnx.ModelProto:
    """conv1 (1 -> 6) -> relu -> conv2 (6 -> 6) -> relu -> conv3 (6 -> 2): conv1's channels
    0..3 have near-zero weights everywhere (filter, bias, conv2's columns), conv2's are even."""
    rng = np.random.default_rng(8)
    w1, b1, w2 = normal(rng, 6, 1, 3, 3), normal(rng, 6, scale=0.3), normal(rng, 6, 6, 3, 3, scale=0.4)
    w1[:4] *= 1e-3
    b1[:4] *= 1e-3
    w2[:, :4] *= 1e-3
    return three_convs(w1, b1, w2, normal(rng, 6, scale=0.3), normal(rng, 2, 6, 1, 1), normal(rng, 2))


def test_global_scope_takes_the_lopsided_group_first():
    model = lopsided_model()
    local = spa.prune(model, 0.25, criterion="l2", round_to=1)
    assert [len(group_of(local, n)["removed"]) for n in ("conv1", "conv2")] == [1, 1]
    result = spa.prune(model, 0.25, criterion="l2", round_to=1, scope="global")
    assert group_of(result, "conv1")["removed"] == [0, 1, 2] and group_of(result, "conv2")["removed"] == []
    result = spa.prune(model, 0.25, criterion="l2", round_to=1, scope="global", max_ratio=0.25)
    assert len(group_of(result, "conv1")["removed"]) == 1  # floor(0.25 * 6): the cap holds...
    assert len(group_of(result, "conv2")["removed"]) == 1  # ...for both, so 2 of the 3 asked for go
    result = spa.prune(model, 0.5, criterion="l2", round_to=1, scope="global", max_ratio=0.5)
    assert [len(group_of(result, n)["removed"]) for n in ("conv1", "conv2")] == [3, 3]


@pytest.mark.parametrize("criterion", ["obs", "fluctuation"])
def test_global_scope_with_data_criteria(tmp_path, criterion):
    model = lopsided_model()
    data = images(np.random.default_rng(16))
    result = spa.prune(model, 0.25, criterion=criterion, round_to=1, scope="global", calib=calibration_file(tmp_path, data))
    assert len(group_of(result, "conv1")["removed"]) + len(group_of(result, "conv2")["removed"]) == 3
    assert set(group_of(result, "conv1")["removed"]) <= {0, 1, 2, 3}
    assert group_of(result, "conv2")["removed"] == []


def wide_model() -> onnx.ModelProto:
    rng = np.random.default_rng(9)
    return three_convs(normal(rng, 12, 1, 3, 3), normal(rng, 12, scale=0.3), normal(rng, 12, 12, 3, 3, scale=0.3),
                       normal(rng, 12, scale=0.3), normal(rng, 2, 12, 1, 1), normal(rng, 2))


@pytest.mark.parametrize("metric", ["macs", "params"])
@pytest.mark.parametrize("criterion", ["l2", "obs"])
def test_target_fraction_is_reached_and_not_overshot(tmp_path, metric, criterion):
    model = wide_model()
    calib = calibration_file(tmp_path, images(np.random.default_rng(17))) if criterion == "obs" else None
    result = spa.prune(model, criterion=criterion, round_to=1, calib=calib, **{f"target_{metric}": 0.5})
    before, after = result.report["before"][metric], result.report["after"][metric]
    assert 0.35 * before <= after <= 0.5 * before
    assert result.report["target"] == (metric, 0.5)


@pytest.mark.parametrize("criterion", ["l2", "obs"])
def test_two_steps_remove_as_much_as_one(tmp_path, criterion):
    model = wide_model()
    calib = calibration_file(tmp_path, images(np.random.default_rng(18))) if criterion == "obs" else None
    once = spa.prune(model, 0.5, criterion=criterion, round_to=1, calib=calib)
    twice = spa.prune(model, 0.5, criterion=criterion, round_to=1, calib=calib, steps=2)
    onnx.checker.check_model(twice.model, full_check=True)
    steps = twice.report["steps"]
    assert [s["step"] for s in steps] == [1, 2] and all(s["channels_removed"] > 0 for s in steps)
    total = sum(s["channels_removed"] for s in steps)
    assert abs(total - once.channels_removed) <= 2
    assert twice.report["after"]["params"] == pytest.approx(once.report["after"]["params"], rel=0.1)
    assert output(twice.model, images(np.random.default_rng(0))).shape == (SAMPLES, 2, 6, 6)


def test_steps_report_describes_the_input_model():
    """After several steps the report (and result.removed) still speaks of the input
    model's groups: their sizes, and every channel removed over all steps."""
    model = wide_model()
    result = spa.prune(model, 0.5, criterion="l2", round_to=1, steps=2)
    total = sum(s["channels_removed"] for s in result.report["steps"])
    for name in ("conv1", "conv2"):
        group = group_of(result, name)
        assert group["size"] == 12 and group["kept"] == 6
        assert len(group["removed"]) == 6 and len(set(group["removed"])) == 6
    assert sum(len(g["removed"]) for g in result.report["groups"]) == total == result.channels_removed


# -- 8. data-free ---------------------------------------------------------------------------------

@pytest.mark.parametrize("criterion", ["obs", "greedy", "fluctuation", "activation"])
def test_data_criteria_without_calibration_use_synthetic_inputs(criterion):
    model = dead_model()
    result = spa.prune(model, 0.25, criterion=criterion, round_to=1)
    assert result.report["calibration"] == {"source": "synthetic", "samples": spa.api.SYNTHETIC_SAMPLES}
    assert result.report["correct_stats"] is False
    assert removed(result) == [1]  # dead on any input
    onnx.checker.check_model(result.model, full_check=True)
    assert_same_outputs(result.model, model, images(np.random.default_rng(19)), 1e-5)


def test_magnitude_criterion_runs_no_calibration():
    result = spa.prune(dead_model(), 0.25, criterion="l2", round_to=1)
    assert result.report["calibration"] is None and result.report["correct_stats"] is False


# -- 8b. groups sharing a consumer, groups split between consumers -------------------------------

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


@pytest.mark.parametrize("criterion", ["activation", "fluctuation", "obs", "greedy"])
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


# -- 8c. bad numbers -----------------------------------------------------------------------------

def _finite_or_refused(prune, clean: np.ndarray) -> None:
    """`prune()` raises SpaError, or returns a model with finite weights and outputs."""
    try:
        result = prune()
    except SpaError:
        return
    bad = sorted(name for name, value in initializers(result.model).items() if not np.isfinite(value).all())
    assert not bad, f"pruned model has NaN/inf in {bad}"
    assert np.isfinite(output(result.model, clean)).all()


@pytest.mark.parametrize("criterion", ["l2", "activation", "fluctuation", "obs", "greedy"])
def test_nan_in_calibration_data_never_yields_a_nan_model(tmp_path, criterion):
    data = images(np.random.default_rng(24))
    poisoned = data.copy()
    poisoned[3, 0, 2, 2] = np.nan
    path = calibration_file(tmp_path, poisoned)
    _finite_or_refused(lambda: spa.prune(stacked_model(), 0.5, criterion=criterion, round_to=1, calib=path), data)


@pytest.mark.parametrize("damping", [float("nan"), float("inf"), -1.0])
def test_bad_damping_is_refused_or_harmless(damping):
    """A SpaError, or a finite model; a ValueError or LinAlgError escaping is an internal error."""
    data = images(np.random.default_rng(25))
    _finite_or_refused(lambda: spa.prune(stacked_model(), 0.5, criterion="obs", round_to=1, damping=damping), data)


def test_equivalence_check_rejects_nan_outputs():
    """NaN compares False with any tolerance: the check must not let it through."""
    model = duplicate_model()
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    for tensor in broken.graph.initializer:
        if tensor.name == "conv2_b":
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.full(3, np.nan, np.float32), "conv2_b"))
    with pytest.raises(SpaError, match="differs from the zeroed model by nan"):
        verify_equivalent(model, broken, make_inputs(model))


@pytest.mark.parametrize("criterion", ["l2", "activation", "fluctuation", "obs", "greedy"])
@pytest.mark.parametrize("channels, ratio", [(2, 0.5), (4, 0.75)])
def test_every_split_piece_keeps_a_channel(tmp_path, criterion, channels, ratio):
    """The ratio asks for more than the Split allows (each piece must keep one channel):
    every criterion removes only what it may, and the model still runs."""
    rng = np.random.default_rng(26)
    model = split_branches(normal(rng, channels, 1, 3, 3), normal(rng, channels, scale=0.2))
    data = images(np.random.default_rng(27))
    result = spa.prune(model, ratio, criterion=criterion, round_to=1, calib=calibration_file(tmp_path, data))
    half = channels // 2
    gone = removed(result)
    assert len(set(range(half)) - set(gone)) >= 1 and len(set(range(half, channels)) - set(gone)) >= 1, gone
    assert len(gone) == half - 1 + half - 1
    assert output(result.model, data).shape == (SAMPLES, 3, 6, 6)


def test_equivalence_check_reports_a_broken_model_as_spa_error():
    """Like verify_pruned, a pruned model onnxruntime cannot run is spa's internal error
    (SpaError), not a raw onnxruntime exception."""
    model = duplicate_model()
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    for tensor in broken.graph.initializer:
        if tensor.name == "conv2_w":  # 3 input channels where the Relu gives 4
            tensor.CopyFrom(onnx.numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "conv2_w"))
    with pytest.raises(SpaError, match="internal error"):
        verify_equivalent(model, broken, make_inputs(model))


# -- 9. the built-in exactness check ------------------------------------------------------------

def _shift_rewrites(monkeypatch, calls: set[int]) -> None:
    """Make the rewrite cut the channel next to each chosen one, in the given calls (1-based)."""
    real_rewrite = spa.step.rewrite
    count = [0]

    def shifted(analysis, removed):
        count[0] += 1
        sizes = {g.id: g.size for g in analysis.groups}
        if count[0] in calls:
            removed = {gid: sorted((c + 1) % sizes[gid] for c in channels) for gid, channels in removed.items()}
        real_rewrite(analysis, removed)

    monkeypatch.setattr(spa.step, "rewrite", shifted)


def test_equivalence_check_catches_a_rewrite_of_other_channels(monkeypatch):
    _shift_rewrites(monkeypatch, {1})
    with pytest.raises(SpaError, match="differs from the zeroed model"):
        spa.prune(duplicate_model(), 0.25, criterion="l2", round_to=1)


def test_every_step_is_checked(monkeypatch):
    """A wrong cut in step 1 of 2 is caught, not only one in the last step."""
    _shift_rewrites(monkeypatch, {1})
    with pytest.raises(SpaError, match="differs from the zeroed model"):
        spa.prune(stacked_model(), 0.5, criterion="l2", round_to=1, steps=2)


# -- 10. generated CNNs ---------------------------------------------------------------------------

@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cnn_models(max_blocks=4), st.sampled_from(["obs", "fluctuation"]), st.integers(0, 9))
def test_data_criteria_on_generated_graphs(model, criterion, seed):
    """No error (spa's own check compares the pruned model with the zeroed full-size one),
    a valid model with the original output shapes, and every group the criterion can
    measure loses as many channels as with l2 (the count depends on the ratio only)."""
    calibration = synthetic_calibration(model, samples=4, seed=seed)
    try:
        result = spa.prune(model, 0.5, criterion=criterion, round_to=1, calib=calibration, seed=seed)
    except SpaError as error:  # e.g. the only group is read by a depthwise conv: not measurable
        assert "can score none" in str(error)
        event("no group measurable")
        return
    event("pruned" if result.channels_removed else "nothing prunable")
    onnx.checker.check_model(result.model, full_check=True)
    feeds = random_feeds(model, seed)
    for want, got in zip(run(model, feeds), run(result.model, feeds)):
        assert got.shape == want.shape
        assert np.isfinite(got).all()
    assert result.report["calibration"]["samples"] == 4
    magnitude = spa.prune(model, 0.5, criterion="l2", round_to=1, verify=False)
    for ours, theirs in zip(result.report["groups"], magnitude.report["groups"]):
        if ours["prunable"]:
            assert len(ours["removed"]) == len(theirs["removed"]), (ours, theirs)
            assert np.isfinite(ours.get("scores", [])).all()  # measured only where a channel goes
        else:
            assert ours["removed"] == []


# -- 11. the command line -------------------------------------------------------------------------

@pytest.fixture
def small_model(tmp_path):
    path = tmp_path / "small.onnx"
    onnx.save(stacked_model(), str(path))
    return path


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("spa: error:"), err
    return err[0]


def test_cli_missing_calibration_file(small_model, tmp_path, capsys):
    code = main(["prune", str(small_model), "--ratio", "0.5", "--criterion", "obs",
                 "--calib", str(tmp_path / "missing.npz")])
    assert code == 1
    assert "calibration data not found" in _error_line(capsys)
    assert not small_model.with_name("small.pruned.onnx").exists()


@pytest.mark.parametrize("goal", [["--ratio", "0.5", "--target-macs", "0.5"], [],
                                  ["--target-macs", "0.5", "--target-params", "0.5"]])
def test_cli_needs_exactly_one_goal(small_model, capsys, goal):
    assert main(["prune", str(small_model), *goal]) == 2
    assert "--target-macs" in _error_line(capsys)
    assert not small_model.with_name("small.pruned.onnx").exists()


@pytest.mark.parametrize("damping", ["-1", "nan", "inf"])
def test_cli_bad_damping_is_a_usage_error(small_model, capsys, damping):
    code = main(["prune", str(small_model), "--ratio", "0.5", "--round-to", "1", "--criterion", "obs",
                 "--damping", damping])
    assert code == 2
    assert "--damping" in _error_line(capsys)
    assert not small_model.with_name("small.pruned.onnx").exists()


def test_cli_obs_with_calibration(small_model, tmp_path, capsys):
    data = calibration_file(tmp_path, images(np.random.default_rng(20)), "data.npz")
    out = tmp_path / "out.onnx"
    assert main(["prune", str(small_model), "--ratio", "0.5", "--round-to", "1", "--criterion", "obs",
                 "--calib", str(data), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "calibration" in printed and "16 samples" in printed and "statistics corrected" in printed
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    assert initializers(onnx.load(str(out)))["conv1_w"].shape[0] == 3


def test_cli_bn_scale_without_batchnorm(small_model, capsys):
    """Nothing the criterion can score: exit 0 with "nothing to prune", or exit 1 with a
    one-line error; either way the reason (no BatchNormalization) is named and no copy of
    the unchanged model is written as if it had been pruned."""
    code = main(["prune", str(small_model), "--ratio", "0.5", "--criterion", "bn-scale"])
    captured = capsys.readouterr()
    assert code in (0, 1) and "Traceback" not in captured.err
    if code == 0:
        assert "nothing to prune" in captured.out and "BatchNormalization" in captured.out
    else:
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("spa: error:") and "BatchNormalization" in lines[0]
    assert not small_model.with_name("small.pruned.onnx").exists()


def test_data_criteria_measure_through_depthwise_convs():
    """An inverted residual's expanded channels pass a depthwise conv on the way to the
    1x1 projection: the projection measures them, the depthwise conv is channel-wise."""
    model = Path(__file__).resolve().parent.parent / "models" / "trained" / "digits_mobilenet.onnx"
    result = spa.api.prune(model, 0.5, criterion="obs", round_to=1,
                           calib_samples=16, verify=False)
    prunable = [g for g in result.report["groups"] if g["reason"] is None]
    assert len(prunable) == 6
    assert all(g["removed"] for g in prunable)
