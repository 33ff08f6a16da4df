"""A graph back into a model: the rewritten graph with the input's IR version, opsets,
metadata, and graph inputs and outputs exactly as the input declared them."""
from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs


def export(graph: gs.Graph, original: onnx.ModelProto) -> onnx.ModelProto:
    """The rewritten graph as a model with the original's IR version, opsets and metadata."""
    model = gs.export_onnx(graph, do_type_check=False)
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
