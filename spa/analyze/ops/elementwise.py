"""Element-wise ops: activations (one input's channels pass through), broadcasting
arithmetic (equal axes are the same channels), and the ops whose zero is not inert
(division, powers, logarithms)."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from spa.analyze.context import AxisLabels, NodeContext
from spa.analyze.registry import rule


UNARY = ("Relu", "LeakyRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid",
         "HardSwish", "Tanh", "Softplus", "Softsign", "Gelu", "Mish", "ThresholdedRelu", "Abs",
         "Neg", "Exp", "Sqrt", "Floor", "Ceil", "Round", "Sign", "Erf", "Sin", "Cos", "Tan",
         "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Not", "Identity",
         "Cast", "IsNaN", "IsInf", "Shrink", "Dropout", "Clip")
NOT_FINITE_AT_ZERO = ("Log", "Reciprocal")  # a zeroed channel would turn into inf/nan


@rule(*UNARY)
def elementwise_unary(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    for index in range(len(ctx.node.outputs)):
        ctx.set_output(index, x if x is not None else [])
    for index in range(1, ctx.input_count):  # Dropout ratio / training_mode scalars
        ctx.axes(index)


@rule(*NOT_FINITE_AT_ZERO)
def not_finite_at_zero(ctx: NodeContext) -> None:
    """A zeroed channel would be inf here, unless a positive constant is added first (the
    epsilon of a norm: 1 / sqrt(mean(x^2) + eps))."""
    if not _offset_from_zero(ctx.tensor(0)):
        for labels in ctx.axes(0) or []:
            ctx.inexact(labels, f"{ctx.where()} is not finite at zero")
    elementwise_unary(ctx)


def _offset_from_zero(tensor: gs.Tensor) -> bool:
    """Is `tensor` positive where its input is zero: an Add of a positive constant, seen
    through Sqrt, Cast and Identity?"""
    while tensor.inputs and tensor.inputs[0].op in ("Sqrt", "Cast", "Identity"):
        tensor = tensor.inputs[0].inputs[0]
    producer = tensor.inputs[0] if tensor.inputs else None
    if producer is None or producer.op != "Add":
        return False
    return any(isinstance(t, gs.Constant) and np.all(np.asarray(t.values) > 0) for t in producer.inputs)


@rule("CastLike")
def CastLike(ctx: NodeContext) -> None:
    ctx.axes(1)  # only its element type matters
    ctx.set_output(0, ctx.axes(0))


@rule("Add", "Sub", "Mul", "Max", "Min", "Mean", "Sum", "Where", "Equal", "Less", "Greater",
      "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "BitShift", "PRelu")
def broadcast(ctx: NodeContext) -> None:
    out = broadcast_inputs(ctx, list(range(ctx.input_count)))
    ctx.set_output(0, out)


@rule("Div", "Mod")
def Div(ctx: NodeContext) -> None:
    """Dividing by a zeroed channel is not finite, and removing a channel changes what the
    other channels are divided by, unless each channel is divided by a statistic of its own
    (a per-head norm, a per-group norm written out): then the divisor's axis holds exactly
    the dividend's channels, position by position (or the dividend is one number)."""
    if ctx.is_const(1):
        ctx.state.divisors.add(ctx.tensor(1).name)
    elif not (ctx.is_const(0) and np.size(ctx.const(0)) == 1):  # c / x_i: each channel its own reciprocal
        dividend, divisor = ctx.axes(0), ctx.axes(1)
        for k, labels in enumerate(divisor or []):
            if not _own_channels(ctx, dividend, divisor, k):
                ctx.inexact(labels, f"{ctx.where()} divides by a channel")
    broadcast(ctx)


def _own_channels(ctx: NodeContext, dividend: AxisLabels | None, divisor: AxisLabels, k: int) -> bool:
    labels = divisor[k]
    j = k - len(divisor) + len(dividend) if dividend is not None else -1
    if labels is None or j < 0 or dividend[j] is None or len(dividend[j]) != len(labels):
        return labels is None
    return bool(np.array_equal(ctx.space.roots(dividend[j]), ctx.space.roots(labels)))


@rule("Pow")
def Pow(ctx: NodeContext) -> None:
    """0 to a non-positive or varying power is not 0: such channels are inexact."""
    exponent = ctx.const(1)
    if exponent is None or np.any(exponent <= 0):
        for index in (0, 1):
            for labels in ctx.axes(index) or []:
                ctx.inexact(labels, f"{ctx.where()}: zero to this power is not zero")
    broadcast(ctx)


def broadcast_inputs(ctx: NodeContext, inputs: list[int]) -> AxisLabels | None:
    """Numpy broadcasting: equal axes are the same channels; a size-1 axis stays size 1."""
    present = [i for i in inputs if ctx.has_input(i)]
    all_axes = {i: ctx.axes(i) for i in present}
    if any(axes is None for axes in all_axes.values()):
        for axes in all_axes.values():
            ctx.fix_all(axes, f"{ctx.where()}: input rank unknown")
        return None
    rank = max(len(axes) for axes in all_axes.values())
    return [_broadcast_axis(ctx, all_axes, rank, k) for k in range(rank)]


def _broadcast_axis(ctx: NodeContext, all_axes: dict[int, AxisLabels], rank: int, k: int):
    full, ones = [], []
    for i, axes in all_axes.items():
        axis = k - (rank - len(axes))
        if axis < 0:
            continue
        dim = axis_size(ctx, i, axis, axes[axis])
        (ones if dim == 1 else full).append(axes[axis])
    if not full:
        return unify_chain(ctx, ones)
    for labels in ones:
        ctx.fix(labels, f"{ctx.where()} broadcasts this axis")
    return unify_chain(ctx, full)


def unify_chain(ctx: NodeContext, labels_list: list):
    result = labels_list[0]
    for labels in labels_list[1:]:
        if result is None or labels is None:
            ctx.unify(result, labels)
            result = None
        else:
            result = ctx.unify(result, labels)
    return result


def axis_size(ctx: NodeContext, index: int, axis: int, labels):
    if labels is not None:
        return len(labels)
    shape = ctx.shape(index)
    return shape[axis] if shape is not None and axis < len(shape) else None
