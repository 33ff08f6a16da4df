"""Remove channels group by group, in graph order, repairing the layers that read them.

The graph keeps its size here: a removed channel has every member slice zeroed (a
divisor set to 1), which is exactly what the rewrite stage then cuts away. Data criteria
measure each group on the graph as already pruned upstream, so every layer compensates
for the layers before it:
- obs: backward elimination with OBS updates of the consumers' kept columns (spa/obs.py);
- greedy: forward selection, kept columns refit by least squares;
- fluctuation: lowest FLAP scores; the removed channels' mean contribution is folded
  into each consumer's bias;
- activation: lowest mean absolute activations, no repair.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from spa import obs
from spa.analyze import Group, Member
from spa.calib import Calibration
from spa.layers import LinearLayer
from spa.io.load import read_values
from spa.score import Scores, Scoring, column_values, layer_scores, measurable_layers, measure, normalize, reduce
from spa.select import choose, keep_rule, removal_rule

COMPENSATING = ("fluctuation", "obs", "greedy")  # criteria that change the weights they keep


def prune_in_order(graph: gs.Graph, groups: list[Group], counts: dict[int, int], scores: Scores,
                   scoring: Scoring, calibration: Calibration | None, ir_version: int) -> dict[int, list[int]]:
    """Pick and zero `counts[g]` channels of every group; return the removed channels."""
    removed: dict[int, list[int]] = {}
    gone: dict[tuple[str, int], set[int]] = {}  # (initializer, axis) -> positions already removed
    for group in _in_graph_order(graph, groups):
        count = counts.get(group.id, 0)
        if count <= 0 or group.id in scores.unscored:
            continue
        if scoring.needs_data:
            channels, scores.values[group.id] = _pick_with_data(graph, group, count, scoring, calibration,
                                                                ir_version, gone)
        else:
            channels = choose(group, scores.values[group.id], count)
        zero_channels(graph, group, channels)
        mark_removed(gone, group, channels)
        removed[group.id] = channels
    return removed


def mark_removed(positions: dict[tuple[str, int], set[int]], group: Group, channels: list[int]) -> None:
    """Add the initializer positions `channels` own to `positions`, by (initializer, axis)."""
    for member in group.members:
        if member.within is None:
            positions.setdefault((member.initializer, member.axis), set()).update(
                p for c in channels for p in member.index[c])


def zero_channels(graph: gs.Graph, group: Group, channels: list[int]) -> None:
    """Set every member slice of `channels` to 0 (a divisor to 1, which is inert)."""
    tensors = graph.tensors()
    for member in group.members:
        tensor = tensors[member.initializer]
        values = np.array(read_values(tensor))
        for channel in channels:
            values[_slice(member, channel, values.ndim)] = 1 if member.role == "divisor" else 0
        tensor.values = values


def _slice(member: Member, channel: int, ndim: int) -> tuple:
    index: list = [slice(None)] * ndim
    positions = np.asarray(member.index[channel], dtype=np.int64)
    if member.within is None:
        index[member.axis] = positions
    else:
        index[member.axis] = positions.reshape(-1, 1)
        index[member.within_axis] = np.asarray(member.within[channel], dtype=np.int64).reshape(1, -1)
    return tuple(index)


def _in_graph_order(graph: gs.Graph, groups: list[Group]) -> list[Group]:
    """By the first node reading any of the group's weights: upstream groups first."""
    first: dict[str, int] = {}
    for position, node in enumerate(graph.nodes):
        for tensor in node.inputs:
            first.setdefault(tensor.name, position)
    return sorted(groups, key=lambda g: min((first.get(m.initializer, 0) for m in g.members), default=0))


def _pick_with_data(graph: gs.Graph, group: Group, count: int, scoring: Scoring, calibration: Calibration | None,
                    ir_version: int, gone: dict[tuple[str, int], set[int]]) -> tuple[list[int], np.ndarray]:
    """The channels to remove, and the group's scores, measured on the graph as it is now."""
    layers, _ = measurable_layers(graph, group)
    measured = measure(graph, [layer for layer, _ in layers], scoring.criterion, calibration, ir_version,
                       label=f"{scoring.criterion}: group {group.id}")
    per_layer = [layer_scores(scoring.criterion, layer, member, measured[layer.node.name], scoring.damping)
                 for layer, member in layers]
    scores = normalize(reduce(per_layer, scoring.reduce), scoring.normalize)
    if scoring.criterion in ("obs", "greedy"):
        return _pick_by_reconstruction(group, count, layers, measured, scoring, gone), scores
    channels = choose(group, scores, count)
    if scoring.criterion == "fluctuation":
        for layer, member in layers:
            fold_means(layer, member, channels, measured[layer.node.name].mean)
    return channels, scores


def _pick_by_reconstruction(group: Group, count: int, layers: list[tuple[LinearLayer, Member]],
                            measured: dict, scoring: Scoring, gone: dict[tuple[str, int], set[int]]) -> list[int]:
    """obs removes, greedy keeps; both leave every consumer's weights compensated."""
    merged = _merge_by_node(layers)
    problems = [obs.Layer(layer.matrix(), _without_gone(layer, measured[layer.node.name].matrix, gone), columns)
                for layer, columns in merged]
    if scoring.criterion == "obs":
        channels = obs.obs_prune(problems, count, removal_rule(group, count), scoring.damping)
    else:
        keep = max(group.size - count, len(group.pieces))  # every piece keeps a channel
        channels = obs.greedy_keep(problems, keep, keep_rule(group, group.size - keep), scoring.damping)
    for (layer, _), problem in zip(merged, problems):
        layer.set_matrix(problem.weight)
    return channels


def _without_gone(layer: LinearLayer, hessian: np.ndarray, gone: dict[tuple[str, int], set[int]]) -> np.ndarray:
    """The Hessian with the inputs of channels removed upstream made dead: their input may
    still be nonzero (a Sigmoid of a zeroed channel is 0.5), but their columns are cut, so
    compensation must not put weight on them."""
    positions = sorted(gone.get((layer.weight.name, layer.weight_input_axis), ()))
    if not positions:
        return hessian
    columns = layer.position_columns(positions)
    hessian = hessian.copy()
    hessian[columns, :] = 0.0
    hessian[:, columns] = 0.0
    return hessian


def _merge_by_node(layers: list[tuple[LinearLayer, Member]]) -> list[tuple[LinearLayer, list[np.ndarray]]]:
    """One problem per layer, even where it reads the group through two weights' axes."""
    merged: dict[str, tuple[LinearLayer, list[np.ndarray]]] = {}
    for layer, member in layers:
        columns = layer.columns(member)
        if layer.node.name in merged:
            known = merged[layer.node.name][1]
            columns = [np.union1d(a, b) for a, b in zip(known, columns)]
        merged[layer.node.name] = (layer, columns)
    return list(merged.values())


def fold_means(layer: LinearLayer, member: Member, channels: list[int], mean: np.ndarray) -> None:
    """bias += W[:, removed] · E[x_removed]: the layer's output keeps its mean."""
    if layer.bias is None or not channels:
        return
    matrix = layer.matrix()
    column_means = column_values(layer, mean)
    removed = np.concatenate([layer.columns(member)[c] for c in channels])
    matrix[:, -1] += matrix[:, removed] @ column_means[removed]
    layer.set_matrix(matrix)
