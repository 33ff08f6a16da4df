"""LayerNormalization over removed units in calibration passes (spa.calibrate.layernorm):
once units a LayerNormalization reads are removed, calibration segments normalize over
the kept units only, as the pruned model does, so what is measured after it (scores,
compensation, statistics correction) is what the pruned model computes."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import spa
from spa.calibrate.layernorm import mask_in_model, norm_masks
from spa.io.load import import_graph, load_model

HIDDEN, OUT = 12, 6


def _linear_norm_linear(seed: int = 0, axis: int = -1) -> onnx.ModelProto:
    """x [N, 5, 8] -> MatMul + Add (12 units) -> LayerNormalization -> MatMul + Add -> y [N, 5, 6]."""
    rng = np.random.default_rng(seed)
    weights = {"w1": rng.normal(size=(8, HIDDEN)), "b1": rng.normal(size=HIDDEN),
               "gamma": rng.uniform(0.5, 1.5, size=HIDDEN), "beta": 0.1 * rng.normal(size=HIDDEN),
               "w2": rng.normal(size=(HIDDEN, OUT)), "b2": rng.normal(size=OUT)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("LayerNormalization", ["h1", "gamma", "beta"], ["n"], axis=axis),
             helper.make_node("MatMul", ["n", "w2"], ["y0"]), helper.make_node("Add", ["y0", "b2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, OUT])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, epsilon: float = 1e-5) -> np.ndarray:
    centered = x - x.mean(axis=-1, keepdims=True)
    return centered / np.sqrt(np.square(centered).mean(axis=-1, keepdims=True) + epsilon) * gamma + beta


def test_masked_norm_is_the_norm_of_the_kept_units():
    model = _linear_norm_linear()
    model.graph.output[0].name = "n"  # the segment: up to the normalization
    del model.graph.node[3:]
    removed_units = [1, 4, 7]
    graph = import_graph(load_model(model))
    masks = norm_masks(graph.nodes, {("gamma", 0): set(removed_units)})
    assert list(masks) == ["n"] and masks["n"].sum() == HIDDEN - len(removed_units)
    mask_in_model(model, masks)
    x = np.random.default_rng(1).normal(size=(3, 5, 8)).astype(np.float32)
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    kept = np.setdiff1d(np.arange(HIDDEN), removed_units)
    units = x @ weights["w1"] + weights["b1"]
    want = _layer_norm(units[..., kept], weights["gamma"][kept], weights["beta"][kept])
    np.testing.assert_allclose(got[..., kept], want, atol=1e-5)


@pytest.mark.parametrize("axis", [1, -2])
def test_a_norm_over_other_axes_is_not_masked(axis):
    graph = import_graph(load_model(_linear_norm_linear(axis=axis)))
    assert norm_masks(graph.nodes, {("gamma", 0): {1}}) == {}


def test_nothing_removed_nothing_masked():
    graph = import_graph(load_model(_linear_norm_linear()))
    assert norm_masks(graph.nodes, {("w2", 1): {0}}) == {}


@pytest.mark.parametrize("criterion", ["l2", "obs"])
def test_correction_after_a_pruned_norm_restores_the_output_moments(tmp_path, criterion):
    """The layer after the LayerNormalization is corrected on what the pruned model gives it:
    the pruned model's output mean and spread per channel are the original's on the data."""
    path = tmp_path / "model.onnx"
    onnx.save(_linear_norm_linear(), path)
    x = np.random.default_rng(1).normal(size=(64, 5, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    result = spa.prune(str(path), 0.5, criterion=criterion, calib=str(tmp_path / "calib.npz"),
                       include_inexact=True, round_to=1, correct_stats=True)
    assert result.report["after"]["params"] < result.report["before"]["params"]
    dense = ort.InferenceSession(str(path)).run(None, {"x": x})[0].reshape(-1, OUT)
    pruned = ort.InferenceSession(result.model.SerializeToString()).run(None, {"x": x})[0].reshape(-1, OUT)
    np.testing.assert_allclose(pruned.mean(axis=0), dense.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(pruned.std(axis=0), dense.std(axis=0), rtol=1e-4)
