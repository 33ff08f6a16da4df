"""MACs, parameter and latency targets: how many channels each group loses so that the
pruned model's MACs, parameters or predicted onnxruntime latency (spa.latency) come as
close to the target fraction as they can without going over it. Only how many channels
each group loses changes the cost, not which: each trial prunes a fresh copy of the graph
by position. A latency target is then measured: where the real ratio misses it by more
than LATENCY_TOLERANCE, the predicted goal is rescaled by the miss and searched again.

Global scope searches the ranked cuts (`spa.select.ranked_cuts`, each narrows one group to
its next allowed width) for the shortest run that reaches the target; when its last cut
lands far under it (a whole head at once), cuts before it are undone where the model stays
within the target. Local scope bisects the ratio every group loses alike."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import onnx

from spa.analyze import Group
from spa.analyze.prepare import reshare
from spa.criteria.score import Scores
from spa.errors import SpaError
from spa.io.export import export
from spa.io.load import Loaded
from spa.latency import LatencyModel, measured_ratio
from spa.metrics import summarize
from spa.plan import Plan
from spa.repair.bias import drop_zero_biases
from spa.rewrite import rewrite
from spa.select import Cut, choose, counts_after, ranked_cuts, removal_counts

TARGET_MAX_RATIO = 0.95  # local scope: --target-macs/--target-params search the ratio up to this
TARGET_SEARCH_STEPS = 12
CLOSE_ENOUGH = 0.01  # global scope: a run of cuts this close under the target is not refined
UNDO_TRIES = 12  # global scope: measurements spent undoing cuts (each prunes a copy)
LATENCY_TOLERANCE = 0.03  # a measured latency ratio this close (relative) to the target is kept
LATENCY_CORRECTIONS = 3  # searches again with the goal moved by the measured miss
LATENCY_TIMED_RUNS = 30  # interleaved runs of input and candidate per measured attempt

Counts = dict[int, int]
METRIC_NAMES = {"macs": "MACs", "params": "parameters"}


def counts_for_target(loaded: Loaded, plan: Plan, groups: list[Group], scores: Scores,
                      feeds: dict | None, latency: LatencyModel | None = None) -> Counts:
    """Per group: how many channels go so that MACs, params or latency reach the target fraction."""
    metric, fraction = plan.target
    if metric == "latency":
        return _latency_target(loaded, plan, groups, scores, latency, fraction)
    before = summarize(loaded.model, feeds=feeds)[metric]
    if before == 0:
        raise SpaError(f"--target-{metric}: spa counts no {METRIC_NAMES[metric]} in this model "
                       "(no Conv, Gemm or MatMul whose shapes are known)")
    cost = _Cost(lambda counts: summarize(pruned_copy(loaded, plan, counts), feeds=feeds)[metric])
    return _search(groups, scores, plan, cost, fraction * before)


def _search(groups: list[Group], scores: Scores, plan: Plan, cost: _Cost, goal: float,
            savings: dict[int, float] | None = None) -> Counts:
    if plan.selection.scope == "global":
        return _global_target(groups, ranked_cuts(groups, scores.values, plan.selection, savings), cost, goal)
    counts_at = lambda ratio: removal_counts(groups, scores.values, replace(plan.selection, ratio=ratio))
    return _local_target(counts_at, cost, goal)


def _latency_target(loaded: Loaded, plan: Plan, groups: list[Group], scores: Scores, latency: LatencyModel,
                    fraction: float) -> Counts:
    """Counts whose predicted latency reaches `fraction`, then measured. A miss moves the
    predicted goal to where the measurements so far say the target lies, up to
    LATENCY_CORRECTIONS times; the counts measured closest to the target win."""
    wall = latency.profile.wall_ms
    cost = _Cost(lambda counts: latency.predict(pruned_copy(loaded, plan, counts)).ms)
    savings = {g.id: latency.channel_ms(g.touches) for g in groups}  # global scope: score per ms saved
    goal, tried = fraction, []  # (predicted, measured, counts), ratios to the input
    for _ in range(LATENCY_CORRECTIONS + 1):
        counts = _search(groups, scores, plan, cost, goal * wall, savings)
        realized = measured_ratio(latency.source, pruned_copy(loaded, plan, counts).SerializeToString(),
                                  latency.feeds, latency.profile.threads, LATENCY_TIMED_RUNS)
        tried.append((cost(counts) / wall, realized, counts))
        if abs(realized - fraction) <= LATENCY_TOLERANCE * fraction:
            break
        goal = _corrected_goal(tried, fraction)
    return min(tried, key=lambda attempt: abs(attempt[1] - fraction))[2]


def _corrected_goal(tried: list[tuple[float, float, Counts]], fraction: float) -> float:
    """The predicted ratio expected to measure `fraction`: on the line through the last two
    (predicted, measured) points where they rise together, else the last prediction scaled
    by its miss (the model's error is mostly a factor)."""
    predicted, measured, _ = tried[-1]
    if len(tried) > 1:
        earlier_predicted, earlier_measured, _ = tried[-2]
        if predicted - earlier_predicted and (measured - earlier_measured) / (predicted - earlier_predicted) > 0:
            slope = (measured - earlier_measured) / (predicted - earlier_predicted)
            return predicted + (fraction - measured) / slope
    return predicted * fraction / measured


class _Cost:
    """The metric after pruning `counts`, measured once per distinct counts."""

    def __init__(self, measure: Callable[[Counts], float]) -> None:
        self.measure = measure
        self.known: dict[tuple, float] = {}

    def __call__(self, counts: Counts) -> float:
        key = tuple(sorted(counts.items()))
        if key not in self.known:
            self.known[key] = self.measure(counts)
        return self.known[key]


def _global_target(groups: list[Group], cuts: list[Cut], cost: _Cost, goal: float) -> Counts:
    """The shortest run of ranked cuts that reaches `goal`. Its last cut may land far under
    the goal (a whole head at once): then cuts before it are undone where the model stays
    within the goal."""
    end = _first_reaching(lambda n: cost(counts_after(groups, cuts[:n])) <= goal, len(cuts))
    if end is None or end == 0:
        return counts_after(groups, cuts if end is None else [])
    last = cuts[end - 1]
    undoable = [c for c in reversed(cuts[:end - 1]) if c.gid != last.gid]  # its group's earlier cuts stay
    return counts_after(groups, _undo(groups, cuts[:end], undoable, cost, goal))


def _undo(groups: list[Group], taken: list[Cut], undoable: list[Cut], cost: _Cost, goal: float) -> list[Cut]:
    """`taken` without the cuts of `undoable` (highest-ranked first) that fit within `goal`.
    Runs of them are undone together, the run doubling while it fits. A run that does not fit
    first leaves out its widest cut (a head among neurons), then halves; a single cut that
    does not fit stays. At most UNDO_TRIES measurements, and none once the model lands
    within CLOSE_ENOUGH of the goal."""
    undoable = list(undoable)
    run, start, tries = 1, 0, 0
    while start < len(undoable) and tries < UNDO_TRIES:
        if cost(counts_after(groups, taken)) >= goal * (1 - CLOSE_ENOUGH):
            break
        batch = undoable[start:start + run]
        fewer = [c for c in taken if c not in set(batch)]
        tries += 1
        widest = max(batch, key=lambda c: c.units)
        if cost(counts_after(groups, fewer)) <= goal:
            taken, start, run = fewer, start + run, run * 2
        elif widest.units > min(c.units for c in batch):
            undoable.remove(widest)
        elif run > 1:
            run //= 2
        else:
            start += 1
    return taken


def _first_reaching(reaches: Callable[[int], bool], n: int) -> int | None:
    """The least k in 0..n with reaches(k), for `reaches` false then true; None if reaches(n) is false."""
    if not reaches(n):
        return None
    low, high = -1, n  # reaches(high) holds; reaches(low) does not (or low is below the range)
    while high - low > 1:
        middle = (low + high) // 2
        if reaches(middle):
            high = middle
        else:
            low = middle
    return high


def _local_target(counts_at: Callable[[float], Counts], cost: _Cost, goal: float) -> Counts:
    """The least ratio, every group alike, whose pruned model reaches `goal` (bisected)."""
    if cost(counts_at(0.0)) <= goal:
        return counts_at(0.0)
    low, high = 0.0, TARGET_MAX_RATIO
    for _ in range(TARGET_SEARCH_STEPS):
        middle = (low + high) / 2
        if cost(counts_at(middle)) <= goal:
            high = middle
        else:
            low = middle
    return counts_at(high)


def pruned_copy(loaded: Loaded, plan: Plan, counts: Counts) -> onnx.ModelProto:
    """The model with `counts` channels of each group removed (which ones does not matter here)."""
    from spa.step import prepared_analysis  # the step module builds on this one
    graph, analysis, added = prepared_analysis(loaded, plan)
    groups = {g.id: g for g in analysis.groups}
    removed = {gid: choose(groups[gid], np.zeros(groups[gid].size), count) for gid, count in counts.items()}
    rewrite(analysis, removed)
    drop_zero_biases(graph, added)
    reshare(graph)
    return export(graph, loaded.model)
