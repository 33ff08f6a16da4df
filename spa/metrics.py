"""Static cost metrics of an ONNX model: parameters, MACs, size and op histogram."""

from __future__ import annotations

import math
import warnings
from collections import Counter

import numpy as np
import onnx
from onnx import TensorProto
from onnx.external_data_helper import uses_external_data

from spa.io.inputs import concrete_shape, input_specs
from spa.io.load import (
    FLOAT_TYPES,
    infer_shapes,
    shape_only_copy,
    tensor_nbytes,
    without_initializers,
)
from spa.io.runtime import session

# op type -> (index of the data input, index of the weight / second operand)
_CONV_OPS = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3), "ConvTranspose": (0, 1)}
_MATMUL_OPS = {"MatMul": (0, 1), "MatMulInteger": (0, 1), "QLinearMatMul": (0, 3), "Gemm": (0, 1)}

Shape = list[int | None]


def _constant_tensors(graph: onnx.GraphProto) -> list[TensorProto]:
    return [
        attr.t
        for node in graph.node
        if node.op_type == "Constant"
        for attr in node.attribute
        if attr.name == "value"
    ]


# Integer inputs that hold quantized weights and biases: op type -> input indices.
_QUANTIZED_WEIGHTS = {"DequantizeLinear": (0,), "QLinearConv": (3, 8), "QLinearMatMul": (3,), "QGemm": (3, 6),
                      "ConvInteger": (1,), "MatMulInteger": (1,), "DynamicQuantizeMatMul": (1,),
                      "MatMulIntegerToFloat": (1,)}


def count_params(model: onnx.ModelProto) -> int:
    """Number of elements in float initializers and float Constant-node tensors of the
    main graph, and in integer ones that hold quantized weights; other integer tensors
    (shapes, indices) are not parameters."""
    tensors = list(model.graph.initializer) + _constant_tensors(model.graph)
    quantized = {node.input[i] for node in model.graph.node
                 for i in _QUANTIZED_WEIGHTS.get(node.op_type, ()) if i < len(node.input)}
    return sum(math.prod(t.dims) for t in tensors if t.data_type in FLOAT_TYPES or t.name in quantized)


def _inferred_shapes(model: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> dict[str, Shape]:
    """Static shape of every tensor, with the graph inputs fixed to `input_shapes`."""
    copy = shape_only_copy(model)
    for value in copy.graph.input:
        if value.name in input_shapes:
            del value.type.tensor_type.shape.dim[:]
            for size in input_shapes[value.name]:
                value.type.tensor_type.shape.dim.add().dim_value = size
    del copy.graph.value_info[:]  # stale symbolic shapes would conflict with the fixed ones
    inferred = infer_shapes(copy)

    shapes: dict[str, Shape] = {init.name: list(init.dims) for init in inferred.graph.initializer}
    graph = inferred.graph
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        tensor_type = value.type.tensor_type
        if tensor_type.HasField("shape"):
            shapes[value.name] = [
                d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim
            ]
    return shapes


def _measured_shapes(model: onnx.ModelProto, names: set[str], feeds: dict[str, np.ndarray]) -> dict[str, Shape]:
    """Shapes of `names` as onnxruntime computes them on `feeds`: where inference cannot
    follow (pads or sizes computed in the graph), running the model can. Empty where the
    model cannot run here (weights on disk, or a failure)."""
    if not names or any(uses_external_data(t) for t in model.graph.initializer):
        return {}
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    declared = {o.name for o in copy.graph.output}
    copy.graph.output.extend(onnx.ValueInfoProto(name=name) for name in sorted(names - declared))
    wanted = sorted(names)  # graph outputs too: their declared shapes may be open
    try:
        values = session(copy).run(wanted, feeds)
    except Exception:  # noqa: BLE001 - measuring is a best effort; unknown stays unknown
        return {}
    return {name: list(value.shape) for name, value in zip(wanted, values)}


def _conv_macs(x: Shape, w: Shape, y: Shape, transpose: bool) -> int:
    # W is (C_out, C_in/group, k...) for Conv and (C_in, C_out/group, k...) for
    # ConvTranspose, so MACs = elements on the W[0] side * prod(W[1:]).
    return math.prod(x if transpose else y) * math.prod(w[1:])


def _matmul_macs(a: Shape, b: Shape) -> int:
    k = a[-1]
    m = a[-2] if len(a) > 1 else 1
    n = b[-1] if len(b) > 1 else 1
    batch = np.broadcast_shapes(tuple(a[:-2]), tuple(b[:-2]))
    return math.prod(batch) * m * n * k


def _gemm_macs(a: Shape, b: Shape, trans_a: int, trans_b: int) -> int:
    m, k = (a[1], a[0]) if trans_a else (a[0], a[1])
    n = b[0] if trans_b else b[1]
    return m * n * k


def _static(shape: Shape | None) -> bool:
    return shape is not None and None not in shape


def _known_shape(shapes: dict[str, Shape], names: list[str], index: int) -> Shape | None:
    shape = shapes.get(names[index]) if index < len(names) else None
    return None if shape is None or None in shape else shape


def node_macs(node: onnx.NodeProto, shapes: dict[str, Shape]) -> int | None:
    """MACs of one node, 0 for uncounted op types, None if a needed shape is unknown."""
    if node.op_type in _CONV_OPS:
        x_index, w_index = _CONV_OPS[node.op_type]
        x = _known_shape(shapes, node.input, x_index)
        w = _known_shape(shapes, node.input, w_index)
        y = _known_shape(shapes, node.output, 0)
        if x is None or w is None or y is None:
            return None
        return _conv_macs(x, w, y, transpose=node.op_type == "ConvTranspose")
    if node.op_type in _MATMUL_OPS:
        a_index, b_index = _MATMUL_OPS[node.op_type]
        a = _known_shape(shapes, node.input, a_index)
        b = _known_shape(shapes, node.input, b_index)
        if a is None or b is None:
            return None
        if node.op_type == "Gemm":
            attrs = {attr.name: attr.i for attr in node.attribute}
            return _gemm_macs(a, b, attrs.get("transA", 0), attrs.get("transB", 0))
        return _matmul_macs(a, b)
    return 0


def tensor_shapes(model: onnx.ModelProto, dim_values: dict[str, int] | None = None, default_dim: int = 1,
                  feeds: dict[str, np.ndarray] | None = None, wanted: set[str] | None = None) -> dict[str, Shape]:
    """Shape of every tensor of the main graph, with the graph inputs fixed to the shapes of
    `feeds` when given, else symbolic dims set to `dim_values[symbol]` or `default_dim`.
    With `feeds`, tensors around Conv/Gemm/MatMul nodes (and the `wanted` ones) that
    inference leaves unknown are measured by running the model."""
    input_shapes = ({name: list(np.shape(value)) for name, value in feeds.items()} if feeds is not None else
                    {s.name: concrete_shape(s.shape, dim_values, default_dim) for s in input_specs(model)})
    shapes = _inferred_shapes(model, input_shapes)
    if feeds is not None:
        missing = {name for node in model.graph.node if node_macs(node, shapes) is None
                   for name in list(node.input) + list(node.output) if name and not _static(shapes.get(name))}
        missing |= {name for name in wanted or () if not _static(shapes.get(name))}
        shapes.update(_measured_shapes(model, missing, feeds))
    return shapes


def count_macs(model: onnx.ModelProto, dim_values: dict[str, int] | None = None, default_dim: int = 1,
               feeds: dict[str, np.ndarray] | None = None) -> int:
    """Multiply-accumulates of one inference, main graph only.

    Counted: Conv / ConvInteger / QLinearConv (output elements * C_in/group *
    prod(kernel)), ConvTranspose (input elements * C_out/group * prod(kernel)),
    Gemm and MatMul / MatMulInteger / QLinearMatMul (batch * M * N * K; either
    operand may be an activation). Bias adds, activations, normalization, pooling,
    elementwise ops and Einsum are not counted.

    Shapes come from shape inference with the graph inputs fixed: to the shapes of `feeds`
    when given (the sample a model was verified on), else symbolic dims set to
    `dim_values[symbol]` or `default_dim`. Where inference leaves a counted node's shapes
    unknown, they are measured by running the model on `feeds`; nodes still unknown are
    skipped with a warning.
    """
    shapes = tensor_shapes(model, dim_values, default_dim, feeds)
    total, unknown = 0, []
    for node in model.graph.node:
        macs = node_macs(node, shapes)
        if macs is None:
            unknown.append(node.name or node.op_type)
        else:
            total += macs
    if unknown:
        listed = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        warnings.warn(f"count_macs: {len(unknown)} node(s) with unknown shapes skipped: {listed}")
    return total


def model_size_bytes(model: onnx.ModelProto) -> int:
    """Size on disk: the model without its initializers, plus each initializer's bytes
    (external or not; a few bytes of names and dims per tensor are not counted)."""
    return without_initializers(model).ByteSize() + sum(map(tensor_nbytes, model.graph.initializer))


def node_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Histogram of op types in the main graph, most frequent first."""
    return dict(Counter(node.op_type for node in model.graph.node).most_common())


def summarize(model: onnx.ModelProto, dim_values: dict[str, int] | None = None,
              feeds: dict[str, np.ndarray] | None = None) -> dict:
    """params, macs, size_bytes, nodes (total) and op_types (histogram) of a model; MACs at
    the input shapes of `feeds` when given (see count_macs)."""
    op_types = node_counts(model)
    return {
        "params": count_params(model),
        "macs": count_macs(model, dim_values, feeds=feeds),
        "size_bytes": model_size_bytes(model),
        "nodes": sum(op_types.values()),
        "op_types": op_types,
    }
