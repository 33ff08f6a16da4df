"""One rule per ONNX op type: how channels travel from a node's inputs to its outputs.

A rule reads its inputs' labels through `ctx.axis`/`ctx.axes`, relates them (`unify`),
marks what must be kept (`fix`) or what breaks exactness (`inexact`), and sets its
outputs' labels. Ops without a rule keep every channel they touch.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from spa.analyze.context import AxisLabels, GroupedColumns, NodeContext, static_dim
from spa.analyze.registry import RULES, rule, rule_key
from spa.analyze.reshape import flatten_shape, reshape_axes


# --- element-wise ----------------------------------------------------------------------

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
        dim = _dim(ctx, i, axis, axes[axis])
        (ones if dim == 1 else full).append(axes[axis])
    if not full:
        return _unify_chain(ctx, ones)
    for labels in ones:
        ctx.fix(labels, f"{ctx.where()} broadcasts this axis")
    return _unify_chain(ctx, full)


def _unify_chain(ctx: NodeContext, labels_list: list):
    result = labels_list[0]
    for labels in labels_list[1:]:
        if result is None or labels is None:
            ctx.unify(result, labels)
            result = None
        else:
            result = ctx.unify(result, labels)
    return result


def _dim(ctx: NodeContext, index: int, axis: int, labels):
    if labels is not None:
        return len(labels)
    shape = ctx.shape(index)
    return shape[axis] if shape is not None and axis < len(shape) else None


# --- convolutions and normalizations ---------------------------------------------------

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


@rule("BatchNormalization")
def BatchNormalization(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    if x is None:
        return unknown(ctx)
    for index in range(1, 5):
        ctx.unify(x[1], ctx.axis(index, 0))
    ctx.state.statistics.update(ctx.tensor(i).name for i in (3, 4))
    if ctx.attr("training_mode", 0):  # statistics of this input, over every axis but 1
        for labels in x[:1] + x[2:]:
            ctx.inexact(labels, f"normalized by {ctx.where()} (training mode)")
        for index in range(1, len(ctx.node.outputs)):
            ctx.set_output(index, [x[1]])
    ctx.set_output(0, x)


@rule("InstanceNormalization")
def InstanceNormalization(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    if x is None:
        return unknown(ctx)
    ctx.fix_all(x[2:], f"spatial axis of {ctx.where()}")
    for index in (1, 2):
        ctx.unify(x[1], ctx.axis(index, 0))
    ctx.set_output(0, [x[0], x[1]] + [None] * (len(x) - 2))


@rule("LayerNormalization")
def LayerNormalization(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    if x is None:
        return unknown(ctx)
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


@rule("LRN")
def LRN(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    if x is None:
        return unknown(ctx)
    ctx.inexact(x[1], f"{ctx.where()} normalizes across channels")
    ctx.set_output(0, x)


@rule("Softmax", "LogSoftmax", "Hardmax")
def Softmax(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    if x is None:
        return unknown(ctx)
    opset = ctx.state.opset
    axis = ctx.attr("axis", -1 if opset >= 13 else 1) % len(x)
    mixed = x[axis:] if opset < 13 else [x[axis]]
    for labels in mixed:
        ctx.inexact(labels, f"normalized by {ctx.where()}")
    ctx.set_output(0, x)


# --- pooling and reductions ------------------------------------------------------------

@rule("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def pool(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    if x is None:
        return unknown(ctx)
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
    for k in reduced:
        if ctx.node.op not in EXACT_REDUCTIONS:
            ctx.inexact(x[k], f"reduced by {ctx.where()}")
    keep = ctx.attr("keepdims", 1)
    out = [None if k in reduced else x[k] for k in range(len(x)) if keep or k not in reduced]
    ctx.set_output(0, out)


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


@rule("ArgMax", "ArgMin")
def ArgMax(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    if x is None:
        return unknown(ctx)
    axis = ctx.attr("axis", 0) % len(x)
    ctx.fix(x[axis], f"{ctx.where()} returns positions along this axis")
    keep = ctx.attr("keepdims", 1)
    ctx.set_output(0, [None if k == axis else x[k] for k in range(len(x)) if keep or k != axis])


# --- layout ----------------------------------------------------------------------------

@rule("Transpose")
def Transpose(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    if x is None:
        return unknown(ctx)
    perm = ctx.attr("perm", list(reversed(range(len(x)))))
    ctx.set_output(0, [x[p] for p in perm])


@rule("Squeeze")
def Squeeze(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    axes = _axes_argument(ctx, 1)
    if x is None or axes is _UNKNOWN:
        return unknown(ctx)
    if axes is None:
        axes = [k for k, labels in enumerate(x) if _dim(ctx, 0, k, labels) == 1]
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
            out.append(_unify_chain(ctx, [x[k] for x in inputs]))
    ctx.set_output(0, out)


def _concat_labels(ctx: NodeContext, inputs: list[AxisLabels], axis: int):
    if all(x[axis] is None for x in inputs):
        return None
    pieces = []
    for i, x in enumerate(inputs):
        labels = x[axis]
        if labels is None:
            size = static_dim(_dim(ctx, i, axis, None))
            if size is None:
                for y in inputs:
                    ctx.fix(y[axis], f"{ctx.where()}: a dynamic piece")
                return None
            labels = ctx.fresh_fixed(size, f"{ctx.where()}: a piece that cannot change")
        pieces.append(labels)
    return np.concatenate(pieces)


@rule("Split")
def Split(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    if x is None:
        return unknown(ctx)
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
    total = static_dim(_dim(ctx, 0, axis, x[axis]))
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
            keeps[a % len(x)] = int(n) == _dim(ctx, 0, a % len(x), x[a % len(x)])
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
        elif _dim(ctx, 0, j, x[j]) == 1 and out_shape[k] != 1:
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


# --- linear layers and indexing --------------------------------------------------------

@rule("Gemm")
def Gemm(ctx: NodeContext) -> None:
    a, b = ctx.axes(0), ctx.axes(1)
    if a is None or b is None or len(a) != 2 or len(b) != 2:
        return unknown(ctx)
    a_rows, a_inner = (a[1], a[0]) if ctx.attr("transA", 0) else (a[0], a[1])
    b_inner, b_cols = (b[1], b[0]) if ctx.attr("transB", 0) else (b[0], b[1])
    ctx.unify(a_inner, b_inner)
    if ctx.is_const(1):
        ctx.new_space(b_cols, 1)
    out = [a_rows, b_cols]
    if ctx.has_input(2):
        trailing_parameter(ctx, 2, out)
    ctx.set_output(0, out)


@rule("MatMul")
def MatMul(ctx: NodeContext) -> None:
    a, b = ctx.axes(0), ctx.axes(1)
    if a is None or b is None or len(a) < 2 or len(b) < 2:
        return unknown(ctx)
    ctx.unify(a[-1], b[-2])
    batch = _broadcast_batch(ctx, a[:-2], b[:-2])
    if ctx.is_const(1):
        ctx.new_space(b[-1], 1)
    if ctx.is_const(0):
        ctx.new_space(a[-2], 0)
    ctx.set_output(0, batch + [a[-2], b[-1]])


def _broadcast_batch(ctx: NodeContext, a: AxisLabels, b: AxisLabels) -> AxisLabels:
    rank = max(len(a), len(b))
    a = [None] * (rank - len(a)) + list(a)
    b = [None] * (rank - len(b)) + list(b)
    out = []
    a_shape, b_shape = _padded_shape(ctx, 0, rank), _padded_shape(ctx, 1, rank)
    for k, (x, y) in enumerate(zip(a, b)):
        if x is not None and y is not None and len(x) != len(y):
            small, big = (x, y) if len(x) == 1 else (y, x)
            ctx.fix(small, f"{ctx.where()} broadcasts this axis")
            out.append(big)
        elif x is None or y is None:
            labeled, other_size = (y, a_shape[k]) if x is None else (x, b_shape[k])
            if labeled is not None and other_size != 1:  # the other side cannot change: neither can this
                ctx.fix(labeled, f"{ctx.where()} meets an axis that cannot change")
            out.append(labeled)
        else:
            out.append(ctx.unify(x, y))
    return out


def _padded_shape(ctx: NodeContext, index: int, rank: int) -> list:
    """The batch dims of input `index`, left-padded with 1 to `rank` (None where unknown)."""
    shape = ctx.shape(index)
    if shape is None or len(shape) < 2:
        return [None] * rank
    batch = list(shape[:-2])
    return [1] * (rank - len(batch)) + batch


@rule("Einsum")
def Einsum(ctx: NodeContext) -> None:
    """Each subscript letter is one axis shared by every operand that has it: a letter in
    several operands unifies their axes (summed over when the output lacks it, as a MatMul's
    inner axis); a constant's letter that only it and the output have makes new channels."""
    equation = ctx.attr("equation")
    equation = (equation.decode() if isinstance(equation, bytes) else equation or "").replace(" ", "")
    operands = [ctx.axes(i) for i in range(ctx.input_count)]
    if "..." in equation or "->" not in equation or any(x is None for x in operands):
        return unknown(ctx)
    terms, out = equation.split("->")[0].split(","), equation.split("->")[1]
    if len(terms) != len(operands) or any(len(t) != len(x) or len(set(t)) != len(t) for t, x in zip(terms, operands)):
        return unknown(ctx)
    letters: dict[str, object] = {}
    for term, axes in zip(terms, operands):
        for letter, labels in zip(term, axes):
            letters[letter] = ctx.unify(letters[letter], labels) if letter in letters else labels
    for index, term in enumerate(terms):
        own = {letter for letter in term if letter in out and sum(letter in t for t in terms) == 1}
        if ctx.is_const(index):
            for letter in own:
                ctx.new_space(letters[letter], index)
    ctx.set_output(0, [letters.get(letter) for letter in out])


@rule("GatherElements")
def GatherElements(ctx: NodeContext) -> None:
    """Output position i takes data at indices[i] along `axis`, and i itself on every other
    axis: those axes are the same channels in data, indices and output."""
    data, indices = ctx.axes(0), ctx.axes(1)
    if data is None or indices is None or len(data) != len(indices):
        return unknown(ctx)
    axis = ctx.attr("axis", 0) % len(data)
    ctx.fix(data[axis], f"{ctx.where()} picks positions along this axis")
    out = [indices[k] if k == axis else ctx.unify(data[k], indices[k]) for k in range(len(data))]
    ctx.set_output(0, out)


@rule("Gather")
def Gather(ctx: NodeContext) -> None:
    data, indices = ctx.axes(0), ctx.axes(1)
    if data is None or indices is None:
        return unknown(ctx)
    axis = ctx.attr("axis", 0) % len(data)
    ctx.fix(data[axis], f"{ctx.where()} picks positions along this axis")
    ctx.set_output(0, data[:axis] + indices + data[axis + 1:])


# --- shapes ----------------------------------------------------------------------------

@rule("Shape")
def Shape(ctx: NodeContext) -> None:
    """Reads sizes only; where those sizes go is checked by the shape-value pass."""
    ctx.axes(0)
    ctx.set_output(0, [None])


@rule("Size")
def Size(ctx: NodeContext) -> None:
    ctx.fix_all(ctx.axes(0), f"{ctx.where()} reads the element count")
    ctx.set_output(0, [])


@rule("ConstantOfShape", "Range")
def creates_from_shape(ctx: NodeContext) -> None:
    """Inputs are shape vectors and scalars; what reads their sizes is checked later."""
    for index in range(ctx.input_count):
        ctx.axes(index)
    shape = ctx.out_shape()
    ctx.set_output(0, [None] * len(shape) if shape is not None else None)


def unknown(ctx: NodeContext) -> None:
    """An op the analysis cannot follow: every channel it touches is kept."""
    key = rule_key(ctx.node)
    if key not in RULES:
        ctx.state.unsupported[key] = ctx.state.unsupported.get(key, 0) + 1
    reason = f"{ctx.where()} is not supported" if key not in RULES else \
        f"{ctx.where()}: shapes or arguments it cannot follow"
    whole = ctx.view(list(range(len(ctx.node.inputs))))  # every input of the node, in a view too
    for index in range(whole.input_count):
        if whole.has_input(index):
            whole.fix_all(whole.axes(index), reason)
    for name in _outer_names(ctx.node):
        ctx.fix_all(ctx.state.axes.get(name), reason)
    for index, tensor in enumerate(ctx.node.outputs):
        shape = tensor.shape
        ctx.set_output(index, [None] * len(shape) if shape is not None else None)


def _outer_names(node) -> set[str]:
    """Tensors a control-flow node's subgraphs read from enclosing graphs, at any depth."""
    names: set[str] = set()
    for subgraph in _subgraphs(node):
        defined = {t.name for t in subgraph.inputs} | {t.name for n in subgraph.nodes for t in n.outputs}
        for inner in subgraph.nodes:
            names.update(t.name for t in inner.inputs if t.name not in defined)
            names.update(_outer_names(inner) - defined)
        names.update(t.name for t in subgraph.outputs if t.name not in defined)
    return names


def _subgraphs(node) -> list:
    found = []
    for value in node.attrs.values():
        for item in value if isinstance(value, list) else [value]:
            if hasattr(item, "nodes") and hasattr(item, "inputs"):
                found.append(item)
    return found
