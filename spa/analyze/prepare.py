"""Graph preparation before the analysis, and its undoing after the rewrite.

Exporters alias, reshape and share constants for reasons that have nothing to do with the
model:
- a constant reshaped, transposed or sliced by nodes (tf2onnx leaves these unfolded) is
  folded into the constant it makes, where that does not store a weight twice;
- `Identity(constant)` nodes (the torch exporter's deduplicated parameters, paddle2onnx's
  casts) are the constant itself: readers are pointed at it directly;
- a constant whose elements are all equal (a zero bias, a unit LayerNorm scale), read by
  several nodes, is shared only because the exporter deduplicated equal tensors. Sharing it
  would couple every reader's channels into one group, so each reader gets its own copy;
  `reshare` merges the copies that are still equal after pruning. A constant with distinct
  values read by several nodes (a tied embedding, ALBERT's one layer used at every depth)
  is shared for real and stays shared: it couples its readers, and `spa inspect` says so.

A graph onnxruntime optimized and saved holds the shape initializers its MatMul+Add fusion
named `gemm_input_shape`, `gemm_output_shape_token_3`, ...: those get new names, because
that fusion picks its names among node names only and fails on a session of a graph where
it fuses again (a calibration segment with concrete shapes, a MatMul given a bias).
"""
from __future__ import annotations

import re

import numpy as np
import onnx_graphsurgeon as gs

from spa.io.load import read_values

COPY_MARK = "__spa_copy"


FOLDABLE = ("Cast", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Shape", "Gather",
            "Concat", "ReduceProd", "Slice")  # layout and shape ops: folded weights keep their values
SMALL = 64  # elements: a folded copy of a bigger constant is made only where nothing else reads it


def prepare(graph: gs.Graph) -> None:
    """Idempotent: a prepared model comes out of it unchanged."""
    _bypass_constant_identities(graph)
    _fold_layout_of_constants(graph)
    _unshare_uniform_constants(graph)
    _rename_fusion_shapes(graph)


FUSION_SHAPE = re.compile(r"gemm_(input|output)_shape(_token_\d+)?")  # onnxruntime's MatMulAddFusion's names


def _rename_fusion_shapes(graph: gs.Graph) -> None:
    """Initializers named as onnxruntime's MatMul+Add fusion names the shapes it adds get
    other names (see the module docstring)."""
    tensors = graph.tensors()
    for name, tensor in list(tensors.items()):
        if isinstance(tensor, gs.Constant) and FUSION_SHAPE.fullmatch(name):
            new_name = f"spa_{name}"
            while new_name in tensors:
                new_name = f"spa_{new_name}"
            tensor.name = new_name
            tensors[new_name] = tensor


def _fold_layout_of_constants(graph: gs.Graph) -> None:
    """A weight reshaped or transposed by nodes (tf2onnx leaves `Reshape(W, Concat(...
    Shape(W2)))` unfolded) is that weight: such nodes on constants become constants, so the
    layer reading them sees its weight. Quantization (DequantizeLinear) is never folded, nor
    a constant something else reads too (the model would hold it twice)."""
    outputs = {t.name for t in graph.outputs}
    for node in list(graph.nodes):
        if node.op not in FOLDABLE or (node.domain or "") not in ("", "ai.onnx") or len(node.outputs) != 1 \
                or node.outputs[0].name in outputs or not node.inputs \
                or not all(isinstance(t, gs.Constant) or not t.name for t in node.inputs):
            continue
        value = _evaluate(node)
        shared_weight = any(len(t.outputs) > 1 and int(np.prod(t.shape)) > SMALL for t in node.inputs if t.name)
        if value is None or (value.size > SMALL and shared_weight):
            continue
        result = gs.Constant(node.outputs[0].name, value)
        for reader in list(node.outputs[0].outputs):
            _replace_input(reader, node.outputs[0], result)
        node.inputs.clear()  # no longer a reader of its constants
        node.outputs.clear()
        graph.nodes.remove(node)


def _evaluate(node: gs.Node) -> np.ndarray | None:
    """The node's output on its constant inputs, by onnx's reference implementation."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator
    names = [t.name or "" for t in node.inputs]
    proto = helper.make_node(node.op, names, ["out"], **node.attrs)
    try:
        evaluator = ReferenceEvaluator(proto)
        return np.asarray(evaluator.run(None, {t.name: read_values(t) for t in node.inputs if t.name})[0])
    except Exception:  # noqa: BLE001 - not folded: the analysis sees the node as it is
        return None


def _bypass_constant_identities(graph: gs.Graph) -> None:
    outputs = {t.name for t in graph.outputs}
    for node in list(graph.nodes):
        if node.op != "Identity" or not isinstance(node.inputs[0], gs.Constant) or node.outputs[0].name in outputs:
            continue
        constant, alias = node.inputs[0], node.outputs[0]
        for reader in list(alias.outputs):
            _replace_input(reader, alias, constant)
        node.outputs.clear()
        graph.nodes.remove(node)


def _replace_input(node: gs.Node, old: gs.Tensor, new: gs.Tensor) -> None:
    for index, tensor in enumerate(node.inputs):
        if tensor is old:
            node.inputs[index] = new


def _unshare_uniform_constants(graph: gs.Graph) -> None:
    readers: dict[str, list[gs.Node]] = {}
    constants: dict[str, gs.Constant] = {}
    for node in graph.nodes:
        for tensor in node.inputs:
            if isinstance(tensor, gs.Constant) and node not in readers.setdefault(tensor.name, []):
                readers[tensor.name].append(node)
                constants[tensor.name] = tensor
    for name, nodes in readers.items():
        tensor = constants[name]
        if len(nodes) < 2 or not _uniform_parameter(tensor):
            continue
        for index, node in enumerate(nodes[1:], 1):
            _replace_input(node, tensor, gs.Constant(f"{name}{COPY_MARK}{index}", np.array(read_values(tensor))))


def _uniform_parameter(tensor: gs.Constant) -> bool:
    """A float tensor of more than one element, all equal."""
    if not np.issubdtype(tensor.dtype, np.floating) or int(np.prod(tensor.shape)) < 2:
        return False
    values = read_values(tensor)
    return bool(np.all(values == values.flat[0]))


def reshare(graph: gs.Graph) -> None:
    """Point the readers of equal copies made by `prepare` back at one tensor, under the
    original name where the original is no longer read."""
    bases = {name.split(COPY_MARK)[0] for name in graph.tensors() if COPY_MARK in name}
    if not bases:
        return
    kept: dict[tuple, gs.Constant] = {}
    for node in graph.nodes:
        for index, tensor in enumerate(node.inputs):
            base = tensor.name.split(COPY_MARK)[0]
            if not isinstance(tensor, gs.Constant) or base not in bases:
                continue
            values = read_values(tensor)
            key = (base, values.dtype.str, values.shape, values.tobytes())
            node.inputs[index] = kept.setdefault(key, tensor)
    in_use = graph.tensors()
    for name, tensor in in_use.items():
        base = name.split(COPY_MARK)[0]
        if COPY_MARK in name and base not in in_use:
            tensor.name = base
            in_use = {**in_use, base: tensor}
