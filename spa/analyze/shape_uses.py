"""After the channel analysis: every use of a traced size must stay right once channels
are removed. A size read by arithmetic or data ops fixes that axis; a Reshape/Expand
shape element that is the size of another channel axis is frozen to a constant
(`freezable`); a Reshape whose shape element cannot be rewritten keeps its output whole.
The rewrite hooks of Reshape/Expand (spa.analyze.ops.layout) act on these decisions.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs

from spa.analyze.context import AnalysisState, static_dim
from spa.analyze.labels import Labels
from spa.analyze.shapes import (
    PLUMBING,
    Const,
    Dim,
    Either,
    Elem,
    Opaque,
    Product,
    deps_of,
    scaled,
)


def same_channels(state: AnalysisState, a: Labels | None, b: Labels | None, scale: int = 1) -> bool:
    """Does axis `b` always keep `scale` times the size of axis `a`, whatever is pruned?"""
    if a is None or b is None:
        return a is None and b is None
    scaled = Counter({root: count * scale for root, count in Counter(state.space.roots(a).tolist()).items()})
    return scaled == Counter(state.space.roots(b).tolist())


def resolve(state: AnalysisState, elem: Elem) -> Elem:
    """A Product or Either, now that the channel axes are known: a size of an axis that never
    changes (no channels) is a constant; what is left is one traced size (scaled), a
    constant, or opaque."""
    if isinstance(elem, Product):
        factors = [_fixed(state, resolve(state, e)) for e in elem.factors]
        constant = int(np.prod([f.value for f in factors if isinstance(f, Const)]))
        sizes = [f for f in factors if not isinstance(f, Const)]
        if not sizes:
            return Const(constant)
        if len(sizes) == 1 and isinstance(sizes[0], Dim) and constant > 0:
            return scaled(sizes[0], constant)
        return Opaque(deps_of(elem))
    if isinstance(elem, Either):
        options = [_fixed(state, resolve(state, e)) for e in elem.options]
        first = options[0]
        if all(o == first for o in options) or (
                all(isinstance(o, Dim) and o.scale == first.scale for o in options)
                and all(same_channels(state, dim_labels(state, first), dim_labels(state, o)) for o in options)):
            return first
        return Opaque(deps_of(elem))
    return elem


def _fixed(state: AnalysisState, elem: Elem) -> Elem:
    """A traced size of an axis without channels (or of one channel: it always keeps it) is a constant."""
    if isinstance(elem, Dim) and elem.value is not None and elem.scale == 1:
        labels = dim_labels(state, elem)
        if labels is None or len(labels) == 1:
            return Const(elem.value)
    return elem


def check_shape_uses(state: AnalysisState, values: dict[str, list[Elem]]) -> None:
    for name, elems in values.items():
        if any(isinstance(e, (Product, Either)) for e in elems):
            values[name] = [resolve(state, e) for e in elems]
    for node in state.graph.nodes:
        if node.op in ("Reshape", "Expand") and node.inputs[1].name not in values:
            reason = f"{node.op} '{node.name}': shape computed by ops spa cannot follow"
            _fix_axes(state, state.axes.get(node.inputs[0].name) or [], reason)
            _fix_axes(state, state.axes.get(node.outputs[0].name) or [], reason)
        for index, tensor in enumerate(node.inputs):
            elems = values.get(tensor.name)
            if node.op == "ConstantOfShape" and elems is not None:  # its length must not move
                _fix_deps(state, elems, f"ConstantOfShape '{node.name}' reads a size")
            if elems is None or (node.op in PLUMBING and node.outputs[0].name in values):
                continue
            if node.op in ("Reshape", "Expand") and index == 1:
                _check_shape_input(state, node, elems)
            else:
                _fix_deps(state, elems, f"{node.op} '{node.name}' reads a size that pruning would change")
    for tensor in state.graph.outputs:
        if tensor.name in values:
            _fix_deps(state, values[tensor.name], f"graph output '{tensor.name}' holds a size")


def _check_shape_input(state: AnalysisState, node: gs.Node, elems: list[Elem]) -> None:
    out_axes = state.axes.get(node.outputs[0].name)
    in_axes = state.axes.get(node.inputs[0].name)
    if out_axes is None or len(out_axes) != len(elems):
        _fix_deps(state, elems, f"{node.op} '{node.name}': output rank unknown")
        if out_axes:
            _fix_axes(state, out_axes, f"{node.op} '{node.name}': output rank unknown")
        return
    rewritable = rewritable_elements(state, node, elems)
    for k, elem in enumerate(elems):
        out_labels = out_axes[k]
        if follows(state, elem, out_labels) or (freezable(state, node, elem, k) and rewritable[k]):
            continue
        _fix_deps(state, [elem], f"{node.op} '{node.name}': shape element {k} would not follow pruning")
        if out_labels is None or keeps_meaning(node, elem, k, in_axes, out_labels, state):
            continue
        if not rewritable[k]:
            state.space.fix(out_labels, f"{node.op} '{node.name}': shape element {k} cannot be rewritten")


def follows(state: AnalysisState, elem: Elem, out_labels: Labels | None) -> bool:
    """A traced size that keeps matching its output axis by itself, whatever is pruned."""
    return isinstance(elem, Dim) and same_channels(state, dim_labels(state, elem), out_labels, elem.scale)


def freezable(state: AnalysisState, node: gs.Node, elem: Elem, k: int) -> bool:
    """May the rewriter replace `scale * Shape(t)[axis]` by a constant? Only if `axis` is a
    channel axis (its size is a width of weights, the same for every input the model
    accepts) and the output axis it makes is static and equal: the constant then changes
    nothing before pruning, and afterwards it is the output axis's pruned size, whatever
    the traced axis loses. Batch and sequence axes never carry channels, so their sizes
    stay traced (even where onnxruntime's auto-merge made them static)."""
    out = node.outputs[0].shape
    return (isinstance(elem, Dim) and dim_labels(state, elem) is not None and out is not None
            and k < len(out) and static_dim(out[k]) == elem.value)


def keeps_meaning(node: gs.Node, elem: Elem, k: int, in_axes, out_labels, state) -> bool:
    """-1 (inferred), Reshape's 0 (copy) on an axis with the same channels, Expand's 1."""
    if not isinstance(elem, Const):
        return False
    if node.op == "Reshape":
        if elem.value == -1:
            return True
        copies = elem.value == 0 and not node.attrs.get("allowzero", 0)
        return copies and in_axes is not None and k < len(in_axes) and same_channels(state, in_axes[k], out_labels)
    return elem.value == 1


def rewritable_elements(state: AnalysisState, node: gs.Node, elems: list[Elem]) -> list[bool]:
    """Which elements of a Reshape/Expand shape input the rewriter can replace: all of a
    constant vector, and the pieces of a Concat that builds it that are constant or made
    only of freezable sizes."""
    if all(isinstance(e, Const) for e in elems):
        return [True] * len(elems)
    producer, _ = shape_concat(node.inputs[1])
    if producer is None:
        return [False] * len(elems)
    flags: list[bool] = []
    for piece in producer.inputs:
        size = _piece_size(piece)
        if size is None or len(flags) + size > len(elems):
            return [False] * len(elems)
        span = range(len(flags), len(flags) + size)
        replaceable = _is_constant_piece(piece) or all(freezable(state, node, elems[k], k) for k in span)
        flags.extend([replaceable] * size)
    return flags if len(flags) == len(elems) else [False] * len(elems)


def shape_concat(tensor: gs.Tensor) -> tuple[gs.Node | None, list[gs.Node]]:
    """The Concat that builds a shape vector, directly or through Casts (tf2onnx's int32
    shapes), and those Casts, nearest the Concat first."""
    casts: list[gs.Node] = []
    while tensor.inputs and tensor.inputs[0].op in ("Cast", "Identity"):
        casts.insert(0, tensor.inputs[0])
        tensor = tensor.inputs[0].inputs[0]
    producer = tensor.inputs[0] if tensor.inputs else None
    return (producer, casts) if producer is not None and producer.op == "Concat" else (None, [])


def _piece_size(tensor: gs.Tensor) -> int | None:
    if tensor.shape is None or len(tensor.shape) > 1:
        return None
    return 1 if len(tensor.shape) == 0 else static_dim(tensor.shape[0])


def _is_constant_piece(tensor: gs.Tensor) -> bool:
    """A constant, possibly through Unsqueeze/Cast/Identity."""
    while not isinstance(tensor, gs.Constant):
        if not tensor.inputs or tensor.inputs[0].op not in ("Unsqueeze", "Cast", "Identity"):
            return False
        tensor = tensor.inputs[0].inputs[0]
    return True


def dim_labels(state: AnalysisState, elem: Dim) -> Labels | None:
    """Channel labels of the axis a traced size reads."""
    axes = state.axes.get(elem.tensor)
    return axes[elem.axis] if axes is not None and elem.axis < len(axes) else None


def _fix_deps(state: AnalysisState, elems: list[Elem], reason: str) -> None:
    for elem in elems:
        for tensor, axis in deps_of(elem):
            axes = state.axes.get(tensor)
            if axes is not None and axis < len(axes) and axes[axis] is not None:
                state.space.fix(axes[axis], reason)


def _fix_axes(state: AnalysisState, axes, reason: str) -> None:
    for labels in axes:
        if labels is not None:
            state.space.fix(labels, reason)
