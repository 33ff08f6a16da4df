"""How long does the whole `spa prune --ratio 0.4` (l2) take on ResNet-50, as a user runs it?

Prints the whole-process wall time (start-up and imports, load, analysis, rewrite, checks,
save) of `python -m spa.cli prune MODEL --ratio R -o OUT`, median of --runs fresh processes,
then one more process timed stage by stage: each stage's wall time, measured by wrapping the
function that does it (nested stages are also counted in the stage around them).

The model is built by tools/resnet50_onnx.py into a temporary folder unless given. Every
process runs the spa it imports (run from a work tree with PYTHONPATH set to it);
`--compare DIR` also times the spa in DIR, interleaved with this one, and prints the ratio
(a shared machine drifts: ratios measured side by side are what compare).

Usage: python tools/bench_l2.py [MODEL] [--ratio 0.4] [--runs 5] [--compare /work/main] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TREE = Path(__file__).resolve().parent.parent

# (module, function, label): the stages of one prune, wrapped in the measured process. A
# function that a module imported by name is wrapped where it is looked up; one missing
# (renamed) is left out.
STAGES = (
    ("spa.api", "load_model", "load (read, check, finite weights)"),
    ("spa.pipeline", "reference_run", "input run (dense session)"),
    ("spa.pipeline", "prune_once", "prune step (analysis, score, zero, rewrite, export)"),
    ("spa.step", "prepared_analysis", "  import + shapes + analysis"),
    ("spa.step", "score_groups", "  score"),
    ("spa.step", "prune_in_order", "  zero"),
    ("spa.step", "rewrite", "  rewrite"),
    ("spa.step", "export", "  export"),
    ("spa.pipeline", "build_report", "report (params, MACs)"),
    ("spa.pipeline", "save_model", "save (write + check)"),
    ("spa.pipeline", "verify_pruned", "  check written file (checker, session, compare)"),
    ("spa.verify", "verify_equivalent", "    compare with the zeroed model"),
    ("onnx.checker", "check_model", "onnx.checker (input and written file)"),
    ("spa.io.runtime", "session", "onnxruntime sessions (made)"),
    ("spa.io.runtime", "run", "onnxruntime runs (session made and run)"),
)

# Run in the measured process: wraps the stages, runs the CLI, prints the times as JSON.
STAGED_RUN = r"""
import importlib, json, sys, time
start = time.perf_counter()
import spa.cli
spa.cli.build_parser()
import spa.api, spa.pipeline
imported = time.perf_counter() - start
times = {}
def wrap(module, name, label):
    module = importlib.import_module(module)
    function = getattr(module, name, None)
    if function is None:
        return
    def timed(*args, **kwargs):
        begin = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            times[label] = times.get(label, 0.0) + time.perf_counter() - begin
    setattr(module, name, timed)
for stage in json.loads(sys.argv[1]):
    wrap(*stage)
begin = time.perf_counter()
code = spa.cli.main(sys.argv[2:])
total = time.perf_counter() - begin
print(json.dumps({"imports": imported, "stages": times, "main": total, "code": code}))
"""


def environment(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)
    return env


def prune_command(model: Path, output: Path, ratio: float) -> list[str]:
    return ["prune", str(model), "--ratio", str(ratio), "-o", str(output)]


def whole_process(tree: Path, model: Path, output: Path, ratio: float) -> tuple[float, float]:
    """Wall time and CPU time (user + system, all threads) of one `python -m spa.cli prune`
    process of the spa in `tree`. CPU time moves less than wall time when other jobs
    share the machine."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "spa.cli", *prune_command(model, output, ratio)], cwd=tree,
                   env=environment(tree), check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def staged(tree: Path, model: Path, output: Path, ratio: float) -> dict:
    """Imports and per-stage wall times of one prune in a fresh process."""
    done = subprocess.run([sys.executable, "-c", STAGED_RUN, json.dumps(STAGES), *prune_command(model, output, ratio)],
                          cwd=tree, env=environment(tree), check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def build_model(folder: Path) -> Path:
    path = folder / "resnet50.onnx"
    subprocess.run([sys.executable, str(TREE / "tools" / "resnet50_onnx.py"), str(path)], check=True,
                   stdout=subprocess.DEVNULL)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, nargs="?", help="ResNet-50 .onnx (default: built into a temp folder)")
    parser.add_argument("--ratio", type=float, default=0.4)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--compare", type=Path, metavar="DIR", help="another spa tree, timed interleaved")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        model = args.model or build_model(folder)
        output = folder / "pruned.onnx"
        trees = {"this": TREE} | ({"compare": args.compare.resolve()} if args.compare else {})
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in trees}
        for _ in range(args.runs):
            for name, tree in trees.items():
                times[name].append(whole_process(tree, model, output, args.ratio))
        result = {name: {"median_s": statistics.median(w for w, _ in t), "runs_s": [w for w, _ in t],
                         "median_cpu_s": statistics.median(c for _, c in t)} for name, t in times.items()}
        result["stages"] = staged(TREE, model, output, args.ratio)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for name, tree in trees.items():
        runs = ", ".join(f"{t:.2f}" for t in result[name]["runs_s"])
        print(f"{name:8} {tree!s:32} whole process: median {result[name]['median_s']:.2f} s  ({runs}), "
              f"CPU {result[name]['median_cpu_s']:.2f} s")
    if args.compare:
        this, other = result["this"], result["compare"]
        print(f"this / compare: wall {this['median_s'] / other['median_s']:.2f}, "
              f"CPU {this['median_cpu_s'] / other['median_cpu_s']:.2f}")
    stages = result["stages"]
    print(f"\none process, by stage (s):\n{'imports (spa.cli, spa.api)':54}{stages['imports']:7.3f}")
    for _, _, label in STAGES:
        if label in stages["stages"]:
            print(f"{label:54}{stages['stages'][label]:7.3f}")
    print(f"{'main() in all':54}{stages['main']:7.3f}")


if __name__ == "__main__":
    main()
