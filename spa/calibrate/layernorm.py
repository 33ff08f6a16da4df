"""LayerNormalization over units a hidden group removed, in calibration passes, as the
pruned model will compute it.

Zeroing a removed unit is not removing it where a LayerNormalization reads it: the mean
and variance still count it (as a 0, over n units instead of k). Calibration passes run
the zeroed full-size graph, so after a hidden group has removed units, every
LayerNormalization whose scale lost positions computes its statistics over the kept
units only:

    mean = Σ m·x / k,   d = m·(x - mean),   var = Σ d² / k,   y = d / sqrt(var + ε)·γ + β

with m the kept mask of the normalized (last) axis and k = Σ m. The layers measured
after it (scores, compensation, statistics correction) then see what the pruned model
gives them. Only the calibration segments change; the written model keeps its nodes.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

PREFIX = "__spa_masked_norm/"


def norm_masks(nodes: list[gs.Node], removed: dict[tuple[str, int], set[int]]) -> dict[str, np.ndarray]:
    """Per LayerNormalization among `nodes` (by output name) whose 1-D scale lost positions
    in `removed` ((initializer, axis) -> positions): its kept mask, 1 kept and 0 removed."""
    masks = {}
    for node in nodes:
        if not _maskable(node):
            continue
        gone = removed.get((node.inputs[1].name, 0))
        if gone:
            mask = np.ones(node.inputs[1].shape[0], dtype=np.float32)
            mask[sorted(gone)] = 0.0
            masks[node.outputs[0].name] = mask
    return masks


def _maskable(node: gs.Node) -> bool:
    """A LayerNormalization over the last axis alone, with a constant 1-D float32 scale and
    only its first output read."""
    if node.op != "LayerNormalization" or len(node.inputs) < 2 or not isinstance(node.inputs[1], gs.Constant):
        return False
    scale, rank = node.inputs[1], len(node.inputs[0].shape) if node.inputs[0].shape is not None else None
    axis = node.attrs.get("axis", -1)
    last_axis = axis == -1 or (rank is not None and axis == rank - 1)
    extra_outputs_read = any(output.outputs for output in node.outputs[1:])
    return (last_axis and len(scale.shape) == 1 and scale.values.dtype == np.float32
            and not extra_outputs_read)


def mask_in_model(model: onnx.ModelProto, masks: dict[str, np.ndarray]) -> None:
    """In `model` (a calibration segment), replace each LayerNormalization whose output is
    named in `masks` by the masked computation of the module docstring."""
    nodes = []
    for proto in model.graph.node:
        mask = masks.get(proto.output[0]) if proto.op_type == "LayerNormalization" else None
        if mask is None:
            nodes.append(proto)
            continue
        epsilon = next((a.f for a in proto.attribute if a.name == "epsilon"), 1e-5)
        nodes += _masked_norm(model, proto, mask, epsilon)
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def _masked_norm(model: onnx.ModelProto, proto: onnx.NodeProto, mask: np.ndarray,
                 epsilon: float) -> list[onnx.NodeProto]:
    x, scale, out = proto.input[0], proto.input[1], proto.output[0]
    bias = proto.input[2] if len(proto.input) > 2 and proto.input[2] else None
    name = PREFIX + out
    model.graph.initializer.extend([
        onnx.numpy_helper.from_array(mask, f"{name}/mask"),
        onnx.numpy_helper.from_array(np.array(1.0 / mask.sum(), np.float32), f"{name}/1/k"),
        onnx.numpy_helper.from_array(np.array(epsilon, np.float32), f"{name}/epsilon"),
        onnx.numpy_helper.from_array(np.array([-1], np.int64), f"{name}/axes")])
    make = onnx.helper.make_node

    def mean(source: str, result: str) -> list[onnx.NodeProto]:
        return [make("ReduceSum", [source, f"{name}/axes"], [f"{result}/sum"], keepdims=1),
                make("Mul", [f"{result}/sum", f"{name}/1/k"], [result])]

    return [
        make("Mul", [x, f"{name}/mask"], [f"{name}/kept"]),
        *mean(f"{name}/kept", f"{name}/mean"),
        make("Sub", [x, f"{name}/mean"], [f"{name}/centered"]),
        make("Mul", [f"{name}/centered", f"{name}/mask"], [f"{name}/deviation"]),
        make("Mul", [f"{name}/deviation", f"{name}/deviation"], [f"{name}/squares"]),
        *mean(f"{name}/squares", f"{name}/variance"),
        make("Add", [f"{name}/variance", f"{name}/epsilon"], [f"{name}/variance+epsilon"]),
        make("Sqrt", [f"{name}/variance+epsilon"], [f"{name}/std"]),
        make("Div", [f"{name}/deviation", f"{name}/std"], [f"{name}/normalized"]),
        make("Mul", [f"{name}/normalized", scale], [out if bias is None else f"{name}/scaled"]),
        *([make("Add", [f"{name}/scaled", bias], [out])] if bias is not None else []),
    ]
