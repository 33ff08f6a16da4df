"""A graph back into a model: the rewritten graph with the input's IR version, opsets,
metadata, and graph inputs and outputs exactly as the input declared them."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues

STUB_BYTES = 1 << 20  # weights at least this large are written into the model directly


def export(graph: gs.Graph, original: onnx.ModelProto) -> onnx.ModelProto:
    """The rewritten graph as a model with the original's IR version, opsets and metadata."""
    model = _export_with_weights_once(graph)
    _keep_original_value_info(model, original)
    if original.ir_version < 4:  # IR 3: every initializer is also a graph input
        _initializers_as_inputs(model)
    model.ir_version = original.ir_version
    del model.opset_import[:]
    model.opset_import.extend(original.opset_import)
    for name in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(model, name, getattr(original, name))
    del model.metadata_props[:]
    model.metadata_props.extend(original.metadata_props)
    del model.functions[:]
    model.functions.extend(original.functions)
    return model


def _initializers_as_inputs(model: onnx.ModelProto) -> None:
    declared = {value.name for value in model.graph.input}
    for tensor in model.graph.initializer:
        if tensor.name not in declared:
            model.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type,
                                                                        list(tensor.dims)))


def _keep_original_value_info(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Graph inputs and outputs exactly as the input declared them; value_info only for the
    tensors the input described (with updated shapes): inferred shapes are ours, not the
    user's, and may disagree with onnx's checker."""
    for ours, theirs in ((model.graph.input, original.graph.input), (model.graph.output, original.graph.output)):
        declared = {value.name: value for value in theirs}
        for value in ours:
            if value.name in declared:
                value.CopyFrom(declared[value.name])
    described = {value.name for value in original.graph.value_info}
    kept = [value for value in model.graph.value_info if value.name in described]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)


def _export_with_weights_once(graph: gs.Graph) -> onnx.ModelProto:
    """gs.export_onnx, with each large in-memory weight copied into the model once.

    onnx-graphsurgeon builds a tensor proto per weight, then onnx.helper copies them into
    the graph and the graph into the model: three transient copies of every weight (a
    1.6 GB pruned decoder peaked at 5.9 GB here). Large weights are exported as empty
    stubs instead and their bytes written into the finished model's initializers."""
    stubbed = {}
    for tensor in graph.tensors().values():
        values = tensor._values if isinstance(tensor, gs.Constant) else None
        if isinstance(values, np.ndarray):
            tensor.data_location = None  # changed in memory (a corrected bias): no longer in the input's file
        if isinstance(values, np.ndarray) and values.nbytes >= STUB_BYTES and tensor.export_dtype == tensor.dtype:
            stub = onnx.TensorProto(name=tensor.name, data_type=onnx.helper.np_dtype_to_tensor_dtype(values.dtype),
                                    dims=values.shape)
            stubbed[tensor.name] = (tensor, values)
            tensor.values = LazyValues(stub)
    try:
        model = gs.export_onnx(graph, do_type_check=False)
    finally:
        for tensor, values in stubbed.values():
            tensor.values = values
    for initializer in model.graph.initializer:
        if initializer.name in stubbed:
            values = stubbed[initializer.name][1]
            initializer.raw_data = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<")).tobytes()
    return model
