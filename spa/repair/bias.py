"""Zero biases for layers without one, so compensation and statistics correction have
somewhere to put a shift; and their removal afterwards where they stayed zero.

Added before the analysis, so a new bias is a member of its layer's output group and
is sliced with it like any other bias.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from spa.calibrate.layers import following_bias, weight_axes
from spa.io.load import read_values

PREFIX = "spa_bias_"


def add_zero_biases(graph: gs.Graph) -> list[str]:
    """Give every Conv, Gemm and weight-MatMul without a bias a zero one; return their names."""
    added = []
    for node in list(graph.nodes):
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        if not isinstance(weight, gs.Constant) or node.op not in ("Conv", "Gemm", "MatMul"):
            continue
        if node.op == "Conv" and len(node.inputs) == 2:
            added.append(_append(node, weight.shape[0]))
        elif node.op == "Gemm" and len(node.inputs) == 2 and not node.attrs.get("transA", 0):
            added.append(_append(node, weight.shape[weight_axes(node)[0]]))
        elif node.op == "MatMul" and len(weight.shape) == 2 and following_bias(node)[0] is None:
            added.append(_insert_add(graph, node, weight.shape[1]))
    if added:
        graph.toposort()
    return added


def _zeros(node: gs.Node, size: int) -> gs.Constant:
    dtype = read_values(node.inputs[1]).dtype
    return gs.Constant(f"{PREFIX}{node.name or node.outputs[0].name}", np.zeros(size, dtype=dtype))


def _append(node: gs.Node, size: int) -> str:
    bias = _zeros(node, size)
    node.inputs.append(bias)
    return bias.name


def _insert_add(graph: gs.Graph, node: gs.Node, size: int) -> str:
    """MatMul -> product becomes MatMul -> unbiased, Add(unbiased, zeros) -> product."""
    product = node.outputs[0]
    unbiased = gs.Variable(f"{PREFIX}{product.name}_unbiased", dtype=product.dtype, shape=product.shape)
    bias = _zeros(node, size)
    node.outputs[0] = unbiased
    graph.nodes.append(gs.Node("Add", f"{PREFIX}{node.name}_add", inputs=[unbiased, bias], outputs=[product]))
    return bias.name


def drop_zero_biases(graph: gs.Graph, names: list[str]) -> None:
    """Remove the biases `add_zero_biases` added that are still all zero."""
    tensors = graph.tensors()
    for name in names:
        bias = tensors.get(name)
        if bias is None or np.any(read_values(bias)):
            continue
        for node in list(bias.outputs):
            if node.op == "Add":
                matmul = node.inputs[0].inputs[0]
                product = node.outputs[0]
                node.outputs.clear()
                matmul.outputs[0] = product
            else:
                node.inputs.remove(bias)
    graph.cleanup().toposort()
