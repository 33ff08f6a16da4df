"""How long does spa take to prune, and how much of the promised speed-up does it deliver?

For every fixture in models/ and for a ResNet-50-sized model (tools/resnet50_onnx.py, built in
a temporary directory) this prunes at --ratio and prints, per model: wall time of analysis
(spa.inspect) and of the full prune with verification (for ResNet-50 also without it: analysis +
rewrite alone), params and MACs ratios (after / before), the promised speed-up 1 / MACs ratio,
the realized onnxruntime speed-up (spa.bench.bench) and realized / promised. ResNet-50 is pruned
at the default --round-to and at 1, to show what odd channel counts cost. Times are medians of
TIMING_REPEATS calls.

Usage: python tools/bench_prune.py [--ratio 0.4] [--runs 200] [--threads 1] [--models GLOB]
                                   [--skip-resnet50] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import onnx
import onnxruntime as ort

import spa
from spa.bench import bench
from spa.select import DEFAULT_ROUND_TO

from big_decoder import write_decoder  # tools/ is on sys.path when run as a script
from resnet50_onnx import build_resnet50

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
TIMING_REPEATS = 5
RESNET50_ROUND_TO = (DEFAULT_ROUND_TO, 1)
REWRITE_TARGET_S = 1.0

Column = tuple[str, str, str]  # header, row key, format spec
INSPECT_COLUMN: Column = ("inspect s", "inspect_s", ".3f")
RESULT_COLUMNS: list[Column] = [
    ("prune s", "prune_s", ".3f"), ("before ms", "before_ms", ".3f"), ("after ms", "after_ms", ".3f"),
    ("params", "params_ratio", ".3f"), ("MACs", "macs_ratio", ".3f"),
    ("promised", "promised", ".2f"), ("realized", "realized", ".2f"), ("real/prom", "efficiency", ".3f"),
]
FIXTURE_COLUMNS: list[Column] = [("model", "model", ""), INSPECT_COLUMN] + RESULT_COLUMNS
TRANSFORMER_COLUMNS: list[Column] = FIXTURE_COLUMNS + [("pruned", "kinds", "")]
RESNET50_COLUMNS: list[Column] = [("round-to", "round_to", "d"), INSPECT_COLUMN,
                                  ("rewrite s", "rewrite_s", ".3f")] + RESULT_COLUMNS


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    """The last result of `call` and its median wall time in seconds over TIMING_REPEATS calls."""
    times = []
    for _ in range(TIMING_REPEATS):
        start = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def measure(path: Path, args: argparse.Namespace, round_to: int, time_rewrite: bool) -> dict:
    """Timings, cost ratios and speed-ups of pruning the model at `path`."""
    row: dict[str, Any] = {"model": path.stem, "round_to": round_to}
    _, row["inspect_s"] = timed(lambda: spa.inspect(path))
    if time_rewrite:
        _, row["rewrite_s"] = timed(lambda: spa.prune(path, args.ratio, round_to=round_to, verify=False))
    result, row["prune_s"] = timed(lambda: spa.prune(path, args.ratio, round_to=round_to))
    row["kinds"] = ",".join(sorted({g["kind"] for g in result.report["groups"] if g["removed"]}))
    latency = bench(path, result.model, runs=args.runs, threads=args.threads)
    promised, realized = latency["promised_speedup"], latency["speedup"]
    row.update(before_ms=latency["a"]["median_ms"], after_ms=latency["b"]["median_ms"],
               params_ratio=latency["params_ratio"], macs_ratio=latency["macs_ratio"],
               promised=promised, realized=realized,
               efficiency=realized / promised if promised and realized else None)
    return row


def try_measure(path: Path, args: argparse.Namespace, round_to: int, time_rewrite: bool = False) -> dict:
    log(f"pruning {path.name} at ratio {args.ratio}, round-to {round_to}")
    try:
        return measure(path, args, round_to, time_rewrite)
    except Exception as error:  # noqa: BLE001 - report it with the call, go on with the other models
        call = f"spa.prune({str(path)!r}, {args.ratio}, round_to={round_to})"
        return {"model": path.stem, "round_to": round_to, "error": f"{call}: {type(error).__name__}: {error}"}


def fixture_rows(args: argparse.Namespace) -> list[dict]:
    paths = sorted(p for p in MODELS_DIR.glob("*.onnx") if fnmatch(p.stem, args.models))
    return [try_measure(path, args, DEFAULT_ROUND_TO) for path in paths]


def transformer_rows(args: argparse.Namespace) -> list[dict]:
    """Transformer fixtures and a mid-size decoder at the transformer ratio."""
    ratio_args = argparse.Namespace(**{**vars(args), "ratio": args.transformer_ratio})
    paths = sorted(p for p in (MODELS_DIR / "transformers").glob("*.onnx") if fnmatch(p.stem, args.models))
    rows = [try_measure(path, ratio_args, DEFAULT_ROUND_TO) for path in paths]
    with tempfile.TemporaryDirectory() as directory:
        stored, path = Path(directory) / "stored.onnx", Path(directory) / "decoder_512x4.onnx"
        log("building a decoder: hidden 512, 8 heads, ffn 2048, 4 layers, vocab 8000, seq 128")
        write_decoder(stored, layers=4, hidden=512, heads=8, ffn=2048, vocab=8000, seq=128)
        onnx.save(onnx.load(str(stored)), str(path))  # weights inline: under 2 GB
        rows.append(try_measure(path, ratio_args, DEFAULT_ROUND_TO))
    return rows


def resnet50_rows(args: argparse.Namespace) -> list[dict]:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "resnet50.onnx"
        log(f"building ResNet-50 in {path}")
        onnx.save(build_resnet50(), path)
        return [try_measure(path, args, round_to, time_rewrite=True) for round_to in RESNET50_ROUND_TO]


def format_cell(value: Any, spec: str) -> str:
    if value is None:
        return "n/a"
    return format(value, spec)


def format_table(title: str, columns: list[Column], rows: list[dict]) -> str:
    """Aligned table of the rows without errors, then one line per error."""
    ok = [row for row in rows if "error" not in row]
    cells = [[header for header, _, _ in columns]]
    cells += [[format_cell(row.get(key), spec) for _, key, spec in columns] for row in ok]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [title] + ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                                 for i, (cell, w) in enumerate(zip(line, widths))) for line in cells]
    lines += [f"ERROR {row['error']}" for row in rows if "error" in row]
    return "\n".join(lines)


def summarize(fixtures: list[dict], resnet50: list[dict]) -> dict:
    efficiencies = [row["efficiency"] for row in fixtures if row.get("efficiency") is not None]
    default = next((row for row in resnet50 if row["round_to"] == DEFAULT_ROUND_TO), {})
    return {
        "fixtures": len(efficiencies),
        "median_realized_over_promised": statistics.median(efficiencies) if efficiencies else None,
        "resnet50_rewrite_s": default.get("rewrite_s"),
        "errors": sum("error" in row for row in fixtures + resnet50),
    }


def summary_line(summary: dict) -> str:
    rewrite_s = summary["resnet50_rewrite_s"]
    rewrite = "not run" if rewrite_s is None else (
        f"{rewrite_s:.3f} s ({'under' if rewrite_s < REWRITE_TARGET_S else 'OVER'} the {REWRITE_TARGET_S:g} s target)")
    return (f"summary: median realized/promised over {summary['fixtures']} fixtures "
            f"{format_cell(summary['median_realized_over_promised'], '.3f')}; "
            f"ResNet-50 analysis+rewrite (verify=False, round-to {DEFAULT_ROUND_TO}) {rewrite}; "
            f"{summary['errors']} error(s)")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratio", type=float, default=0.4, help="fraction of channels to remove")
    parser.add_argument("--runs", type=int, default=200, help="timed onnxruntime runs per model")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--models", default="*", help="glob on fixture names, e.g. 'resnet*'")
    parser.add_argument("--skip-resnet50", action="store_true", help="no ResNet-50-sized model")
    parser.add_argument("--transformer-ratio", type=float, default=0.5, help="ratio for the transformers")
    parser.add_argument("--skip-transformers", action="store_true", help="no transformer table")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    fixtures = fixture_rows(args)
    resnet50 = [] if args.skip_resnet50 else resnet50_rows(args)
    transformers = [] if args.skip_transformers else transformer_rows(args)
    summary = summarize(fixtures, resnet50)
    elapsed = time.perf_counter() - started
    if args.json:
        config = {"ratio": args.ratio, "runs": args.runs, "threads": args.threads,
                  "timing_repeats": TIMING_REPEATS, "onnxruntime": ort.__version__, "elapsed_s": elapsed}
        print(json.dumps({"config": config, "fixtures": fixtures, "resnet50": resnet50,
                          "transformers": transformers, "summary": summary}, indent=2))
        return
    print(f"ratio {args.ratio}, onnxruntime {ort.__version__} CPU, {args.threads} thread(s), "
          f"{args.runs} runs, {os.cpu_count()} cores; times are medians of {TIMING_REPEATS} calls; "
          "params/MACs are after/before, promised = 1/MACs, realized = before ms / after ms")
    print(format_table(f"\nfixtures (round-to {DEFAULT_ROUND_TO})", FIXTURE_COLUMNS, fixtures))
    if not args.skip_resnet50:
        print(format_table("\nResNet-50 (rewrite s = prune with verify=False)", RESNET50_COLUMNS, resnet50))
    if not args.skip_transformers:
        print(format_table(f"\ntransformers (ratio {args.transformer_ratio} on heads and MLP neurons)",
                           TRANSFORMER_COLUMNS, transformers))
    print(f"\nelapsed {elapsed:.0f} s")
    print(summary_line(summary))


if __name__ == "__main__":
    main()
