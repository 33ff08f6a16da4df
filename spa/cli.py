"""The `spa` command: prune, inspect, bench, compare, sweep. Errors are one line and a non-zero exit."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path

from spa.errors import SpaError

EXIT_ERROR, EXIT_USAGE, EXIT_INTERNAL, EXIT_DIFFER = 1, 2, 3, 4  # EXIT_DIFFER: spa compare found outputs apart


class UsageError(SpaError):
    """Wrong arguments."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not usage + error
        command = self.prog.split()[-1]
        raise UsageError(f"{message} (see {'spa' if command == 'spa' else f'spa {command}'} --help)")


def _kinds(text: str) -> tuple[str, ...]:
    from spa.analyze import KINDS
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"unknown kind {unknown[0] if unknown else text!r}; choose from {', '.join(KINDS)}")
    return kinds


def _number(accepts, range_text: str):
    """An argparse type: a float that `accepts` (NaN never does)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text}") from None
        if not accepts(value):
            raise argparse.ArgumentTypeError(f"must be {range_text}, got {text}")
        return value
    return parse


_ratio = _number(lambda v: 0 <= v < 1, "in [0, 1)")
_fraction = _number(lambda v: 0 < v <= 1, "in (0, 1]")
_damping = _number(lambda v: 0 <= v < float("inf"), "a finite number >= 0")
_tolerance = _damping


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text}")
    return int(text)


def _round_to(text: str) -> str:
    return text if text == "auto" else str(_positive(text))


def _ratios(text: str) -> list[float]:
    from spa.sweep import parse_ratios
    try:
        return parse_ratios(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _criteria(text: str) -> list[str]:
    from spa.sweep import parse_criteria
    try:
        return parse_criteria(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    # imported here, not at the top: start-up stays inside main()'s error handling (Ctrl-C included)
    from spa.analyze import DEFAULT_TARGETS, KINDS
    from spa.criteria.obs import DEFAULT_DAMPING
    from spa.criteria import CRITERIA
    from spa.criteria.base import DEFAULT_CRITERION
    from spa.criteria.score import NORMALIZATIONS, REDUCTIONS
    from spa.select import SCOPES
    from spa import _version
    parser = _Parser(prog="spa", description="Structurally prune ONNX models.")
    parser.add_argument("--version", action="version", version=f"spa {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = commands.add_parser("prune", help="remove channels; writes IN_STEM.pruned.onnx")
    p.add_argument("model", type=Path)
    p.add_argument("-o", "--output", type=Path)
    p.add_argument("--ratio", type=_ratio, help="fraction of each group's channels to remove (of all, with --scope global)")
    p.add_argument("--target-macs", type=_fraction, metavar="F", help="prune until MACs are F of the original")
    p.add_argument("--target-params", type=_fraction, metavar="F", help="prune until parameters are F of the original")
    p.add_argument("--target-latency", type=_fraction, metavar="F",
                   help="prune until onnxruntime latency is F of the original (predicted from a profile, then measured)")
    p.add_argument("--threads", type=_positive, default=1, help="onnxruntime threads latency is measured at")
    p.add_argument("--criterion", choices=list(CRITERIA), default=DEFAULT_CRITERION, help="how channels are ranked (README: Criteria)")
    p.add_argument("--scope", choices=SCOPES, default="local",
                   help="local: every group loses the ratio; global: one ranking across groups")
    p.add_argument("--max-ratio", type=_fraction, default=0.9, help="global scope: most any group may lose")
    p.add_argument("--reduce", choices=REDUCTIONS, default="sum", help="how a channel's member scores combine")
    p.add_argument("--normalize", choices=NORMALIZATIONS, default="mean", help="how a group's scores are scaled")
    p.add_argument("--steps", type=_positive, default=1, help="reach the target in N prune-and-rescore steps")
    p.add_argument("--calib", type=Path, metavar="DATA", help=".npz named after the inputs, or a folder of .npz/.npy")
    p.add_argument("--calib-samples", type=_positive, metavar="N", help="use at most N calibration samples")
    p.add_argument("--correct-stats", action=argparse.BooleanOptionalAction, default=None,
                   help="restore output statistics of layers that lost inputs "
                        "(default: on with --calib, and without it where the model has BatchNorm)")
    p.add_argument("--no-batchnorm-stats", dest="batchnorm_stats", action="store_false",
                   help="without --calib: synthetic inputs alone, BatchNorm nodes not renormalizing them")
    p.add_argument("--folded-estimates", action="store_true",
                   help="without --calib: also renormalize each Conv with a bias to the moments a BatchNorm "
                        "folded into it would give (a guess: README, Data-free pruning)")
    p.add_argument("--memory-budget", default="1G", metavar="SIZE",
                   help="calibration activations kept in memory (e.g. 512M, 4G); past it they go to a temporary file")
    p.add_argument("--damping", type=_damping, default=DEFAULT_DAMPING, help="obs/greedy: Hessian damping, x mean diagonal")
    p.add_argument("--ignore", nargs="+", default=[], metavar="NAME", help="nodes or initializers to keep whole")
    p.add_argument("--round-to", type=_round_to, default="auto", metavar="N|auto",
                   help="kept widths are multiples of N; auto (default): of onnxruntime's channel block "
                        "(16 with AVX-512) where a Conv reads or makes them, any width for MatMul")
    p.add_argument("--min-keep", type=_positive, default=1)
    p.add_argument("--report", type=Path, help="write a JSON report of what was removed")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors (the exit code and --report say the rest)")
    p.add_argument("--json", action="store_true", help="print the JSON report (as --report writes it) instead of the summary")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target", type=_kinds, default=DEFAULT_TARGETS, metavar="KINDS",
                   help=f"comma-separated kinds to prune, of {','.join(KINDS)} (default: {','.join(DEFAULT_TARGETS)})")
    p.add_argument("--include-inexact", action="store_true",
                   help="also prune groups whose removal changes other channels (e.g. LayerNorm)")
    p.add_argument("--write-unchanged", action="store_true", help="write the model even if nothing is prunable")

    i = commands.add_parser("inspect", help="show coupled channel groups and why any are kept whole")
    i.add_argument("model", type=Path)
    i.add_argument("--json", action="store_true")
    i.add_argument("--ignore", nargs="+", default=[], metavar="NAME")

    b = commands.add_parser("bench", help="parameters, MACs and onnxruntime latency of two models")
    b.add_argument("model_a", type=Path)
    b.add_argument("model_b", type=Path)
    b.add_argument("--runs", type=_positive, default=50)
    b.add_argument("--warmup", type=_positive, default=5)
    b.add_argument("--threads", type=_positive, default=1)
    b.add_argument("--json", action="store_true")
    b.add_argument("--per-node", action="store_true",
                   help="also profile both in onnxruntime: time per node before, after, and as predicted")

    from spa.compare import DEFAULT_ATOL, DEFAULT_RTOL, SYNTHETIC_SAMPLES
    c = commands.add_parser("compare", help="how far B's outputs are from A's; exit 4 if any output is out of tolerance")
    c.add_argument("model_a", type=Path, metavar="A", help="the reference")
    c.add_argument("model_b", type=Path, metavar="B")
    c.add_argument("--calib", type=Path, metavar="DATA", help="inputs: .npz named after the inputs, or a folder of "
                   f".npz/.npy (default: {SYNTHETIC_SAMPLES} synthetic samples)")
    c.add_argument("--samples", type=_positive, metavar="N", help="compare on at most N samples")
    c.add_argument("--atol", type=_tolerance, default=DEFAULT_ATOL, help="pass: |A-B| <= atol + rtol*|A| everywhere")
    c.add_argument("--rtol", type=_tolerance, default=DEFAULT_RTOL)
    c.add_argument("--json", action="store_true")

    from spa.sweep import LATENCY_RUNS
    s = commands.add_parser("sweep", help="prune at many (criterion, ratio) settings; fidelity, cost and latency of each")
    s.add_argument("model", type=Path)
    s.add_argument("--ratios", type=_ratios, default="0.1:0.7:0.1", metavar="A:B:STEP|R,R,...",
                   help="ratios from A to B (inclusive) in steps of STEP, or a list (default: 0.1:0.7:0.1)")
    s.add_argument("--criteria", type=_criteria, default=DEFAULT_CRITERION, metavar="C,C,...",
                   help=f"comma-separated criteria, of {','.join(CRITERIA)} (default: {DEFAULT_CRITERION})")
    s.add_argument("--calib", type=Path, metavar="DATA", help="calibration data for pruning and for fidelity "
                   "(default: synthetic inputs)")
    s.add_argument("--out", type=Path, metavar="DIR", help="where sweep.csv/json/png/html go (default: IN_STEM.sweep/)")
    s.add_argument("--workers", type=_positive, default=1, help="settings run in a pool of N processes")
    s.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: a process pool; ray: one Ray task per setting (pip install 'spa-prune[ray]')")
    s.add_argument("--ray-address", metavar="ADDR", help="with --executor ray: the cluster to join (default: a local one)")
    s.add_argument("--metric", metavar="MODULE:FUNCTION",
                   help="called with each pruned model's path; returns a number, higher is better")
    s.add_argument("--runs", type=_positive, default=LATENCY_RUNS, help="interleaved onnxruntime runs per latency ratio")
    s.add_argument("--threads", type=_positive, default=1, help="onnxruntime threads latency is measured at")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true", help="print sweep.json's document instead of the table")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; every failure ends as one line on stderr and a non-zero exit."""
    interrupted: list[bool] = []  # Ctrl-C seen: whatever fails after it (an import cut short) is the interrupt
    try:
        with _guarded_stderr() as stderr, _interrupt_noted(interrupted):
            return _run(argv, stderr, interrupted)
    except KeyboardInterrupt:  # it came while stderr was being restored: spa's line is already out, or goes now
        if len(interrupted) <= 1:
            _say(sys.stderr, "spa: interrupted; nothing written")
        return 130


def _run(argv: list[str] | None, stderr, interrupted: list[bool]) -> int:
    try:
        with _terminate_as_exit():
            args = build_parser().parse_args(argv)
            return {"prune": _prune, "inspect": _inspect, "bench": _bench, "compare": _compare,
                    "sweep": _sweep}[args.command](args)
    except SpaError as error:
        _say(stderr, f"spa: error: {error}")
        return EXIT_USAGE if isinstance(error, UsageError) else EXIT_ERROR
    except KeyboardInterrupt:
        interrupted.append(True)
        _say(stderr, "spa: interrupted; nothing written")
        return 130
    except _Terminated:
        _say(stderr, "spa: terminated; nothing written")
        return 143
    except BrokenPipeError:  # `spa inspect model.onnx | head`: the reader has all it wants
        _quiet_stdout()
        return 0
    except Exception as error:  # noqa: BLE001 - never a traceback unless asked for
        if interrupted:  # e.g. "ImportError: initialization failed" from an extension cut short by Ctrl-C
            _say(stderr, "spa: interrupted; nothing written")
            return 130
        if os.environ.get("SPA_DEBUG"):
            traceback.print_exc(file=stderr)
        message = str(error).strip().splitlines()[0] if str(error).strip() else ""
        _say(stderr, f"spa: internal error: {type(error).__name__}: {message} (SPA_DEBUG=1 shows more)")
        return EXIT_INTERNAL


@contextlib.contextmanager
def _interrupt_noted(interrupted: list[bool]) -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt as usual, and is remembered in `interrupted`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        interrupted.append(True)
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _say(stream, line: str) -> None:
    stream.write(line + "\n")
    stream.flush()


class _Terminated(BaseException):
    """SIGTERM (timeout, CI cancellation, docker stop): unwinds like Ctrl-C, so scratch
    files are removed on the way out."""


@contextlib.contextmanager
def _terminate_as_exit() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise _Terminated()
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _guarded_stderr() -> Iterator:
    """spa's own messages go to stderr; anything else written there while spa works (a
    library's log lines, a warning) is held back and shown only with SPA_DEBUG=1. Yields
    the stream spa's messages go to."""
    debug = bool(os.environ.get("SPA_DEBUG"))
    with warnings.catch_warnings():
        if not debug:
            warnings.simplefilter("ignore")
        with _captured_fd(2, enabled=not debug) as captured_text:
            yield sys.stderr
    if debug and captured_text():
        sys.stderr.write(captured_text())


@contextlib.contextmanager
def _captured_fd(fd: int, enabled: bool) -> Iterator:
    """Point file descriptor `fd` at a temporary file; `sys.stderr` keeps writing to the
    original through a duplicate. Yields a function returning what was captured."""
    if not enabled:
        yield lambda: ""
        return
    try:
        sys.stderr.flush()
        if sys.stderr.fileno() != fd:
            raise ValueError("stderr is not the process's")
        saved = os.dup(fd)
    except (OSError, ValueError, AttributeError):  # stderr replaced (a test, a host program): leave it be
        yield lambda: ""
        return
    sink = tempfile.TemporaryFile()
    original_stream = sys.stderr
    os.dup2(sink.fileno(), fd)
    sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, closefd=True)
    try:
        yield lambda: (sink.seek(0), sink.read().decode(errors="replace"))[1]
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
            sys.stderr.close()
        sys.stderr = original_stream
        os.dup2(saved, fd)
        os.close(saved)
        sink.close()


def _quiet_stdout() -> None:
    """After a broken pipe, further writes to stdout (at exit) must not fail again."""
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _prune(args: argparse.Namespace) -> int:
    from spa.api import prune
    from spa.report import prune_summary
    goals = [g for g in (args.ratio, args.target_macs, args.target_params, args.target_latency) if g is not None]
    if len(goals) != 1:
        raise UsageError("give one of --ratio, --target-macs, --target-params, --target-latency (see spa prune --help)")
    output = args.output or default_output(args.model)
    result = prune(args.model, args.ratio or 0.0, criterion=args.criterion, round_to=args.round_to,
                   min_keep=args.min_keep, ignore=args.ignore, seed=args.seed,
                   include_inexact=args.include_inexact, targets=args.target,
                   output=output, write_unchanged=args.write_unchanged, scope=args.scope,
                   max_ratio=args.max_ratio, reduce=args.reduce, normalize=args.normalize,
                   target_macs=args.target_macs, target_params=args.target_params,
                   target_latency=args.target_latency, threads=args.threads, steps=args.steps,
                   calib=args.calib, calib_samples=args.calib_samples, correct_stats=args.correct_stats,
                   batchnorm_stats=args.batchnorm_stats, folded_estimates=args.folded_estimates,
                   damping=args.damping, memory_budget=args.memory_budget, report=args.report)
    say = (lambda text: None) if args.quiet or args.json else print
    if args.json and not args.quiet:
        print(json.dumps(result.report, indent=2))
    if result.written is None:
        say(f"spa: nothing to prune in {args.model}: {nothing_reason(result)} (see `spa inspect {args.model}`); "
            "nothing written")
        return 0
    say(f"spa: pruned {args.model} -> {output} ({_how(args, result.report)})")
    if result.report["caution"]:
        say(f"spa: note: {result.report['caution']}")
    say(prune_summary(result.report))
    return 0


def nothing_reason(result) -> str:
    """Why a model has nothing to prune, in a few words."""
    from spa.report import groups_line
    unsupported = result.analysis.state.unsupported
    ops = ", ".join(f"{op} ({count})" for op, count in sorted(unsupported.items(), key=lambda kv: -kv[1])[:3])
    if not result.analysis.groups:
        return f"no channels it can follow{'; not supported: ' + ops if ops else ''}"
    line = groups_line(result.report["groups"]).split(", ", 1)[-1]  # "N kept whole: reasons"
    return f"{len(result.analysis.groups)} groups, {line}{'; not supported: ' + ops if ops else ''}"


def default_output(model: Path) -> Path | None:
    """IN_STEM.pruned.onnx beside the input (None where the input is no file name at all;
    loading it then says what is wrong)."""
    named = model if model.name not in ("", ".", "..") else model.resolve()
    return named.with_name(f"{named.stem}.pruned.onnx") if named.name else None


def _how(args: argparse.Namespace, report: dict) -> str:
    targets = {"macs": args.target_macs, "params": args.target_params, "latency": args.target_latency}
    goal = (f"ratio {args.ratio}" if args.ratio is not None else
            next(f"target {name} {value}" for name, value in targets.items() if value is not None))
    calibration = report["calibration"]
    source = calibration and calibration["source"] + (" + BatchNorm" if calibration["batchnorm"] else "")
    size = calibration and calibration.get("open_size")
    data = (f", calibration {source} ({calibration['samples']} samples{f', open dims of size {size}' if size else ''})"
            if calibration else "")
    stats = ", statistics corrected" if report["correct_stats"] else ""
    return f"{args.criterion}, {args.scope} {goal}, round-to {args.round_to}{data}{stats}"


def _inspect(args: argparse.Namespace) -> int:
    from spa.api import inspect
    from spa.report import inspect_table
    analysis = inspect(args.model, args.ignore)
    print(json.dumps(analysis.to_json()) if args.json else inspect_table(analysis, title=str(args.model)))
    return 0


def _bench(args: argparse.Namespace) -> int:
    from spa.bench import bench, format_bench, format_per_node, per_node
    result = bench(args.model_a, args.model_b, runs=args.runs, warmup=args.warmup, threads=args.threads)
    if args.per_node:
        result["per_node"] = per_node(args.model_a, args.model_b, threads=args.threads)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_bench(result) + ("\n\n" + format_per_node(result["per_node"]) if args.per_node else ""))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from spa.compare import compare, format_compare
    result = compare(args.model_a, args.model_b, calib=args.calib, samples=args.samples, atol=args.atol, rtol=args.rtol)
    print(json.dumps(result, indent=2) if args.json else format_compare(result))
    return 0 if result["passed"] else EXIT_DIFFER


def _sweep(args: argparse.Namespace) -> int:
    from spa import sweep
    from spa.io.load import load_model
    load_model(args.model)  # a bad model is one error, not one per setting
    if args.metric is not None:
        sweep.load_metric(args.metric)
    out = args.out or default_sweep_folder(args.model)
    calib = None if args.calib is None else str(args.calib)
    jobs = [sweep.Job(str(args.model), setting, calib, args.metric, args.runs, args.threads, args.seed)
            for setting in sweep.settings(args.criteria, args.ratios)]
    quiet = args.json
    done = []

    def progress(row: dict) -> None:
        done.append(row)
        if not quiet:
            state = f"error: {row['error']}" if row["error"] else f"{row['seconds']:.1f} s"
            print(f"spa: [{len(done)}/{len(jobs)}] {row['criterion']} {row['ratio']:g}: {state}", flush=True)
    rows = sweep.run_sweep(jobs, workers=args.workers, on_row=progress, executor=args.executor,
                           address=args.ray_address)
    use_metric = args.metric is not None
    fronts = sweep.mark_pareto(rows, use_metric)
    document = sweep.sweep_document(str(args.model), rows, fronts, use_metric, args.metric, calib, args.runs,
                                    args.threads)
    written = sweep.write_outputs(document, out, use_metric, args.metric)
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    print(sweep.format_table(rows, use_metric))
    if not sweep.has_matplotlib():
        print("spa: matplotlib is not installed (pip install 'spa-prune[plot]'): no sweep.png or sweep.html")
    print(f"spa: wrote {', '.join(str(p) for p in written)}")
    return 0 if all(row["error"] is None for row in rows) else EXIT_ERROR


def default_sweep_folder(model: Path) -> Path:
    named = model if model.name not in ("", ".", "..") else model.resolve()
    return named.with_name(f"{named.stem}.sweep")


if __name__ == "__main__":
    sys.exit(main())
