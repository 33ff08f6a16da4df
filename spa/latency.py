"""Predicted onnxruntime CPU latency of a pruned model, from a profile of the original.

onnxruntime's profiler times every kernel it runs, after its own fusions (one FusedConv
kernel may do a Conv, its BatchNorm, a residual Add and a Relu). Each kernel is traced back
to the node of the original graph it came from, by the names onnxruntime gives fused nodes
(the original node's name, or the tensor they make, with a suffix). A pruned model keeps
node and tensor names, so a kernel's time after pruning is predicted as its profiled time
scaled by how much work its node does after pruning against before:

- Conv, ConvTranspose, Gemm, MatMul: multiply-accumulates. A Conv whose channel counts
  leave onnxruntime's blocked NCHWc kernels (channel counts that are multiples of the block
  size, 16 with AVX-512, 8 with AVX2) runs the slower im2col path: OFF_BLOCK_COST per MAC.
- every other op: elements read and written (these kernels are memory-bound).

Kernels traced to no node (layout reorders and reshapes onnxruntime inserts) shrink as the
traced memory-bound kernels do together; the time between kernels stays as profiled.
"""
from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from spa.errors import SpaError
from spa.io.runtime import ModelSource, ort_message, session
from spa.metrics import Shape, node_macs, tensor_shapes

# Conv per MAC off the NCHWc path, against on it (tools/bench_widths.py: a width one short of
# a multiple of 16 runs 1.1-1.5x slower per MAC than the multiples; depthwise 2.5-5x).
OFF_BLOCK_COST = {"dense": 1.3, "depthwise": 4.0, "grouped": 1.3}
COMPUTE_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul", "QLinearConv", "QLinearMatMul", "ConvInteger",
               "MatMulInteger"}
PROFILED_RUNS = 10
# What onnxruntime adds to the name of the node or tensor a kernel computes, stripped in turn:
# NCHWc convs, fusions, fp16 nodes run in float, numbered copies, quantized nodes.
_NAME_ADDITIONS = [re.compile(pattern) for pattern in
                   (r"^fused ", r"^InsertedPrecisionFreeCast_", r"_nchwc$", r"[/_][A-Za-z0-9]*Fusion/?$",
                    r"_token_\d+$", r"_quant$")]


def block_size() -> int:
    """onnxruntime's NCHWc channel block on this CPU: 16 with AVX-512, 8 with AVX2, else 1 (no
    blocked kernels). numpy reads the same CPU feature flags onnxruntime's MLAS does."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy 1.x
        from numpy.core._multiarray_umath import __cpu_features__ as features
    if features.get("AVX512F"):
        return 16
    return 8 if features.get("AVX2") else 1


@dataclass
class Profile:
    """Per run of one model: the time of each original node's kernels (keyed by the node's
    first output), the kernel time traced to no node, and the wall time of a run."""
    node_ms: dict[str, float]
    untraced_ms: float
    wall_ms: float
    threads: int
    kernels: dict[str, str] = field(default_factory=dict)  # node key -> op of its longest kernel

    @property
    def overhead_ms(self) -> float:
        """Wall time no kernel accounts for (scheduling, copies between kernels)."""
        return max(0.0, self.wall_ms - sum(self.node_ms.values()) - self.untraced_ms)

    def fitted_to(self, wall_ms: float) -> Profile:
        """The same profile for a run of `wall_ms`: profiling slows a run (more so with many
        small kernels), so the wall time comes from a run without it, and kernel times are
        scaled down where they add up to more than that."""
        traced = sum(self.node_ms.values()) + self.untraced_ms
        scale = min(1.0, wall_ms / traced) if traced > 0 else 1.0
        return Profile({key: ms * scale for key, ms in self.node_ms.items()}, self.untraced_ms * scale,
                       wall_ms, self.threads, self.kernels)


def profile(model: onnx.ModelProto, source: ModelSource, feeds: dict[str, np.ndarray], threads: int = 1,
            runs: int = PROFILED_RUNS) -> Profile:
    """Run `source` (the model as onnxruntime should load it; `model` its graph) `runs` times
    after one warm-up run with onnxruntime's profiler on, and as many times without it for
    the wall time, at `threads` intra-op threads and full graph optimization, as users run it."""
    with tempfile.TemporaryDirectory(prefix="spa-profile-") as folder:
        try:
            profiled = session(source, threads=threads, optimize="all", spinning=False,
                               profile_prefix=str(Path(folder) / "profile"))
            for _ in range(runs + 1):
                profiled.run(None, feeds)
            events = json.loads(Path(profiled.end_profiling()).read_text())
            del profiled
            wall_ms = _median_run_ms(session(source, threads=threads, optimize="all", spinning=False), feeds, runs)
        except Exception as error:  # noqa: BLE001 - onnxruntime raises many types
            raise SpaError(f"onnxruntime cannot profile the model: {ort_message(error)}") from None
    return _profile_of(model, events, threads).fitted_to(wall_ms)


def _median_run_ms(runner: ort.InferenceSession, feeds: dict[str, np.ndarray], runs: int) -> float:
    runner.run(None, feeds)
    walls = []
    for _ in range(runs):
        start = time.perf_counter()
        runner.run(None, feeds)
        walls.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(walls))


def _run_of_kernels(events: list[dict]) -> list[tuple[int, dict]]:
    """Kernel events with the index of the run they belong to; the warm-up run (0) left out."""
    starts = np.array(sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"))
    kernels = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    indexed = [(int(np.searchsorted(starts, e["ts"], side="right")) - 1, e) for e in kernels]
    return [(run, e) for run, e in indexed if run >= 1]


def _profile_of(model: onnx.ModelProto, events: list[dict], threads: int) -> Profile:
    """Per node, the median over runs of its kernels' time (a run slowed by another process
    moves a mean, not a median); the wall time is the profiled runs' median."""
    tracer = _Tracer(model.graph)
    per_run: dict[str | None, dict[int, float]] = {}  # node key (None: untraced) -> run -> ms
    longest: dict[str, tuple[float, str]] = {}
    timed_runs = set()
    for run, event in _run_of_kernels(events):
        ms, op = event["dur"] / 1000.0, event.get("args", {}).get("op_name", "")
        key = tracer.node_key(event["name"].removesuffix("_kernel_time"), op)
        runs_of_key = per_run.setdefault(key, {})
        runs_of_key[run] = runs_of_key.get(run, 0.0) + ms
        timed_runs.add(run)
        if key is not None and ms > longest.get(key, (-1.0, ""))[0]:
            longest[key] = (ms, op)
    count = max(len(timed_runs), 1)
    median = {key: float(np.median(list(by_run.values()) + [0.0] * (count - len(by_run))))
              for key, by_run in per_run.items()}
    untraced = median.pop(None, 0.0)
    walls = [e["dur"] / 1000.0 for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"][1:]
    return Profile(median, untraced, float(np.median(walls)) if walls else 0.0, threads,
                   {key: op for key, (_, op) in longest.items()})


class _Tracer:
    """Which original node an onnxruntime kernel computes, from the kernel's node name."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.by_name = {n.name: n for n in graph.node if n.name}
        self.producer = {out: n for n in graph.node for out in n.output if out}

    def node_key(self, kernel: str, op: str) -> str | None:
        node = self._named(kernel)
        if node is None:
            return None
        if _is_compute_kernel(op) and node.op_type not in COMPUTE_OPS:
            node = self._compute_above(node) or node  # a Conv with its Relu fused: the Relu's name
        return key_of(node)

    def _named(self, kernel: str) -> onnx.NodeProto | None:
        name = kernel
        for addition in [None] + _NAME_ADDITIONS:
            name = addition.sub("", name) if addition is not None else name
            if name in self.by_name:
                return self.by_name[name]
            if name in self.producer:
                return self.producer[name]
        return None

    def _compute_above(self, node: onnx.NodeProto, depth: int = 4) -> onnx.NodeProto | None:
        """The nearest Conv/Gemm/MatMul upstream through at most `depth` nodes."""
        frontier = [node]
        for _ in range(depth):
            above = [self.producer[name] for n in frontier for name in n.input if name in self.producer]
            for candidate in above:
                if candidate.op_type in COMPUTE_OPS:
                    return candidate
            frontier = above
        return None


def _is_compute_kernel(op: str) -> bool:
    return "Conv" in op or "Gemm" in op or "MatMul" in op


def key_of(node: onnx.NodeProto) -> str:
    """A node's identity across pruning: its first output (names may be empty; outputs never are)."""
    return node.output[0]


def node_work(node: onnx.NodeProto, shapes: dict[str, Shape], block: int) -> float | None:
    """What a node's time scales with: MACs for Conv/Gemm/MatMul (a Conv off the blocked
    kernels weighs OFF_BLOCK_COST per MAC), else elements read and written. None if unknown."""
    if node.op_type in COMPUTE_OPS:
        macs = node_macs(node, shapes)
        if not macs:
            return None
        return macs * _conv_cost(node, shapes, block) if node.op_type == "Conv" else float(macs)
    sizes = [shapes.get(name) for name in list(node.input) + list(node.output) if name]
    if not sizes or any(s is None or None in s for s in sizes):
        return None  # a partial count would not compare with the other model's
    return float(sum(int(np.prod(s)) for s in sizes))


def _conv_cost(node: onnx.NodeProto, shapes: dict[str, Shape], block: int) -> float:
    """Relative cost per MAC of a Conv: 1 on onnxruntime's NCHWc kernels, which take output
    channels (and per-group input channels, unless fewer than a block) in multiples of the block."""
    weight = shapes.get(node.input[1]) if len(node.input) > 1 else None
    if block <= 1 or weight is None or None in weight or len(weight) != 4:
        return 1.0
    groups = next((a.i for a in node.attribute if a.name == "group"), 1)
    out_channels, in_per_group = weight[0], weight[1]
    kind = "dense" if groups == 1 else "depthwise" if in_per_group == 1 and out_channels == groups else "grouped"
    aligned = out_channels % block == 0
    if kind == "dense":
        aligned = aligned and (in_per_group < block or in_per_group % block == 0)
    elif kind == "grouped":
        aligned = aligned and in_per_group % block == 0 and (out_channels // groups) % block == 0
    return 1.0 if aligned else OFF_BLOCK_COST[kind]


@dataclass
class Prediction:
    ms: float  # predicted wall time of one run
    node_ms: dict[str, float]  # per original node key


class LatencyModel:
    """The profile of an original model and the work of its nodes, to predict pruned models.
    (Fitting a per-op exponent, time ~ work ** e, on a profiled pruned probe was tried: on
    seven wild models it moved predictions as often away from the measured ratio as toward it.)"""

    def __init__(self, model: onnx.ModelProto, source: ModelSource, measured: Profile,
                 feeds: dict[str, np.ndarray], block: int | None = None) -> None:
        self.source = source  # the original, as onnxruntime loads it
        self.profile = measured
        self.feeds = feeds
        self.block = block_size() if block is None else block
        self.work = self._works(model)

    @classmethod
    def of(cls, model: onnx.ModelProto, source: ModelSource, feeds: dict[str, np.ndarray], threads: int = 1,
           runs: int = PROFILED_RUNS) -> LatencyModel:
        return cls(model, source, profile(model, source, feeds, threads, runs), feeds)

    def _works(self, model: onnx.ModelProto) -> dict[str, float | None]:
        timed = [n for n in model.graph.node if n.output and key_of(n) in self.profile.node_ms]
        around = {name for n in timed for name in list(n.input) + list(n.output) if name}
        shapes = tensor_shapes(model, feeds=self.feeds, wanted=around)
        return {key_of(n): node_work(n, shapes, self.block) for n in timed}

    def predict(self, pruned: onnx.ModelProto) -> Prediction:
        """Predicted time of one run of `pruned` (a pruned copy of the profiled model)."""
        after = self._works(pruned)
        node_ms = {key: ms * _scale(self.work.get(key), after.get(key, 0.0))
                   for key, ms in self.profile.node_ms.items()}
        untraced = self.profile.untraced_ms * self._memory_bound_scale(node_ms)
        return Prediction(sum(node_ms.values()) + untraced + self.profile.overhead_ms, node_ms)

    def _memory_bound_scale(self, predicted: dict[str, float]) -> float:
        """How the traced memory-bound kernels shrink together (time-weighted): kernels
        traced to no node (reshapes and reorders onnxruntime inserts) move data too. On ten
        wild models this brought predictions 0.007 closer on average than keeping them fixed."""
        memory_bound = [key for key, op in self.profile.kernels.items() if not _is_compute_kernel(op)]
        before = sum(self.profile.node_ms[key] for key in memory_bound)
        return sum(predicted[key] for key in memory_bound) / before if before > 0 else 1.0

    def channel_ms(self, touches: dict[str, float]) -> float:
        """Profiled time one channel accounts for, given the nodes it flows through and its
        share of each (Group.touches)."""
        return sum(self.profile.node_ms.get(key, 0.0) * share for key, share in touches.items())

    def ratio(self, pruned: onnx.ModelProto) -> float:
        return self.predict(pruned).ms / self.profile.wall_ms


def _scale(before: float | None, after: float | None) -> float:
    """How a node's time scales: with its work; 1 where either is unknown; a node gone takes none."""
    if after == 0.0:
        return 0.0
    if before is None or after is None or before <= 0:
        return 1.0
    return after / before


def measured_ratio(original: ModelSource, pruned: ModelSource, feeds: dict[str, np.ndarray], threads: int = 1,
                   runs: int = 20) -> float:
    """Realized latency of `pruned` over `original`: the median ratio of interleaved runs."""
    try:
        sessions = [session(source, threads=threads, optimize="all", spinning=False) for source in (original, pruned)]
        inputs = [{i.name for i in s.get_inputs()} for s in sessions]
        feeds_of = [{name: value for name, value in feeds.items() if name in names} for names in inputs]
        for runner, feed in zip(sessions, feeds_of):
            runner.run(None, feed)
        times: list[list[float]] = [[], []]
        for _ in range(runs):
            for index, (runner, feed) in enumerate(zip(sessions, feeds_of)):
                start = time.perf_counter()
                runner.run(None, feed)
                times[index].append(time.perf_counter() - start)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises many types
        raise SpaError(f"onnxruntime cannot time the models: {ort_message(error)}") from None
    return float(np.median(times[1]) / np.median(times[0]))
