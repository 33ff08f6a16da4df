"""Where the zeroed model's removed channels are not 0.

The exactness oracle zeroes every member slice of the removed channels: a producer's rows
and bias, per-channel parameters, a consumer's columns. A removed channel is then 0 from
its producer on, until an op maps 0 to something else (Sigmoid, Exp, adding a constant that
is not sliced with the channels). Passing through, that is harmless: the consumer's zeroed
columns ignore it. A sum over the channel axis (ReduceSum, a MatMul contracting two
activations) counts it, so those are exact only where the removed channels are still 0.

`offset_reason` says, per node output, why the removed channels may not be 0 there (None:
they are 0); `analyze` records it in `AnalysisState.offset` as the rules run in graph order.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from spa.analyze.context import AnalysisState, NodeContext

# ops whose value at 0 is not 0
NOT_ZERO_AT_ZERO = {"Sigmoid": "0.5", "HardSigmoid": "not 0", "Exp": "1", "Cos": "1", "Cosh": "1",
                    "Acos": "pi/2", "Acosh": "nan", "Softplus": "log 2", "Not": "true", "Log": "-inf",
                    "Reciprocal": "inf", "Softmax": "1/n", "LogSoftmax": "-log n", "Hardmax": "not 0"}
# ops whose outputs are new channels made from zeroed rows, or scaled by zeroed parameters
ZEROED_OUTPUTS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "BatchNormalization",
                  "InstanceNormalization", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}
ADDING = ("Add", "Sub", "Sum", "Max", "Min", "Mean", "Where", "PRelu")


def offset_reason(ctx: NodeContext) -> str | None:
    """Why the removed channels may not be 0 in the node's outputs, or None where they are 0."""
    state, node, op = ctx.state, ctx.node, ctx.node.op
    offsets = [state.offset.get(t.name) for t in node.inputs if t.name and not isinstance(t, gs.Constant)]
    inherited = next((reason for reason in offsets if reason), None)
    if op in NOT_ZERO_AT_ZERO:
        return f"{ctx.where()} is {NOT_ZERO_AT_ZERO[op]} at 0"
    if op == "Clip":
        return _clip(ctx) or inherited
    if op in ZEROED_OUTPUTS:
        weighted = any(isinstance(t, gs.Constant) for t in node.inputs[1:2]) or op in (
            "BatchNormalization", "InstanceNormalization")
        return None if weighted else inherited
    if op == "Mul":  # a zero factor makes the product 0
        return inherited if offsets and all(offsets) else None
    if op in ("Div", "Mod"):
        return offsets[0] if offsets else None
    if op in ADDING:
        return inherited or _unsliced_constant(state, ctx)
    return inherited


def _clip(ctx: NodeContext) -> str | None:
    node = ctx.node
    bounds = [_constant(t) for t in node.inputs[1:3]]
    low = bounds[0] if bounds and bounds[0] is not None else node.attrs.get("min")
    high = bounds[1] if len(bounds) > 1 and bounds[1] is not None else node.attrs.get("max")
    if (low is not None and np.any(np.asarray(low) > 0)) or (high is not None and np.any(np.asarray(high) < 0)):
        return f"{ctx.where()} moves 0 to its bounds"
    return None


def _unsliced_constant(state: AnalysisState, ctx: NodeContext) -> str | None:
    """A nonzero constant operand that is not sliced along some channel axis of the output
    (a scalar, or size 1 there) adds itself to the removed channels."""
    node = ctx.node
    out = state.axes.get(node.outputs[0].name) or []
    for tensor in node.inputs:
        if not isinstance(tensor, gs.Constant) or len(tensor.shape) > len(out):
            continue
        shape = (1,) * (len(out) - len(tensor.shape)) + tuple(tensor.shape)
        broadcast = any(labels is not None and shape[k] == 1 and len(labels) > 1 for k, labels in enumerate(out))
        if broadcast and np.any(_constant(tensor)):
            return f"{ctx.where()} adds a constant to every channel"
    return None


def _constant(tensor: gs.Tensor) -> np.ndarray | None:
    if not isinstance(tensor, gs.Constant):
        return None
    return np.asarray(tensor.values)
