"""The pipeline: load -> analyze -> score -> select -> rewrite -> verify, in `steps`
rounds (spa.step), each checked, then written and reported."""
from __future__ import annotations

import gc
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

from spa.analyze import Analysis
from spa.calibrate.sources import Calibration
from spa.criteria.score import Scores
from spa.errors import SpaError
from spa.io.inputs import input_specs, make_inputs
from spa.io.load import Loaded, input_files
from spa.latency import LatencyModel, measured_ratio
from spa.io.save import check_outputs, save_model, write_json
from spa.metrics import summarize
from spa.plan import Plan
from spa.targets import LATENCY_TOLERANCE
from spa.report import build_report
from spa.step import prune_once
from spa.verify import (
    Reference,
    Zeroed,
    reference_run,
    verify_equivalent,
    verify_pruned,
)


# Models up to this size keep the input's session through calibration passes: the final check
# then runs the zeroed model on it instead of a session of its own, which costs more time and
# more peak memory than keeping it (ResNet-50, 98 MiB: 0.7 s and 0.13 GiB less).
KEPT_SESSION_BYTES = 256 << 20
FINAL_TIMED_RUNS = 30  # interleaved runs of input and result behind the reported latency ratio


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


@dataclass
class Outputs:
    model: Path | None = None  # where the pruned model goes (None: returned only)
    report: Path | None = None  # where the JSON report goes
    write_unchanged: bool = True  # write even when nothing is prunable


def run(loaded: Loaded, plan: Plan, calibration: Calibration | None, outputs: Outputs, verify: bool = True,
        seed: int = 0) -> PruneResult:
    """Prune `loaded` as `plan` says, check the result, write it where `outputs` says."""
    protected = input_files(loaded)
    check_outputs(protected, {"output": outputs.model, "report": outputs.report})
    if loaded.external and verify and outputs.model is None:
        raise SpaError("a model with external data is checked as it is written: pass output=PATH")
    drop_session = verify and calibration is not None and _model_bytes(loaded) > KEPT_SESSION_BYTES
    reference = reference_run(loaded, calibration, seed) if verify else None
    if reference is not None and reference.calibration is not None:
        calibration = reference.calibration  # synthetic data at an image size the model takes
    if reference is not None and drop_session:
        # calibration passes hold one layer's statistics at a time: a big input's session would
        # stay alive through them, so the zeroed model gets a session of its own instead
        reference = replace(reference, dense=None)
    loaded.serialized = None  # the input file's bytes: taken by its session above, unused without verification
    feeds = one_sample(reference.feeds, loaded.model) if reference is not None else None  # MACs are counted at these shapes
    latency = _latency_model(loaded, plan, feeds, seed)
    pruned, done, history, masked = _steps(loaded, plan, calibration, reference, feeds, latency)
    done.first.state.graph = None  # the rewritten working graph: its weights are copied into `pruned`
    gc.collect()  # its nodes and tensors refer to each other: only the cycle collector frees them
    zeroed = (masked, pruned) if masked is not None else None  # checked on the run of the result below
    summary = build_report(done.first, done.removed, done.scores, loaded.model, pruned, plan, calibration,
                           history, feeds)
    if latency is not None:
        summary["latency"] = latency_outcome(latency, pruned)
        caution = latency_caution(plan.target[1], summary["latency"])
        summary["caution"] = "; ".join(c for c in (caution, summary["caution"]) if c) or None
    result = PruneResult(pruned, done.first, done.removed, summary)
    prunable = done.first.prunable_groups(plan.include_inexact, plan.targets)
    if outputs.model is not None and (outputs.write_unchanged or prunable):
        check = (lambda path: verify_pruned(reference, path, zeroed)) if verify else None
        summary.update(save_model(pruned, outputs.model, loaded.external, loaded.base_dir, check, protected) or {})
        result.written = outputs.model
    elif verify:
        summary.update(verify_pruned(reference, pruned, zeroed))
    if outputs.report is not None:
        write_json(outputs.report, summary)
    return result


def _model_bytes(loaded: Loaded) -> int:
    """The input's size: its file's bytes where they are at hand (before reference_run takes them)."""
    return len(loaded.serialized) if loaded.serialized is not None else loaded.model.ByteSize()


def one_sample(feeds: dict[str, np.ndarray], model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """`feeds` cut to one sample on every input whose batch axis is open (a calibration batch
    holds many): MACs and latency are per sample, whatever the data; a static batch stays."""
    open_batch = {spec.name for spec in input_specs(model) if spec.shape and not isinstance(spec.shape[0], int)}
    return {name: value[:1] if name in open_batch and value.ndim else value for name, value in feeds.items()}


def _latency_model(loaded: Loaded, plan: Plan, feeds: dict | None, seed: int) -> LatencyModel | None:
    """For --target-latency: the input model's onnxruntime profile, at the plan's threads."""
    if plan.target is None or plan.target[0] != "latency":
        return None
    if loaded.external:
        raise SpaError("--target-latency times pruned candidates in memory: models with external data "
                       "are not supported (use --target-macs)")
    if plan.steps > 1:
        raise SpaError("--target-latency takes one step (--steps 1)")
    feeds = feeds if feeds is not None else make_inputs(loaded.model, seed=seed)
    return LatencyModel.of(loaded.model, loaded.path or loaded.model, feeds, plan.threads)


def latency_outcome(latency: LatencyModel, pruned: onnx.ModelProto) -> dict:
    """Predicted and measured latency of the result against the input, for the report."""
    predicted = latency.ratio(pruned)
    realized = measured_ratio(latency.source, pruned.SerializeToString(), latency.feeds, latency.profile.threads,
                              runs=FINAL_TIMED_RUNS)
    return {"threads": latency.profile.threads, "original_ms": latency.profile.wall_ms,
            "predicted_ratio": predicted, "realized_ratio": realized}


def latency_caution(target: float, outcome: dict) -> str | None:
    """A sentence when the measured latency stays clearly above the target."""
    if outcome["realized_ratio"] <= target * (1 + 2 * LATENCY_TOLERANCE):
        return None
    return (f"latency target {target} not reached (measured {outcome['realized_ratio']:.3f}): the groups are at "
            "their narrowest allowed widths (--max-ratio, --round-to, kept groups) or the rest of the time "
            "does not shrink with width (see spa bench --per-node)")


def _steps(loaded: Loaded, plan: Plan, calibration: Calibration | None, reference: Reference | None,
           feeds: dict | None, latency: LatencyModel | None) -> tuple[onnx.ModelProto, _StepsDone, list[dict],
                                                                      Zeroed | None]:
    """Every step pruned and checked: a wrong cut in step 1 must not pass. The last step's
    zeroed model is returned, to check against the result's own run."""
    current, history, done, masked = loaded, [], None, None
    for step in range(1, plan.steps + 1):
        if masked is not None:  # the previous step's
            verify_equivalent(masked, current.model, reference.feeds, dense=reference.dense)
        step_plan = _step_plan(plan, step, plan.steps, loaded.model, current.model, feeds)
        pruned, analysis, removed, scores, masked = prune_once(current, step_plan, calibration,
                                                               reference is not None, feeds, latency)
        history.append({"step": step, "ratio": step_plan.selection.ratio, "target": step_plan.target,
                        "channels_removed": sum(map(len, removed.values()))})
        done = done or _StepsDone(analysis)
        done.add(analysis, removed, scores)
        current = Loaded(pruned, loaded.base_dir, None)
    return pruned, done, history, masked


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
        self.scores.statistics.update(scores.statistics)
        for gid, channels in removed.items():
            positions = self.positions[gid]
            self.removed[gid] = sorted(self.removed.get(gid, []) + [positions[c] for c in channels])
            gone = set(channels)
            self.positions[gid] = [p for c, p in enumerate(positions) if c not in gone]


def _step_plan(plan: Plan, step: int, steps: int, original: onnx.ModelProto, current: onnx.ModelProto,
               feeds: dict | None) -> Plan:
    """Step k of n reaches k/n of the way: the ratio of what is left now, or the target
    relative to the current model."""
    if steps == 1:
        return plan
    if plan.target is None:
        done, goal = plan.selection.ratio * (step - 1) / steps, plan.selection.ratio * step / steps
        return replace(plan, selection=replace(plan.selection, ratio=1 - (1 - goal) / (1 - done)))
    metric, fraction = plan.target
    goal = 1 - (1 - fraction) * step / steps
    now = summarize(current, feeds=feeds)[metric] / max(summarize(original, feeds=feeds)[metric], 1)
    return replace(plan, target=(metric, min(1.0, goal / now) if now > 0 else goal))  # 0: spa.targets says why
