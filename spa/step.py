"""One prune step: analyze, score, count, pick (compensating), correct, rewrite. The graph
is the step's own working copy: preparation, zero biases, zeroing and the rewrite all
change it, and it is exported at the end."""
from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from spa.analyze import Analysis, Group, analyze
from spa.analyze.names import layer_nodes
from spa.analyze.prepare import prepare, reshare
from spa.calibrate.layers import LinearLayer
from spa.calibrate.batchnorm import folded_estimates
from spa.calibrate.frontier import BATCH_SIZE
from spa.calibrate.sources import Calibration
from spa.criteria.score import Scores, group_statistics, measurable_layers, score_groups
from spa.errors import SpaError
from spa.io.export import export
from spa.io.load import Loaded, import_graph
from spa.latency import LatencyModel
from spa.plan import Plan
from spa.repair.bias import add_zero_biases, drop_zero_biases
from spa.repair.compensate import mark_removed, prune_in_order
from spa.repair.correct import correct_statistics, output_moments
from spa.rewrite import rewrite
from spa.select import removal_counts
from spa.targets import counts_for_target
from spa.verify import zeroed_model


def prune_once(loaded: Loaded, plan: Plan, calibration: Calibration | None, verify: bool, feeds: dict | None,
               latency: LatencyModel | None = None):
    """One round: analyze, score, count, pick (compensating), correct, rewrite. Returns the
    pruned model, the analysis, the removed channels, the scores, and the zeroed full-size
    model to check it against (where every removal is exact and verification is on)."""
    graph, analysis, added = prepared_analysis(loaded, plan)
    ir_version = loaded.model.ir_version
    groups = analysis.prunable_groups(plan.include_inexact, plan.targets)
    ranked = plan.selection.scope == "global" or plan.target is not None  # counts depend on scores
    budget = plan.memory_budget
    scores = score_groups(graph, groups, plan.scoring, calibration if ranked else None, ir_version, budget)
    scored = [g for g in groups if g.id not in scores.unscored]
    if groups and not scored:
        raise SpaError(f"criterion '{plan.scoring.criterion}' can score none of the {len(groups)} prunable groups "
                       f"({next(iter(scores.unscored.values()))})")
    if calibration is not None and calibration.estimate_folded:  # folded BatchNorm: estimated before any change
        calibration.folded = folded_estimates(graph, calibration.smallest_batch(BATCH_SIZE))
    scores.statistics = group_statistics(graph, scored, calibration)
    counts = _counts(loaded, plan, scored, scores, feeds, latency)
    corrected = _corrected_layers(graph, scored, counts) if plan.correct_stats else []
    reference = output_moments(graph, corrected, calibration, ir_version, budget) if corrected else {}
    removed = prune_in_order(graph, scored, counts, scores, plan.scoring, calibration, ir_version, budget)
    if corrected:
        positions = _removed_positions(analysis, removed)
        correct_statistics(graph, corrected, reference, _removed_outputs(positions, corrected),
                           calibration, ir_version, budget, positions)
    exact = all(g.exact for g in scored if removed.get(g.id))
    masked = zeroed_model(graph, loaded.model) if verify and exact and not loaded.external and removed else None
    rewrite(analysis, removed)
    drop_zero_biases(graph, added)
    reshare(graph)
    return export(graph, loaded.model), analysis, removed, scores, masked


def prepared_analysis(loaded: Loaded, plan: Plan) -> tuple[gs.Graph, Analysis, list[str]]:
    """The graph (with zero biases where compensation or correction may need them) and its analysis."""
    graph = import_graph(loaded)
    prepare(graph)
    check_ignored(graph, plan.ignore)
    repairs = plan.scoring.method.compensates or plan.correct_stats
    added = add_zero_biases(graph) if repairs else []
    return graph, analyze(graph, default_opset(loaded.model), plan.ignore), added


def _counts(loaded: Loaded, plan: Plan, groups: list[Group], scores: Scores, feeds: dict | None,
            latency: LatencyModel | None) -> dict[int, int]:
    if plan.target is None:
        return removal_counts(groups, scores.values, plan.selection)
    return counts_for_target(loaded, plan, groups, scores, feeds, latency)


def _corrected_layers(graph: gs.Graph, groups: list[Group], counts: dict[int, int]) -> list[LinearLayer]:
    """The linear layers reading channels that will be removed (one entry per node)."""
    layers: dict[str, LinearLayer] = {}
    for group in groups:
        if counts.get(group.id, 0) > 0:
            for layer, _ in measurable_layers(graph, group)[0]:
                layers.setdefault(layer.node.name, layer)
    return list(layers.values())


def _removed_outputs(positions: dict[tuple[str, int], set[int]],
                     layers: list[LinearLayer]) -> dict[str, set[int]]:
    """Per layer: the output positions removed from its weight (`positions`: every removed
    position, by (initializer, axis))."""
    return {layer.node.name: positions.get((layer.weight.name, layer.weight_output_axis), set())
            for layer in layers}


def _removed_positions(analysis: Analysis, removed: dict[int, list[int]]) -> dict[tuple[str, int], set[int]]:
    """Every removed position, by (initializer, axis)."""
    positions: dict[tuple[str, int], set[int]] = {}
    groups = {g.id: g for g in analysis.groups}
    for gid, channels in removed.items():
        mark_removed(positions, groups[gid], channels)
    return positions


def analyze_loaded(loaded: Loaded, ignore: tuple[str, ...]) -> Analysis:
    graph = import_graph(loaded)
    prepare(graph)
    check_ignored(graph, ignore)
    return analyze(graph, default_opset(loaded.model), ignore)


def check_ignored(graph: gs.Graph, names: tuple[str, ...]) -> None:
    known = set(graph.tensors()) | {node.name for node in graph.nodes}
    for name in names:
        if name not in known and not layer_nodes(graph, name):
            raise SpaError(f"--ignore {name}: no node, initializer, layer or module of that name (see spa inspect)")


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
