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

from spa.analyze import Group, Member
from spa.calibrate.collect import Hessian, Moments, collect
from spa.calibrate.layers import LinearLayer, consumer_layers
from spa.calibrate.sources import Calibration
from spa.criteria import CRITERIA, Criterion, obs
from spa.criteria.base import WeightView
from spa.errors import SpaError

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
        for value, choices, what in ((self.criterion, tuple(CRITERIA), "criterion"),
                                     (self.reduce, REDUCTIONS, "reduction"),
                                     (self.normalize, NORMALIZATIONS, "normalization")):
            if value not in choices:
                raise SpaError(f"unknown {what} '{value}' (choose from {', '.join(choices)})")
        if not 0 <= self.damping < float("inf"):  # also refuses NaN
            raise SpaError(f"damping must be a finite number >= 0, got {self.damping}")

    @property
    def method(self) -> Criterion:
        return CRITERIA[self.criterion]

    @property
    def needs_data(self) -> bool:
        return self.method.needs_data


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
    method = scoring.method
    layers_of = {g.id: measurable_layers(graph, g) for g in groups} if method.needs_data else {}
    weights = WeightView(graph, scoring.seed)
    measured = {}
    if layers_of and calibration is not None:
        layers = [layer for found, _ in layers_of.values() for layer, _ in found]
        measured = measure(graph, layers, method, calibration, ir_version)
    values, unscored = {}, {}
    for group in groups:
        if method.needs_data:
            layers, problem = layers_of[group.id]
            per_member = [method.layer_scores(layer, member, measured[layer.node.name], scoring.damping)
                          for layer, member in layers] if measured and not problem else []
        else:
            per_member, problem = method.weight_scores(weights, group)
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


def measure(graph: gs.Graph, layers: list[LinearLayer], method: Criterion, calibration: Calibration | None,
            ir_version: int, label: str = "") -> dict[str, Moments | Hessian]:
    """Per layer (by node name): the statistic the criterion needs (its input's moments,
    or its Hessian)."""
    if calibration is None:
        raise SpaError(f"criterion '{method.name}' needs calibration data")
    accumulators: dict[str, Moments | Hessian] = {}
    by_tensor: dict[str, list] = {}
    for layer in layers:
        if layer.node.name in accumulators:
            continue
        accumulator = Hessian(layer.features) if method.statistic == "hessian" else Moments(layer.channel_axis)
        accumulators[layer.node.name] = accumulator
        by_tensor.setdefault(layer.input.name, []).append(accumulator)
    collect(graph, calibration, by_tensor, ir_version, label=label or f"{method.name}: all groups")
    return accumulators
