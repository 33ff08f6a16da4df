"""The pipeline: load -> analyze -> score -> select -> rewrite -> verify."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from spa.analyze import DEFAULT_TARGETS, KINDS, Analysis, Group, analyze
from spa.repair.bias import add_zero_biases, drop_zero_biases
from spa.calibrate.sources import Calibration, load_calibration, synthetic_calibration
from spa.repair.compensate import mark_removed, prune_in_order
from spa.repair.correct import correct_statistics, output_moments
from spa.errors import SpaError
from spa.calibrate.layers import LinearLayer
from spa.io.export import export
from spa.io.load import Loaded, ModelSource, import_graph, input_files, load_model
from spa.metrics import summarize
from spa.criteria.obs import DEFAULT_DAMPING
from spa.analyze.prepare import prepare, reshare
from spa.rewrite import rewrite
from spa.io.save import check_outputs, save_model, write_json
from spa.criteria.score import Scores, Scoring, measurable_layers, score_groups
from spa.select import DEFAULT_ROUND_TO, Selection, choose, removal_counts
from spa.verify import reference_run, verify_equivalent, verify_pruned

SYNTHETIC_SAMPLES = 64  # data-free: synthetic inputs built from the input specs
TARGET_MAX_RATIO = 0.95  # --target-macs/--target-params search the ratio up to this
TARGET_SEARCH_STEPS = 12


@dataclass
class PruneResult:
    model: onnx.ModelProto
    analysis: Analysis
    removed: dict[int, list[int]]  # group id -> removed channel indices
    report: dict = field(default_factory=dict)
    written: Path | None = None  # where the model was written, if it was

    @property
    def channels_removed(self) -> int:
        return sum(len(channels) for channels in self.removed.values())


def prepared_model(source: ModelSource) -> onnx.ModelProto:
    """The model as the analysis sees it: local functions inlined, Constant nodes as
    initializers, constant aliases bypassed and deduplicated uniform constants unshared
    (spa.analyze.prepare). Same outputs as the input; its initializer names are the ones
    `inspect` reports."""
    loaded = load_model(source)
    graph = import_graph(loaded)
    prepare(graph)
    return export(graph, loaded.model)


def inspect(source: ModelSource, ignore: tuple[str, ...] | list[str] = ()) -> Analysis:
    """The coupled channel groups of a model, and why any are kept whole."""
    return _analyze(load_model(source), tuple(ignore))


@dataclass
class Plan:
    """What one prune call asks for, besides the model."""
    scoring: Scoring
    selection: Selection
    targets: tuple[str, ...] = DEFAULT_TARGETS
    include_inexact: bool = False
    ignore: tuple[str, ...] = ()
    target: tuple[str, float] | None = None  # ("macs" | "params", fraction of the original)
    correct_stats: bool = False


def prune(source: ModelSource, ratio: float = 0.0, criterion: str = "l2", round_to: int = DEFAULT_ROUND_TO,
          min_keep: int = 1, ignore: tuple[str, ...] | list[str] = (), seed: int = 0,
          include_inexact: bool = False, verify: bool = True,
          targets: tuple[str, ...] | list[str] = DEFAULT_TARGETS, output: str | Path | None = None,
          write_unchanged: bool = True, *, scope: str = "local", max_ratio: float = 0.9,
          reduce: str = "sum", normalize: str = "mean", target_macs: float | None = None,
          target_params: float | None = None, steps: int = 1, calib: str | Path | Calibration | None = None,
          calib_samples: int | None = None, correct_stats: bool | None = None,
          damping: float = DEFAULT_DAMPING, report: str | Path | None = None) -> PruneResult:
    """Remove channels from every prunable group of the `targets` kinds: `ratio` of each
    group (scope "local"), or of all channels ranked together (scope "global"), or as
    many as it takes to bring MACs or parameters down to `target_macs`/`target_params`
    of the original; in `steps` prune-and-rescore rounds. Data criteria and statistics
    correction (on by default with `calib`) run calibration data, or synthetic inputs
    without it. The result is checked with onnx.checker and run in onnxruntime; with
    `output` it is written there (atomically, after the check; weights stay external if
    they were), unless nothing is prunable and not `write_unchanged`; with `report` the
    JSON report is written there too. No output may be a file the input reads."""
    target = _target(target_macs, target_params)
    plan = Plan(Scoring(criterion, reduce, normalize, seed, damping),
                Selection(ratio, scope, round_to, min_keep, max_ratio), tuple(targets), include_inexact,
                tuple(ignore), target, correct_stats if correct_stats is not None else calib is not None)
    _check_arguments(plan, steps)
    loaded = load_model(source)
    protected = input_files(loaded)
    outputs = {"output": _path(output), "report": _path(report)}
    check_outputs(protected, outputs)
    if loaded.external and verify and output is None:
        raise SpaError("a model with external data is checked as it is written: pass output=PATH")
    calibration = _calibration(loaded.model, plan, calib, calib_samples, seed)
    reference = reference_run(loaded, calibration, seed) if verify else None
    feeds = reference.feeds if reference is not None else None  # MACs are counted at these input shapes
    current, history, done = loaded, [], None
    for step in range(1, steps + 1):
        step_plan = _step_plan(plan, step, steps, loaded.model, current.model, feeds)
        pruned, analysis, removed, scores, masked = _prune_once(current, step_plan, calibration, verify, feeds)
        if verify and masked is not None:  # every step: a wrong cut in step 1 must not pass
            verify_equivalent(masked, pruned, reference.feeds)
        history.append({"step": step, "ratio": step_plan.selection.ratio, "target": step_plan.target,
                        "channels_removed": sum(map(len, removed.values()))})
        done = done or _StepsDone(analysis)
        done.add(analysis, removed, scores)
        current = Loaded(pruned, loaded.base_dir, None)
    analysis, removed, scores = done.first, done.removed, done.scores
    summary = _report(analysis, removed, scores, loaded.model, pruned, plan, calibration, history, feeds)
    result = PruneResult(pruned, analysis, removed, summary)
    prunable = analysis.prunable_groups(include_inexact, tuple(targets))
    if output is not None and (write_unchanged or prunable):
        check = (lambda path: verify_pruned(reference, path)) if verify else None
        summary["max_output_difference"] = save_model(pruned, outputs["output"], loaded.external, loaded.base_dir,
                                                      check, protected)
        result.written = outputs["output"]
    elif output is None and verify:
        summary["max_output_difference"] = verify_pruned(reference, pruned)
    if outputs["report"] is not None:
        write_json(outputs["report"], summary)
    return result


def _path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)


class _StepsDone:
    """What all steps removed, in the input model's channel indices: each step's analysis
    sees the groups of the model the previous step left, with the same ids."""

    def __init__(self, first: Analysis) -> None:
        self.first = first
        self.positions = {g.id: list(range(g.size)) for g in first.groups}  # step channel -> input channel
        self.removed: dict[int, list[int]] = {}
        self.scores = Scores({}, {})

    def add(self, analysis: Analysis, removed: dict[int, list[int]], scores: Scores) -> None:
        for group in analysis.groups:
            if len(self.positions.get(group.id, ())) != group.size:
                raise SpaError(f"internal error: group {group.id} changed between steps; use --steps 1")
        for gid, values in scores.values.items():
            mapped = np.full(len(self.positions[gid]) + len(self.removed.get(gid, [])), np.nan)
            mapped[self.positions[gid]] = values
            self.scores.values[gid] = mapped
        self.scores.unscored.update(scores.unscored)
        for gid, channels in removed.items():
            positions = self.positions[gid]
            self.removed[gid] = sorted(self.removed.get(gid, []) + [positions[c] for c in channels])
            gone = set(channels)
            self.positions[gid] = [p for c, p in enumerate(positions) if c not in gone]


def _target(target_macs: float | None, target_params: float | None) -> tuple[str, float] | None:
    if target_macs is not None and target_params is not None:
        raise SpaError("give --target-macs or --target-params, not both")
    for name, value in (("macs", target_macs), ("params", target_params)):
        if value is not None:
            if not 0 < value <= 1:
                raise SpaError(f"--target-{name} must be a fraction in (0, 1], got {value}")
            return name, value
    return None


def _check_arguments(plan: Plan, steps: int) -> None:
    plan.scoring.check()
    plan.selection.check()
    if steps < 1:
        raise SpaError(f"--steps must be at least 1, got {steps}")
    unknown_targets = set(plan.targets) - set(KINDS)
    if unknown_targets:
        raise SpaError(f"unknown target {sorted(unknown_targets)[0]!r} (choose from {', '.join(KINDS)})")


def _calibration(model: onnx.ModelProto, plan: Plan, calib, samples: int | None, seed: int) -> Calibration | None:
    if isinstance(calib, Calibration):
        return calib
    if calib is not None:
        return load_calibration(calib, model, samples)
    if plan.scoring.needs_data or plan.correct_stats:
        return synthetic_calibration(model, samples or SYNTHETIC_SAMPLES, seed)
    return None


def _step_plan(plan: Plan, step: int, steps: int, original: onnx.ModelProto, current: onnx.ModelProto,
               feeds: dict | None) -> Plan:
    """Step k of n reaches k/n of the way: the ratio of what is left now, or the target
    relative to the current model."""
    if plan.target is None:
        done, goal = plan.selection.ratio * (step - 1) / steps, plan.selection.ratio * step / steps
        return replace(plan, selection=replace(plan.selection, ratio=1 - (1 - goal) / (1 - done)))
    metric, fraction = plan.target
    goal = 1 - (1 - fraction) * step / steps
    now = summarize(current, feeds=feeds)[metric] / max(summarize(original, feeds=feeds)[metric], 1)
    return replace(plan, target=(metric, min(1.0, goal / now)))


def _prune_once(loaded: Loaded, plan: Plan, calibration: Calibration | None, verify: bool, feeds: dict | None):
    """One round: analyze, score, count, pick (compensating), correct, rewrite."""
    graph, analysis, added = _prepared_analysis(loaded, plan)
    ir_version = loaded.model.ir_version
    groups = analysis.prunable_groups(plan.include_inexact, plan.targets)
    ranked = plan.selection.scope == "global" or plan.target is not None  # counts depend on scores
    scores = score_groups(graph, groups, plan.scoring, calibration if ranked else None, ir_version)
    scored = [g for g in groups if g.id not in scores.unscored]
    if groups and not scored:
        raise SpaError(f"criterion '{plan.scoring.criterion}' can score none of the {len(groups)} prunable groups "
                       f"({next(iter(scores.unscored.values()))})")
    counts = _counts(loaded, plan, scored, scores, feeds)
    corrected = _corrected_layers(graph, scored, counts) if plan.correct_stats else []
    reference = output_moments(graph, corrected, calibration, ir_version) if corrected else {}
    removed = prune_in_order(graph, scored, counts, scores, plan.scoring, calibration, ir_version)
    if corrected:
        correct_statistics(graph, corrected, reference, _removed_outputs(analysis, removed, corrected),
                           calibration, ir_version)
    exact = all(g.exact for g in scored if removed.get(g.id))
    masked = export(graph, loaded.model) if verify and exact and not loaded.external and removed else None
    rewrite(analysis, removed)
    drop_zero_biases(graph, added)
    reshare(graph)
    return export(graph, loaded.model), analysis, removed, scores, masked


def _prepared_analysis(loaded: Loaded, plan: Plan) -> tuple[gs.Graph, Analysis, list[str]]:
    """The graph (with zero biases where compensation or correction may need them) and its analysis."""
    graph = import_graph(loaded)
    prepare(graph)
    _check_ignored(graph, plan.ignore)
    repairs = plan.scoring.method.compensates or plan.correct_stats
    added = add_zero_biases(graph) if repairs else []
    return graph, analyze(graph, _default_opset(loaded.model), plan.ignore), added


def _counts(loaded: Loaded, plan: Plan, groups: list[Group], scores: Scores, feeds: dict | None) -> dict[int, int]:
    if plan.target is None:
        return removal_counts(groups, scores.values, plan.selection)
    return _counts_for_target(loaded, plan, groups, scores, feeds)


def _counts_for_target(loaded: Loaded, plan: Plan, groups: list[Group], scores: Scores,
                       feeds: dict | None) -> dict[int, int]:
    """Bisect the ratio until the pruned model's MACs or params reach the target fraction.
    Only how many channels each group loses changes the cost, not which: each trial
    prunes a fresh copy of the graph by position."""
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
    graph, analysis, added = _prepared_analysis(loaded, plan)
    groups = {g.id: g for g in analysis.groups}
    removed = {gid: choose(groups[gid], np.zeros(groups[gid].size), count) for gid, count in counts.items()}
    rewrite(analysis, removed)
    drop_zero_biases(graph, added)
    reshare(graph)
    return summarize(export(graph, loaded.model), feeds=feeds)[metric]


def _corrected_layers(graph: gs.Graph, groups: list[Group], counts: dict[int, int]) -> list[LinearLayer]:
    """The linear layers reading channels that will be removed (one entry per node)."""
    layers: dict[str, LinearLayer] = {}
    for group in groups:
        if counts.get(group.id, 0) > 0:
            for layer, _ in measurable_layers(graph, group)[0]:
                layers.setdefault(layer.node.name, layer)
    return list(layers.values())


def _removed_outputs(analysis: Analysis, removed: dict[int, list[int]],
                     layers: list[LinearLayer]) -> dict[str, set[int]]:
    """Per layer: output positions removed by the groups its weight makes."""
    positions: dict[tuple[str, int], set[int]] = {}
    groups = {g.id: g for g in analysis.groups}
    for gid, channels in removed.items():
        mark_removed(positions, groups[gid], channels)
    return {layer.node.name: positions.get((layer.weight.name, layer.weight_output_axis), set())
            for layer in layers}


def _analyze(loaded: Loaded, ignore: tuple[str, ...]) -> Analysis:
    graph = import_graph(loaded)
    prepare(graph)
    _check_ignored(graph, ignore)
    return analyze(graph, _default_opset(loaded.model), ignore)


def _check_ignored(graph: gs.Graph, names: tuple[str, ...]) -> None:
    known = set(graph.tensors()) | {node.name for node in graph.nodes}
    for name in names:
        if name not in known:
            raise SpaError(f"--ignore {name}: no node or initializer of that name")


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _report(analysis: Analysis, removed: dict[int, list[int]], scores: Scores, original: onnx.ModelProto,
            pruned: onnx.ModelProto, plan: Plan, calibration: Calibration | None, history: list[dict],
            feeds: dict | None) -> dict:
    groups = []
    targeted = {g.id for g in analysis.prunable_groups(plan.include_inexact, plan.targets)}
    for group in analysis.groups:
        unscored = scores.unscored.get(group.id)
        reasons = group.reasons + ([f"{plan.scoring.criterion}: {unscored}"] if unscored else [])
        entry = {"id": group.id, "name": group.name, "kind": group.kind, "size": group.size,
                 "removed": removed.get(group.id, []),
                 "kept": group.size - len(removed.get(group.id, [])),
                 "prunable": group.prunable and group.id not in scores.unscored, "exact": group.exact,
                 "targeted": group.id in targeted,
                 "reason": "; ".join(reasons) or None}
        if group.id in scores.values:  # None: removed by an earlier step
            entry["scores"] = [None if np.isnan(s) else round(float(s), 6) for s in scores.values[group.id]]
        groups.append(entry)
    return {"criterion": plan.scoring.criterion, "ratio": plan.selection.ratio, "scope": plan.selection.scope,
            "target": plan.target, "steps": history, "correct_stats": plan.correct_stats,
            "calibration": None if calibration is None else {"source": calibration.source,
                                                             "samples": calibration.samples},
            "groups": groups, "before": summarize(original, feeds=feeds), "after": summarize(pruned, feeds=feeds),
            "max_output_difference": None}
