"""Ops that join, cut or grow axes: Concat, Split, Slice, Pad, Resize, Expand, Tile;
the rewrite keeps their sizes, bounds and split points in step with the kept channels."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from spa.analyze.context import AxisLabels, NodeContext, RewriteContext, static_dim
from spa.analyze.ops.elementwise import axis_size, unify_chain
from spa.analyze.registry import rewrite_hook, rule, unknown


@rule("Concat")
def Concat(ctx: NodeContext) -> None:
    inputs = [ctx.axes(i) for i in range(ctx.input_count)]
    if any(x is None for x in inputs):
        return unknown(ctx)
    rank = len(inputs[0])
    axis = ctx.attr("axis") % rank
    out: AxisLabels = []
    for k in range(rank):
        if k == axis:
            out.append(_concat_labels(ctx, inputs, k))
        else:
            out.append(unify_chain(ctx, [x[k] for x in inputs]))
    ctx.set_output(0, out)


def _concat_labels(ctx: NodeContext, inputs: list[AxisLabels], axis: int):
    if all(x[axis] is None for x in inputs):
        return None
    pieces = []
    for i, x in enumerate(inputs):
        labels = x[axis]
        if labels is None:
            size = static_dim(axis_size(ctx, i, axis, None))
            if size is None:
                for y in inputs:
                    ctx.fix(y[axis], f"{ctx.where()}: a dynamic piece")
                return None
            labels = ctx.fresh_fixed(size, f"{ctx.where()}: a piece that cannot change")
        pieces.append(labels)
    return np.concatenate(pieces)


@rule("Split", known=(0,))
def Split(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    axis = ctx.attr("axis", 0) % len(x)
    sizes = _split_sizes(ctx, x, axis)
    if sizes is None:
        ctx.fix(x[axis], f"{ctx.where()}: split sizes unknown")
        for index in range(len(ctx.node.outputs)):
            ctx.set_output(index, [None if k == axis else x[k] for k in range(len(x))])
        return
    offsets = np.cumsum([0] + sizes)
    for index in range(len(ctx.node.outputs)):
        piece = None if x[axis] is None else x[axis][offsets[index]:offsets[index + 1]]
        ctx.set_output(index, [piece if k == axis else x[k] for k in range(len(x))])


def _split_sizes(ctx: NodeContext, x: AxisLabels, axis: int) -> list[int] | None:
    sizes = ctx.attr("split")
    if sizes is None and ctx.has_input(1):
        sizes = ctx.const(1)
        if sizes is None:
            return None
    if sizes is not None:
        return [int(s) for s in np.ravel(sizes)]
    total = static_dim(axis_size(ctx, 0, axis, x[axis]))
    parts = len(ctx.node.outputs)
    if total is None:
        return None
    chunk = -(-total // parts)  # opset 18 num_outputs: the last piece may be smaller
    return [min(chunk, total - i * chunk) for i in range(parts)]


@rule("Slice")
def Slice(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    for index in range(1, ctx.input_count):
        ctx.axes(index)
    params = slice_params(ctx.node, len(x)) if x is not None else None
    if x is None or params is None:
        return unknown(ctx)
    out = list(x)
    for axis, bounds in params.items():
        if x[axis] is None:
            out[axis] = None
        elif bounds is None:
            ctx.fix(x[axis], f"{ctx.where()}: bounds computed on this axis")
            out[axis] = None
        elif bounds[2] != 1:
            ctx.fix(x[axis], f"{ctx.where()} takes every {bounds[2]}th channel")
            out[axis] = None
        else:
            out[axis] = x[axis][bounds[0]:bounds[1]]
    ctx.set_output(0, out)


def slice_params(node, rank: int) -> dict[int, tuple[int, int, int] | None] | None:
    """{axis: (start, end, step)} from attributes (opset < 10) or constant inputs; an axis
    maps to None when its bounds are computed; None when the sliced axes are unknown."""
    if "starts" in node.attrs:
        starts, ends = node.attrs["starts"], node.attrs["ends"]
        axes = node.attrs.get("axes", list(range(len(starts))))
        return {int(a) % rank: (int(s), int(e), 1) for a, s, e in zip(axes, starts, ends)}
    values = [_constant_input(node, i) for i in range(1, 5)]
    given = [i < len(node.inputs) and bool(node.inputs[i].name) for i in range(1, 5)]
    if given[2] and values[2] is None:
        return None
    count = _vector_length(node.inputs[1])
    if count is None:
        return None
    axes = values[2].tolist() if values[2] is not None else list(range(count))
    if values[0] is None or values[1] is None or (given[3] and values[3] is None):
        return {int(a) % rank: None for a in axes}
    steps = values[3].tolist() if values[3] is not None else [1] * len(axes)
    return {int(a) % rank: (int(s), int(e), int(t))
            for a, s, e, t in zip(axes, values[0].tolist(), values[1].tolist(), steps)}


def _vector_length(tensor) -> int | None:
    shape = tensor.shape
    return static_dim(shape[0]) if shape is not None and len(shape) == 1 else None


def _constant_input(node, index: int) -> np.ndarray | None:
    if index >= len(node.inputs) or not isinstance(node.inputs[index], gs.Constant):
        return None
    return np.asarray(node.inputs[index].values)


@rule("Pad")
def Pad(ctx: NodeContext) -> None:
    """Padded axes cannot carry channels; an axis padded by a constant 0 on both ends can.
    Pads computed in the graph (TF-style "same" padding) are traced element by element."""
    x = ctx.axes(0)
    for index in range(1, ctx.input_count):
        ctx.axes(index)
    pads, axes = _pad_elements(ctx), _pad_axes(ctx, x)
    if x is None or pads is None or axes is None or len(pads) != 2 * len(axes):
        return unknown(ctx)
    padded = {axis for i, axis in enumerate(axes) if not (_is_zero(pads[i]) and _is_zero(pads[i + len(axes)]))}
    for k in padded:
        ctx.fix(x[k], f"{ctx.where()} pads this axis")
    ctx.set_output(0, [None if k in padded else x[k] for k in range(len(x))])


def _pad_elements(ctx: NodeContext) -> list | None:
    from spa.analyze.shapes import Const
    if "pads" in ctx.node.attrs:  # opset < 11
        return [Const(int(p)) for p in ctx.attr("pads")]
    return ctx.state.shape_values.get(ctx.tensor(1).name) if ctx.has_input(1) else None


def _pad_axes(ctx: NodeContext, x: AxisLabels | None) -> list[int] | None:
    if x is None:
        return None
    if not ctx.has_input(3):
        return list(range(len(x)))
    axes = ctx.const(3)
    return None if axes is None else [int(a) % len(x) for a in np.ravel(axes)]


def _is_zero(elem) -> bool:
    return getattr(elem, "value", None) == 0 and type(elem).__name__ == "Const"


@rule("Resize", "Upsample")
def Resize(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    factors = _resize_factors(ctx, x)
    for index in range(1, ctx.input_count):
        ctx.axes(index)
    if x is None or factors is None:
        return unknown(ctx)
    out = []
    for k, labels in enumerate(x):
        if labels is not None and not factors[k]:
            ctx.fix(labels, f"{ctx.where()} resizes this axis")
        out.append(labels if factors[k] else None)
    ctx.set_output(0, out)


def _resize_factors(ctx: NodeContext, x: AxisLabels | None) -> list[bool] | None:
    """Per axis: does the resize keep this axis's size?"""
    if x is None:
        return None
    scale_input = 1 if ctx.node.op == "Upsample" else 2
    scales = ctx.attr("scales") if ctx.node.op == "Upsample" else None
    if scales is None and ctx.has_input(scale_input):
        scales = ctx.const(scale_input)
    sizes = ctx.const(3) if ctx.node.op == "Resize" and ctx.has_input(3) else None
    axes = ctx.attr("axes", list(range(len(x))))
    keeps = [True] * len(x)
    if scales is not None and np.size(scales):
        for a, s in zip(axes, np.ravel(scales)):
            keeps[a % len(x)] = float(s) == 1.0
    elif sizes is not None and np.size(sizes):
        for a, n in zip(axes, np.ravel(sizes)):
            keeps[a % len(x)] = int(n) == axis_size(ctx, 0, a % len(x), x[a % len(x)])
    else:
        return None
    return keeps


@rule("Expand")
def Expand(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    ctx.axes(1)
    out_shape = ctx.out_shape()
    if x is None or out_shape is None:
        return unknown(ctx)
    rank = len(out_shape)
    out = []
    for k in range(rank):
        j = k - (rank - len(x))
        if j < 0:
            out.append(None)
        elif axis_size(ctx, 0, j, x[j]) == 1 and out_shape[k] != 1:
            ctx.fix(x[j], f"{ctx.where()} broadcasts this axis")
            out.append(None)
        else:
            out.append(x[j])
    ctx.set_output(0, out)


@rule("Tile")
def Tile(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    repeats = ctx.const(1)
    ctx.axes(1)
    if x is None or repeats is None:
        return unknown(ctx)
    out = []
    for labels, times in zip(x, np.ravel(repeats).tolist()):
        if times != 1:
            ctx.fix(labels, f"{ctx.where()} repeats this axis")
        out.append(labels if times == 1 else None)
    ctx.set_output(0, out)


# --- rewrite: after the removal -------------------------------------------------------

@rewrite_hook("Split")
def set_split_sizes(rctx: RewriteContext, node: gs.Node) -> None:
    x_axes = rctx.state.axes.get(node.inputs[0].name)
    if x_axes is None:
        return
    axis = node.attrs.get("axis", 0) % len(x_axes)
    if x_axes[axis] is None:
        return
    sizes = [rctx.size(rctx.state.axes[out.name][axis]) for out in node.outputs]
    old = [len(rctx.state.axes[out.name][axis]) for out in node.outputs]
    if sizes == old:
        return
    if "split" in node.attrs or rctx.state.opset < 13:
        node.attrs["split"] = sizes
        return
    node.attrs.pop("num_outputs", None)
    values = np.array(sizes, dtype=np.int64)
    if len(node.inputs) > 1 and node.inputs[1].name:
        node.inputs[1] = gs.Constant(rctx.new_name(node.inputs[1].name), values)
    else:
        node.inputs.append(gs.Constant(rctx.new_name(f"{node.name}_split"), values))


@rewrite_hook("Slice")
def set_slice_bounds(rctx: RewriteContext, node: gs.Node) -> None:
    """New bounds on the axes that lose channels. The analysis fixes every axis sliced
    with a step other than 1, so only step-1 windows ever change."""
    x_axes = rctx.state.axes.get(node.inputs[0].name)
    if x_axes is None:
        return
    params = slice_params(node, len(x_axes))
    if params is None:  # computed bounds: the analysis kept the sliced channels whole
        return
    starts, ends = {}, {}
    for axis, bounds in params.items():
        labels = x_axes[axis]
        if labels is None or bounds is None or bounds[2] != 1:
            continue
        positions = rctx.positions(labels)
        if len(positions) == len(labels):
            continue
        window = range(len(labels))[bounds[0]:bounds[1]]
        new_start = int(np.sum(positions < window.start))
        starts[axis] = new_start
        ends[axis] = new_start + int(np.sum((positions >= window.start) & (positions < window.stop)))
    if starts:
        _set_slice_bounds(rctx, node, params, starts, ends)


def _set_slice_bounds(rctx: RewriteContext, node: gs.Node, params: dict, starts: dict, ends: dict) -> None:
    order = list(params)
    new_starts = [starts.get(a, params[a][0]) for a in order]
    new_ends = [ends.get(a, params[a][1]) for a in order]
    if "starts" in node.attrs:
        node.attrs["starts"], node.attrs["ends"] = new_starts, new_ends
        return
    for index, values in ((1, new_starts), (2, new_ends)):
        old = node.inputs[index]
        node.inputs[index] = gs.Constant(rctx.new_name(old.name), np.array(values, dtype=old.dtype or np.int64))


@rewrite_hook("Resize")
def set_resize_sizes(rctx: RewriteContext, node: gs.Node) -> None:
    """Resize given output `sizes`: the channel entry follows the pruned input."""
    if len(node.inputs) < 4 or not isinstance(node.inputs[3], gs.Constant):
        return
    x_axes = rctx.state.axes.get(node.inputs[0].name) or []
    sizes = np.array(node.inputs[3].values).copy()
    axes = node.attrs.get("axes", list(range(len(x_axes))))
    for i, axis in enumerate(axes):
        labels = x_axes[axis % len(x_axes)]
        if labels is not None:
            sizes[i] = rctx.size(labels)
    if not np.array_equal(sizes, node.inputs[3].values):
        node.inputs[3] = gs.Constant(rctx.new_name(node.inputs[3].name), sizes)
