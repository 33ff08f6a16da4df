"""Normalizations: per-channel ones (BatchNorm, InstanceNorm) tie their parameters to
the channels; those over the channel axis (LayerNorm, LRN, Softmax) make it inexact."""
from __future__ import annotations


from spa.analyze.context import AxisLabels, NodeContext
from spa.analyze.registry import rule


@rule("BatchNormalization", known=(0,))
def BatchNormalization(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    for index in range(1, 5):
        ctx.unify(x[1], ctx.axis(index, 0))
    ctx.state.statistics.update(ctx.tensor(i).name for i in (3, 4))
    if ctx.attr("training_mode", 0):  # statistics of this input, over every axis but 1
        for labels in x[:1] + x[2:]:
            ctx.inexact(labels, f"normalized by {ctx.where()} (training mode)")
        for index in range(1, len(ctx.node.outputs)):
            ctx.set_output(index, [x[1]])
    ctx.set_output(0, x)


@rule("InstanceNormalization", known=(0,))
def InstanceNormalization(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    ctx.fix_all(x[2:], f"spatial axis of {ctx.where()}")
    for index in (1, 2):
        ctx.unify(x[1], ctx.axis(index, 0))
    ctx.set_output(0, [x[0], x[1]] + [None] * (len(x) - 2))


@rule("LayerNormalization", known=(0,))
def LayerNormalization(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    first = ctx.attr("axis", -1) % len(x)
    for labels in x[first:]:
        ctx.inexact(labels, f"normalized by {ctx.where()}")
    for index in (1, 2):
        if ctx.has_input(index):
            trailing_parameter(ctx, index, x)
    ctx.set_output(0, x)


def trailing_parameter(ctx: NodeContext, index: int, target: AxisLabels) -> None:
    """A parameter broadcast against the trailing axes of `target` (scale, bias)."""
    axes = ctx.axes(index) or []
    for j, labels in enumerate(axes):
        k = len(target) - len(axes) + j
        if labels is not None and len(labels) == 1 and (target[k] is None or len(target[k]) != 1):
            ctx.fix(labels, f"{ctx.where()} broadcasts this axis")
        else:
            ctx.unify(target[k], labels)


@rule("LRN", known=(0,))
def LRN(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    ctx.inexact(x[1], f"{ctx.where()} normalizes across channels")
    ctx.set_output(0, x)


@rule("Softmax", "LogSoftmax", "Hardmax", known=(0,))
def Softmax(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    opset = ctx.state.opset
    axis = ctx.attr("axis", -1 if opset >= 13 else 1) % len(x)
    mixed = x[axis:] if opset < 13 else [x[axis]]
    for labels in mixed:
        ctx.inexact(labels, f"normalized by {ctx.where()}")
    ctx.set_output(0, x)
