"""How onnxruntime latency follows MACs after pruning, and how well spa's latency model predicts it.

    python tools/bench_latency.py [--models fixtures|wild|all] [--only NAME ...] [--family F ...]
                                  [--policies 16 auto] [--ratio 0.4] [--threads 1 2] [--runs 20]
                                  [--markdown OUT.md] [--json OUT.json] [--note TEXT]
    python tools/bench_latency.py --targets [--threads 1 2] [--markdown OUT.md] [--json OUT.json]

Models: the repo's fixtures (models/*.onnx, synthetic inputs from spa.io.inputs.make_inputs,
family "fixtures") and the wild corpus (tools/wild_corpus.py, its sample inputs). Each model
is pruned with `spa prune --ratio R --round-to P` for every width policy P (`--policies`), in
this process; a failed prune is a row that says why. Per policy and thread count (default 1
and the machine's cores) a row gives the MACs ratio (pruned / original, spa.metrics.summarize
at the sample inputs), the latency ratio spa.latency predicts (one LatencyModel per model and
thread count), the realized ratio (spa.latency.measured_ratio: interleaved runs in one
process, so a busy machine slows both models alike) and realized / MACs. A summary per policy
and thread count follows: median realized / MACs, how many are within 1.10, the worst, the
median |predicted - realized| and the models predicted more than 0.05 off.

--targets instead runs `spa prune --target-latency 0.5` on four wild models (ResNet-50,
MobileNetV2, a YOLOv8 detector, a DeiT with --scope global) at spa's default width, at 1
thread unless --threads says otherwise, and gives the report's predicted and realized
ratios beside a re-measurement (measured_ratio, 30 runs). Pruned files go to a temporary
folder, never beside the inputs.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus_check import Entry, corpus  # noqa: E402
from spa.cli import main as spa_main  # noqa: E402
from spa.io.inputs import make_inputs  # noqa: E402
from spa.latency import LatencyModel, block_size, measured_ratio  # noqa: E402
from spa.metrics import summarize  # noqa: E402

CLOSE = 1.10  # realized / MACs at most this counts as following MACs
OFF = 0.05  # |predicted - realized| above this is a miss of the latency model
LISTED = 12  # misses named per policy and thread count in the summary
TARGET = 0.5
TARGET_RUNS = 30
TARGET_MODELS = {"tv_resnet50": [], "tv_mobilenet_v2": [], "yolo_v8n_320": [], "timm_deit_tiny": ["--scope", "global"]}


@dataclass
class Row:
    """One model pruned under one width policy, timed at one thread count."""
    name: str
    family: str
    policy: str
    threads: int
    status: str = ""  # "pruned", "nothing to prune", or why the prune or a timing failed
    macs: float | None = None
    predicted: float | None = None
    realized: float | None = None

    @property
    def realized_per_macs(self) -> float | None:
        return self.realized / self.macs if self.realized and self.macs else None


@dataclass
class TargetRow:
    """One --target-latency prune at one thread count."""
    name: str
    threads: int
    status: str = ""
    options: str = ""
    macs: float | None = None
    original_ms: float | None = None
    predicted: float | None = None  # the report's
    realized: float | None = None  # the report's
    remeasured: float | None = None  # measured_ratio here, TARGET_RUNS runs


def fixtures(args: argparse.Namespace) -> list[Entry]:
    if args.family and "fixtures" not in args.family:
        return []
    paths = sorted((REPO / "models").glob("*.onnx"))
    return [Entry(p.stem, p, None, {"family": "fixtures"}) for p in paths if not args.only or p.stem in args.only]


def wild(args: argparse.Namespace) -> list[Entry]:
    return corpus(argparse.Namespace(models=None, family=args.family, only=args.only))


def spa_prune(path: Path, folder: Path, options: list[str]) -> str:
    """`spa prune` in this process, writing folder/out.onnx and folder/report.json: "pruned",
    "nothing to prune", or the exit code and spa's last line."""
    arguments = ["prune", str(path), "-o", str(folder / "out.onnx"), "--report", str(folder / "report.json"), *options]
    stderr = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(stderr):
        code = spa_main(arguments)
    if code == 0:
        return "pruned" if (folder / "out.onnx").exists() else "nothing to prune"
    lines = stderr.getvalue().strip().splitlines()
    return f"failed (exit {code}): {lines[-1] if lines else ''}"


def macs_ratio(pruned: Path, original_macs: float, feeds: dict[str, np.ndarray]) -> float | None:
    macs = summarize(onnx.load(str(pruned), load_external_data=False), feeds=feeds)["macs"]
    return macs / original_macs if original_macs else None


def failure(what: str, error: Exception) -> str:
    """A row's note for an exception: what failed and the error's first line."""
    lines = str(error).strip().splitlines()
    return f"{what} failed: {type(error).__name__}: {lines[0] if lines else ''}"[:200]


def sample_feeds(entry: Entry, model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return entry.feeds if entry.feeds is not None else make_inputs(model)


def latency_models(entry: Entry, model: onnx.ModelProto, feeds: dict, threads: list[int]) -> dict:
    """Per thread count: the LatencyModel of the original, or why onnxruntime could not profile it."""
    built = {}
    for count in threads:
        try:
            built[count] = LatencyModel.of(model, entry.path, feeds, count)
        except Exception as error:  # noqa: BLE001 - the row says it, the run goes on
            built[count] = failure("profile", error)
    return built


def bench_policy(entry: Entry, policy: str, args: argparse.Namespace, original_macs: float, feeds: dict,
                 models: dict, folder: Path) -> list[Row]:
    """Rows of one width policy, one per thread count."""
    rows = [Row(entry.name, entry.meta.get("family", ""), policy, count) for count in args.threads]
    status = spa_prune(entry.path, folder, ["--ratio", str(args.ratio), "--round-to", policy])
    for row in rows:
        row.status = status
    if status != "pruned":
        return rows
    pruned_path = folder / "out.onnx"
    macs = macs_ratio(pruned_path, original_macs, feeds)
    pruned = onnx.load(str(pruned_path))
    for row in rows:
        row.macs = macs
        latency = models[row.threads]
        if isinstance(latency, str):
            row.status = latency
            continue
        try:
            row.predicted = latency.ratio(pruned)
            row.realized = measured_ratio(entry.path, pruned_path, feeds, row.threads, args.runs)
        except Exception as error:  # noqa: BLE001 - the row says it, the run goes on
            row.status = failure("timing", error)
    return rows


def bench_entry(entry: Entry, args: argparse.Namespace) -> list[Row]:
    model = onnx.load(str(entry.path))
    feeds = sample_feeds(entry, model)
    original_macs = summarize(model, feeds=feeds)["macs"]
    models = latency_models(entry, model, feeds, args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="spa-latbench-") as scratch:
        for policy in args.policies:
            folder = Path(scratch) / policy
            folder.mkdir()
            rows += bench_policy(entry, policy, args, original_macs, feeds, models, folder)
    return rows


def bench_target(entry: Entry, options: list[str], count: int) -> TargetRow:
    row = TargetRow(entry.name, count, options=" ".join(options))
    model = onnx.load(str(entry.path))
    feeds = sample_feeds(entry, model)
    with tempfile.TemporaryDirectory(prefix="spa-latbench-") as scratch:
        folder = Path(scratch)
        row.status = spa_prune(entry.path, folder, ["--target-latency", str(TARGET), "--threads", str(count), *options])
        if row.status != "pruned":
            return row
        latency = json.loads((folder / "report.json").read_text())["latency"]
        row.original_ms, row.predicted, row.realized = (latency[k] for k in
                                                        ("original_ms", "predicted_ratio", "realized_ratio"))
        row.macs = macs_ratio(folder / "out.onnx", summarize(model, feeds=feeds)["macs"], feeds)
        row.remeasured = measured_ratio(entry.path, folder / "out.onnx", feeds, count, TARGET_RUNS)
    return row


def summary(rows: list[Row], policies: list[str], threads: list[int]) -> list[dict]:
    """Per policy and thread count, over the rows that were timed."""
    return [group_summary(policy, count, [r for r in rows if r.policy == policy and r.threads == count
                                          and r.realized is not None])
            for policy in policies for count in threads]


def group_summary(policy: str, threads: int, timed: list[Row]) -> dict:
    """realized / MACs over the rows with MACs (a model whose weights are inputs has none)."""
    counted = [r for r in timed if r.realized_per_macs is not None]
    worst = max(counted, key=lambda r: r.realized_per_macs, default=None)
    misses = {r.name: r.predicted - r.realized for r in timed if r.predicted is not None}
    return {
        "policy": policy, "threads": threads, "timed": len(timed), "with_macs": len(counted),
        "median_realized_per_macs": statistics.median(r.realized_per_macs for r in counted) if counted else None,
        "within": sum(r.realized_per_macs <= CLOSE for r in counted),
        "worst": worst.name if worst else "", "worst_value": worst.realized_per_macs if worst else None,
        "median_prediction_miss": statistics.median(map(abs, misses.values())) if misses else None,
        "mispredicted": {name: miss for name, miss in misses.items() if abs(miss) > OFF},
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table_head(*columns: str) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]


def _note(status: str) -> str:
    return "" if status == "pruned" else status


def row_line(row: Row) -> str:
    return (f"| {row.name} | {row.family} | {row.policy} | {row.threads} | {_fmt(row.macs)} | {_fmt(row.predicted)} "
            f"| {_fmt(row.realized)} | {_fmt(row.realized_per_macs)} | {_note(row.status)} |")


def rows_table(rows: list[Row]) -> list[str]:
    return _table_head("model", "family", "round-to", "threads", "MACs", "predicted", "realized", "realized/MACs",
                       "note") + [row_line(r) for r in rows]


def summary_table(lines: list[dict]) -> list[str]:
    table = _table_head("round-to", "threads", "timed", "median realized/MACs", f"within {CLOSE:.2f}", "worst",
                        "median abs(predicted - realized)", f"over {OFF}")
    for s in lines:
        worst = f"{s['worst']} {_fmt(s['worst_value'])}" if s["worst"] else "-"
        table.append(f"| {s['policy']} | {s['threads']} | {s['timed']} | {_fmt(s['median_realized_per_macs'])} "
                     f"| {s['within']}/{s['with_macs']} | {worst} "
                     f"| {_fmt(s['median_prediction_miss'])} | {len(s['mispredicted'])} |")
    return table


def mispredicted_list(lines: list[dict]) -> list[str]:
    """The models the latency model misses by more than OFF, per policy and thread count, worst
    first (the JSON has them all)."""
    listed = []
    for s in lines:
        misses = sorted(s["mispredicted"].items(), key=lambda item: -abs(item[1]))
        shown = ", ".join(f"{name} {miss:+.3f}" for name, miss in misses[:LISTED])
        more = f", and {len(misses) - LISTED} more" if len(misses) > LISTED else ""
        if misses:
            listed.append(f"- round-to {s['policy']}, {s['threads']} thread(s), {len(misses)}: {shown}{more}")
    return listed


def target_table(rows: list[TargetRow]) -> list[str]:
    table = _table_head("model", "options", "threads", "original ms", "MACs", "predicted (report)",
                        "realized (report)", f"re-measured ({TARGET_RUNS} runs)", "note")
    for r in rows:
        table.append(f"| {r.name} | {r.options} | {r.threads} | {_fmt(r.original_ms, 2)} | {_fmt(r.macs)} "
                     f"| {_fmt(r.predicted)} | {_fmt(r.realized)} | {_fmt(r.remeasured)} "
                     f"| {_note(r.status)} |")
    return table


def header(args: argparse.Namespace, count: int) -> list[str]:
    command = shlex.join(["python", "tools/bench_latency.py", *sys.argv[1:]])
    what = (f"`spa prune --target-latency {TARGET}`, spa's default --round-to" if args.targets else
            f"{count} models pruned at --ratio {args.ratio}, round-to {' / '.join(args.policies)}, "
            f"{args.runs} interleaved runs")
    machine = (f"onnxruntime {ort.__version__}, {os.cpu_count()} cores, NCHWc block {block_size()}, "
               f"threads {', '.join(map(str, args.threads))}")
    lines = [f"# Latency after pruning ({'targets' if args.targets else 'ratio'})", "", f"`{command}`", "",
             f"{what}; {machine}."]
    return lines + (["", args.note] if args.note else [])


def run_ratios(args: argparse.Namespace) -> dict:
    entries = ((fixtures(args) if args.models in ("fixtures", "all") else [])
               + (wild(args) if args.models in ("wild", "all") else []))
    rows = []
    print("\n".join(rows_table([])), flush=True)
    for entry in entries:
        start = time.perf_counter()
        try:
            found = bench_entry(entry, args)
        except Exception as error:  # noqa: BLE001 - e.g. the original fails to load or count
            found = [Row(entry.name, entry.meta.get("family", ""), "-", 0, failure("benchmark", error))]
        rows += found
        for row in found:
            print(row_line(row), flush=True)
        print(f"    ({time.perf_counter() - start:.0f}s)", file=sys.stderr, flush=True)
    lines = summary(rows, args.policies, args.threads)
    closing = ["## Summary", ""] + summary_table(lines) + ["", f"Predicted - realized beyond {OFF} (worst first):", ""]
    closing += mispredicted_list(lines) or ["- none"]
    print("\n" + "\n".join(closing))
    text = header(args, len(entries)) + [""] + closing + ["", "## Models", ""] + rows_table(rows)
    timed = [dict(asdict(r), realized_per_macs=r.realized_per_macs) for r in rows]
    return {"text": text, "json": {"rows": timed, "summary": lines}}


def run_targets(args: argparse.Namespace) -> dict:
    entries = {e.name: e for e in wild(argparse.Namespace(family=None, only=args.only or list(TARGET_MODELS)))}
    rows = []
    print("\n".join(target_table([])), flush=True)
    for name, options in TARGET_MODELS.items():
        for count in args.threads:
            if name not in entries:
                continue
            try:
                rows.append(bench_target(entries[name], options, count))
            except Exception as error:  # noqa: BLE001 - e.g. the re-measurement fails
                rows.append(TargetRow(name, count, failure("benchmark", error), " ".join(options)))
            print(target_table(rows[-1:])[-1], flush=True)
    text = [*header(args, len(rows)), "", *target_table(rows)]
    return {"text": text, "json": {"targets": [asdict(r) for r in rows]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", choices=("fixtures", "wild", "all"), default="all")
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--family", nargs="*", help="wild families, or fixtures")
    parser.add_argument("--policies", nargs="+", default=["16", "auto"], help="--round-to values to compare")
    parser.add_argument("--ratio", type=float, default=0.4)
    parser.add_argument("--threads", nargs="+", type=int,
                        help="default: 1 and the machine's cores (with --targets: 1)")
    parser.add_argument("--runs", type=int, default=20, help="interleaved runs behind a realized ratio")
    parser.add_argument("--targets", action="store_true",
                        help=f"--target-latency {TARGET} on {', '.join(TARGET_MODELS)} instead")
    parser.add_argument("--note", help="a line for the markdown header (e.g. how a subset was chosen)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    if args.threads is None:
        args.threads = [1] if args.targets else sorted({1, os.cpu_count() or 1})
    result = run_targets(args) if args.targets else run_ratios(args)
    if args.markdown:
        args.markdown.write_text("\n".join(result["text"]) + "\n")
    if args.json:
        args.json.write_text(json.dumps(result["json"], indent=1))


if __name__ == "__main__":
    main()
