"""What spa tells: the JSON report of a prune, and the text a person reads (the prune
summary and the inspect table)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from collections import Counter

import numpy as np
import onnx

from spa.analyze import Analysis, Group
from spa.calibrate.sources import Calibration
from spa.criteria.score import Scores
from spa.metrics import summarize
from spa.tables import Column, Heading, Row, render, right

if TYPE_CHECKING:
    from spa.plan import Plan


def prune_summary(report: dict) -> str:
    """The before/after table, then a line each: latency's note, the groups, the fidelity."""
    before, after = report["before"], report["after"]
    rows = [("params", "params", 1), ("MACs", "macs", 1), ("size (KiB)", "size_bytes", 1024), ("nodes", "nodes", 1)]
    cells = []
    for label, key, unit in rows:
        old, new = before[key] / unit, after[key] / unit
        cells.append((label, _number(old), _number(new), f"{new / old:.3f}" if old else "-"))
    latency = report.get("latency")
    if latency:
        cells.append(("latency (ms)", f"{latency['original_ms']:.3f}", "-", f"{latency['realized_ratio']:.3f}"))
    columns = [Column(""), right("before"), right("after"), right("after/before")]
    lines = [render(columns, cells, title="before and after")]
    if latency:
        lines.append(f"latency: measured, {latency['threads']} thread(s); predicted after/before "
                     f"{latency['predicted_ratio']:.3f}")
    lines.append(groups_line(report["groups"]))
    if report.get("fidelity"):
        lines.append(fidelity_line(report["fidelity"], report.get("calibration")))
    steps = report.get("steps") or []
    if len(steps) > 1:
        lines[-1] += f", in {len(steps)} steps"
    return "\n".join(lines)


def fidelity_line(fidelity: dict, calibration: dict | None) -> str:
    """One line: how close each float output stays to the original's, on what inputs."""
    real = calibration is not None and calibration["source"] != "synthetic"
    parts = []
    for output in fidelity["outputs"][:3]:
        cosine = "-" if output["cosine"] is None else f"{output['cosine']:.4f}"
        top1 = "" if output["top1"] is None else f", top-1 agreement {100 * output['top1']:.1f}%"
        parts.append(f"{output['name']}: cosine {cosine}{top1}")
    more = f" (+{len(fidelity['outputs']) - 3} outputs)" if len(fidelity["outputs"]) > 3 else ""
    inputs = "calibration" if real else "synthetic"
    return f"fidelity on {fidelity['samples']} {inputs} sample(s): " + "; ".join(parts) + more + \
        ("" if real else " (synthetic inputs say little of real accuracy: spa compare --calib DATA)")


def groups_line(groups: list[dict]) -> str:
    pruned = [g for g in groups if g["removed"]]
    kept = [g for g in groups if not g["removed"] and (not g["prunable"] or not g["exact"])]
    removed = sum(len(g["removed"]) for g in groups)
    line = f"groups: {len(pruned)} pruned ({removed} channels removed), {len(kept)} kept whole"
    reasons = Counter(_short_reason(g) for g in kept)
    if reasons:
        line += ": " + ", ".join(f"{reason} ({count})" for reason, count in reasons.most_common(3))
    return line


def _short_reason(group: dict) -> str:
    if group["prunable"] and group["kind"] == "hidden":
        return "hidden size (--target hidden prunes it)"
    if group["prunable"]:
        return "not exact (--include-inexact prunes it)"
    return (group["reason"] or "").split(";")[0]


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 or float(value).is_integer() else f"{value:,.1f}"


INSPECT_COLUMNS = [right("group"), Column("kind"), right("size"), Column("prunable"), Column("exact"),
                   Column("layer: what / why kept whole")]


def inspect_table(analysis: Analysis, title: str | None = None) -> str:
    """One row per group, under a heading per block (`layer2`, `model.encoder.layer.0`) where
    the model has several: rows in graph order, each block's rows together where it starts."""
    rows = _by_block(analysis.groups)
    runs = sum(1 for before, group in zip([None] + rows, rows) if before is None or before.block != group.block)
    headed = len({group.block for group in rows} - {""}) > 1 and 4 * runs <= 3 * len(rows)  # not a heading a row
    cells: list[Row] = []
    block = None
    for group in rows if headed else analysis.groups:
        if headed and group.block != block:
            block = group.block
            cells.append(Heading(block or "(top level)"))
        cells.append((str(group.id), group.kind, str(group.size), _yes(group.prunable), _yes(group.exact),
                      f"{group.name}: {_detail(group)}"))
    prunable = len(analysis.prunable_groups())
    return render(INSPECT_COLUMNS, cells, title=title) + \
        f"\n{len(analysis.groups)} groups, {prunable} prunable and exact"


def _by_block(groups: list[Group]) -> list[Group]:
    """Graph order, each block's groups moved up to its first (a transformer's hidden group,
    made in layer 0, does not split layer 0's rows); layers outside any block stay where they are."""
    first: dict[str, int] = {}
    for position, group in enumerate(groups):
        first.setdefault(group.block, position)
    return [group for _, group in sorted(enumerate(groups), key=lambda item: (
        first[item[1].block] if item[1].block else item[0], item[0]))]


LISTED = 4  # layers named in a row of the inspect table before "and N more"


def _detail(group: Group) -> str:
    if not group.prunable:
        return "; ".join(group.reasons)
    note = "" if group.exact else f"  (not exact: {'; '.join(group.inexact_reasons)})"
    return group.describe(LISTED, named=True) + note


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


ESTIMATED = ("BatchNorm statistics", "folded BatchNorm estimates")  # data-free, from the model's own parameters


def statistics_source(calibration: Calibration | None, per_group: dict[int, str]) -> str:
    """What the scores and repairs were computed from."""
    if calibration is None:
        return "weights only"
    if calibration.source != "synthetic":
        return "calibration data"
    counts = {label: sum(found == label for found in per_group.values()) for label in (*ESTIMATED, "synthetic inputs")}
    inputs = f"; inputs: {calibration.inputs}" if calibration.inputs else ""
    if not any(counts[label] for label in ESTIMATED):
        return "synthetic inputs" + inputs
    parts = [f"{label} for {count}" for label, count in counts.items() if count]
    return f"{parts[0]} of {len(per_group)} groups" + "".join(f", {part}" for part in parts[1:]) + inputs


def data_caution(calibration: Calibration | None, per_group: dict[int, str]) -> str | None:
    """What pruning without real data usually costs, in a sentence (None with real data)."""
    if calibration is None:
        return ("no calibration data: channels were ranked by their weights alone and nothing was repaired; "
                "a trained model often loses most of its accuracy this way (README, Quality: l2 at ratio 0.3 "
                "leaves the digits CNNs near chance). With data: --calib DATA --criterion obs")
    if calibration.source != "synthetic":
        return None
    if any(label in ESTIMATED for label in per_group.values()):
        return ("no calibration data: statistics came from synthetic inputs renormalized to the moments the "
                "model's BatchNorm parameters give (" + statistics_source(calibration, per_group) + "); "
                "--criterion obs keeps the most this way (a trained BatchNorm ResNet at ratio 0.3: 100% with "
                "obs, 77% with l2; README, Data-free pruning). With data: --calib DATA")
    return ("no calibration data: statistics came from synthetic inputs (N(0,1) floats, random token ids), "
            "which rarely look like real inputs; on trained models without BatchNorm this costs most of the "
            "accuracy (README, Quality). With data: --calib DATA")


def build_report(analysis: Analysis, removed: dict[int, list[int]], scores: Scores, original: onnx.ModelProto,
            pruned: onnx.ModelProto, plan: "Plan", calibration: Calibration | None, history: list[dict],
            feeds: dict | None) -> dict:
    """The JSON report: per group what was removed and why anything was kept, the plan, and
    parameters/MACs before and after (MACs at the input shapes of `feeds`)."""
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
        if group.id in scores.statistics:
            entry["statistics"] = scores.statistics[group.id]
        if group.id in scores.values:  # None: removed by an earlier step
            entry["scores"] = [None if np.isnan(s) else round(float(s), 6) for s in scores.values[group.id]]
        groups.append(entry)
    return {"criterion": plan.scoring.criterion, "ratio": plan.selection.ratio, "scope": plan.selection.scope,
            "target": plan.target, "steps": history, "correct_stats": plan.correct_stats,
            "calibration": None if calibration is None else {"source": calibration.source,
                                                             "samples": calibration.samples,
                                                             "batchnorm": calibration.batchnorm,
                                                             "inputs": calibration.inputs,
                                                             "open_size": calibration.open_size},
            "statistics": statistics_source(calibration, scores.statistics),
            "caution": data_caution(calibration, scores.statistics),
            "groups": groups, "before": summarize(original, feeds=feeds), "after": summarize(pruned, feeds=feeds),
            "max_output_difference": None, "fidelity": None}
