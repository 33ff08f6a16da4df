"""Layout: Transpose permutes axes; Squeeze/Unsqueeze drop and add size-1 axes;
Flatten and Reshape relate blocks of axes (spa.analyze.reshape), and the rewrite
replaces the shape elements that count channels."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from spa.analyze.context import AxisLabels, NodeContext, RewriteContext, static_dim
from spa.analyze.ops.elementwise import axis_size
from spa.analyze.reshape import flatten_shape, reshape_axes
from spa.analyze.shape_uses import dim_labels, follows, freezable, keeps_meaning, shape_concat
from spa.analyze.shapes import Const
from spa.analyze.registry import rewrite_hook, rule, unknown


@rule("Transpose", known=(0,))
def Transpose(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    perm = ctx.attr("perm", list(reversed(range(len(x)))))
    ctx.set_output(0, [x[p] for p in perm])


@rule("Squeeze")
def Squeeze(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    axes = _axes_argument(ctx, 1)
    if x is None or axes is _UNKNOWN:
        return unknown(ctx)
    if axes is None:
        axes = [k for k, labels in enumerate(x) if axis_size(ctx, 0, k, labels) == 1]
    squeezed = {a % len(x) for a in axes}
    for k in squeezed:
        ctx.fix(x[k], f"{ctx.where()} removes this axis")
    ctx.set_output(0, [x[k] for k in range(len(x)) if k not in squeezed])


@rule("Unsqueeze")
def Unsqueeze(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    axes = _axes_argument(ctx, 1)
    if x is None or axes is None or axes is _UNKNOWN:
        return unknown(ctx)
    rank = len(x) + len(axes)
    inserted = {a % rank for a in axes}
    rest = iter(x)
    ctx.set_output(0, [None if k in inserted else next(rest) for k in range(rank)])


_UNKNOWN = object()


def _axes_argument(ctx: NodeContext, index: int):
    """Axes from the attribute (old opsets) or a constant input; _UNKNOWN if computed."""
    if "axes" in ctx.node.attrs:
        return list(ctx.attr("axes"))
    if ctx.has_input(index):
        value = ctx.const(index)
        return _UNKNOWN if value is None else [int(a) for a in np.ravel(value)]
    return None


@rule("Flatten")
def Flatten(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    shape = _input_dims(ctx, 0, x)
    if x is None or shape is None:
        return unknown(ctx)
    out_shape = flatten_shape(shape, ctx.attr("axis", 1))
    ctx.set_output(0, reshape_axes(ctx, x, shape, out_shape))


@rule("Reshape")
def Reshape(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    shape = _input_dims(ctx, 0, x)
    ctx.axes(1)
    if x is None or shape is None:
        return unknown(ctx)
    ctx.set_output(0, reshape_axes(ctx, x, shape, reshape_out_shape(ctx, shape)))


def reshape_out_shape(ctx: NodeContext, in_shape: list) -> list | None:
    """Inferred output shape, completed from the traced shape vector where inference
    left dims unknown (common with a dynamic batch and -1)."""
    inferred = ctx.out_shape()
    elems = ctx.state.shape_values.get(ctx.tensor(1).name)
    if elems is None:
        return inferred
    from spa.analyze.shapes import Const, Dim, value_of
    dims = []
    for k, elem in enumerate(elems):
        if isinstance(elem, Const) and elem.value == 0 and not ctx.attr("allowzero", 0):
            dims.append(in_shape[k])
        elif isinstance(elem, Const) and elem.value > 0:
            dims.append(elem.value)
        elif isinstance(elem, Dim):
            dims.append(elem.value if elem.value is not None else _symbol(ctx, elem))
        else:
            dims.append(None if isinstance(elem, Const) else value_of(elem))  # -1; a static product or max
    if dims.count(None) == 1 and None not in [static_dim(d) for d in in_shape if not isinstance(d, str)]:
        dims = _infer_minus_one(in_shape, dims)
    if inferred is not None and len(inferred) == len(dims):  # a traced constant beats inference
        dims = [d if isinstance(e, Const) and e.value > 0 else i if static_dim(i) is not None else d
                for i, d, e in zip(inferred, dims, elems)]
    return dims


def _symbol(ctx: NodeContext, elem) -> str | None:
    tensor = ctx.state.graph.tensors().get(elem.tensor)
    shape = tensor.shape if tensor is not None else None
    return shape[elem.axis] if shape is not None else None


def _infer_minus_one(in_shape: list, dims: list) -> list:
    """Resolve the one unknown dim when the dynamic dims of input and output cancel."""
    in_symbols = sorted(str(d) for d in in_shape if static_dim(d) is None)
    out_symbols = sorted(str(d) for d in dims if d is not None and static_dim(d) is None)
    if in_symbols != out_symbols:
        return dims
    total = int(np.prod([d for d in in_shape if static_dim(d) is not None]))
    known = int(np.prod([d for d in dims if d is not None and static_dim(d) is not None]))
    return [total // known if d is None else d for d in dims]


def _input_dims(ctx: NodeContext, index: int, x: AxisLabels | None) -> list | None:
    shape = ctx.shape(index)
    if x is None:
        return None
    if shape is None or len(shape) != len(x):
        shape = [None] * len(x)
    return [len(labels) if labels is not None else d for labels, d in zip(x, shape)]


# --- rewrite: after the removal -------------------------------------------------------

@rewrite_hook("Reshape", "Expand")
def set_shape_elements(rctx: RewriteContext, node: gs.Node) -> None:
    elems = rctx.state.shape_values.get(node.inputs[1].name)
    out_axes = rctx.state.axes.get(node.outputs[0].name)
    if elems is None or out_axes is None:
        return
    in_axes = rctx.state.axes.get(node.inputs[0].name)
    changes = {}
    for k, (elem, labels) in enumerate(zip(elems, out_axes)):
        if isinstance(elem, Const) and labels is not None and not keeps_meaning(node, elem, k, in_axes, labels, rctx.state):
            if rctx.size(labels) != elem.value:
                changes[k] = rctx.size(labels)
        elif freezable(rctx.state, node, elem, k) and not follows(rctx.state, elem, labels):
            traced = elem.scale * rctx.size(dim_labels(rctx.state, elem))
            if rctx.size(labels, elem.value) != traced:  # the traced size would now be wrong
                changes[k] = rctx.size(labels, elem.value)
    if changes:
        node.inputs[1] = _changed_vector(rctx, node.inputs[1], elems, changes)


def _changed_vector(rctx: RewriteContext, tensor: gs.Tensor, elems: list, changes: dict[int, int]) -> gs.Tensor:
    """A new shape vector with `changes`: a constant, or a copy of the Concat building it
    with new constant pieces (a frozen size's piece included)."""
    if all(isinstance(e, Const) for e in elems):
        values = np.array([changes.get(k, e.value) for k, e in enumerate(elems)], dtype=tensor.dtype or np.int64)
        return gs.Constant(rctx.new_name(tensor.name), values.reshape(tensor.shape or values.shape))
    concat, casts = shape_concat(tensor)
    pieces, offset = [], 0
    for piece in concat.inputs:
        size = 1 if len(piece.shape) == 0 else int(piece.shape[0])
        span = range(offset, offset + size)
        if any(k in changes for k in span):
            values = np.array([changes.get(k, elems[k].value) for k in span], dtype=piece.dtype or np.int64)
            piece = gs.Constant(rctx.new_name(piece.name), values.reshape(piece.shape))
        pieces.append(piece)
        offset += size
    built = concat.outputs[0]
    output = gs.Variable(rctx.new_name(built.name), dtype=built.dtype, shape=built.shape)
    rctx.state.graph.nodes.append(gs.Node("Concat", rctx.new_name(concat.name), dict(concat.attrs), pieces, [output]))
    for cast in casts:  # the same Casts after the new Concat
        cast_output = gs.Variable(rctx.new_name(cast.outputs[0].name), dtype=cast.outputs[0].dtype, shape=tensor.shape)
        rctx.state.graph.nodes.append(gs.Node(cast.op, rctx.new_name(cast.name), dict(cast.attrs), [output], [cast_output]))
        output = cast_output
    return output
