"""Tiny models whose right pruning answer is known by construction (tests/test_criteria.py).

Every model is float32, opset 17, ir_version 8, with a dynamic batch axis "N" on its
input "input", so calibration data of any sample count is fed in one batch. Weights are
passed in explicitly (numpy arrays), so a test can plant duplicate, dead or constant
channels and then read back the pruned initializers by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
IMAGE = 6  # spatial size of the image models


@dataclass
class Builder:
    """Collects nodes and initializers; initializer names are chosen by the caller."""
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)

    def init(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def init_ints(self, name: str, values: list[int]) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def conv(self, x: str, name: str, weight: np.ndarray, bias: np.ndarray | None = None) -> str:
        """Conv named `name` (weight `name`_w, bias `name`_b), padding keeps the spatial size."""
        inputs = [x, self.init(f"{name}_w", weight)]
        if bias is not None:
            inputs.append(self.init(f"{name}_b", bias))
        k = weight.shape[2]
        return self.node("Conv", inputs, name, kernel_shape=[k, k], pads=[k // 2] * 4)

    def batch_norm(self, x: str, name: str, scale, shift, mean, var) -> str:
        inputs = [x] + [self.init(f"{name}_{part}", value) for part, value in
                        (("scale", scale), ("shift", shift), ("mean", mean), ("var", var))]
        return self.node("BatchNormalization", inputs, name, epsilon=1e-5)

    def build(self, input_shape: list, output: str, output_shape: list) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "criteria_test",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, input_shape)],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, output_shape)],
            initializer=self.initializers)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


def image_shape(channels: int) -> list:
    return ["N", channels, IMAGE, IMAGE]


def conv_relu_conv(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray | None) -> onnx.ModelProto:
    """input -> conv1 (w1, b1) -> relu1 -> conv2 (1x1 or kxk, w2, optional b2) -> graph output.

    The only prunable group is conv1's output channels (conv2's reach the graph output)."""
    g = Builder()
    hidden = g.node("Relu", [g.conv("input", "conv1", w1, b1)], "relu1")
    out = g.conv(hidden, "conv2", w2, b2)
    return g.build(image_shape(w1.shape[1]), out, image_shape(w2.shape[0]))


def three_convs(w1, b1, w2, b2, w3, b3, bn: dict | None = None) -> onnx.ModelProto:
    """input -> conv1 -> relu1 -> conv2 [-> bn2] -> relu2 -> conv3 -> graph output.

    Two prunable groups: conv1's outputs (read by conv2) and conv2's outputs (read by
    conv3); `bn` (scale, shift, mean, var) puts a BatchNormalization "bn2" after conv2."""
    g = Builder()
    x = g.node("Relu", [g.conv("input", "conv1", w1, b1)], "relu1")
    x = g.conv(x, "conv2", w2, b2)
    if bn is not None:
        x = g.batch_norm(x, "bn2", **bn)
    x = g.node("Relu", [x], "relu2")
    out = g.conv(x, "conv3", w3, b3)
    return g.build(image_shape(w1.shape[1]), out, image_shape(w3.shape[0]))


def conv_bn_relu_conv(w1, b1, bn: dict, w2, b2) -> onnx.ModelProto:
    """input -> conv1 -> bn1 -> relu1 -> conv2 -> graph output (one prunable group with a BN scale)."""
    g = Builder()
    x = g.batch_norm(g.conv("input", "conv1", w1, b1), "bn1", **bn)
    x = g.node("Relu", [x], "relu1")
    out = g.conv(x, "conv2", w2, b2)
    return g.build(image_shape(w1.shape[1]), out, image_shape(w2.shape[0]))


def mlp(w1: np.ndarray, w2: np.ndarray) -> onnx.ModelProto:
    """input [N, n_in] -> MatMul w1 -> relu1 -> MatMul w2 -> graph output; no biases.

    The only prunable group is the hidden units (w1's columns, w2's rows)."""
    g = Builder()
    hidden = g.node("Relu", [g.node("MatMul", ["input", g.init("w1", w1)], "matmul1")], "relu1")
    out = g.node("MatMul", [hidden, g.init("w2", w2)], "matmul2")
    return g.build(["N", w1.shape[0]], out, ["N", w2.shape[1]])


def with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """Copy of `model` that also returns the intermediate tensors `names` (shape left open)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for name in names:
        copy.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return copy


def initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def gemm_mlp(w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray | None, trans_b: int) -> onnx.ModelProto:
    """input [N, n_in] -> Gemm gemm1 (w1 [n_in, hidden], b1) -> relu1 -> Gemm gemm2 (w2 [hidden, n_out],
    optional b2) -> graph output; with trans_b=1 both weights are stored transposed."""
    g = Builder()
    layout = (lambda w: w.T) if trans_b else (lambda w: w)
    hidden = g.node("Gemm", ["input", g.init("gemm1_w", layout(w1)), g.init("gemm1_b", b1)], "gemm1", transB=trans_b)
    hidden = g.node("Relu", [hidden], "relu1")
    inputs = [hidden, g.init("gemm2_w", layout(w2))] + ([g.init("gemm2_b", b2)] if b2 is not None else [])
    out = g.node("Gemm", inputs, "gemm2", transB=trans_b)
    return g.build(["N", w1.shape[0]], out, ["N", w2.shape[1]])


def concat_activation(activation: str, seed: int = 0) -> onnx.ModelProto:
    """input -> conv_a (1 -> 2), conv_b (1 -> 2) -> Concat -> `activation` -> conv_c 1x1 (4 -> 2).

    Two prunable groups (conv_a's and conv_b's channels) read by one consumer layer."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape: rng.normal(size=shape).astype(np.float32)  # noqa: E731
    g = Builder()
    a = g.conv("input", "conv_a", normal(2, 1, 3, 3), normal(2))
    b = g.conv("input", "conv_b", normal(2, 1, 3, 3), normal(2))
    x = g.node(activation, [g.node("Concat", [a, b], "concat", axis=1)], "act")
    out = g.conv(x, "conv_c", normal(2, 4, 1, 1), normal(2))
    return g.build(image_shape(1), out, image_shape(2))


def split_branches(w1: np.ndarray, b1: np.ndarray, seed: int = 0) -> onnx.ModelProto:
    """input -> conv1 (1 -> C) -> relu1 -> Split [C/2, C/2] -> conv_x, conv_y (C/2 -> 3 each) -> Add -> output.

    One prunable group (conv1's channels): the first half is read by conv_x, the second by
    conv_y, and each Split piece must keep a channel."""
    half = w1.shape[0] // 2
    rng = np.random.default_rng(seed)
    g = Builder()
    hidden = g.node("Relu", [g.conv("input", "conv1", w1, b1)], "relu1")
    split = helper.make_node("Split", [hidden, g.init_ints("split_sizes", [half, half])], ["piece_x", "piece_y"],
                             name="split", axis=1)
    g.nodes.append(split)
    x = g.conv("piece_x", "conv_x", rng.normal(size=(3, half, 3, 3)).astype(np.float32), None)
    y = g.conv("piece_y", "conv_y", rng.normal(size=(3, half, 3, 3)).astype(np.float32), None)
    out = g.node("Add", [x, y], "add")
    return g.build(image_shape(1), out, image_shape(3))
