"""Fold every BatchNormalization that follows a Conv into it, as most exporters do.

    python tools/fold_batchnorm.py IN.onnx OUT.onnx

W' = W * gamma / sqrt(var + eps) and b' = (b - mean) * gamma / sqrt(var + eps) + beta per
output channel; the BatchNorm node goes. Used by the quality benchmarks to measure spa on the
same trained weights with BatchNorm kept and folded (spa's data-free statistics differ).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spa.api import prepared_model  # noqa: E402  (Constant nodes as initializers, shared ones unshared)


def fold_batchnorm(source: str | Path) -> onnx.ModelProto:
    model = prepared_model(source)
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    folded = []
    for norm in graph.node:
        conv = producer.get(norm.input[0]) if norm.op_type == "BatchNormalization" else None
        if conv is None or conv.op_type != "Conv" or readers[norm.input[0]] != 1 or conv.input[1] not in weights:
            continue
        scale, shift, mean, var = (numpy_helper.to_array(weights[name]) for name in norm.input[1:5])
        epsilon = next((a.f for a in norm.attribute if a.name == "epsilon"), 1e-5)
        factor = scale / np.sqrt(var + epsilon)
        weight = numpy_helper.to_array(weights[conv.input[1]])
        bias = numpy_helper.to_array(weights[conv.input[2]]) if len(conv.input) > 2 and conv.input[2] \
            else np.zeros(weight.shape[0], weight.dtype)
        weight_name, bias_name = f"{conv.input[1]}/folded", f"{norm.output[0]}/folded_bias"
        graph.initializer.extend([
            numpy_helper.from_array((weight * factor.reshape(-1, *[1] * (weight.ndim - 1))).astype(weight.dtype),
                                    weight_name),
            numpy_helper.from_array(((bias - mean) * factor + shift).astype(weight.dtype), bias_name)])
        conv.input[1] = weight_name
        conv.input[2:] = [bias_name]
        conv.output[0] = norm.output[0]
        folded.append(norm)
    for norm in folded:
        graph.node.remove(norm)
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.value_info[:]
    onnx.checker.check_model(model)
    return model


if __name__ == "__main__":
    onnx.save(fold_batchnorm(sys.argv[1]), sys.argv[2])
