"""MACs and parameter targets: the ratio is bisected until the pruned model's MACs or
parameters reach the target fraction. Only how many channels each group loses changes
the cost, not which: each trial prunes a fresh copy of the graph by position."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from spa.analyze import Group
from spa.analyze.prepare import reshare
from spa.criteria.score import Scores
from spa.io.export import export
from spa.io.load import Loaded
from spa.metrics import summarize
from spa.plan import Plan
from spa.repair.bias import drop_zero_biases
from spa.rewrite import rewrite
from spa.select import choose, removal_counts

TARGET_MAX_RATIO = 0.95  # --target-macs/--target-params search the ratio up to this
TARGET_SEARCH_STEPS = 12


def counts_for_target(loaded: Loaded, plan: Plan, groups: list[Group], scores: Scores,
                       feeds: dict | None) -> dict[int, int]:
    """Per group: how many channels go so that MACs or params reach the target fraction."""
    metric, fraction = plan.target
    goal = fraction * summarize(loaded.model, feeds=feeds)[metric]
    low, high = 0.0, TARGET_MAX_RATIO
    counts_at = lambda ratio: removal_counts(groups, scores.values, replace(plan.selection, ratio=ratio))
    if _metric_after(loaded, plan, counts_at(0.0), metric, feeds) <= goal:
        return counts_at(0.0)
    for _ in range(TARGET_SEARCH_STEPS):
        middle = (low + high) / 2
        if _metric_after(loaded, plan, counts_at(middle), metric, feeds) <= goal:
            high = middle
        else:
            low = middle
    return counts_at(high)


def _metric_after(loaded: Loaded, plan: Plan, counts: dict[int, int], metric: str, feeds: dict | None) -> int:
    from spa.step import prepared_analysis  # the step module builds on this one
    graph, analysis, added = prepared_analysis(loaded, plan)
    groups = {g.id: g for g in analysis.groups}
    removed = {gid: choose(groups[gid], np.zeros(groups[gid].size), count) for gid, count in counts.items()}
    rewrite(analysis, removed)
    drop_zero_biases(graph, added)
    reshare(graph)
    return summarize(export(graph, loaded.model), feeds=feeds)[metric]
