"""Random CNN-like ONNX graphs for property tests, plus a small graph builder."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8


def tensor_info(name: str, shape: Sequence[int | str]) -> onnx.ValueInfoProto:
    """float32 value info with the given (possibly symbolic) shape."""
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def he_scale(fan_in: int) -> float:
    """Weight scale that keeps activations O(1) for magnitudes in [0.1, 1]."""
    return 1.5 / np.sqrt(fan_in)


class GraphBuilder:
    """Accumulates nodes and initializers under unique names."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counts: dict[str, int] = {}

    def fresh(self, prefix: str) -> str:
        count = self._counts.get(prefix, 0)
        self._counts[prefix] = count + 1
        return f"{prefix}{count}"

    def constant(self, prefix: str, array: np.ndarray, as_node: bool = False) -> str:
        """Add `array` as an initializer (or a Constant node); return its name."""
        if as_node:
            return self.op("Constant", [], value=numpy_helper.from_array(array))
        name = self.fresh(prefix)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def ints(self, prefix: str, values: Sequence[int]) -> str:
        return self.constant(prefix, np.array(values, dtype=np.int64))

    def random(self, shape: Sequence[int], scale: float = 1.0) -> np.ndarray:
        """float32 values with magnitude in [0.1, 1] * scale and random sign."""
        magnitude = self.rng.uniform(0.1, 1.0, size=shape)
        sign = self.rng.choice([-1.0, 1.0], size=shape)
        return (magnitude * sign * scale).astype(np.float32)

    def param(self, prefix: str, shape: Sequence[int], scale: float = 1.0) -> str:
        return self.constant(prefix, self.random(shape, scale))

    def positive(self, prefix: str, shape: Sequence[int], low: float = 0.5, high: float = 1.5) -> str:
        return self.constant(prefix, self.rng.uniform(low, high, size=shape).astype(np.float32))

    def op(self, op_type: str, inputs: Sequence[str], **attrs) -> str:
        """Add a single-output node; return its output name."""
        return self.multi_op(op_type, inputs, 1, **attrs)[0]

    def multi_op(self, op_type: str, inputs: Sequence[str], n_outputs: int, **attrs) -> list[str]:
        name = self.fresh(op_type.lower())
        outputs = [f"{name}_out{i}" for i in range(n_outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outputs, name=name, **attrs))
        return outputs

    def conv(self, x: str, c_in: int, c_out: int, kernel: int = 3, stride: int = 1,
             group: int = 1, bias: bool = True, pad: bool = True) -> str:
        """Conv with random weights; `pad` keeps the spatial size at stride 1."""
        shape = [c_out, c_in // group, kernel, kernel]
        inputs = [x, self.param("conv_w", shape, he_scale(int(np.prod(shape[1:]))))]
        if bias:
            inputs.append(self.param("conv_b", [c_out], 0.5))
        p = kernel // 2 if pad else 0
        return self.op("Conv", inputs, kernel_shape=[kernel, kernel], strides=[stride, stride],
                       pads=[p] * 4, group=group)

    def dense(self, x: str, n_in: int, n_out: int, trans_b: int = 1, bias: bool = True) -> str:
        """Gemm with a random weight laid out for `trans_b`."""
        shape = [n_out, n_in] if trans_b else [n_in, n_out]
        inputs = [x, self.param("gemm_w", shape, he_scale(n_in))]
        if bias:
            inputs.append(self.param("gemm_b", [n_out], 0.5))
        return self.op("Gemm", inputs, transB=trans_b)

    def batch_norm(self, x: str, channels: int) -> str:
        return self.op("BatchNormalization", [
            x, self.positive("bn_scale", [channels]), self.param("bn_bias", [channels], 0.5),
            self.param("bn_mean", [channels], 0.5), self.positive("bn_var", [channels])])

    def build(self, inputs: Sequence[onnx.ValueInfoProto],
              outputs: Sequence[onnx.ValueInfoProto], name: str = "spa_test") -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, list(inputs), list(outputs),
                                  initializer=self.initializers)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                 ir_version=IR_VERSION)


@dataclass
class _Trunk:
    """The tensor flowing through the network and its [1, c, hw, hw] shape."""
    g: GraphBuilder
    x: str
    c: int
    hw: int


Draw = Callable[[st.SearchStrategy[Any]], Any]
CHANNELS = st.integers(2, 12)
ACTIVATIONS = ("Relu", "Sigmoid", "LeakyRelu", "PRelu", "Clip", "HardSwish", "Tanh")


def _activation(draw: Draw, t: _Trunk) -> None:
    kind = draw(st.sampled_from(ACTIVATIONS))
    if kind == "LeakyRelu":
        t.x = t.g.op(kind, [t.x], alpha=0.1)
    elif kind == "PRelu":
        t.x = t.g.op(kind, [t.x, t.g.positive("prelu_slope", [t.c, 1, 1], 0.05, 0.5)])
    elif kind == "Clip":
        low = t.g.constant("clip_min", np.array(-0.5, np.float32))
        high = t.g.constant("clip_max", np.array(2.0, np.float32))
        t.x = t.g.op(kind, [t.x, low, high])
    else:
        t.x = t.g.op(kind, [t.x])


def _conv(draw: Draw, t: _Trunk) -> None:
    c_out = draw(CHANNELS)
    stride = draw(st.sampled_from([1, 2])) if t.hw >= 6 else 1
    t.x = t.g.conv(t.x, t.c, c_out, draw(st.sampled_from([1, 3])), stride, bias=draw(st.booleans()))
    t.c, t.hw = c_out, (t.hw - 1) // stride + 1


def _conv_bn(draw: Draw, t: _Trunk) -> None:
    _conv(draw, t)
    t.x = t.g.batch_norm(t.x, t.c)


def _residual(draw: Draw, t: _Trunk) -> None:
    branch = t.g.conv(t.x, t.c, t.c, 3, bias=draw(st.booleans()))
    if draw(st.booleans()):
        branch = t.g.op("Relu", [branch])
    shortcut = t.g.conv(t.x, t.c, t.c, 1) if draw(st.booleans()) else t.x
    t.x = t.g.op("Add", [branch, shortcut])


def _se_gate(draw: Draw, t: _Trunk) -> None:
    reduced = draw(st.integers(2, max(2, t.c)))
    gate = t.g.op("GlobalAveragePool", [t.x])
    gate = t.g.op("Relu", [t.g.conv(gate, t.c, reduced, 1)])
    gate = t.g.op("Sigmoid", [t.g.conv(gate, reduced, t.c, 1)])
    t.x = t.g.op("Mul", [t.x, gate])


def _concat(draw: Draw, t: _Trunk) -> None:
    widths = [draw(st.integers(2, 6)) for _ in range(2)]
    branches = [t.g.conv(t.x, t.c, w, draw(st.sampled_from([1, 3]))) for w in widths]
    t.x, t.c = t.g.op("Concat", branches, axis=1), sum(widths)


def _split(draw: Draw, t: _Trunk) -> None:
    first = draw(st.integers(1, t.c - 1))
    parts = t.g.multi_op("Split", [t.x, t.g.ints("split", [first, t.c - first])], 2, axis=1)
    merge_add = draw(st.booleans())
    widths = [draw(st.integers(2, 6))] * 2 if merge_add else [draw(st.integers(2, 6)) for _ in range(2)]
    branches = [t.g.conv(p, c, w, 3) for p, c, w in zip(parts, [first, t.c - first], widths)]
    if merge_add:
        t.x, t.c = t.g.op("Add", branches), widths[0]
    else:
        t.x, t.c = t.g.op("Concat", branches, axis=1), sum(widths)


def _grouped_conv(draw: Draw, t: _Trunk) -> None:
    groups = draw(st.sampled_from([g for g in (2, 4) if t.c % g == 0] or [2]))
    if t.c % groups:  # adapter so that the channel count divides evenly
        width = groups * draw(st.integers(1, 3))
        t.x, t.c = t.g.conv(t.x, t.c, width, 1), width
    c_out = groups * draw(st.integers(1, 3))
    t.x, t.c = t.g.conv(t.x, t.c, c_out, 3, group=groups, bias=draw(st.booleans())), c_out


def _depthwise(draw: Draw, t: _Trunk) -> None:
    c_out = t.c * draw(st.sampled_from([1, 2]))
    t.x, t.c = t.g.conv(t.x, t.c, c_out, 3, group=t.c, bias=draw(st.booleans())), c_out


def _pool(draw: Draw, t: _Trunk) -> None:
    op_type = draw(st.sampled_from(["MaxPool", "AveragePool"]))
    if t.hw >= 4:
        t.x, t.hw = t.g.op(op_type, [t.x], kernel_shape=[2, 2], strides=[2, 2]), t.hw // 2
    else:
        t.x = t.g.op(op_type, [t.x], kernel_shape=[3, 3], pads=[1, 1, 1, 1])


def _channel_add(draw: Draw, t: _Trunk) -> None:
    t.x = t.g.op("Add", [t.x, t.g.param("channel_bias", [1, t.c, 1, 1], 0.5)])


def _channel_norm(draw: Draw, t: _Trunk) -> None:
    """x / sqrt(sum over channels of x² + eps), F.normalize's export: a sum over channels,
    exact only where removed channels are 0 (after a Sigmoid they are 0.5)."""
    if draw(st.booleans()):
        t.x = t.g.op("Sigmoid", [t.x])
    square = t.g.op("Mul", [t.x, t.x])
    if draw(st.booleans()):
        total = t.g.op("ReduceSum", [square, t.g.ints("axes", [1])], keepdims=1)
    else:
        total = t.g.op("ReduceSumSquare", [t.x], axes=[1], keepdims=1)
    eps = t.g.constant("eps", np.array(1e-3, np.float32))
    t.x = t.g.op("Div", [t.x, t.g.op("Sqrt", [t.g.op("Add", [total, eps])])])


BLOCKS: dict[str, Callable[[Draw, _Trunk], None]] = {
    "conv": _conv, "conv_bn": _conv_bn, "activation": _activation, "residual": _residual,
    "se_gate": _se_gate, "concat": _concat, "split": _split, "grouped_conv": _grouped_conv,
    "depthwise": _depthwise, "pool": _pool, "channel_add": _channel_add, "channel_norm": _channel_norm,
}


def _gap_gemm(draw: Draw, t: _Trunk, classes: int) -> list[int]:
    flat = t.g.op("Flatten", [t.g.op("GlobalAveragePool", [t.x])])
    t.x = t.g.dense(flat, t.c, classes, trans_b=1)
    return [1, classes]


def _flatten_gemm(draw: Draw, t: _Trunk, classes: int) -> list[int]:
    flat = t.g.op("Flatten", [t.x])
    t.x = t.g.dense(flat, t.c * t.hw**2, classes, draw(st.sampled_from([0, 1])), draw(st.booleans()))
    return [1, classes]


def _reshape_matmul(draw: Draw, t: _Trunk, classes: int) -> list[int]:
    flat = t.g.op("Reshape", [t.x, t.g.ints("shape", [1, -1])])
    features = t.c * t.hw**2
    t.x = t.g.op("MatMul", [flat, t.g.param("matmul_w", [features, classes], he_scale(features))])
    return [1, classes]


def _conv_map(draw: Draw, t: _Trunk, classes: int) -> list[int]:
    t.x = t.g.conv(t.x, t.c, classes, draw(st.sampled_from([1, 3])))
    return [1, classes, t.hw, t.hw]


HEADS: dict[str, Callable[[Draw, _Trunk, int], list[int]]] = {
    "gap_gemm": _gap_gemm, "flatten_gemm": _flatten_gemm,
    "reshape_matmul": _reshape_matmul, "conv_map": _conv_map,
}


def cnn_models(blocks: Sequence[str] = tuple(BLOCKS), heads: Sequence[str] = tuple(HEADS),
               max_blocks: int = 6) -> st.SearchStrategy[onnx.ModelProto]:
    """Random CNN: input [1, 3..4, hw, hw], 1..max_blocks of `blocks`, one of `heads`."""

    @st.composite
    def strategy(draw: Draw) -> onnx.ModelProto:
        c, hw = draw(st.integers(3, 4)), draw(st.integers(6, 10))
        trunk = _Trunk(GraphBuilder(draw(st.integers(0, 2**32 - 1))), "input", c, hw)
        for kind in draw(st.lists(st.sampled_from(blocks), min_size=1, max_size=max_blocks)):
            BLOCKS[kind](draw, trunk)
        out_shape = HEADS[draw(st.sampled_from(heads))](draw, trunk, draw(st.integers(2, 10)))
        return trunk.g.build([tensor_info("input", [1, c, hw, hw])],
                             [tensor_info(trunk.x, out_shape)])

    return strategy()
