"""Bad numbers and wrong cuts never yield a wrong model: NaN data, bad damping, the
built-in exactness check, generated CNNs under every data criterion."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from criteria_helpers import (
    SAMPLES,
    calibration_file,
    duplicate_model,
    images,
    normal,
    output,
    removed,
    stacked_model,
)
from criteria_models import split_branches
from graphgen import cnn_models
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from oracle import random_feeds, run

import spa
import spa.step
from spa.calibrate.sources import synthetic_calibration
from spa.errors import SpaError
from spa.io.inputs import make_inputs
from spa.verify import verify_equivalent


@pytest.mark.parametrize("criterion", ["l2", "activation", "fluctuation", "obs", "greedy"])
def test_nan_in_calibration_data_is_refused(tmp_path, criterion):
    """A NaN sample makes the calibration run non-finite: every criterion stops with the
    calibration data named, before anything is scored or written."""
    data = images(np.random.default_rng(24))
    poisoned = data.copy()
    poisoned[3, 0, 2, 2] = np.nan
    path = calibration_file(tmp_path, poisoned)
    with pytest.raises(SpaError, match="calibration run gives NaN or inf at 'conv2'"):
        spa.prune(stacked_model(), 0.5, criterion=criterion, round_to=1, calib=path)


@pytest.mark.parametrize("damping", [float("nan"), float("inf"), -1.0])
def test_bad_damping_is_refused(damping):
    with pytest.raises(SpaError, match="damping must be a finite number >= 0"):
        spa.prune(stacked_model(), 0.5, criterion="obs", round_to=1, damping=damping)


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
