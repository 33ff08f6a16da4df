"""Stage 5, rewrite: remove the selected channels from the graph, in place.

Initializers are sliced along every axis that carries channels; then each node whose
attributes or shape inputs encode a channel count is fixed (depthwise Conv groups,
Reshape/Expand shapes, Split sizes, Slice bounds, Resize sizes), and the inferred
shapes of intermediate tensors are updated.
"""
from __future__ import annotations

import itertools

import numpy as np
import onnx_graphsurgeon as gs

from spa.analyze import Analysis
from spa.analyze.context import AnalysisState, static_dim
from spa.analyze.labels import Labels
from spa.analyze.ops import slice_params
from spa.analyze.shapes import Const, dim_labels, follows, freezable, keeps_meaning, shape_concat
from spa.io.load import read_values


class Kept:
    """Which positions of a label array survive the removal."""

    def __init__(self, state: AnalysisState, removed_roots: set[int]) -> None:
        self.space = state.space
        self.removed = removed_roots

    def positions(self, labels: Labels) -> np.ndarray:
        roots = self.space.roots(labels)
        return np.flatnonzero([r not in self.removed for r in roots.tolist()])

    def size(self, labels: Labels | None, old: int | None = None):
        return old if labels is None else len(self.positions(labels))


def rewrite(analysis: Analysis, removed: dict[int, list[int]]) -> None:
    groups = {group.id: group for group in analysis.groups}
    roots = {groups[gid].roots[c] for gid, channels in removed.items() for c in channels}
    if not roots:
        return
    state = analysis.state
    kept = Kept(state, roots)
    names = _NameMaker(state.graph)
    _fix_nodes(state, kept, names)
    _slice_initializers(state, kept)
    _slice_grouped_columns(state, kept)
    _update_shapes(state, kept)
    state.graph.cleanup().toposort()


def _slice_initializers(state: AnalysisState, kept: Kept) -> None:
    tensors = state.graph.tensors()
    for name, axes in state.axes.items():
        tensor = tensors.get(name)
        if not isinstance(tensor, gs.Constant):
            continue
        values = None
        for axis, labels in enumerate(axes):
            if labels is None:
                continue
            positions = kept.positions(labels)
            if len(positions) < len(labels):
                values = np.take(read_values(tensor) if values is None else values, positions, axis=axis)
        if values is not None:
            _set_values(tensor, values)


def _slice_grouped_columns(state: AnalysisState, kept: Kept) -> None:
    """Each row segment of a grouped Conv keeps the columns of its own kept inputs."""
    tensors = state.graph.tensors()
    for columns in state.grouped_columns:
        weight = tensors[columns.weight]
        values = read_values(weight)
        per_group = len(columns.input_labels) // columns.groups
        rows = values.shape[0] // columns.groups
        positions = kept.positions(columns.input_labels)
        if len(positions) == len(columns.input_labels):
            continue
        pieces = []
        for segment in range(columns.groups):
            inside = positions[(positions >= segment * per_group) & (positions < (segment + 1) * per_group)]
            pieces.append(values[segment * rows:(segment + 1) * rows][:, inside - segment * per_group])
        _set_values(weight, np.concatenate(pieces, axis=0))


def _set_values(tensor: gs.Constant, values: np.ndarray) -> None:
    tensor.values = values
    tensor.data_location = None  # now in memory, wherever the original weights were stored


def _update_shapes(state: AnalysisState, kept: Kept) -> None:
    boundary = {t.name for t in state.graph.inputs + state.graph.outputs}
    for tensor in state.graph.tensors().values():
        axes = state.axes.get(tensor.name)
        if isinstance(tensor, gs.Constant) or tensor.name in boundary or axes is None or tensor.shape is None:
            continue
        if len(axes) == len(tensor.shape):
            tensor.shape = [kept.size(labels, dim) if static_dim(dim) is not None else dim
                            for labels, dim in zip(axes, tensor.shape)]


# --- nodes whose attributes or shape inputs count channels ------------------------------

def _fix_nodes(state: AnalysisState, kept: Kept, names: "_NameMaker") -> None:
    fixers = {"Conv": _fix_conv, "ConvInteger": _fix_conv, "QLinearConv": _fix_conv,
              "Reshape": _fix_shape_input, "Expand": _fix_shape_input,
              "Split": _fix_split, "Slice": _fix_slice, "Resize": _fix_resize}
    for node in list(state.graph.nodes):
        if node.op in fixers:
            fixers[node.op](state, node, kept, names)
    for count in state.head_counts:
        count.node.attrs[count.attribute] = kept.size(count.labels) // count.head_dim


def _fix_conv(state: AnalysisState, node: gs.Node, kept: Kept, names) -> None:
    """A depthwise Conv has one group per input channel."""
    groups = node.attrs.get("group", 1)
    weight = node.inputs[3 if node.op == "QLinearConv" else 1]
    channels = state.axes[node.inputs[0].name][1]
    if groups > 1 and weight.shape[1] == 1 and channels is not None:
        node.attrs["group"] = kept.size(channels)


def _fix_shape_input(state: AnalysisState, node: gs.Node, kept: Kept, names) -> None:
    elems = state.shape_values.get(node.inputs[1].name)
    out_axes = state.axes.get(node.outputs[0].name)
    if elems is None or out_axes is None:
        return
    in_axes = state.axes.get(node.inputs[0].name)
    changes = {}
    for k, (elem, labels) in enumerate(zip(elems, out_axes)):
        if isinstance(elem, Const) and labels is not None and not keeps_meaning(node, elem, k, in_axes, labels, state):
            if kept.size(labels) != elem.value:
                changes[k] = kept.size(labels)
        elif freezable(state, node, elem, k) and not follows(state, elem, labels):
            traced = elem.scale * kept.size(dim_labels(state, elem))
            if kept.size(labels, elem.value) != traced:  # the traced size would now be wrong
                changes[k] = kept.size(labels, elem.value)
    if changes:
        node.inputs[1] = _changed_vector(state, node.inputs[1], elems, changes, names)


def _changed_vector(state: AnalysisState, tensor: gs.Tensor, elems: list, changes: dict[int, int],
                    names) -> gs.Tensor:
    """A new shape vector with `changes`: a constant, or a copy of the Concat building it
    with new constant pieces (a frozen size's piece included)."""
    if all(isinstance(e, Const) for e in elems):
        values = np.array([changes.get(k, e.value) for k, e in enumerate(elems)], dtype=tensor.dtype or np.int64)
        return gs.Constant(names.new(tensor.name), values.reshape(tensor.shape or values.shape))
    concat, casts = shape_concat(tensor)
    pieces, offset = [], 0
    for piece in concat.inputs:
        size = 1 if len(piece.shape) == 0 else int(piece.shape[0])
        span = range(offset, offset + size)
        if any(k in changes for k in span):
            values = np.array([changes.get(k, elems[k].value) for k in span], dtype=piece.dtype or np.int64)
            piece = gs.Constant(names.new(piece.name), values.reshape(piece.shape))
        pieces.append(piece)
        offset += size
    built = concat.outputs[0]
    output = gs.Variable(names.new(built.name), dtype=built.dtype, shape=built.shape)
    state.graph.nodes.append(gs.Node("Concat", names.new(concat.name), dict(concat.attrs), pieces, [output]))
    for cast in casts:  # the same Casts after the new Concat
        cast_output = gs.Variable(names.new(cast.outputs[0].name), dtype=cast.outputs[0].dtype, shape=tensor.shape)
        state.graph.nodes.append(gs.Node(cast.op, names.new(cast.name), dict(cast.attrs), [output], [cast_output]))
        output = cast_output
    return output


def _fix_split(state: AnalysisState, node: gs.Node, kept: Kept, names) -> None:
    x_axes = state.axes.get(node.inputs[0].name)
    if x_axes is None:
        return
    axis = node.attrs.get("axis", 0) % len(x_axes)
    if x_axes[axis] is None:
        return
    sizes = [kept.size(state.axes[out.name][axis]) for out in node.outputs]
    old = [len(state.axes[out.name][axis]) for out in node.outputs]
    if sizes == old:
        return
    if "split" in node.attrs or state.opset < 13:
        node.attrs["split"] = sizes
        return
    node.attrs.pop("num_outputs", None)
    values = np.array(sizes, dtype=np.int64)
    if len(node.inputs) > 1 and node.inputs[1].name:
        node.inputs[1] = gs.Constant(names.new(node.inputs[1].name), values)
    else:
        node.inputs.append(gs.Constant(names.new(f"{node.name}_split"), values))


def _fix_slice(state: AnalysisState, node: gs.Node, kept: Kept, names) -> None:
    """New bounds on the axes that lose channels. The analysis fixes every axis sliced
    with a step other than 1, so only step-1 windows ever change."""
    x_axes = state.axes.get(node.inputs[0].name)
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
        positions = kept.positions(labels)
        if len(positions) == len(labels):
            continue
        window = range(len(labels))[bounds[0]:bounds[1]]
        new_start = int(np.sum(positions < window.start))
        starts[axis] = new_start
        ends[axis] = new_start + int(np.sum((positions >= window.start) & (positions < window.stop)))
    if starts:
        _set_slice_bounds(node, params, starts, ends, names)


def _set_slice_bounds(node: gs.Node, params: dict, starts: dict, ends: dict, names) -> None:
    order = list(params)
    new_starts = [starts.get(a, params[a][0]) for a in order]
    new_ends = [ends.get(a, params[a][1]) for a in order]
    if "starts" in node.attrs:
        node.attrs["starts"], node.attrs["ends"] = new_starts, new_ends
        return
    for index, values in ((1, new_starts), (2, new_ends)):
        old = node.inputs[index]
        node.inputs[index] = gs.Constant(names.new(old.name), np.array(values, dtype=old.dtype or np.int64))


def _fix_resize(state: AnalysisState, node: gs.Node, kept: Kept, names) -> None:
    """Resize given output `sizes`: the channel entry follows the pruned input."""
    if len(node.inputs) < 4 or not isinstance(node.inputs[3], gs.Constant):
        return
    x_axes = state.axes.get(node.inputs[0].name) or []
    sizes = np.array(node.inputs[3].values).copy()
    axes = node.attrs.get("axes", list(range(len(x_axes))))
    for i, axis in enumerate(axes):
        labels = x_axes[axis % len(x_axes)]
        if labels is not None:
            sizes[i] = kept.size(labels)
    if not np.array_equal(sizes, node.inputs[3].values):
        node.inputs[3] = gs.Constant(names.new(node.inputs[3].name), sizes)


class _NameMaker:
    """Fresh tensor and node names that collide with nothing in the graph."""

    def __init__(self, graph: gs.Graph) -> None:
        self.taken = set(graph.tensors()) | {node.name for node in graph.nodes}
        self.counter = itertools.count()

    def new(self, base: str) -> str:
        while True:
            name = f"{base}_spa{next(self.counter)}"
            if name not in self.taken:
                self.taken.add(name)
                return name
