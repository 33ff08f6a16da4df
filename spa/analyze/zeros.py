"""Where the zeroed model's removed channels are not 0.

The exactness oracle zeroes every member slice of the removed channels: a producer's rows
and bias, per-channel parameters, a consumer's columns. A removed channel is then 0 from
its producer on, until an op maps 0 to something else (Sigmoid, Exp, adding a constant that
is not sliced with the channels). Passing through, that is harmless: the consumer's zeroed
columns ignore it. A sum or mean over the channel axis (ReduceSum, ReduceMean, a MatMul
contracting two activations) counts it, so those are exact only where the removed channels
are still 0.

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
                    "Reciprocal": "inf", "Softmax": "1/n", "LogSoftmax": "-log n", "Hardmax": "not 0",
                    "Equal": "true", "LessOrEqual": "true", "GreaterOrEqual": "true"}
# ops whose outputs are new channels made from zeroed rows, or scaled by zeroed parameters
ZEROED_OUTPUTS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", "BatchNormalization", "InstanceNormalization"}
ADDING = ("Add", "Sub", "Sum", "Max", "Min", "Mean", "Where",  # 0 only if every operand is (Where: both values)
          "Less", "Greater", "Or", "Xor")


def offset_reason(ctx: NodeContext) -> str | None:
    """Why the removed channels may not be 0 in the node's outputs, or None where they are 0."""
    state, node, op = ctx.state, ctx.node, ctx.node.op
    operands = [t for t in node.inputs if t.name]
    offsets = [state.offset.get(t.name) for t in operands if not isinstance(t, gs.Constant)]
    inherited = next((reason for reason in offsets if reason), None)
    out = state.axes.get(node.outputs[0].name) or [] if node.outputs else []
    if op in NOT_ZERO_AT_ZERO:
        return f"{ctx.where()} is {NOT_ZERO_AT_ZERO[op]} at 0"
    if op == "Clip":
        return _clip(ctx) or inherited
    if op == "Pad":  # the border takes the constant, removed channels too
        value = ctx.const(2)
        nonzero = value is not None and np.any(value) or node.attrs.get("value", 0.0) != 0
        padded = node.attrs.get("mode", "constant") in ("constant", b"constant") and nonzero
        return f"{ctx.where()} pads with a constant that is not 0" if padded else inherited
    if op in ZEROED_OUTPUTS:  # new channels from zeroed rows; other channel axes pass through
        weighted = op in ("BatchNormalization", "InstanceNormalization") or any(
            isinstance(t, gs.Constant) for t in node.inputs[:2])
        return None if weighted and sum(labels is not None for labels in out) <= 1 else inherited
    if op == "Mul":  # a factor that is 0 at the removed channels makes the product 0
        if any(not state.offset.get(t.name) and not _broadcast(state, t, out) for t in operands):
            return None
        return inherited or _first_broadcast(ctx, operands, out)
    if op in ("Div", "Mod"):
        return offsets[0] if operands and not isinstance(operands[0], gs.Constant) else f"{ctx.where()} divides a constant"
    if op in ADDING:
        return inherited or _first_broadcast(ctx, operands[1:] if op == "Where" else operands, out)
    return inherited


def _broadcast(state: AnalysisState, tensor: gs.Tensor, out: list) -> bool:
    """Does `tensor` broadcast along some channel axis of the output (a scalar, a per-sample
    statistic, a constant of size 1 there): the same value at every channel, removed or not?"""
    axes = state.axes.get(tensor.name)
    if axes is None:
        axes = [None] * len(tensor.shape) if tensor.shape is not None else None
    if axes is None or len(axes) > len(out):
        return True
    aligned = [None] * (len(out) - len(axes)) + list(axes)
    return any(labels is not None and len(labels) > 1 and (mine is None or len(mine) != len(labels))
               for labels, mine in zip(out, aligned))


def _first_broadcast(ctx: NodeContext, operands: list[gs.Tensor], out: list) -> str | None:
    """An operand broadcast along a channel axis adds (or multiplies in) the same value at the
    removed channels; a constant only if it is not 0."""
    for tensor in operands:  # (a constant's values are read only where it broadcasts: they may be large)
        if _broadcast(ctx.state, tensor, out) and not (isinstance(tensor, gs.Constant) and not np.any(tensor.values)):
            return f"{ctx.where()} brings '{tensor.name}' to every channel"
    return None


def _clip(ctx: NodeContext) -> str | None:
    low = ctx.const(1) if ctx.has_input(1) else ctx.attr("min")
    high = ctx.const(2) if ctx.has_input(2) else ctx.attr("max")
    if (low is not None and np.any(np.asarray(low) > 0)) or (high is not None and np.any(np.asarray(high) < 0)):
        return f"{ctx.where()} moves 0 to its bounds"
    return None
