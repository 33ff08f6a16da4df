"""Stage 1, load: read an ONNX file (external data included), validate it, infer shapes and
import it into onnx-graphsurgeon's IR with Constant nodes turned into initializers."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError
from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

from spa.errors import SpaError

ModelSource = str | os.PathLike | onnx.ModelProto


def load_model(source: ModelSource) -> onnx.ModelProto:
    """The validated model at `source` (a path, or a ModelProto returned as is once checked)."""
    if isinstance(source, onnx.ModelProto):
        check_model(source)
        return source
    path = Path(source)
    if not path.exists():
        raise SpaError(f"no such file: {path}")
    if not path.is_file():
        raise SpaError(f"not a file: {path}")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except (DecodeError, RuntimeError, ValueError, OSError) as error:
        raise SpaError(f"{path} is not a readable ONNX model ({_first_line(error)})") from None
    check_model(model, path)
    return model


def check_model(model: onnx.ModelProto, path: Path | None = None) -> None:
    if not model.HasField("graph") or not model.graph.node:
        raise SpaError(f"{path or 'model'} has no graph: not an ONNX model, or truncated")
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as error:
        raise SpaError(f"{path or 'model'} is not a valid ONNX model: {_first_line(error)}") from None


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """gs graph of `model` with inferred shapes, Constant nodes as initializers, sorted."""
    graph = gs.import_onnx(infer_shapes(model))
    _constant_nodes_to_initializers(graph)
    graph.toposort()
    return graph


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Static shapes wherever they can be known. onnxruntime's symbolic shape inference
    follows Shape/Gather/Concat chains and names dynamic dims consistently; where it fails
    (an op it does not know), onnx's own inference with data propagation is used. Shapes
    that stay unknown make the analysis keep the channels involved whole."""
    try:
        return SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # noqa: BLE001 - any failure: the weaker inference below
        pass
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - unknown shapes are kept whole
        return model


def _constant_nodes_to_initializers(graph: gs.Graph) -> None:
    graph_outputs = {tensor.name for tensor in graph.outputs}
    for node in list(graph.nodes):
        if node.op != "Constant" or node.outputs[0].name in graph_outputs:
            continue
        values = _constant_value(node)
        if values is None:
            continue
        output = node.outputs[0]
        constant = gs.Constant(output.name, values)
        for consumer in list(output.outputs):
            for index, tensor in enumerate(consumer.inputs):
                if tensor is output:
                    consumer.inputs[index] = constant
        node.outputs.clear()
        graph.nodes.remove(node)


def _constant_value(node: gs.Node) -> np.ndarray | None:
    attrs = node.attrs
    if "value" in attrs:
        return np.asarray(attrs["value"].values)
    scalar_kinds = {"value_int": np.int64, "value_ints": np.int64,
                    "value_float": np.float32, "value_floats": np.float32}
    for name, dtype in scalar_kinds.items():
        if name in attrs:
            return np.asarray(attrs[name], dtype=dtype)
    return None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
