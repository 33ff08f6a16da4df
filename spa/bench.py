"""Compare onnxruntime CPU latency and static cost of two models (before / after pruning)."""

from __future__ import annotations

import os
import time

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from spa.errors import SpaError
from spa.io.inputs import make_inputs
from spa.io.load import load_model
from spa.latency import LatencyModel, profile
from spa.metrics import summarize
from spa.tables import Column, render, right
from spa.io.runtime import ort_message, session

ModelLike = onnx.ModelProto | str | os.PathLike


def _load(model: ModelLike) -> tuple[onnx.ModelProto, onnx.ModelProto | Path]:
    """The validated proto for metrics and what to give onnxruntime. A path is passed as a
    path so onnxruntime resolves external data itself; the proto is loaded without it."""
    loaded = load_model(model)
    return loaded.model, loaded.path if loaded.path is not None else loaded.model


def _session(source: onnx.ModelProto | Path, threads: int, label: str) -> ort.InferenceSession:
    try:
        return session(source, threads=threads, optimize="all", spinning=False)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises many types
        raise SpaError(f"{label} cannot be loaded by onnxruntime: {ort_message(error)}") from None


def _same_inputs(session_a: ort.InferenceSession, session_b: ort.InferenceSession) -> None:
    """B may have dropped an input that pruning made unused, nothing else."""
    inputs_a = {i.name: i.type for i in session_a.get_inputs()}
    extra = [f"{i.name} ({i.type})" for i in session_b.get_inputs() if inputs_a.get(i.name) != i.type]
    if extra:
        raise SpaError(f"the models take different inputs: the second needs {', '.join(extra)}, "
                       f"the first takes {', '.join(inputs_a)}")


def _timed_run(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> float:
    start = time.perf_counter()
    session.run(None, feed)
    return (time.perf_counter() - start) * 1000.0


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def _model_report(times_ms: list[float], summary: dict) -> dict:
    p10, median, p90 = np.percentile(times_ms, [10, 50, 90])
    return {
        "median_ms": float(median),
        "p10_ms": float(p10),
        "p90_ms": float(p90),
        "params": summary["params"],
        "macs": summary["macs"],
        "size_bytes": summary["size_bytes"],
    }


def bench(
    model_a: ModelLike,
    model_b: ModelLike,
    runs: int = 50,
    warmup: int = 5,
    threads: int = 1,
    seed: int = 0,
    dim_values: dict[str, int] | None = None,
    feeds: dict[str, np.ndarray] | None = None,
) -> dict:
    """Latency (interleaved A, B, A, B, ... on `feeds`, or one random feed built from A's inputs)
    and static cost of two models. Returns a JSON-serializable dict with per-model
    "a" and "b" reports and top-level speedup (median_a / median_b), macs_ratio and
    params_ratio (b / a) and promised_speedup (1 / macs_ratio); a ratio with a zero
    denominator is None."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    proto_a, source_a = _load(model_a)
    proto_b, source_b = _load(model_b)
    session_a, session_b = _session(source_a, threads, "the first model"), _session(source_b, threads, "the second model")
    _same_inputs(session_a, session_b)
    feed_a = feeds if feeds is not None else make_inputs(proto_a, seed=seed, dim_values=dim_values)
    names_b = {value.name for value in session_b.get_inputs()}
    feed_b = {name: array for name, array in feed_a.items() if name in names_b}
    for label, (run_session, feed) in (("first", (session_a, feed_a)), ("second", (session_b, feed_b))):
        try:
            run_session.run(None, feed)
        except Exception as error:  # noqa: BLE001 - onnxruntime raises many types
            raise SpaError(f"the {label} model fails in onnxruntime on a synthetic input: {ort_message(error)}") from None

    for _ in range(warmup):
        session_a.run(None, feed_a)
        session_b.run(None, feed_b)
    times_a, times_b = [], []
    for _ in range(runs):
        times_a.append(_timed_run(session_a, feed_a))
        times_b.append(_timed_run(session_b, feed_b))

    # MACs at the inputs timed: where shape inference stops (a contrib op), shapes are measured
    report_a = _model_report(times_a, summarize(proto_a, dim_values, feeds=feed_a))
    report_b = _model_report(times_b, summarize(proto_b, dim_values, feeds=feed_b))
    return {
        "a": report_a,
        "b": report_b,
        "speedup": _ratio(report_a["median_ms"], report_b["median_ms"]),
        "macs_ratio": _ratio(report_b["macs"], report_a["macs"]),
        "params_ratio": _ratio(report_b["params"], report_a["params"]),
        "promised_speedup": _ratio(report_a["macs"], report_b["macs"]),
        "runs": runs,
        "threads": threads,
    }


def _format_value(value: float | int | None, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "ms":
        return f"{value:.3f}"
    if unit == "x":
        return f"{value:.3f}x"
    return f"{value:,}"


def format_bench(result: dict) -> str:
    """Aligned before / after / ratio table of a `bench` result."""
    a, b = result["a"], result["b"]
    rows = [
        ("median ms", "median_ms", "ms"),
        ("p10 ms", "p10_ms", "ms"),
        ("p90 ms", "p90_ms", "ms"),
        ("params", "params", ""),
        ("MACs", "macs", ""),
        ("size bytes", "size_bytes", ""),
    ]
    table = []
    for label, key, unit in rows:
        ratio = _ratio(b[key], a[key])
        table.append((label, _format_value(a[key], unit), _format_value(b[key], unit), _format_value(ratio, "x")))
    columns = [Column(""), right("before"), right("after"), right("after/before")]
    lines = [render(columns, table, title="latency and cost")]
    lines.append(
        f"speedup {_format_value(result['speedup'], 'x')} "
        f"(MACs promise {_format_value(result['promised_speedup'], 'x')}), "
        f"{result['runs']} runs, {result['threads']} thread(s)"
    )
    return "\n".join(lines)


def per_node(model_a: ModelLike, model_b: ModelLike, threads: int = 1, seed: int = 0,
             dim_values: dict[str, int] | None = None) -> dict:
    """Where onnxruntime's time goes, before and after: each node of A (keyed by its first
    output, which pruning keeps) with its kernels' time in A, in B, and as spa's latency
    model predicts it for B from A's profile; then the time no node accounts for."""
    proto_a, source_a = _load(model_a)
    proto_b, source_b = _load(model_b)
    feeds = make_inputs(proto_a, seed=seed, dim_values=dim_values)
    model = LatencyModel.of(proto_a, source_a, feeds, threads)
    names_b = {value.name for value in proto_b.graph.input}
    after = profile(proto_b, source_b, {k: v for k, v in feeds.items() if k in names_b}, threads)
    predicted = model.predict(proto_b)
    nodes = [{"node": key, "op": model.profile.kernels[key], "before_ms": ms, "after_ms": after.node_ms.get(key, 0.0),
              "predicted_ms": predicted.node_ms[key]}
             for key, ms in sorted(model.profile.node_ms.items(), key=lambda item: -item[1])]
    unmatched = sum(ms for key, ms in after.node_ms.items() if key not in model.profile.node_ms)
    return {"nodes": nodes, "threads": threads,
            "untraced_ms": {"before": model.profile.untraced_ms, "after": after.untraced_ms + unmatched},
            "overhead_ms": {"before": model.profile.overhead_ms, "after": after.overhead_ms},
            "wall_ms": {"before": model.profile.wall_ms, "after": after.wall_ms, "predicted": predicted.ms}}


def format_per_node(result: dict, top: int = 15) -> str:
    """The `top` slowest nodes of A, then the other nodes, untraced kernels, overhead and the total."""
    table = []
    for row in result["nodes"][:top]:
        name = row["node"] if len(row["node"]) <= 48 else "..." + row["node"][-45:]
        table.append((name, row["op"], *(f"{row[k]:.3f}" for k in ("before_ms", "after_ms", "predicted_ms"))))
    rest = result["nodes"][top:]
    if rest:
        table.append((f"{len(rest)} other nodes", "", *(f"{sum(r[k] for r in rest):.3f}"
                                                         for k in ("before_ms", "after_ms", "predicted_ms"))))
    untraced, overhead, wall = result["untraced_ms"], result["overhead_ms"], result["wall_ms"]
    table.append(("kernels traced to no node", "", f"{untraced['before']:.3f}", f"{untraced['after']:.3f}",
                  f"{untraced['before']:.3f}"))
    table.append(("between kernels", "", f"{overhead['before']:.3f}", f"{overhead['after']:.3f}",
                  f"{overhead['before']:.3f}"))
    table.append(("wall time per run", "", f"{wall['before']:.3f}", f"{wall['after']:.3f}", f"{wall['predicted']:.3f}"))
    columns = [Column("node"), Column("op"), right("before ms"), right("after ms"), right("predicted ms")]
    lines = [render(columns, table, title="time per node")]
    lines.append(f"onnxruntime profile, {result['threads']} thread(s); after/before {wall['after'] / wall['before']:.3f}, "
                 f"predicted {wall['predicted'] / wall['before']:.3f}")
    return "\n".join(lines)
