"""The Python API: `prune` and `inspect`, a thin facade over the pipeline (spa.pipeline)
that turns keywords into option groups (spa.plan)."""
from __future__ import annotations

from pathlib import Path

import onnx

from spa.analyze import DEFAULT_TARGETS, Analysis
from spa.analyze.prepare import prepare
from spa.calibrate.frontier import DEFAULT_BUDGET
from spa.calibrate.batchnorm import has_batchnorm
from spa.calibrate.sources import Calibration, load_calibration, synthetic_calibration
from spa.io.inputs import input_specs
from spa.criteria.base import DEFAULT_CRITERION
from spa.criteria.obs import DEFAULT_DAMPING
from spa.criteria.score import Scoring
from spa.io.export import export
from spa.io.load import ModelSource, import_graph, load_model
from spa.pipeline import Outputs, PruneResult, run
from spa.plan import Plan, memory_size, target_goal
from spa.select import Selection, round_to_value
from spa.step import analyze_loaded

__all__ = ["PruneResult", "inspect", "prepared_model", "prune"]
SYNTHETIC_SAMPLES = 64  # data-free: synthetic inputs built from the input specs, for data criteria
CORRECTION_SAMPLES = 16  # ... for statistics correction alone (per-channel moments: one batch is enough)


def prune(source: ModelSource, ratio: float = 0.0, *, criterion: str = DEFAULT_CRITERION, round_to: int | str = "auto",
          min_keep: int = 1, scope: str = "local", max_ratio: float = 0.9, target_macs: float | None = None,
          target_params: float | None = None, target_latency: float | None = None, threads: int = 1, steps: int = 1, targets: tuple[str, ...] | list[str] = DEFAULT_TARGETS,
          include_inexact: bool = False, ignore: tuple[str, ...] | list[str] = (), reduce: str = "sum",
          normalize: str = "mean", damping: float = DEFAULT_DAMPING, seed: int = 0,
          calib: str | Path | Calibration | None = None, calib_samples: int | None = None,
          batchnorm_stats: bool = True, folded_estimates: bool = False, correct_stats: bool | None = None, memory_budget: int | str = DEFAULT_BUDGET, verify: bool = True,
          output: str | Path | None = None, report: str | Path | None = None,
          write_unchanged: bool = True) -> PruneResult:
    """Remove channels from every prunable group of the `targets` kinds: `ratio` of each
    group (scope "local"), or of all channels ranked together (scope "global"), or as
    many as it takes to bring MACs, parameters or onnxruntime latency (at `threads` threads,
    predicted from a profile, then measured) down to `target_macs`/`target_params`/
    `target_latency` of the original; in `steps` prune-and-rescore rounds. Data criteria and statistics
    correction run calibration data, or without it synthetic inputs with every BatchNorm
    giving its output the moments training gave it (`batchnorm_stats`, spa.calibrate.batchnorm;
    `folded_estimates` also renormalizes Convs a BatchNorm may have been folded into).
    Correction is on by default with `calib`, and without it where the model has BatchNorm
    and inputs of fixed size past the batch axis. The result is checked with onnx.checker and run in onnxruntime; with
    `output` it is written there (atomically, after the check; weights stay external if
    they were), unless nothing is prunable and not `write_unchanged`; with `report` the
    JSON report is written there too. No output may be a file the input reads.
    `memory_budget` (bytes, or "512M", "2G") bounds the calibration activations kept in
    memory between groups; past it they go to a temporary file."""
    plan = Plan(Scoring(criterion, reduce, normalize, seed, damping),
                Selection(ratio, scope, round_to_value(round_to), min_keep, max_ratio), tuple(targets), include_inexact,
                tuple(ignore), target_goal(target_macs, target_params, target_latency),
                bool(correct_stats), steps, memory_size(memory_budget), threads)
    plan.check()
    loaded = load_model(source)
    if correct_stats is None:
        plan.correct_stats = calib is not None or (batchnorm_stats and _corrects_without_data(loaded.model))
    calibration = _calibration(loaded.model, plan, calib, calib_samples, seed, batchnorm_stats, folded_estimates)
    outputs = Outputs(_path(output), _path(report), write_unchanged)
    return run(loaded, plan, calibration, outputs, verify, seed)


def inspect(source: ModelSource, ignore: tuple[str, ...] | list[str] = ()) -> Analysis:
    """The coupled channel groups of a model, and why any are kept whole."""
    return analyze_loaded(load_model(source), tuple(ignore))


def prepared_model(source: ModelSource) -> onnx.ModelProto:
    """The model as the analysis sees it: local functions inlined, Constant nodes as
    initializers, constant aliases bypassed and deduplicated uniform constants unshared
    (spa.analyze.prepare). Same outputs as the input; its initializer names are the ones
    `inspect` reports."""
    loaded = load_model(source)
    graph = import_graph(loaded)
    prepare(graph)
    return export(graph, loaded.model)


def _corrects_without_data(model: onnx.ModelProto) -> bool:
    """Statistics correction is on by default without data where BatchNorm statistics drive it
    and synthetic inputs need no guessed sizes (an open H or W may be one the model rejects)."""
    static = all(isinstance(dim, int) for spec in input_specs(model) for dim in spec.shape[1:])
    return static and has_batchnorm(model)


def _calibration(model: onnx.ModelProto, plan: Plan, calib, samples: int | None, seed: int,
                 batchnorm_stats: bool, folded_estimates: bool) -> Calibration | None:
    if isinstance(calib, Calibration):
        return calib
    if calib is not None:
        return load_calibration(calib, model, samples)
    if plan.scoring.needs_data or plan.correct_stats:
        default = SYNTHETIC_SAMPLES if plan.scoring.needs_data else CORRECTION_SAMPLES
        return synthetic_calibration(model, samples or default, seed, batchnorm=batchnorm_stats,
                                     estimate_folded=folded_estimates)
    return None


def _path(value: str | Path | None) -> Path | None:
    return None if value is None else Path(value)
