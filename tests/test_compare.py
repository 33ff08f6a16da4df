"""`spa compare A B`: per-output differences, polygraphy-style pass/fail, exit codes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import MODELS
from onnx import TensorProto, helper

import spa
from spa.cli import EXIT_DIFFER, main
from spa.compare import compare, is_classifier_like

RESNET = MODELS / "resnet_basic.onnx"


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _tiny(path: Path, op: str, input_name: str = "x", shape=("N", 3), bias: list[float] | None = None,
          out_shape=None) -> Path:
    """input -> op -> "scores": Identity, Add(bias) or GlobalAveragePool."""
    inputs = [input_name] + (["bias"] if bias is not None else [])
    initializers = [helper.make_tensor("bias", TensorProto.FLOAT, [len(bias)], bias)] if bias is not None else []
    graph = helper.make_graph(
        [helper.make_node(op, inputs, ["scores"])], "tiny",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, list(out_shape or shape))], initializers)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("compare") / "resnet_basic.pruned.onnx"
    spa.prune(RESNET, 0.3, output=path)
    return path


def _compare_json(capsys, *args: str) -> tuple[int, dict]:
    code = main(["compare", *map(str, args), "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_identical_models_pass_with_cosine_one(capsys):
    code, result = _compare_json(capsys, RESNET, RESNET)
    assert code == 0 and result["passed"]
    [output] = result["outputs"]
    assert output["cosine"] == 1.0 and output["max_abs"] == 0 and output["failing"] == 0 and output["top1"] == 1.0
    assert main(["compare", str(RESNET), str(RESNET)]) == 0
    assert "pass: every output within |A-B| <= 1e-05 + 1e-05*|A|" in capsys.readouterr().out


def test_pruned_model_fails_at_default_tolerances_and_passes_a_loose_atol(pruned, capsys):
    assert main(["compare", str(RESNET), str(pruned)]) == EXIT_DIFFER == 4
    printed = capsys.readouterr()
    assert "FAIL: 1 of 1 outputs differ" in printed.out and printed.err == ""
    code, result = _compare_json(capsys, RESNET, pruned)
    [output] = result["outputs"]
    assert code == 4 and not result["passed"] and not output["passed"] and output["failing"] > 0
    assert 0 < output["max_abs"] < 1 and output["cosine"] < 1
    code, result = _compare_json(capsys, RESNET, pruned, "--atol", "1")
    assert code == 0 and result["passed"] and result["atol"] == 1.0 and result["outputs"][0]["failing"] == 0


def test_json_fields(pruned, capsys):
    code, result = _compare_json(capsys, RESNET, pruned, "--samples", "5", "--rtol", "0.5")
    assert set(result) == {"a", "b", "inputs", "samples", "atol", "rtol", "passed", "outputs"}
    assert (result["a"], result["b"], result["inputs"], result["samples"]) == (str(RESNET), str(pruned), "synthetic", 5)
    assert (result["atol"], result["rtol"]) == (1e-5, 0.5)
    [output] = result["outputs"]
    assert set(output) == {"name", "shape", "elements", "failing", "max_abs", "max_rel", "cosine", "top1", "passed"}
    assert output["name"] == "output" and output["shape"] == [1, 10] and output["elements"] == 50
    assert output["max_rel"] > 0 and 0 <= output["top1"] <= 1


def test_top1_agreement_on_a_classifier_output(tmp_path, capsys):
    """B adds 10 to class 2: it always picks class 2, A does in the two rows where class 2 leads."""
    a = _tiny(tmp_path / "a.onnx", "Identity")
    b = _tiny(tmp_path / "b.onnx", "Add", bias=[0.0, 0.0, 10.0])
    rows = np.array([[0, 1, 2], [3, 1, 2], [0, 0, 5], [9, 0, 0], [1, 2, 3]], np.float32)
    np.savez(tmp_path / "calib.npz", x=rows)
    code, result = _compare_json(capsys, a, b, "--calib", tmp_path / "calib.npz", "--samples", "4")
    [output] = result["outputs"]
    assert code == 4 and result["samples"] == 4 and result["inputs"] == str(tmp_path / "calib.npz")
    assert output["top1"] == 0.5 and output["max_abs"] == 10 and output["failing"] == 4  # the four class-2 scores
    assert output["max_rel"] == 5  # 10 / 2; the elements where A is 0 are left out
    assert main(["compare", str(a), str(b), "--calib", str(tmp_path / "calib.npz")]) == 4
    assert "60.0%" in capsys.readouterr().out  # all five rows: 3 of them lead with class 2


def test_classifier_like_outputs():
    assert is_classifier_like(np.zeros((4, 10), np.float32)) and is_classifier_like(np.zeros((1, 7, 50), np.float16))
    assert not is_classifier_like(np.zeros((1, 10, 8, 8), np.float32))  # a feature map, a segmentation
    assert not is_classifier_like(np.zeros((4, 10), np.int64)) and not is_classifier_like(np.zeros((4, 1)))


def test_mismatched_inputs_are_one_line(tmp_path, capsys):
    other_name = _tiny(tmp_path / "x.onnx", "Identity", shape=(1, 3, 32, 32))
    other_shape = _tiny(tmp_path / "small.onnx", "GlobalAveragePool", input_name="input", shape=(1, 3, 16, 16),
                        out_shape=(1, 3, 1, 1))
    for model, said in ((other_name, "A takes input (float32 [1, 3, 32, 32]); B takes x (float32 [1, 3, 32, 32])"),
                        (other_shape, "A takes input (float32 [1, 3, 32, 32]), B takes input (float32 [1, 3, 16, 16])")):
        assert main(["compare", str(RESNET), str(model)]) == 1
        printed = capsys.readouterr()
        assert printed.out == "" and printed.err == f"spa: error: the models take different inputs: {said}\n"


@pytest.mark.parametrize("args, code, said", [
    (["missing.onnx", "RESNET"], 1, "spa: error: no such file: missing.onnx"),
    (["RESNET", "RESNET", "--calib", "missing.npz"], 1, "spa: error: calibration data not found: missing.npz"),
    (["RESNET", "RESNET", "--atol", "-1"], 2, "spa: error: argument --atol: must be a finite number >= 0, got -1"),
])
def test_bad_input_is_one_line(args, code, said, capsys):
    assert main(["compare", *(str(RESNET) if a == "RESNET" else a for a in args)]) == code
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err.count("\n") == 1 and printed.err.startswith(said)


def test_synthetic_samples_at_an_image_size_the_model_takes():
    """A model that rejects the first synthetic size (16) is compared at one it runs."""
    path = MODELS / "regression" / "open_size_skip.onnx"
    result = compare(str(path), str(path))
    assert result["passed"] and result["outputs"][0]["shape"][2:] == [64, 64]
