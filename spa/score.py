"""Stage 3, score: how important each channel of a group is (higher = keep).

Every criterion gathers one score per channel from each member of the group (a weight
slice, a BatchNorm scale, or a consumer layer measured on calibration data), reduces
them over members (sum by default, or mean or max), and normalizes the result so groups
of different kinds and sizes can be ranked together (divided by the group's mean score
by default). See README.md, "Criteria", for each criterion's formula and cost.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from spa import obs
from spa.analyze import Group, Member
from spa.calib import Calibration
from spa.collect import Hessian, Moments, collect
from spa.errors import SpaError
from spa.layers import LinearLayer, consumer_layers, weight_readers
from spa.io.load import read_values

MAGNITUDE_CRITERIA = ("random", "l1", "l2", "bn-scale")
DATA_CRITERIA = ("activation", "fluctuation", "obs", "greedy")  # need calibration data
CRITERIA = MAGNITUDE_CRITERIA + DATA_CRITERIA
REDUCTIONS = ("sum", "mean", "max")
NORMALIZATIONS = ("mean", "max", "sum", "standard", "none")


@dataclass
class Scoring:
    """How to score: the criterion and how member scores become one group score."""
    criterion: str = "l2"
    reduce: str = "sum"
    normalize: str = "mean"
    seed: int = 0
    damping: float = obs.DEFAULT_DAMPING

    def check(self) -> None:
        for value, choices, what in ((self.criterion, CRITERIA, "criterion"), (self.reduce, REDUCTIONS, "reduction"),
                                     (self.normalize, NORMALIZATIONS, "normalization")):
            if value not in choices:
                raise SpaError(f"unknown {what} '{value}' (choose from {', '.join(choices)})")
        if not 0 <= self.damping < float("inf"):  # also refuses NaN
            raise SpaError(f"damping must be a finite number >= 0, got {self.damping}")

    @property
    def needs_data(self) -> bool:
        return self.criterion in DATA_CRITERIA


@dataclass
class Scores:
    values: dict[int, np.ndarray]  # group id -> one normalized score per channel
    unscored: dict[int, str]  # group id -> why the criterion cannot score it (kept whole)


def score_groups(graph: gs.Graph, groups: list[Group], scoring: Scoring,
                 calibration: Calibration | None = None, ir_version: int = 8) -> Scores:
    """Score every group in `groups`. Data criteria run `calibration` through `graph`
    once; without it they only find which groups they cannot score (the values then
    come from the pruning pass, measured group by group)."""
    scoring.check()
    rng = np.random.default_rng(scoring.seed)
    layers_of = {g.id: measurable_layers(graph, g) for g in groups} if scoring.needs_data else {}
    readers = weight_readers(graph) if scoring.criterion == "bn-scale" else {}
    measured = {}
    if layers_of and calibration is not None:
        layers = [layer for found, _ in layers_of.values() for layer, _ in found]
        measured = measure(graph, layers, scoring.criterion, calibration, ir_version)
    values, unscored = {}, {}
    for group in groups:
        if scoring.criterion == "random":
            values[group.id] = rng.random(group.size)
            continue
        if scoring.needs_data:
            layers, problem = layers_of[group.id]
            per_member = [layer_scores(scoring.criterion, layer, member, measured[layer.node.name], scoring.damping)
                          for layer, member in layers] if measured and not problem else []
        else:
            per_member, problem = _magnitude_scores(graph, group, scoring.criterion, readers)
        if problem:
            unscored[group.id] = problem
        elif per_member:
            values[group.id] = normalize(reduce(per_member, scoring.reduce), scoring.normalize)
    return Scores(values, unscored)


def reduce(per_member: list[np.ndarray], how: str) -> np.ndarray:
    stacked = np.stack(per_member)
    return {"sum": stacked.sum, "mean": stacked.mean, "max": stacked.max}[how](axis=0)


def normalize(scores: np.ndarray, how: str) -> np.ndarray:
    if how == "none":
        return scores
    if how == "standard":
        spread = scores.std()
        return (scores - scores.mean()) / spread if spread > 0 else scores - scores.mean()
    scale = {"mean": scores.mean, "max": scores.max, "sum": scores.sum}[how]()
    return scores / scale if scale > 0 else scores


def measurable_layers(graph: gs.Graph, group: Group) -> tuple[list[tuple[LinearLayer, Member]], str | None]:
    """The group's consumer layers, or why data criteria cannot measure the group."""
    layers, problems = consumer_layers(graph, group)
    if problems:
        return [], problems[0]
    if not layers:
        return [], "no linear layer reads these channels"
    return layers, None


def measure(graph: gs.Graph, layers: list[LinearLayer], criterion: str, calibration: Calibration | None,
            ir_version: int, label: str = "") -> dict[str, Moments | Hessian]:
    """Per layer (by node name): its input's moments, or its Hessian for obs and greedy."""
    if calibration is None:
        raise SpaError(f"criterion '{criterion}' needs calibration data")
    accumulators: dict[str, Moments | Hessian] = {}
    by_tensor: dict[str, list] = {}
    for layer in layers:
        if layer.node.name in accumulators:
            continue
        if criterion in ("obs", "greedy"):
            accumulator = Hessian(layer.features)
        else:
            accumulator = Moments(layer.channel_axis)
        accumulators[layer.node.name] = accumulator
        by_tensor.setdefault(layer.input.name, []).append(accumulator)
    collect(graph, calibration, by_tensor, ir_version, label=label or f"{criterion}: all groups")
    return accumulators


def _magnitude_scores(graph: gs.Graph, group: Group, criterion: str, readers: dict[str, list[gs.Node]]
                      ) -> tuple[list[np.ndarray], str | None]:
    tensors = graph.tensors()
    if criterion in ("l1", "l2"):
        power = 1 if criterion == "l1" else 2
        return [member_powers(m, read_values(tensors[m.initializer]), power)
                for m in group.members if m.role == "weight"], None
    scales = [m for m in group.members if any(n.op == "BatchNormalization" and n.inputs[1].name == m.initializer
                                              for n in readers.get(m.initializer, []))]
    if not scales:
        return [], "no BatchNormalization scale in this group"
    return [member_powers(m, read_values(tensors[m.initializer]), 1) for m in scales], None


def layer_scores(criterion: str, layer: LinearLayer, member: Member, measured: Moments | Hessian,
                 damping: float) -> np.ndarray:
    """One consumer layer's score for each channel of `member`'s group."""
    if criterion == "activation":
        return np.array([measured.mean_abs[index].mean() if index else 0.0 for index in member.index])
    matrix = layer.matrix()
    columns = layer.columns(member)
    if criterion == "fluctuation":  # FLAP: Var(x_c) * ||W[:, c]||^2, kernel columns included
        column_variance = column_values(layer, measured.variance)
        return np.array([(column_variance[cols] * np.square(matrix[:, cols]).sum(axis=0)).sum() for cols in columns])
    problem = [obs.Layer(matrix, measured.matrix, columns)]
    if criterion == "obs":
        return obs.obs_costs(problem, damping)
    return obs.greedy_gains(problem, damping)


def column_values(layer: LinearLayer, per_position: np.ndarray) -> np.ndarray:
    """A per-input-position statistic spread over the layer's matrix columns (a Conv has
    one column per kernel position of each input channel)."""
    return np.repeat(per_position, layer.kernel_size)


def member_powers(member: Member, values: np.ndarray, power: int) -> np.ndarray:
    """Sum of |w|^power over each channel's slice of one member."""
    values = values.astype(np.float64)  # squares of float32 denormals (dead channels of trained models) are not 0
    magnitudes = np.abs(values) if power == 1 else np.square(values)
    if member.within is None:
        moved = np.moveaxis(magnitudes, member.axis, 0).reshape(values.shape[member.axis], -1)
        per_position = moved.sum(axis=1, dtype=np.float64)
        channels = np.repeat(np.arange(len(member.index)), [len(index) for index in member.index])
        positions = np.fromiter((p for index in member.index for p in index), dtype=np.int64, count=len(channels))
        return np.bincount(channels, weights=per_position[positions], minlength=len(member.index))
    return np.array([_within_slice(magnitudes, member, i).sum(dtype=np.float64)
                     for i in range(len(member.index))])


def _within_slice(values: np.ndarray, member: Member, channel: int) -> np.ndarray:
    rows = np.take(values, member.within[channel], axis=member.within_axis)
    return np.take(rows, member.index[channel], axis=member.axis)
