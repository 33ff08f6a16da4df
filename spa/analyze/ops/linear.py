"""Linear layers and indexing: Gemm, MatMul and Einsum unify contracted axes and make
new channels from constant weights; Gather and GatherElements pick positions."""
from __future__ import annotations


from spa.analyze.context import AxisLabels, NodeContext
from spa.analyze.ops.norm import trailing_parameter
from spa.analyze.registry import rule, unknown


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
    _contracted_activations(ctx, [0, 1], a[-1])
    batch = _broadcast_batch(ctx, a[:-2], b[:-2])
    if ctx.is_const(1):
        ctx.new_space(b[-1], 1)
    if ctx.is_const(0):
        ctx.new_space(a[-2], 0)
    ctx.set_output(0, batch + [a[-2], b[-1]])


def _contracted_activations(ctx: NodeContext, inputs: list[int], labels) -> None:
    """A sum over channels of a product of activations counts the removed ones unless some
    factor is 0 there (spa/analyze/zeros.py); a constant factor is zeroed with them."""
    offsets = [ctx.state.offset.get(ctx.tensor(i).name) for i in inputs]
    if not any(ctx.is_const(i) for i in inputs) and all(offsets):
        ctx.inexact(labels, f"summed by {ctx.where()} where removed channels are not 0 ({offsets[0]})")


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
    for letter in {letter for term in terms for letter in term if letter not in out}:
        _contracted_activations(ctx, [i for i, term in enumerate(terms) if letter in term], letters[letter])
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
