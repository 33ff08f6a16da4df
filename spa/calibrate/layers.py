"""Linear layers as data criteria see them: y = W·x (+ b), one weight matrix over the
features of one input tensor.

A group's channels are read by "consumer" layers: a Conv (groups=1), a Gemm or a MatMul
whose weight is an initializer. Each becomes a `LinearLayer`: the weight as a matrix
[out, features] (a Conv's features are its im2col columns, ordered channel, kernel
position, so one input channel owns k×k adjacent columns), the per-channel columns, and
a way to turn calibration activations of its input into feature rows. A bias, where the
layer has one, is one more column whose feature is constantly 1: compensation then moves
the removed channels' mean contribution into it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from spa.analyze import Group, Member
from spa.calibrate.shifted import output_size, shifted_gram
from spa.io.load import read_values


@dataclass
class LinearLayer:
    node: gs.Node
    weight: gs.Constant
    bias: gs.Constant | None
    output: gs.Variable  # y, after the bias (the Add that follows a MatMul)

    @property
    def input(self) -> gs.Variable:
        return self.node.inputs[0]

    @property
    def kernel(self) -> tuple[int, ...]:
        return tuple(self.weight.shape[2:]) if self.node.op == "Conv" else ()

    @property
    def kernel_size(self) -> int:
        """Matrix columns per input position (k×k for a 2-D Conv, 1 for a linear layer)."""
        return math.prod(self.kernel)

    @property
    def channel_axis(self) -> int:
        """The axis of `input` and `output` holding features (channels of a Conv)."""
        return 1 if self.node.op == "Conv" else -1

    @property
    def weight_output_axis(self) -> int:
        return weight_axes(self.node)[0]

    @property
    def weight_input_axis(self) -> int:
        return weight_axes(self.node)[1]

    def matrix(self) -> np.ndarray:
        """[out, features (+1 for the bias)] in float64, the bias last."""
        values = read_values(self.weight).astype(np.float64)
        if self.node.op == "Conv":
            matrix = values.reshape(values.shape[0], -1)
        else:
            matrix = values if self.weight_output_axis == 0 else values.T
        matrix = matrix * self.node.attrs.get("alpha", 1.0)
        if self.bias is None:
            return matrix
        bias = np.broadcast_to(read_values(self.bias).astype(np.float64).reshape(-1), (matrix.shape[0],))
        return np.concatenate([matrix, bias[:, None] * self.node.attrs.get("beta", 1.0)], axis=1)

    def set_matrix(self, matrix: np.ndarray) -> None:
        """Write back what `matrix` returned, after changes."""
        weight = read_values(self.weight)
        if self.bias is not None:
            bias = read_values(self.bias)
            new_bias = matrix[:, -1] / self.node.attrs.get("beta", 1.0)
            self.bias.values = new_bias.reshape(bias.shape).astype(bias.dtype)
            matrix = matrix[:, :-1]
        matrix = matrix / self.node.attrs.get("alpha", 1.0)
        if self.node.op != "Conv" and self.weight_output_axis == 1:
            matrix = matrix.T
        self.weight.values = matrix.reshape(weight.shape).astype(weight.dtype)

    def scale_outputs(self, factors: np.ndarray, shifts: np.ndarray) -> None:
        """Output channel c becomes factors[c] * y_c + shifts[c]: the weight's rows and the
        bias scaled, the shift added to the bias (which must exist). In the weight's own
        layout: a wide layer's float64 matrix (and its transposes) is never made."""
        weight = read_values(self.weight)
        shape = [1] * weight.ndim
        shape[0 if self.node.op == "Conv" else self.weight_output_axis] = -1
        scaled = weight.astype(np.float64)
        scaled *= factors.reshape(shape)
        self.weight.values = scaled.astype(weight.dtype)
        bias = read_values(self.bias)
        beta = self.node.attrs.get("beta", 1.0)
        rows = np.broadcast_to(bias.astype(np.float64).reshape(-1), factors.shape)
        self.bias.values = ((rows * beta * factors + shifts) / beta).reshape(bias.shape).astype(bias.dtype)

    def columns(self, member: Member) -> list[np.ndarray]:
        """Per channel of the member's group: its columns in `matrix()`."""
        widths = {len(index) for index in member.index}
        if len(widths) == 1:  # every channel owns as many positions: one array operation for all
            positions = np.asarray(member.index, dtype=np.int64)  # [channels, positions]
            offsets = np.arange(self.kernel_size)
            return list((positions[:, :, None] * self.kernel_size + offsets).reshape(len(positions), -1))
        return [self.position_columns(index) for index in member.index]

    def position_columns(self, positions) -> np.ndarray:
        """The matrix columns of the given input positions, kernel columns included."""
        offsets = np.arange(self.kernel_size)
        return (np.asarray(positions, dtype=np.int64).reshape(-1, 1) * self.kernel_size + offsets).reshape(-1)

    def features(self, x: np.ndarray) -> np.ndarray:
        """Calibration rows [samples, features (+1)] of this layer's input `x`."""
        rows = self._conv_columns(x) if self.node.op == "Conv" else x.reshape(-1, x.shape[-1])
        if self.bias is not None:
            rows = np.concatenate([rows, np.ones((len(rows), 1), dtype=rows.dtype)], axis=1)
        return rows

    @property
    def has_gram(self) -> bool:
        """Does `gram` apply: a unit-stride Conv whose kernel is wider than 1?"""
        attrs = self.node.attrs
        return self.node.op == "Conv" and self.kernel_size > 1 \
            and all(s == 1 for s in attrs.get("strides", [1] * len(self.kernel)))

    def gram(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        """(FᵀF, rows of F) for F = features(x), without forming F (spa.calibrate.shifted)."""
        return shifted_gram(x, self.kernel, self._dilations(), self._pads(x.shape[2:]), self.bias is not None)

    def feature_shape(self, shape: tuple[int, ...]) -> tuple[int, int]:
        """(rows, columns) of features(x) for x of this shape, where `has_gram`."""
        out = output_size(shape[2:], self.kernel, self._dilations(), self._pads(shape[2:]))
        return shape[0] * math.prod(out), shape[1] * self.kernel_size + (self.bias is not None)

    def _dilations(self) -> list[int]:
        return self.node.attrs.get("dilations", [1] * len(self.kernel))

    def _conv_columns(self, x: np.ndarray) -> np.ndarray:
        """im2col: each output position's receptive field, channel-major like the weight."""
        attrs = self.node.attrs
        spatial = x.ndim - 2
        strides = attrs.get("strides", [1] * spatial)
        dilations = attrs.get("dilations", [1] * spatial)
        padded = np.pad(x, [(0, 0), (0, 0)] + self._pads(x.shape[2:]))
        windows = np.lib.stride_tricks.sliding_window_view(
            padded, [(k - 1) * d + 1 for k, d in zip(self.kernel, dilations)], axis=tuple(range(2, x.ndim)))
        # windows: [N, C, *out_positions_unstrided, *window]; take strides and dilations
        index = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) \
            + tuple(slice(None, None, d) for d in dilations)
        windows = windows[index]
        moved = np.moveaxis(windows, 1, 1 + spatial)  # [N, *out, C, *kernel]
        return moved.reshape(-1, x.shape[1] * self.kernel_size)

    def _pads(self, size: tuple[int, ...]) -> list[tuple[int, int]]:
        attrs = self.node.attrs
        spatial = len(size)
        auto_pad = attrs.get("auto_pad", "NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            strides = attrs.get("strides", [1] * spatial)
            dilations = attrs.get("dilations", [1] * spatial)
            pads = []
            for n, k, s, d in zip(size, self.kernel, strides, dilations):
                total = max(0, (math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n)
                small = total // 2
                pads.append((small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small))
            return pads
        if auto_pad == "VALID":
            return [(0, 0)] * spatial
        pads = attrs.get("pads", [0] * (2 * spatial))
        return list(zip(pads[:spatial], pads[spatial:]))


def consumer_layers(graph: gs.Graph, group: Group) -> tuple[list[tuple[LinearLayer, Member]], list[str]]:
    """The linear layers reading the group's channels, each with its member; and, for
    every weighted consumer that is not such a layer, why (data criteria cannot measure
    what removing a channel does there)."""
    readers = weight_readers(graph)
    layers, problems = [], []
    for member in group.members:
        if member.producer or member.role != "weight" or member.rank < 2:
            continue
        layer, problem = _as_layer(readers.get(member.initializer, []), member)
        if layer is not None:
            layers.append((layer, member))
        elif problem:
            problems.append(problem)
    return layers, problems


def in_graph_order(graph: gs.Graph, layers: list[LinearLayer]) -> list[LinearLayer]:
    """`layers` sorted by where their nodes stand in the graph: upstream first."""
    position = {id(node): i for i, node in enumerate(graph.nodes)}
    return sorted(layers, key=lambda layer: position[id(layer.node)])


def weight_readers(graph: gs.Graph) -> dict[str, list[gs.Node]]:
    """Per initializer: the nodes that read it."""
    readers: dict[str, list[gs.Node]] = {}
    for node in graph.nodes:
        for tensor in node.inputs:
            if isinstance(tensor, gs.Constant):
                readers.setdefault(tensor.name, []).append(node)
    return readers


def _as_layer(nodes: list[gs.Node], member: Member) -> tuple[LinearLayer | None, str | None]:
    """The member as the input-feature axis of one linear layer, or the reason it is not."""
    name = member.initializer
    if len(nodes) != 1:
        return None, f"weight '{name}' is shared by {len(nodes)} nodes"
    node = nodes[0]
    if node.op == "Conv" and node.attrs.get("group", 1) > 1 and member.axis == 0 and member.within is None:
        return None, None  # a depthwise conv carries the channels through; the layer after it reads them
    if member.within is not None:
        return None, f"{node.op} '{node.name}' is a grouped convolution"
    op = node.op
    if op == "Conv" and node.inputs[1].name == name and member.axis == 1 and node.attrs.get("group", 1) == 1:
        return LinearLayer(node, node.inputs[1], _bias_input(node, 2), node.outputs[0]), None
    if op == "Gemm" and node.inputs[1].name == name and not node.attrs.get("transA", 0) \
            and member.axis == weight_axes(node)[1]:
        return LinearLayer(node, node.inputs[1], _bias_input(node, 2), node.outputs[0]), None
    if op == "MatMul" and node.inputs[1].name == name and member.rank == 2 and member.axis == 0:
        bias, output = following_bias(node)
        return LinearLayer(node, node.inputs[1], bias, output), None
    if op in ("Conv", "Gemm", "MatMul"):
        return None, f"{op} '{node.name}' reads '{name}' in a layout spa does not measure"
    if op in QUANTIZED_READERS:
        return None, (f"weight '{name}' is quantized ({op} '{node.name}'): data criteria measure and "
                      "compensate float layers; magnitude criteria prune quantized ones")
    return None, None  # a channel-wise parameter (scale, shift): not a layer of its own


# Nodes that read an integer weight: a quantized layer (QDQ's DequantizeLinear, or QOperator's
# own ops), whose compensated weights would have to be quantized again.
QUANTIZED_READERS = {"DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm",
                     "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulNBits", "QAttention"}


def _bias_input(node: gs.Node, index: int) -> gs.Constant | None:
    """The bias initializer, if it holds one value per output (a broadcast scalar does not)."""
    tensor = node.inputs[index] if len(node.inputs) > index else None
    outputs = node.inputs[1].shape[weight_axes(node)[0]]
    if isinstance(tensor, gs.Constant) and math.prod(tensor.shape) == outputs:
        return tensor
    return None


def weight_axes(node: gs.Node) -> tuple[int, int]:
    """(output axis, input axis) of the weight (input 1) of a Conv, Gemm or MatMul."""
    if node.op == "Conv":
        return 0, 1
    if node.op == "Gemm" and node.attrs.get("transB", 0):
        return 0, 1
    return 1, 0


def following_bias(node: gs.Node) -> tuple[gs.Constant | None, gs.Variable]:
    """A MatMul's bias is a 1-D initializer added right after it, when nothing else reads
    the product."""
    product = node.outputs[0]
    if len(product.outputs) == 1 and product.outputs[0].op == "Add":
        add = product.outputs[0]
        others = [t for t in add.inputs if t is not product]
        outputs = node.inputs[1].shape[-1]
        if len(others) == 1 and isinstance(others[0], gs.Constant) and tuple(others[0].shape) == (outputs,):
            return others[0], add.outputs[0]
    return None, product
