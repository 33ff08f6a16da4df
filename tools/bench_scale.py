"""How long and how much memory does data-driven pruning take at real scale, next to a dense forward pass?

Per case this builds a model with random weights in a temporary folder (outside the repo, removed at
the end), writes calibration data as a .npz, and prints:

- dense: onnxruntime's time to run the dense model over the calibration samples, one session (its
  creation timed apart), default session options, batches as spa feeds them (a static batch B
  in chunks of B, else 32 at a time); the fastest of --dense-repeats passes;
- spa: the whole-process wall time and peak RSS (the child's own getrusage through os.wait4, plus
  /proc samples) of `python -m spa.cli prune MODEL --criterion obs --calib DATA.npz
  --calib-samples N --ratio 0.4 -o OUT`, and spa/dense;
- whether the pruned model loads in onnxruntime and gives the dense model's output shapes;
- the targets of issue 11 beside the numbers, with ok / MISSED.

Cases (the calibration data is random, so the timings, not the pruned models' quality, count):
  resnet50-16, resnet50-128  ResNet-50 (tools/resnet50_onnx.py), 16 / 128 N(0,1) images 224x224
  bert-64                    BERT-base encoder (tools/bert_encoder.py: 12 layers, hidden 768,
                             12 heads, MLP 3072), 64 sequences of 128 random tokens, no padding
  decoder-8                  the 2.7 GB external-data decoder of tools/bench_large.py
                             (tools/big_decoder.py), 8 sequences of --decoder-seq random tokens

Every spa run has a time limit (--timeout): past it spa gets SIGTERM (then SIGKILL) and the case
says "timeout". The machine is shared, so run it niced:

    nice -n 10 python tools/bench_scale.py [--only resnet50-16,bert-64] [--timeout 900]
        [--spa-python PYTHON] [--ratio 0.4] [--dir /tmp] [--keep] [--out RESULT.md]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

# tools/ is on sys.path when run as a script
from bench_large import process_rss
from bert_encoder import Config as BertConfig
from bert_encoder import build_bert
from big_decoder import write_decoder
from resnet50_onnx import build_resnet50

GIB = 2**30
SAMPLE_EVERY_S = 0.2
KILL_GRACE_S = 30
DECODER = {"layers": 12, "hidden": 2048, "heads": 16, "ffn": 8192, "vocab": 32000}  # bench_large's defaults, 2.7 GB
BERT = BertConfig()  # BERT-base, seq 128, batch 1


@dataclass(frozen=True)
class Case:
    name: str
    model: str  # key of MODELS: cases on one model share its file
    samples: int
    description: str
    max_slowdown: float | None = None  # spa time / dense time
    max_rss_gib: float | None = None
    max_rss_of_file: float | None = None  # peak RSS / (model file + external data)


CASES = {case.name: case for case in (
    Case("resnet50-16", "resnet50", 16, "ResNet-50, 16 images", max_slowdown=30, max_rss_gib=1.0),
    Case("resnet50-128", "resnet50", 128, "ResNet-50, 128 images"),
    Case("bert-64", "bert", 64, "BERT-base encoder, 64 x 128 tokens"),
    Case("decoder-8", "decoder", 8, "2.7 GB decoder, 8 sequences", max_rss_of_file=1.5),
)}


@dataclass
class Result:
    case: str
    samples: int
    model_bytes: int = 0
    build_s: float = 0.0
    dense_session_s: float = 0.0
    dense_run_s: float = 0.0
    spa_s: float | None = None
    spa_peak_rss: int | None = None  # bytes
    spa_exit: int | None = None
    status: str = ""  # ok | timeout | killed (RSS) | exit N
    pruned: str = ""  # 'ok' or why the pruned model does not load / run
    params_before: int | None = None
    params_after: int | None = None
    load_before: float = 0.0
    load_after: float = 0.0
    targets: list[str] = field(default_factory=list)
    stderr_tail: str = ""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- models and calibration data ---------------------------------------------------------------

def _build_resnet50(path: Path) -> None:
    onnx.save(build_resnet50(), path)


def _build_bert(path: Path) -> None:
    onnx.save(build_bert(BERT), path)


def _build_decoder(path: Path, seq: int) -> None:
    write_decoder(path, seq=seq, **DECODER)


def _images(count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"input": rng.standard_normal((count, 3, 224, 224), dtype=np.float32)}


def _bert_tokens(count: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    ids = rng.integers(1000, BERT.vocab, size=(count, BERT.seq), dtype=np.int64)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    return {"input_ids": ids, "attention_mask": np.ones_like(ids)}


def model_bytes(path: Path) -> int:
    """Size of the model file plus every external data file it refers to."""
    model = onnx.load(str(path), load_external_data=False)
    locations = {entry.value for tensor in model.graph.initializer
                 for entry in tensor.external_data if entry.key == "location"}
    return path.stat().st_size + sum((path.parent / location).stat().st_size for location in locations)


def count_params(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT)


# --- dense timing and the pruned model's check ---------------------------------------------------

def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def batches(session: ort.InferenceSession, data: dict[str, np.ndarray], default: int = 32) -> Iterator[dict]:
    """The samples in spa's batches: a static batch B in chunks of B (the rest dropped), else `default`."""
    fixed = {i.shape[0] for i in session.get_inputs() if i.shape and isinstance(i.shape[0], int)}
    step = fixed.pop() if fixed else default
    count = len(next(iter(data.values())))
    for start in range(0, count - step + 1 if fixed else count, step):
        yield {k: v[start:start + step] for k, v in data.items()}


def time_dense(path: Path, data: dict[str, np.ndarray], result: Result, repeats: int) -> list[tuple[int, ...]]:
    """Session creation, then the fastest of `repeats` runs over every sample (the machine is shared,
    and the first run warms up); returns the output shapes."""
    start = time.perf_counter()
    session = _session(path)
    result.dense_session_s = time.perf_counter() - start
    shapes, times = None, []
    for _ in range(repeats):
        start = time.perf_counter()
        for feed in batches(session, data):
            outputs = session.run(None, feed)
            shapes = shapes or [o.shape for o in outputs]
        times.append(time.perf_counter() - start)
    result.dense_run_s = min(times)
    del session
    gc.collect()
    return shapes


def check_pruned(path: Path, data: dict[str, np.ndarray], dense_shapes: list[tuple[int, ...]]) -> str:
    """'ok' if the pruned model loads in onnxruntime and gives the dense output shapes on one batch."""
    try:
        session = _session(path)
        outputs = session.run(None, next(batches(session, data)))
    except Exception as error:  # noqa: BLE001 - any failure is the answer
        return f"fails in onnxruntime: {str(error).strip().splitlines()[0][:200]}"
    shapes = [o.shape for o in outputs]
    if len(shapes) != len(dense_shapes) or any(a[1:] != b[1:] for a, b in zip(shapes, dense_shapes)):
        return f"output shapes {shapes}, dense gave {dense_shapes}"
    return "ok"


# --- the spa process -------------------------------------------------------------------------------

@dataclass
class Run:
    exit: int
    seconds: float
    peak_rss: int
    why_stopped: str = ""  # "timeout" or "killed (RSS)"


def run_limited(command: list[str], cwd: Path, out: Path, timeout: float, max_rss: int) -> Run:
    """Run `command` (stdout/stderr to out.*); SIGTERM past `timeout` s or `max_rss` bytes, SIGKILL
    KILL_GRACE_S later. Peak RSS is the child's own ru_maxrss (os.wait4), never an earlier child's."""
    with open(out.with_suffix(".stdout"), "w") as stdout, open(out.with_suffix(".stderr"), "w") as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, stdout=stdout, stderr=stderr)
        stopped: list[str] = []
        done = threading.Event()

        def watch() -> None:
            sampled, signalled_at = 0, None
            while not done.wait(SAMPLE_EVERY_S):
                elapsed = time.perf_counter() - start
                sampled = max(sampled, process_rss(process.pid) or 0)
                if signalled_at is None and (elapsed > timeout or sampled > max_rss):
                    stopped.append("timeout" if elapsed > timeout else "killed (RSS)")
                    signalled_at = elapsed
                    process.send_signal(signal.SIGTERM)
                elif signalled_at is not None and elapsed - signalled_at > KILL_GRACE_S:
                    process.kill()
                    return

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        done.set()
        watcher.join()
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, so Popen must not wait again
    return Run(process.returncode, seconds, usage.ru_maxrss * 1024, stopped[0] if stopped else "")


# --- one case --------------------------------------------------------------------------------------

def run_case(case: Case, args: argparse.Namespace, workdir: Path, built: dict[str, tuple[Path, float]]) -> Result:
    result = Result(case.name, case.samples)
    rng = np.random.default_rng(0)
    if case.model not in built:
        path = workdir / f"{case.model}.onnx"
        log(f"[{case.name}] building {case.model}")
        start = time.perf_counter()
        {"resnet50": _build_resnet50, "bert": _build_bert,
         "decoder": lambda p: _build_decoder(p, args.decoder_seq)}[case.model](path)
        built[case.model] = (path, time.perf_counter() - start)
    model, result.build_s = built[case.model]
    result.model_bytes = model_bytes(model)
    data = {"resnet50": _images, "bert": _bert_tokens,
            "decoder": lambda n, r: {"input_ids": r.integers(0, DECODER["vocab"], (n, args.decoder_seq),
                                                             dtype=np.int64)}}[case.model](case.samples, rng)
    calib = workdir / f"{case.name}.calib.npz"
    np.savez(calib, **data)

    log(f"[{case.name}] dense onnxruntime over {case.samples} samples")
    dense_shapes = time_dense(model, data, result, args.dense_repeats)
    result.load_before = os.getloadavg()[0]

    pruned, report = workdir / f"{case.name}.pruned.onnx", workdir / f"{case.name}.report.json"
    command = [*shlex.split(args.spa_python), "-m", "spa.cli", "prune", str(model), "--criterion", "obs",
               "--calib", str(calib), "--calib-samples", str(case.samples), "--ratio", str(args.ratio),
               "-o", str(pruned), "--report", str(report), *shlex.split(args.prune_args)]
    log(f"[{case.name}] {shlex.join(command)} (timeout {args.timeout:.0f} s)")
    run = run_limited(command, workdir, workdir / case.name, args.timeout, int(args.max_rss_gib * GIB))
    result.load_after = os.getloadavg()[0]
    result.spa_exit, result.spa_peak_rss = run.exit, run.peak_rss
    result.spa_s = run.seconds
    result.status = run.why_stopped or ("ok" if run.exit == 0 else f"exit {run.exit}")
    result.stderr_tail = " | ".join((workdir / f"{case.name}.stderr").read_text().strip().splitlines()[-3:])
    if result.status == "ok":
        result.pruned = check_pruned(pruned, data, dense_shapes) if pruned.exists() else "not written"
        result.params_before = count_params(model)
        result.params_after = count_params(pruned) if pruned.exists() else None
    result.targets = targets(case, result)
    for suffix in (".pruned.onnx", ".calib.npz"):  # keep the disk free for the next case
        for leftover in workdir.glob(f"{case.name}{suffix}*"):
            leftover.unlink()
    return result


def targets(case: Case, r: Result) -> list[str]:
    """Each target of the case with its measured value and ok / MISSED (a timeout misses them all)."""
    finished = r.status == "ok"
    out = []
    if case.max_slowdown is not None:
        ratio = r.spa_s / r.dense_run_s
        out.append(f"spa/dense <= {case.max_slowdown:g}x: {ratio:.0f}x "
                   + ("ok" if finished and ratio <= case.max_slowdown else "MISSED"))
    if case.max_rss_gib is not None:
        rss = r.spa_peak_rss / GIB
        out.append(f"peak < {case.max_rss_gib:g} GiB: {rss:.2f} GiB "
                   + ("ok" if finished and rss < case.max_rss_gib else "MISSED"))
    if case.max_rss_of_file is not None:
        times = r.spa_peak_rss / r.model_bytes
        out.append(f"peak < {case.max_rss_of_file:g}x file ({case.max_rss_of_file * r.model_bytes / GIB:.2f} GiB): "
                   f"{times:.2f}x " + ("ok" if finished and times < case.max_rss_of_file else "MISSED"))
    return out


# --- output ----------------------------------------------------------------------------------------

def row(case: Case, r: Result) -> list[str]:
    spa = "-" if r.spa_s is None else (f">{r.spa_s:.0f}" if r.status == "timeout" else f"{r.spa_s:.1f}")
    ratio = "-" if r.spa_s is None or not r.dense_run_s else f"{r.spa_s / r.dense_run_s:.0f}x"
    ratio = f">{ratio}" if r.status == "timeout" and ratio != "-" else ratio
    params = (f"{r.params_before / 1e6:.1f}M -> {r.params_after / 1e6:.1f}M"
              if r.params_before and r.params_after is not None else "-")
    dense = f"{r.dense_run_s:.2f} (+{r.dense_session_s:.1f})"
    return [case.name, case.description, f"{r.model_bytes / GIB:.2f}", dense,
            spa, ratio, "-" if r.spa_peak_rss is None else f"{r.spa_peak_rss / GIB:.2f}", r.status, r.pruned or "-",
            params, "; ".join(r.targets) or "-", f"{r.load_before:.1f}/{r.load_after:.1f}"]


HEADER = ["case", "what", "model GiB", "dense s (+session)", "spa s", "spa/dense", "spa peak RSS GiB", "spa",
          "pruned in ORT", "params", "targets", "load avg before/after"]


def markdown(rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
                     + ["| " + " | ".join(line) + " |" for line in rows])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(CASES), help=f"comma-separated, from {', '.join(CASES)}")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per spa run (default 900)")
    parser.add_argument("--spa-python", default=sys.executable,
                        help="the python that runs `-m spa.cli` (default: this one; PYTHONPATH is passed on)")
    parser.add_argument("--ratio", type=float, default=0.4)
    parser.add_argument("--dense-repeats", type=int, default=2, help="dense passes, the fastest counts (default 2)")
    parser.add_argument("--prune-args", default="", help="more `spa prune` arguments")
    parser.add_argument("--decoder-seq", type=int, default=128, help="tokens per decoder sequence (default 128)")
    parser.add_argument("--max-rss-gib", type=float, default=16.0, help="stop spa past this RSS (default 16)")
    parser.add_argument("--dir", type=Path, help="parent of the temporary folder (default: the system's)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--out", type=Path, help="also write the table (markdown) here, and JSON beside it")
    args = parser.parse_args()
    args.only = [name for name in args.only.split(",") if name]
    unknown = [name for name in args.only if name not in CASES]
    if unknown:
        parser.error(f"unknown case {unknown[0]!r} (choose from {', '.join(CASES)})")
    return args


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)
    args = parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="spa-bench-scale-", dir=args.dir))
    log(f"work folder {workdir}; onnxruntime {ort.__version__}, {os.cpu_count()} cores, nice {os.nice(0)}")
    built: dict[str, tuple[Path, float]] = {}
    results, rows = [], []
    try:
        for name in args.only:
            case = CASES[name]
            try:
                result = run_case(case, args, workdir, built)
            except Exception as error:  # noqa: BLE001 - the other cases still run
                result = Result(case.name, case.samples, status=f"error: {type(error).__name__}: {error}"[:200])
            results.append(result)
            rows.append(row(case, result))
            print(" ".join(f"{h}={v}" for h, v in zip(HEADER, rows[-1])))
            if result.status != "ok" and result.stderr_tail:
                print(f"  spa stderr: {result.stderr_tail}")
    finally:
        if args.keep:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    table = markdown(rows)
    print("\n" + table)
    if args.out:
        command = "python tools/bench_scale.py " + shlex.join(sys.argv[1:])
        args.out.write_text(f"`{command}`, onnxruntime {ort.__version__}, {os.cpu_count()} cores, random "
                            f"weights and calibration data; dense s = onnxruntime over the calibration samples "
                            f"(session creation in parentheses)\n\n{table}\n")
        args.out.with_suffix(".json").write_text(json.dumps([asdict(r) for r in results], indent=1))
    missed = [r.case for r in results if r.status != "ok" or r.pruned != "ok"]
    sys.exit(1 if missed else 0)


if __name__ == "__main__":
    main()
