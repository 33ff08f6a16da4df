"""The pipeline: load -> analyze -> score -> select -> rewrite -> verify."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from spa.analyze import DEFAULT_TARGETS, KINDS, Analysis, analyze
from spa.errors import SpaError
from spa.load import Loaded, ModelSource, import_graph, load_model
from spa.save import save_model
from spa.metrics import summarize
from spa.rewrite import rewrite
from spa.score import score_groups
from spa.select import DEFAULT_ROUND_TO, check_ratio, select_channels
from spa.verify import verify_pruned


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


def inspect(source: ModelSource, ignore: tuple[str, ...] | list[str] = ()) -> Analysis:
    """The coupled channel groups of a model, and why any are kept whole."""
    return _analyze(load_model(source), tuple(ignore))


def prune(source: ModelSource, ratio: float, criterion: str = "l2", round_to: int = DEFAULT_ROUND_TO,
          min_keep: int = 1, ignore: tuple[str, ...] | list[str] = (), seed: int = 0,
          include_inexact: bool = False, verify: bool = True,
          targets: tuple[str, ...] | list[str] = DEFAULT_TARGETS, output: str | Path | None = None,
          write_unchanged: bool = True) -> PruneResult:
    """Remove floor(ratio*C) channels (rounded, see `select.kept_count`) from every
    prunable group of the `targets` kinds. The result is checked with onnx.checker and run
    in onnxruntime; with `output` it is written there (atomically, after the check; weights
    stay external if they were), unless nothing is prunable and not `write_unchanged`."""
    _check_arguments(ratio, round_to, min_keep, targets)
    loaded = load_model(source)
    if loaded.external and verify and output is None:
        raise SpaError("a model with external data is checked as it is written: pass output=PATH")
    analysis = _analyze(loaded, tuple(ignore))
    scores = score_groups(analysis, criterion, seed)
    removed = select_channels(analysis, scores, ratio, round_to, min_keep, include_inexact, tuple(targets))
    rewrite(analysis, removed)
    pruned = export(analysis.graph, loaded.model)
    report = _report(analysis, removed, scores, loaded.model, pruned, criterion, ratio)
    result = PruneResult(pruned, analysis, removed, report)
    if output is not None and (write_unchanged or analysis.prunable_groups(include_inexact, tuple(targets))):
        check = (lambda path: verify_pruned(loaded, path, seed)) if verify else None
        report["max_output_difference"] = save_model(pruned, Path(output), loaded.external, loaded.base_dir, check)
        result.written = Path(output)
    elif output is None and verify:
        report["max_output_difference"] = verify_pruned(loaded, pruned, seed)
    return result


def _check_arguments(ratio: float, round_to: int, min_keep: int, targets) -> None:
    check_ratio(ratio)
    if round_to < 1 or min_keep < 1:
        raise SpaError("--round-to and --min-keep must be at least 1")
    unknown_targets = set(targets) - set(KINDS)
    if unknown_targets:
        raise SpaError(f"unknown target {sorted(unknown_targets)[0]!r} (choose from {', '.join(KINDS)})")


def _analyze(loaded: Loaded, ignore: tuple[str, ...]) -> Analysis:
    graph = import_graph(loaded)
    _check_ignored(graph, ignore)
    return analyze(graph, _default_opset(loaded.model), ignore)


def _check_ignored(graph: gs.Graph, names: tuple[str, ...]) -> None:
    known = set(graph.tensors()) | {node.name for node in graph.nodes}
    for name in names:
        if name not in known:
            raise SpaError(f"--ignore {name}: no node or initializer of that name")


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def export(graph: gs.Graph, original: onnx.ModelProto) -> onnx.ModelProto:
    """The rewritten graph as a model with the original's IR version, opsets and metadata."""
    model = gs.export_onnx(graph, do_type_check=False)
    _keep_original_value_info(model, original)
    model.ir_version = original.ir_version
    del model.opset_import[:]
    model.opset_import.extend(original.opset_import)
    for name in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(model, name, getattr(original, name))
    del model.metadata_props[:]
    model.metadata_props.extend(original.metadata_props)
    del model.functions[:]
    model.functions.extend(original.functions)
    return model


def _keep_original_value_info(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Graph inputs and outputs exactly as the input declared them; value_info only for the
    tensors the input described (with updated shapes): inferred shapes are ours, not the
    user's, and may disagree with onnx's checker."""
    for ours, theirs in ((model.graph.input, original.graph.input), (model.graph.output, original.graph.output)):
        declared = {value.name: value for value in theirs}
        for value in ours:
            if value.name in declared:
                value.CopyFrom(declared[value.name])
    described = {value.name for value in original.graph.value_info}
    kept = [value for value in model.graph.value_info if value.name in described]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)


def _report(analysis: Analysis, removed: dict[int, list[int]], scores: dict[int, np.ndarray],
            original: onnx.ModelProto, pruned: onnx.ModelProto, criterion: str, ratio: float) -> dict:
    groups = []
    for group in analysis.groups:
        entry = {"id": group.id, "name": group.name, "kind": group.kind, "size": group.size,
                 "removed": removed.get(group.id, []),
                 "kept": group.size - len(removed.get(group.id, [])),
                 "prunable": group.prunable, "exact": group.exact,
                 "reason": "; ".join(group.reasons) or None}
        if group.id in scores:
            entry["scores"] = [round(float(s), 6) for s in scores[group.id]]
        groups.append(entry)
    return {"criterion": criterion, "ratio": ratio, "groups": groups,
            "before": summarize(original), "after": summarize(pruned),
            "max_output_difference": None}
