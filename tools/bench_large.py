"""Can spa prune a decoder larger than protobuf's 2 GB limit, how long does it take and how much
memory does it need?

Writes a GPT-style decoder with external data (tools/big_decoder.py) to a temporary directory,
runs `spa prune MODEL --ratio R -o pruned.onnx` in a subprocess and prints its wall time, its
peak resident memory (getrusage of the child, plus /proc samples taken while it runs), the model
size before and after (model file + external data), and whether the pruned model loads in
onnxruntime from its path and gives logits of the original shape. A watchdog kills the prune if
its resident memory passes --max-rss-gib, so the machine is not driven into swap.

Usage: python tools/bench_large.py [--small] [--layers 12] [--hidden 2048] [--heads 16]
                                   [--ffn 8192] [--vocab 32000] [--ratio 0.5] [--keep]
                                   [--prune-args '--round-to 1'] [--max-rss-gib 20]
"""

from __future__ import annotations

import argparse
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from big_decoder import add_size_arguments, write_decoder  # tools/ is on sys.path when run as a script

GIB = 2**30
SMALL = {"layers": 2, "hidden": 128, "heads": 4, "ffn": 512, "vocab": 1000}
SAMPLE_EVERY_S = 0.2
TIMELINE_POINTS = 12


@dataclass
class RunResult:
    returncode: int
    seconds: float
    peak_rss: int  # bytes, from getrusage(RUSAGE_CHILDREN)
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds, rss bytes)
    killed: bool = False
    stdout: str = ""
    stderr: str = ""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def process_rss(pid: int) -> int | None:
    """Resident bytes of process `pid`, or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _watch(process: subprocess.Popen, result: RunResult, limit: int, start: float) -> None:
    """Sample the child's RSS until it exits; kill it past `limit` bytes."""
    while process.poll() is None:
        rss = process_rss(process.pid)
        if rss is not None:
            result.samples.append((time.perf_counter() - start, rss))
            if rss > limit:
                result.killed = True
                process.kill()
                return
        time.sleep(SAMPLE_EVERY_S)


def run_measured(command: list[str], cwd: Path, max_rss: int) -> RunResult:
    """Run `command`, returning its wall time, peak RSS, RSS samples and output."""
    result = RunResult(returncode=-1, seconds=0.0, peak_rss=0)
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    watcher = threading.Thread(target=_watch, args=(process, result, max_rss, start), daemon=True)
    watcher.start()
    result.stdout, result.stderr = process.communicate()
    result.seconds = time.perf_counter() - start
    watcher.join()
    result.returncode = process.returncode
    result.peak_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    return result


def model_bytes(path: Path) -> int:
    """Size of the model file plus every external data file it refers to."""
    model = onnx.load(str(path), load_external_data=False)
    locations = {entry.value for tensor in model.graph.initializer
                 for entry in tensor.external_data if entry.key == "location"}
    return path.stat().st_size + sum((path.parent / location).stat().st_size for location in locations)


def check_pruned(path: Path, seq: int, vocab: int) -> str:
    """'ok' if the model at `path` runs in onnxruntime and gives [1, seq, vocab] logits, else why not."""
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        ids = np.random.default_rng(0).integers(0, vocab, size=(1, seq), dtype=np.int64)
        logits = session.run(None, {"input_ids": ids})[0]
    except Exception as error:  # noqa: BLE001 - any failure is the answer
        return f"fails in onnxruntime: {str(error).strip().splitlines()[0]}"
    if logits.shape != (1, seq, vocab):
        return f"logits shape {logits.shape}, expected {(1, seq, vocab)}"
    return "ok"


def timeline(samples: list[tuple[float, int]]) -> str:
    """About TIMELINE_POINTS evenly spaced 'seconds: GiB' samples of the child's RSS."""
    if not samples:
        return "(no samples)"
    step = max(1, len(samples) // TIMELINE_POINTS)
    picked = samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else [])
    return "  ".join(f"{t:.0f}s:{rss / GIB:.1f}" for t, rss in picked)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help=f"tiny config {SMALL}, for a quick check")
    add_size_arguments(parser)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--spa", default="spa", help="the spa command to run (default: the console script)")
    parser.add_argument("--prune-args", default="", help="more `spa prune` arguments, e.g. '--round-to 1'")
    parser.add_argument("--max-rss-gib", type=float, default=20.0, help="kill the prune past this RSS")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument("--dir", type=Path, help="parent of the temporary directory (default: /tmp)")
    args = parser.parse_args()
    if args.small:
        for name, value in SMALL.items():
            setattr(args, name, value)
    return args


def bench(args: argparse.Namespace, workdir: Path) -> int:
    model, pruned = workdir / "decoder.onnx", workdir / "pruned.onnx"
    log(f"writing {args.layers} layers, hidden {args.hidden}, {args.heads} heads, ffn {args.ffn}, "
        f"vocab {args.vocab} to {model}")
    start = time.perf_counter()
    weight_bytes = write_decoder(model, args.layers, args.hidden, args.heads, args.ffn, args.vocab, args.seq)
    log(f"  {weight_bytes / GIB:.2f} GiB of weights in {time.perf_counter() - start:.1f} s")

    command = [*shlex.split(args.spa), "prune", str(model), "--ratio", str(args.ratio), "-o", str(pruned),
               *shlex.split(args.prune_args)]
    log(f"running: {shlex.join(command)}")
    run = run_measured(command, workdir, int(args.max_rss_gib * GIB))
    sampled_peak = max((rss for _, rss in run.samples), default=0)

    print(f"command:     {shlex.join(command)}")
    print(f"exit code:   {run.returncode}" + (f" (killed past {args.max_rss_gib} GiB RSS)" if run.killed else ""))
    print(f"wall time:   {run.seconds:.1f} s")
    print(f"peak RSS:    {run.peak_rss / GIB:.2f} GiB (getrusage), {sampled_peak / GIB:.2f} GiB (sampled)")
    print(f"RSS (GiB):   {timeline(run.samples)}")
    print(f"before:      {model_bytes(model) / GIB:.3f} GiB ({model_bytes(model):,} bytes)")
    if run.stdout.strip():
        print("spa stdout:\n  " + "\n  ".join(run.stdout.strip().splitlines()))
    if run.stderr.strip():
        print("spa stderr:\n  " + "\n  ".join(run.stderr.strip().splitlines()[-20:]))
    if run.returncode != 0 or not pruned.exists():
        print("after:       (no pruned model)")
        return 1
    print(f"after:       {model_bytes(pruned) / GIB:.3f} GiB ({model_bytes(pruned):,} bytes)")
    status = check_pruned(pruned, args.seq, args.vocab)
    print(f"onnxruntime: {status}")
    return 0 if status == "ok" else 1


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # keep results and progress lines in order
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="spa-bench-large-", dir=args.dir))
    try:
        code = bench(args, workdir)
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir)
    sys.exit(code)


if __name__ == "__main__":
    main()
