"""Selection through spa.prune: global scope, MACs and parameter targets, steps, data-free."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import MODELS, TRANSFORMERS
from criteria_helpers import (
    SAMPLES,
    assert_same_outputs,
    calibration_file,
    dead_model,
    group_of,
    images,
    normal,
    output,
    removed,
)
from criteria_models import three_convs

import spa
from spa.analyze import DEFAULT_TARGETS


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


@pytest.mark.parametrize("criterion", ["obs", "greedy", "fluctuation", "activation"])
def test_data_criteria_without_calibration_use_synthetic_inputs(criterion):
    model = dead_model()
    result = spa.prune(model, 0.25, criterion=criterion, round_to=1)
    assert result.report["calibration"] == {"source": "synthetic", "samples": spa.api.SYNTHETIC_SAMPLES,
                                            "batchnorm": True, "inputs": None, "open_size": None}
    assert result.report["correct_stats"] is False
    assert removed(result) == [1]  # dead on any input
    onnx.checker.check_model(result.model, full_check=True)
    assert_same_outputs(result.model, model, images(np.random.default_rng(19)), 1e-5)


def test_magnitude_criterion_runs_no_calibration():
    result = spa.prune(dead_model(), 0.25, criterion="l2", round_to=1)
    assert result.report["calibration"] is None and result.report["correct_stats"] is False


TRAINED_VIT = MODELS / "trained" / "digits_transformer.onnx"
ALL_KINDS = ("channels", "heads", "mlp", "hidden")


@pytest.mark.parametrize("path, metric, fraction, targets", [
    (TRAINED_VIT, "macs", 0.5, DEFAULT_TARGETS),
    (TRAINED_VIT, "params", 0.5, DEFAULT_TARGETS),
    (TRANSFORMERS / "bert_tiny.onnx", "macs", 0.7, DEFAULT_TARGETS),
    (TRANSFORMERS / "llama_tiny.onnx", "macs", 0.39, ALL_KINDS),
], ids=lambda v: getattr(v, "stem", str(v)))
def test_global_target_lands_close_under_on_transformers(path, metric, fraction, targets):
    """A head is a big step on these (a 4-head layer loses a quarter of its attention at
    once): the run of ranked cuts that first reaches the target may land far under it, so
    cuts before the last are undone while the model stays within it."""
    result = spa.prune(str(path), scope="global", targets=targets, verify=False, **{f"target_{metric}": fraction})
    reached = result.report["after"][metric] / result.report["before"][metric]
    assert fraction * 0.97 <= reached <= fraction


def test_global_ratio_counts_a_fused_qkv_head_as_head_dim_units():
    """GPT-2's heads come from one fused q|k|v weight, 48 columns a head: at ratio 0.4 of all
    units, a head counts 16 (head_dim), an MLP neuron 1."""
    result = spa.prune(str(TRANSFORMERS / "gpt2_tiny.onnx"), 0.4, scope="global", round_to=1, verify=False)
    groups = result.analysis.prunable_groups()
    units = {g.id: g.head_dim if g.kind == "heads" else 1 for g in groups}
    assert {units[g.id] for g in groups if g.kind == "heads"} == {16}
    removed = sum(len(result.removed.get(g.id, [])) * units[g.id] for g in groups)
    total = sum(g.size * units[g.id] for g in groups)
    assert abs(removed - 0.4 * total) <= 8  # within half a head
