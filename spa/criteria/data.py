"""Criteria that measure the linear layers reading a group on calibration data:
activation, wanda, fluctuation (FLAP), obs (Optimal Brain Surgeon) and greedy (forward
selection). Each group is measured on the model as already pruned and compensated
upstream (spa.repair.compensate), so every layer compensates for the layers before it:
- obs: backward elimination with OBS updates of the consumers' kept columns (obs.py);
- greedy: forward selection, kept columns refit by least squares;
- fluctuation: lowest FLAP scores; the removed channels' mean contribution is folded
  into each consumer's bias;
- activation: lowest mean absolute activations, no repair;
- wanda: lowest |W| times the input's norm, no repair.
"""
from __future__ import annotations

import numpy as np

from spa.analyze import Group, Member
from spa.calibrate.collect import Hessian, gram_diagonal
from spa.calibrate.layers import LinearLayer
from spa.criteria import obs
from spa.criteria.base import Criterion, register
from spa.select import choose, keep_rule, removal_rule


def column_values(layer: LinearLayer, per_position: np.ndarray) -> np.ndarray:
    """A per-input-position statistic spread over the layer's matrix columns (a Conv has
    one column per kernel position of each input channel)."""
    return np.repeat(per_position, layer.kernel_size)


@register
class Activation(Criterion):
    name = "activation"
    needs_data = True

    def layer_scores(self, layer: LinearLayer, member: Member, measured, damping: float) -> np.ndarray:
        return np.array([measured.mean_abs[index].mean() if index else 0.0 for index in member.index])


@register
class Wanda(Criterion):
    """Wanda, structured (as FLAP and LLM-Pruner compare against it): per input channel,
    sum over its weight columns of |W| times the column's input RMS on the data."""
    name = "wanda"
    needs_data = True

    def layer_scores(self, layer: LinearLayer, member: Member, measured, damping: float) -> np.ndarray:
        magnitude = np.abs(layer.matrix())
        column_norm = column_values(layer, measured.root_mean_square)
        return np.array([(magnitude[:, cols] * column_norm[cols]).sum() for cols in layer.columns(member)])


@register
class Fluctuation(Criterion):
    """FLAP: Var(x_c) * ||W[:, c]||^2, kernel columns included; the removed channels' mean
    contribution goes into the bias."""
    name = "fluctuation"
    needs_data = True
    compensates = True

    def layer_scores(self, layer: LinearLayer, member: Member, measured, damping: float) -> np.ndarray:
        matrix = layer.matrix()
        column_variance = column_values(layer, measured.variance)
        return np.array([(column_variance[cols] * np.square(matrix[:, cols]).sum(axis=0)).sum()
                         for cols in layer.columns(member)])

    def remove(self, group: Group, count: int, layers: list, measured: dict, scores: np.ndarray,
               damping: float, gone: dict) -> list[int]:
        channels = choose(group, scores, count)
        for layer, member in layers:
            fold_means(layer, member, channels, measured[layer.node.name].mean)
        return channels


def fold_means(layer: LinearLayer, member: Member, channels: list[int], mean: np.ndarray) -> None:
    """bias += W[:, removed] · E[x_removed]: the layer's output keeps its mean."""
    if layer.bias is None or not channels:
        return
    matrix = layer.matrix()
    column_means = column_values(layer, mean)
    removed = np.concatenate([layer.columns(member)[c] for c in channels])
    matrix[:, -1] += matrix[:, removed] @ column_means[removed]
    layer.set_matrix(matrix)


class Reconstruction(Criterion):
    """obs and greedy: pick by the consumers' output reconstruction error (their Hessians),
    and leave every consumer's kept weights refit."""
    needs_data = True
    compensates = True
    statistic = "hessian"
    needs_matrix = True  # the Hessian itself, not only its inverse and diagonal

    def remove(self, group: Group, count: int, layers: list, measured: dict, scores: np.ndarray,
               damping: float, gone: dict) -> list[int]:
        merged = _merge_by_node(layers)
        problems = [_problem(layer, measured[layer.node.name], columns, gone, damping, self.needs_matrix)
                    for layer, columns in merged]
        channels = self.pick(group, count, problems, damping)
        for (layer, _), problem in zip(merged, problems):
            layer.set_matrix(problem.weight)
        return channels

    def pick(self, group: Group, count: int, problems: list, damping: float) -> list[int]:
        raise NotImplementedError


@register
class Obs(Reconstruction):
    name = "obs"
    needs_matrix = False

    def layer_scores(self, layer: LinearLayer, member: Member, measured, damping: float) -> np.ndarray:
        problem = obs.Layer(layer.matrix(), None, layer.columns(member), inverse(measured, damping), measured.diagonal)
        return obs.obs_costs([problem], damping)

    def pick(self, group: Group, count: int, problems: list, damping: float) -> list[int]:
        return obs.obs_prune(problems, count, removal_rule(group, count), damping)


@register
class Greedy(Reconstruction):
    name = "greedy"

    def layer_scores(self, layer: LinearLayer, member: Member, measured, damping: float) -> np.ndarray:
        return obs.greedy_gains([obs.Layer(layer.matrix(), measured.matrix, layer.columns(member))], damping)

    def pick(self, group: Group, count: int, problems: list, damping: float) -> list[int]:
        keep = max(group.size - count, len(group.pieces))  # every piece keeps a channel
        return obs.greedy_keep(problems, keep, keep_rule(group, group.size - keep), damping)


def inverse(hessian: Hessian, damping: float) -> obs.Inverse:
    """A layer's damped inverse Hessian, computed once per measurement: obs scores a group
    and then removes its channels with the same one. From the rows where H has low rank."""
    key = ("inverse", damping)
    if key not in hessian.derived:
        rows = hessian.rows if damping > 0 else None
        hessian.derived[key] = obs.inverse_hessian(hessian.matrix if rows is None else None, damping, rows)
    return hessian.derived[key]


def _problem(layer: LinearLayer, hessian: Hessian, columns: list[np.ndarray], gone: dict, damping: float,
             needs_matrix: bool) -> obs.Layer:
    """One consumer layer as an OBS problem; the inverse is shared with scoring unless
    channels removed upstream changed the Hessian. Inputs of channels removed upstream are
    made dead: their input may still be nonzero (a Sigmoid of a zeroed channel is 0.5), but
    their columns are cut, so compensation must not put weight on them. Where only the
    inverse and the diagonal are needed (obs) and H is kept as rows, H is never formed."""
    weight = layer.matrix()
    cut = _cut_columns(layer, gone)
    if not cut.size:
        if needs_matrix:
            return obs.Layer(weight, hessian.matrix, columns)
        return obs.Layer(weight, None, columns, inverse(hessian, damping), hessian.diagonal)
    rows = hessian.rows if not needs_matrix and damping > 0 else None
    if rows is not None:
        rows = rows.copy()
        rows[:, cut] = 0.0
        return obs.Layer(weight, None, columns, obs.inverse_hessian(None, damping, rows), gram_diagonal(rows))
    matrix = hessian.matrix.copy()
    matrix[cut, :] = 0.0
    matrix[:, cut] = 0.0
    return obs.Layer(weight, matrix, columns)


def _cut_columns(layer: LinearLayer, gone: dict[tuple[str, int], set[int]]) -> np.ndarray:
    """The layer's matrix columns of its input positions removed upstream."""
    positions = sorted(gone.get((layer.weight.name, layer.weight_input_axis), ()))
    return layer.position_columns(positions) if positions else np.zeros(0, dtype=np.intp)


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
