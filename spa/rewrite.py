"""Stage 5, rewrite: remove the selected channels from the graph, in place.

Each node whose attributes or shape inputs count channels is fixed by its op's rewrite
hook (spa/analyze/ops/: depthwise Conv groups, Reshape/Expand shapes, Split sizes, Slice
bounds, Resize sizes) and the head counts the analysis recorded are set; initializers are
sliced along every axis that carries channels, and the inferred shapes of intermediate
tensors are updated.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from spa.analyze import Analysis
from spa.analyze.context import RewriteContext, static_dim
from spa.analyze.registry import hook_for
from spa.io.load import read_values


def rewrite(analysis: Analysis, removed: dict[int, list[int]]) -> None:
    groups = {group.id: group for group in analysis.groups}
    roots = {groups[gid].roots[c] for gid, channels in removed.items() for c in channels}
    if not roots:
        return
    state = analysis.state
    rctx = RewriteContext(state, roots)
    _fix_nodes(rctx)
    _slice_initializers(rctx)
    _slice_grouped_columns(rctx)
    _update_shapes(rctx)
    state.graph.cleanup().toposort()


def _slice_initializers(rctx: RewriteContext) -> None:
    state, kept = rctx.state, rctx
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


def _slice_grouped_columns(rctx: RewriteContext) -> None:
    """Each row segment of a grouped Conv keeps the columns of its own kept inputs."""
    state, kept = rctx.state, rctx
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


def _update_shapes(rctx: RewriteContext) -> None:
    state, kept = rctx.state, rctx
    boundary = {t.name for t in state.graph.inputs + state.graph.outputs}
    for tensor in state.graph.tensors().values():
        axes = state.axes.get(tensor.name)
        if isinstance(tensor, gs.Constant) or tensor.name in boundary or axes is None or tensor.shape is None:
            continue
        if len(axes) == len(tensor.shape):
            tensor.shape = [kept.size(labels, dim) if static_dim(dim) is not None else dim
                            for labels, dim in zip(axes, tensor.shape)]


# --- nodes whose attributes or shape inputs count channels ------------------------------

def _fix_nodes(rctx: RewriteContext) -> None:
    """Each node whose attributes or shape inputs count channels, by its op's rewrite hook;
    then the head counts the analysis recorded."""
    for node in list(rctx.state.graph.nodes):
        hook = hook_for(node)
        if hook is not None:
            hook(rctx, node)
    for count in rctx.state.head_counts:
        count.node.attrs[count.attribute] = rctx.size(count.labels) // count.head_dim
