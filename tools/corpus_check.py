"""Prune every model of a corpus as a user would, and check each result.

    python tools/corpus_check.py [--ratio 0.4] [--family F ...] [--only NAME ...] [--models DIR]
                                 [--json OUT.json] [--markdown OUT.md] [--no-latency]

The corpus is the wild corpus's manifest (tools/wild_corpus.py; $SPA_WILD_CORPUS), or with
--models every .onnx under DIR (the repo's fixtures: synthetic inputs). One row per model:
- outcome: `valid` (the `spa prune` command wrote a model: onnx.checker and onnxruntime run
  it on the sample input with the original output shapes), `nothing` (exit 0, nothing
  prunable), `refused` (exit 1, with spa's one line), or `INTERNAL`/`CRASH` (exit 3, a
  traceback, more than one stderr line, or a written model that fails);
- params and MACs kept, onnxruntime latency ratio (pruned / original, 1 thread, sample
  input), prune time;
- the zero-group oracle (spa.oracle on the sample input): random channels of every exact
  prunable group zeroed, pruned with --round-to 1; `exact N/M` when the report lists exactly
  those channels and the outputs equal the zeroed model's.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from spa import oracle  # noqa: E402
from spa.bench import bench  # noqa: E402
from spa.errors import SpaError  # noqa: E402
from spa.io.load import load_model  # noqa: E402
from spa.io.runtime import run  # noqa: E402
from spa.verify import reference_run  # noqa: E402
from wild_corpus import cache_dir  # noqa: E402

PRUNE_TIMEOUT = 1800


@dataclass
class Row:
    name: str
    family: str = ""
    source: str = ""
    exporter: str = ""
    outcome: str = ""
    message: str = ""
    params_kept: float | None = None
    macs_kept: float | None = None
    latency_ratio: float | None = None
    prune_seconds: float | None = None
    oracle: str = ""
    oracle_problems: list[str] = field(default_factory=list)


@dataclass
class Entry:
    name: str
    path: Path
    feeds: dict[str, np.ndarray] | None
    meta: dict


def corpus(args: argparse.Namespace) -> list[Entry]:
    if args.models:
        paths = sorted(Path(args.models).rglob("*.onnx"))
        return [Entry(p.stem, p, None, {"family": p.parent.name}) for p in paths if ".pruned" not in p.name]
    manifest = json.loads((cache_dir() / "manifest.json").read_text())
    entries = []
    for item in manifest:
        if "error" in item or (args.family and item["family"] not in args.family):
            continue
        if args.only and item["name"] not in args.only:
            continue
        with np.load(cache_dir() / item["inputs"]) as data:
            feeds = {k: data[k] for k in data.files}
        entries.append(Entry(item["name"], cache_dir() / item["file"], feeds, item))
    return entries


def prune_command(entry: Entry, ratio: float, folder: Path, extra: list[str],
                  in_process: bool = False) -> tuple[subprocess.CompletedProcess, float]:
    """`spa prune` as a user runs it: a new process (or, for the test suite, spa.cli.main)."""
    arguments = ["prune", str(entry.path), "-o", str(folder / "out.onnx"), "--ratio", str(ratio),
                 "--report", str(folder / "report.json"), *extra]
    start = time.perf_counter()
    if in_process:
        from spa.cli import main as spa_main
        stdout, stderr = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            code = spa_main(arguments)
        result = subprocess.CompletedProcess(arguments, code, stdout.getvalue(), stderr.getvalue())
    else:
        result = subprocess.run([sys.executable, "-m", "spa.cli", *arguments], capture_output=True, text=True,
                                timeout=PRUNE_TIMEOUT, env=dict(os.environ, PYTHONPATH=str(REPO)))
    return result, time.perf_counter() - start


def outcome(row: Row, result: subprocess.CompletedProcess, folder: Path) -> None:
    lines = result.stderr.strip().splitlines()
    row.message = lines[-1] if lines else ""
    if "Traceback" in result.stderr or len(lines) > 1:
        row.outcome, row.message = "CRASH", " | ".join(lines[-2:])
    elif result.returncode == 0:
        row.outcome = "valid" if (folder / "out.onnx").exists() else "nothing"
        if row.outcome == "nothing":
            row.message = result.stdout.strip().splitlines()[0] if result.stdout.strip() else ""
    elif result.returncode == 1 and "internal error" not in row.message:
        row.outcome = "refused"
    else:
        row.outcome = "INTERNAL"


def check_written(row: Row, entry: Entry, folder: Path) -> None:
    """The written model passes the checker and runs on the sample with the original shapes."""
    written = folder / "out.onnx"
    feeds = entry.feeds if entry.feeds is not None else reference_run(load_model(entry.path)).feeds
    try:
        onnx.checker.check_model(str(written), full_check=True)
        before = run(entry.path, feeds, "the input model")
        after = run(written, {k: v for k, v in feeds.items()
                              if k in {i.name for i in onnx.load(str(written), load_external_data=False).graph.input}},
                    "the pruned model")
    except (SpaError, onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        row.outcome, row.message = "INTERNAL", f"written model fails: {str(error).splitlines()[0]}"
        return
    if [a.shape for a in before] != [a.shape for a in after]:
        row.outcome, row.message = "INTERNAL", "written model changes output shapes"
        return
    report = json.loads((folder / "report.json").read_text())
    row.params_kept = _ratio(report["after"]["params"], report["before"]["params"])
    row.macs_kept = _ratio(report["after"]["macs"], report["before"]["macs"])


def latency(row: Row, entry: Entry, folder: Path, runs: int) -> None:
    try:
        result = bench(entry.path, folder / "out.onnx", runs=runs, warmup=3, threads=1, feeds=entry.feeds)
        row.latency_ratio = 1 / result["speedup"] if result["speedup"] else None
    except SpaError as error:
        row.message += f" (latency: {error})"


def exactness(row: Row, entry: Entry, ratio: float) -> None:
    try:
        model = onnx.load(str(entry.path))
        result = oracle.check(model, ratio=ratio, seed=1, feeds=entry.feeds)
    except SpaError as error:
        row.oracle = f"refused: {error}"
        return
    except Exception as error:  # noqa: BLE001 - reported in the table, the run goes on
        row.oracle = f"CRASH {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        return
    if not result.groups:
        row.oracle = "no exact groups"
    elif result.exact:
        row.oracle = f"exact {result.groups} groups ({result.max_difference:.1e})"
    else:
        row.oracle = f"FAIL ({len(result.problems)} problems)"
        row.oracle_problems = result.problems[:5]


def check_entry(entry: Entry, ratio: float, runs: int, extra: list[str], in_process: bool = False) -> Row:
    meta = entry.meta
    row = Row(entry.name, meta.get("family", ""), meta.get("source", ""), meta.get("exporter", ""))
    with tempfile.TemporaryDirectory(prefix="spa-corpus-") as scratch:
        folder = Path(scratch)
        result, seconds = prune_command(entry, ratio, folder, extra, in_process)
        row.prune_seconds = round(seconds, 2)
        outcome(row, result, folder)
        if row.outcome == "valid":
            check_written(row, entry, folder)
        if row.outcome == "valid" and runs:
            latency(row, entry, folder, runs)
    exactness(row, entry, ratio)
    return row


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(rows: list[Row]) -> str:
    lines = ["| model | family | exporter | outcome | params kept | MACs kept | latency | prune s | oracle |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        what = r.outcome if r.outcome in ("valid",) else f"{r.outcome}: {r.message[:90]}"
        lines.append(f"| {r.name} | {r.family} | {r.exporter} | {what} | {_fmt(r.params_kept)} | {_fmt(r.macs_kept)} "
                     f"| {_fmt(r.latency_ratio)} | {r.prune_seconds} | {r.oracle} |")
    return "\n".join(lines)


def totals(rows: list[Row]) -> str:
    count = {k: sum(r.outcome == k for r in rows) for k in ("valid", "nothing", "refused", "INTERNAL", "CRASH")}
    oracle_fail = [r.name for r in rows if r.oracle.startswith(("FAIL", "CRASH"))]
    exact = sum(r.oracle.startswith("exact") for r in rows)
    return (f"{len(rows)} models: {count['valid']} valid, {count['nothing']} nothing to prune, "
            f"{count['refused']} refused, {count['INTERNAL']} internal errors, {count['CRASH']} crashes; "
            f"oracle exact on {exact}, failed on {len(oracle_fail)} {oracle_fail if oracle_fail else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.4)
    parser.add_argument("--family", nargs="*")
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--models", type=Path, help="check every .onnx under this folder instead")
    parser.add_argument("--runs", type=int, default=20, help="latency runs (0: skip latency)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--spa-args", nargs=argparse.REMAINDER, default=[], help="more arguments for spa prune")
    args = parser.parse_args()
    rows = []
    for entry in corpus(args):
        row = check_entry(entry, args.ratio, args.runs, args.spa_args)
        rows.append(row)
        print(f"{row.name:40} {row.outcome:8} params {_fmt(row.params_kept)} macs {_fmt(row.macs_kept)} "
              f"lat {_fmt(row.latency_ratio)} {row.prune_seconds:>6}s  oracle: {row.oracle}  {row.message[:120]}",
              flush=True)
        for problem in row.oracle_problems:
            print(f"    {problem}", flush=True)
    print(totals(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    if args.markdown:
        args.markdown.write_text(markdown(rows) + "\n\n" + totals(rows) + "\n")


if __name__ == "__main__":
    main()
