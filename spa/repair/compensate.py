"""Remove channels group by group, in graph order, repairing the layers that read them.

The graph keeps its size here: a removed channel has every member slice zeroed (a
divisor set to 1), which is exactly what the rewrite stage then cuts away. Data criteria
measure each group on the graph as already pruned upstream, so every layer compensates
for the layers before it; what each criterion picks and repairs is its `remove`
(spa/criteria/data.py). A `Frontier` (spa/calibrate/frontier.py) keeps the activations
where the graph will not change any more, so each group runs only the part of the graph
between them and its consumer layers.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from spa.analyze import Group, Member
from spa.calibrate.frontier import DEFAULT_BUDGET, Frontier
from spa.calibrate.layers import LinearLayer
from spa.calibrate.sources import Calibration
from spa.criteria.score import Scores, Scoring, measurable_layers, measure, normalize, reduce
from spa.errors import SpaError
from spa.io.load import read_values
from spa.progress import progress
from spa.select import choose


def prune_in_order(graph: gs.Graph, groups: list[Group], counts: dict[int, int], scores: Scores,
                   scoring: Scoring, calibration: Calibration | None, ir_version: int,
                   budget: int = DEFAULT_BUDGET) -> dict[int, list[int]]:
    """Pick and zero `counts[g]` channels of every group; return the removed channels."""
    order = [g for g in _in_graph_order(graph, groups) if counts.get(g.id, 0) > 0 and g.id not in scores.unscored]
    if not scoring.needs_data:
        picks = ((group, choose(group, scores.values[group.id], counts[group.id])) for group in order)
        return _zero_all(graph, picks)
    if calibration is None:
        raise SpaError(f"criterion '{scoring.criterion}' needs calibration data")
    layers = {group.id: measurable_layers(graph, group)[0] for group in order}
    written = [_weights_written(group, layers[group.id]) for group in order]
    gone: dict[tuple[str, int], set[int]] = {}  # (initializer, axis) -> positions already removed
    with Frontier(graph, calibration, ir_version, written, budget, removed=gone) as frontier:
        def picks():
            for task, group in enumerate(progress(order, f"{scoring.criterion}: pruning groups")):
                channels, scores.values[group.id] = _pick_with_data(frontier, group, layers[group.id],
                                                                    counts[group.id], scoring, gone)
                yield group, channels
                mark_removed(gone, group, channels)
                frontier.done_with(task)
        return _zero_all(graph, picks())


def _zero_all(graph: gs.Graph, picks) -> dict[int, list[int]]:
    removed: dict[int, list[int]] = {}
    copied: set[str] = set()
    for group, channels in picks:
        zero_channels(graph, group, channels, copied)
        removed[group.id] = channels
    return removed


def _weights_written(group: Group, layers: list[tuple[LinearLayer, Member]]) -> set[str]:
    """The initializers a group's removal changes: its members, and its consumers' weights
    and biases (compensation refits them)."""
    names = {member.initializer for member in group.members}
    for layer, _ in layers:
        names.add(layer.weight.name)
        if layer.bias is not None:
            names.add(layer.bias.name)
    return names


def mark_removed(positions: dict[tuple[str, int], set[int]], group: Group, channels: list[int]) -> None:
    """Add the initializer positions `channels` own to `positions`, by (initializer, axis)."""
    for member in group.members:
        if member.within is None:
            positions.setdefault((member.initializer, member.axis), set()).update(
                p for c in channels for p in member.index[c])


def zero_channels(graph: gs.Graph, group: Group, channels: list[int], copied: set[str] | None = None) -> None:
    """Set every member slice of `channels` to 0 (a divisor to 1, which is inert). A weight
    is copied before its first change; those named in `copied` are this pass's own copies,
    changed in place (and are added to it)."""
    tensors = graph.tensors()
    copied = set() if copied is None else copied
    for member in group.members:
        tensor = tensors[member.initializer]
        values = read_values(tensor)
        if member.initializer not in copied:  # the input's bytes, or an array another tensor may share
            values = np.array(values)
            copied.add(member.initializer)
        fill = 1 if member.role == "divisor" else 0
        if member.within is None:  # all channels' positions along one axis at once
            index: list = [slice(None)] * values.ndim
            index[member.axis] = np.asarray([p for c in channels for p in member.index[c]], dtype=np.int64)
            values[tuple(index)] = fill
        else:
            for channel in channels:
                values[_slice(member, channel, values.ndim)] = fill
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
    """By the first node making the group's channels: upstream groups first. (Not by the
    first reader of any member weight: an exporter's alias of a bias can sit at the top of
    the graph.)"""
    position = {node.name: index for index, node in enumerate(graph.nodes)}
    return sorted(groups, key=lambda g: min((position.get(name, len(position)) for name in g.makers),
                                            default=len(position)))


def _pick_with_data(frontier: Frontier, group: Group, layers: list[tuple[LinearLayer, Member]], count: int,
                    scoring: Scoring, gone: dict[tuple[str, int], set[int]]) -> tuple[list[int], np.ndarray]:
    """The channels to remove, and the group's scores, measured on the graph as it is now."""
    method = scoring.method
    measured = measure(frontier, [layer for layer, _ in layers], method)
    per_layer = [method.layer_scores(layer, member, measured[layer.node.name], scoring.damping)
                 for layer, member in layers]
    scores = normalize(reduce(per_layer, scoring.reduce), scoring.normalize)
    return method.remove(group, count, layers, measured, scores, scoring.damping, gone), scores
