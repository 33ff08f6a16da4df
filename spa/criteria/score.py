"""Stage 3, score: how important each channel of a group is (higher = keep).

Every criterion gathers one score per channel from each member of the group (a weight
slice, a BatchNorm scale, or a consumer layer measured on calibration data), reduces
them over members (sum by default, or mean or max), and normalizes the result so groups
of different kinds and sizes can be ranked together (divided by the group's mean score
by default). See README.md, "Criteria", for each criterion's formula and cost.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from spa.analyze import Group, Member
from spa.calibrate.collect import Hessian, Moments
from spa.calibrate.batchnorm import calibration_estimates, reached_by, renormalized_norms
from spa.calibrate.frontier import BATCH_SIZE, DEFAULT_BUDGET, Frontier
from spa.calibrate.layers import LinearLayer, consumer_layers, in_graph_order
from spa.calibrate.sources import Calibration
from spa.criteria import CRITERIA, Criterion, obs
from spa.criteria.base import DEFAULT_CRITERION, WeightView
from spa.errors import SpaError
from spa.progress import progress

REDUCTIONS = ("sum", "mean", "max")
NORMALIZATIONS = ("mean", "max", "sum", "standard", "none")


@dataclass
class Scoring:
    """How to score: the criterion and how member scores become one group score."""
    criterion: str = DEFAULT_CRITERION
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
    statistics: dict[int, str] = field(default_factory=dict)  # group id -> what its layers were measured on


def score_groups(graph: gs.Graph, groups: list[Group], scoring: Scoring, calibration: Calibration | None = None,
                 ir_version: int = 8, budget: int = DEFAULT_BUDGET) -> Scores:
    """Score every group in `groups`. Data criteria measure their consumer layers one at a
    time on `calibration` (each statistic freed once its scores are taken); without it they
    only find which groups they cannot score (the values then come from the pruning pass,
    measured group by group)."""
    scoring.check()
    method = scoring.method
    if method.needs_data:
        layers_of = {g.id: measurable_layers(graph, g) for g in groups}
        unscored = {gid: problem for gid, (_, problem) in layers_of.items() if problem}
        per_member = _measured_scores(graph, layers_of, scoring, calibration, ir_version, budget) \
            if calibration is not None else {}
    else:
        weights = WeightView(graph, scoring.seed)
        per_member, unscored = {}, {}
        for group in groups:
            per_member[group.id], problem = method.weight_scores(weights, group)
            if problem:
                unscored[group.id] = problem
    values = {gid: normalize(reduce(found, scoring.reduce), scoring.normalize)
              for gid, found in per_member.items() if found and gid not in unscored}
    return Scores(values, unscored)


def _measured_scores(graph: gs.Graph, layers_of: dict[int, tuple[list, str | None]], scoring: Scoring,
                     calibration: Calibration, ir_version: int, budget: int) -> dict[int, list[np.ndarray]]:
    """Per group, one score array per consumer layer: the layers are measured in graph
    order, one statistic alive at a time."""
    readers: dict[str, list[tuple[int, LinearLayer, Member]]] = {}
    for gid, (layers, problem) in layers_of.items():
        for layer, member in [] if problem else layers:
            readers.setdefault(layer.node.name, []).append((gid, layer, member))
    ordered = in_graph_order(graph, [entries[0][1] for entries in readers.values()])
    per_member: dict[int, list[np.ndarray]] = {}
    with Frontier(graph, calibration, ir_version, budget=budget) as frontier:
        for layer in progress(ordered, f"{scoring.criterion}: scoring layers"):
            statistic = measure(frontier, [layer], scoring.method)[layer.node.name]
            for gid, layer, member in readers[layer.node.name]:
                per_member.setdefault(gid, []).append(
                    scoring.method.layer_scores(layer, member, statistic, scoring.damping))
    return per_member


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


def group_statistics(graph: gs.Graph, groups: list[Group], calibration: Calibration | None) -> dict[int, str]:
    """Per group, what the statistics of the layers reading its channels come from:
    "calibration data"; "BatchNorm statistics" where every such layer reads a tensor
    computed from a renormalized BatchNorm (spa.calibrate.batchnorm); "folded BatchNorm
    estimates" where each reads one computed from a renormalized BatchNorm or a Conv with
    estimated statistics; else "synthetic inputs"."""
    if calibration is None:
        return {}
    if calibration.source != "synthetic":
        return {group.id: "calibration data" for group in groups}
    norms, folded = [], []
    if calibration.batchnorm:
        batch = calibration.smallest_batch(BATCH_SIZE)
        norms = renormalized_norms(graph, batch)
        estimates = calibration_estimates(graph, calibration, batch)
        folded = [node for node in graph.nodes if node.op == "Conv" and node.outputs[0].name in estimates]
    from_norms, from_either = reached_by(norms), reached_by(norms + folded)
    labels = {}
    for group in groups:
        inputs = [layer.input.name for layer, _ in measurable_layers(graph, group)[0]]
        labels[group.id] = ("synthetic inputs" if not inputs or not all(n in from_either for n in inputs) else
                            "BatchNorm statistics" if all(n in from_norms for n in inputs) else
                            "folded BatchNorm estimates")
    return labels


def measurable_layers(graph: gs.Graph, group: Group) -> tuple[list[tuple[LinearLayer, Member]], str | None]:
    """The group's consumer layers, or why data criteria cannot measure the group."""
    layers, problems = consumer_layers(graph, group)
    if problems:
        return [], problems[0]
    if not layers:
        return [], "no linear layer reads these channels"
    return layers, None


def measure(frontier: Frontier, layers: list[LinearLayer], method: Criterion) -> dict[str, Moments | Hessian]:
    """Per layer (by node name): the statistic the criterion needs (its input's moments,
    or its Hessian), on the graph as it is now."""
    accumulators: dict[str, Moments | Hessian] = {}
    by_tensor: dict[str, list] = {}
    for layer in layers:
        if layer.node.name in accumulators:
            continue
        if method.statistic != "hessian":
            accumulator = Moments(layer.channel_axis)
        elif layer.has_gram:
            accumulator = Hessian(layer.features, layer.gram, layer.feature_shape)
        else:
            accumulator = Hessian(layer.features)
        accumulators[layer.node.name] = accumulator
        by_tensor.setdefault(layer.input.name, []).append(accumulator)
    frontier.measure(by_tensor)
    return accumulators
