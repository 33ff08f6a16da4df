"""Convolutions: a Conv's output channels are its weight rows, its input channels the
columns (depthwise and grouped convs map them by group); the rewrite sets a depthwise
Conv's `group` to its kept channels."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from spa.analyze.context import GroupedColumns, NodeContext, RewriteContext
from spa.analyze.registry import rewrite_hook, rule, unknown


@rule("Conv")
def Conv(ctx: NodeContext) -> None:
    x, w = ctx.axes(0), ctx.axes(1)
    if x is None or w is None or len(w) < 2:
        return unknown(ctx)
    groups = ctx.attr("group", 1)
    ctx.fix_all(x[2:], f"spatial axis of {ctx.where()}")
    out_channels = w[0]
    if groups == 1:
        ctx.unify(x[1], w[1])
        ctx.new_space(out_channels, 1)
    elif len(w[1]) == 1:  # depthwise: input channel c owns outputs c*m .. c*m+m-1
        _depthwise(ctx, x[1], out_channels, groups)
    else:
        _grouped(ctx, x[1], out_channels, groups)
    if ctx.has_input(2):
        ctx.unify(ctx.axis(2, 0), out_channels)
    ctx.set_output(0, [x[0], out_channels] + [None] * (len(x) - 2))


def _depthwise(ctx: NodeContext, x_channels, out_channels, groups: int) -> None:
    if x_channels is None:
        ctx.fix(out_channels, f"{ctx.where()}: its input channels cannot change")
        return
    if len(x_channels) != groups or len(out_channels) % groups:
        ctx.fix(x_channels, f"{ctx.where()}: unexpected depthwise shape")
        ctx.fix(out_channels, f"{ctx.where()}: unexpected depthwise shape")
        return
    ctx.unify(np.repeat(x_channels, len(out_channels) // groups), out_channels)


def _grouped(ctx: NodeContext, x_channels, out_channels, groups: int) -> None:
    ctx.new_space(out_channels, 1)
    if len(out_channels) % groups:
        ctx.fix(out_channels, f"{ctx.where()}: channels not divisible by groups")
    ctx.state.partitions.append((out_channels, groups))
    if x_channels is None or len(x_channels) % groups:
        ctx.fix(x_channels, f"{ctx.where()}: input channels not divisible by groups")
        return
    ctx.state.partitions.append((x_channels, groups))
    ctx.state.grouped_columns.append(GroupedColumns(ctx.weight_source(1).name, x_channels, groups))


@rule("ConvTranspose")
def ConvTranspose(ctx: NodeContext) -> None:
    x, w = ctx.axes(0), ctx.axes(1)
    if x is None:
        return unknown(ctx)
    ctx.fix_all(x[2:], f"spatial axis of {ctx.where()}")
    out_channels = w[1]
    if ctx.attr("group", 1) == 1:
        ctx.unify(x[1], w[0])
        ctx.new_space(out_channels, 1)
    else:
        ctx.fix(x[1], f"{ctx.where()}: grouped ConvTranspose is kept whole")
        ctx.fix(out_channels, f"{ctx.where()}: grouped ConvTranspose is kept whole")
    if ctx.has_input(2):
        ctx.unify(ctx.axis(2, 0), out_channels)
    ctx.set_output(0, [x[0], out_channels] + [None] * (len(x) - 2))


# --- rewrite: after the removal -------------------------------------------------------

@rewrite_hook("Conv", "ConvInteger", "QLinearConv")
def set_depthwise_groups(rctx: RewriteContext, node: gs.Node) -> None:
    """A depthwise Conv has one group per input channel."""
    groups = node.attrs.get("group", 1)
    weight = node.inputs[3 if node.op == "QLinearConv" else 1]
    channels = rctx.state.axes[node.inputs[0].name][1]
    if groups > 1 and weight.shape[1] == 1 and channels is not None:
        node.attrs["group"] = rctx.size(channels)
