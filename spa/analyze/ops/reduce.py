"""Pooling and reductions: spatial axes go, channels stay; a reduction over channels
is exact only for sums and means, and only where the removed channels are 0
(spa/analyze/zeros.py): a mean then keeps its original divisor."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from spa.analyze.context import AxisLabels, NodeContext, RewriteContext
from spa.analyze.registry import rewrite_hook, rule, unknown


@rule("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", known=(0,))
def pool(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    ctx.fix_all(x[2:], f"spatial axis of {ctx.where()}")
    if len(ctx.node.outputs) > 1 and ctx.node.outputs[1].outputs:
        ctx.fix(x[1], f"{ctx.where()} returns indices that count channels")
    for index in range(len(ctx.node.outputs)):
        ctx.set_output(index, [x[0], x[1]] + [None] * (len(x) - 2))


EXACT_REDUCTIONS = ("ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2")


@rule("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
      "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")
def reduce(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    reduced = _reduced_axes(ctx, x)
    if x is None or reduced is None:
        return unknown(ctx)
    offset = ctx.state.offset.get(ctx.tensor(0).name)  # a sum counts removed channels that are not 0
    for k in reduced:
        if ctx.node.op not in EXACT_REDUCTIONS + ("ReduceMean",):
            ctx.inexact(x[k], f"reduced by {ctx.where()}")
        elif offset is not None:
            ctx.inexact(x[k], f"summed by {ctx.where()} where removed channels are not 0 ({offset})")
        elif ctx.node.op == "ReduceMean" and x[k] is not None:
            ctx.state.averaged.append(x[k])
    keep = ctx.attr("keepdims", 1)
    out = [None if k in reduced else x[k] for k in range(len(x)) if keep or k not in reduced]
    ctx.set_output(0, out)


@rewrite_hook("ReduceMean")
def keep_the_mean_over_all_channels(rctx: RewriteContext, node: gs.Node) -> None:
    """A mean over channels whose removed ones are 0 is their sum over the original count:
    the kept ones' mean times kept / original count. Where they are not 0 (an inexact group,
    pruned on request) the same divisor is what the calibration passes saw on the zeroed graph."""
    x = rctx.state.axes.get(node.inputs[0].name)
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and isinstance(node.inputs[1], gs.Constant):
        axes = np.ravel(node.inputs[1].values).tolist()
    if x is None or axes is None:
        return
    factor = 1.0
    for k in {int(a) % len(x) for a in axes}:
        if x[k] is not None:
            factor *= rctx.size(x[k]) / len(x[k])
    if factor == 1.0:
        return
    output = node.outputs[0]
    mean = gs.Variable(rctx.new_name(output.name), dtype=output.dtype, shape=output.shape)
    scale = gs.Constant(rctx.new_name(f"{node.name}_kept_share"), np.array(factor, dtype=output.dtype or np.float32))
    node.outputs[0] = mean
    rctx.state.graph.nodes.append(gs.Node("Mul", rctx.new_name(node.name), {}, [mean, scale], [output]))


def _reduced_axes(ctx: NodeContext, x: AxisLabels | None) -> set[int] | None:
    if x is None:
        return None
    axes = ctx.attr("axes")
    if axes is None and ctx.has_input(1):
        axes = ctx.const(1)
        if axes is None:
            return None
    if axes is None or len(axes) == 0:
        return set() if ctx.attr("noop_with_empty_axes", 0) else set(range(len(x)))
    return {int(a) % len(x) for a in np.ravel(axes)}


@rule("ArgMax", "ArgMin", known=(0,))
def ArgMax(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    axis = ctx.attr("axis", 0) % len(x)
    ctx.fix(x[axis], f"{ctx.where()} returns positions along this axis")
    keep = ctx.attr("keepdims", 1)
    ctx.set_output(0, [None if k == axis else x[k] for k in range(len(x)) if keep or k != axis])
