"""Criteria and calibration on the command line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from criteria_helpers import calibration_file, images, stacked_model
from criteria_models import initializers

import spa
from spa.cli import main


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
