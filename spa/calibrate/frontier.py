"""Calibration statistics for a sequence of tasks that change the graph as they go.

Pruning with data runs tasks in graph order (one per group, or one per corrected layer):
each measures some layers' inputs or outputs on the graph as the earlier tasks left it,
then changes weights. Running the whole graph for every task repeats the same upstream
work again and again. A `Frontier` runs each part of the graph once where it can:

- a node is *settled* once every task that changes a weight it reads is done, and *final*
  once it and everything upstream of it is settled: its outputs will not change again;
- the values of final tensors read by nodes that are not final yet (the frontier) are
  kept, per calibration batch, in memory or, past the memory budget, in memory-mapped
  files of a temporary folder;
- a task's measurement runs only the nodes between the kept values and the tensors it
  measures, as one segment model (one onnxruntime session), and keeps the final tensors
  the segment computes that later tasks will read.

This is the block-by-block scheme of GPTQ/SparseGPT, found from the graph: the frontier
moves past a block as soon as the tasks touching it are done.
"""
from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.ir.tensor import LazyValues
from onnx.external_data_helper import uses_external_data

from spa.analyze.registry import outer_names
from spa.calibrate.batchnorm import (calibration_estimates, folded_targets, raw_output, renormalize_in_model,
                                    renormalized_norms)
from spa.calibrate.layernorm import mask_in_model, norm_masks
from spa.calibrate.sources import Calibration
from spa.errors import SpaError, first_line
from spa.io.load import read_values
from spa.io.runtime import session

Accumulator = Callable[[np.ndarray], None]
DEFAULT_BUDGET = 1 << 30  # bytes of kept activations before they go to disk
BATCH_SIZE = 16  # samples per run of a segment (a static batch dim overrides it)
HELD_BYTES = 1 << 20  # in-memory weights this large reach a segment's session by name, not serialized
HELD_LOCATION = "spa-held-in-memory"  # the external-data location of their placeholders (never read)


class Frontier:
    """Measure tensors for tasks 0, 1, ... in order; `written[t]` names the initializers
    task t changes. Call `done_with(t)` after task t changed them; use as a context
    manager so spilled files are removed. `removed` ((initializer, axis) -> positions, read
    at each segment) says which units hidden groups removed: LayerNormalizations over them
    normalize over the kept units (spa.calibrate.layernorm).

    A task that knows what its change does to a tensor it measured (statistics correction
    scales a layer's output channels) can say so: `measure(..., hold=[name])` keeps the
    measured values, `done_with(t, {name: update})` keeps update(values) as that tensor's
    final value, and later tasks read it instead of running its producer again."""

    def __init__(self, graph: gs.Graph, calibration: Calibration, ir_version: int,
                 written: list[Iterable[str]] = (), budget: int = DEFAULT_BUDGET,
                 removed: dict[tuple[str, int], set[int]] | None = None) -> None:
        self.graph = graph
        self.removed = removed if removed is not None else {}
        self.tensors = graph.tensors()
        self.ir_version = ir_version
        self.nodes = _topological(graph.nodes)  # an optimizer's output may list a node before its inputs
        self.reads = [_reads(node) for node in self.nodes]
        self.producer = {t.name: i for i, node in enumerate(self.nodes) for t in node.outputs if t.name}
        self.readers = _readers(self.reads)
        last = {name: task for task, names in enumerate(written) for name in names}
        self.last_task = [max((last.get(name, -1) for name in names), default=-1) for names in self.reads]
        self.done = -1
        self.computed: set[int] = set()  # final nodes whose outputs later nodes can get from `kept`
        self.held: dict[str, dict[int, np.ndarray]] = {}  # measured values a task may update (`hold`)
        self.kept = _Store(budget)
        self.batch_count = 0
        for feeds in calibration.batches(BATCH_SIZE):
            for name, value in feeds.items():
                self.kept.add(name, self.batch_count, value)
            self.batch_count += 1
        self.renormalized: set[int] = set()  # ids of BatchNorm nodes normalizing with batch statistics
        self.folded: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # Conv output -> estimated (mean, std)
        if calibration.batchnorm:
            batch = calibration.smallest_batch(BATCH_SIZE)
            self.renormalized = {id(node) for node in renormalized_norms(graph, batch)}
            self.folded = calibration_estimates(graph, calibration, batch)
            for name in self.folded:  # a folded Conv's output is measured before renormalization
                if name in self.producer:
                    self.producer[raw_output(name)] = self.producer[name]

    def __enter__(self) -> Frontier:
        return self

    def __exit__(self, *exc) -> None:
        self.kept.close()

    def done_with(self, task: int, updates: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None) -> None:
        """Task `task` changed its weights; `updates` (tensor -> function) give the new
        values of held tensors from their measured ones, where their producers are now final."""
        self.done = max(self.done, task)
        held, self.held = self.held, {}
        final = self._final() if updates else []
        for name, update in (updates or {}).items():
            node = self.producer.get(name)
            if name not in held or node is None or not final[node] or name in self.kept:
                continue
            for batch, value in held[name].items():
                self.kept.add(name, batch, update(value))
            self._computed_from(node, final)

    def _computed_from(self, node: int, final: list[bool]) -> None:
        """`node`'s outputs are kept: it, and every final node upstream whose outputs only
        computed nodes read, will not run again (so what they read can be dropped)."""
        pending = [node]
        while pending:
            index = pending.pop()
            if index in self.computed:
                continue
            self.computed.add(index)
            for name in self.reads[index]:
                before = self.producer.get(name)
                if before is not None and final[before] and all(
                        r in self.computed for t in self.nodes[before].outputs for r in self.readers.get(t.name, ())):
                    pending.append(before)

    def measure(self, accumulators: dict[str, list[Accumulator]], hold: Iterable[str] = ()) -> None:
        """Pass every batch's value of each requested tensor to its accumulators; keep
        those of `hold` for `done_with`'s updates."""
        accumulators = {raw_output(name) if name in self.folded else name: found
                        for name, found in accumulators.items()}
        hold = [name for name in hold if name in accumulators]  # (not a renamed, folded output)
        final = self._final()
        needed = self._needed(accumulators)
        now_computed = self.computed | {i for i in needed if final[i]}
        keep = [t.name for i in sorted(needed) if final[i] for t in self.nodes[i].outputs
                if t.name and any(r not in now_computed for r in self.readers.get(t.name, ()))]
        wanted = [name for name in accumulators if name not in self.kept]
        if needed:
            self._run_segment(sorted(needed), wanted, keep, accumulators, hold)
        for name in accumulators:
            if name in self.kept and name not in wanted:
                for index in range(self.batch_count):
                    _feed(name, self.kept.get(name, index), accumulators[name])
        self.computed = now_computed
        for name in list(self.kept.names()):
            if all(r in self.computed for r in self.readers.get(name, ())):
                self.kept.drop(name)

    def _final(self) -> list[bool]:
        final: list[bool] = []
        for index, names in enumerate(self.reads):
            upstream = (self.producer.get(name) for name in names)
            final.append(self.last_task[index] <= self.done
                         and all(final[p] for p in upstream if p is not None))
        return final

    def _needed(self, targets: Iterable[str]) -> set[int]:
        """The nodes to run to get `targets` from what is kept (and the initializers)."""
        needed: set[int] = set()
        pending = [name for name in targets if name not in self.kept]
        while pending:
            name = pending.pop()
            index = self.producer.get(name)
            if index is None:
                if not self._constant(name):
                    raise SpaError(f"calibration: no value for tensor '{name}' (it is not computed by the graph)")
                continue
            if index in needed:
                continue
            needed.add(index)
            pending.extend(n for n in self.reads[index] if n and n not in self.kept)
        return needed

    def _constant(self, name: str) -> bool:
        tensor = self.tensors.get(name)
        return tensor is None or isinstance(tensor, gs.Constant)

    def _run_segment(self, needed: list[int], wanted: list[str], keep: list[str],
                     accumulators: dict[str, list[Accumulator]], hold: list[str] = ()) -> None:
        nodes = [self.nodes[i] for i in needed]
        made = {t.name for node in nodes for t in node.outputs}
        inputs = sorted({n for node_index in needed for n in self.reads[node_index]
                         if n and n not in made and n in self.kept})
        outputs = list(dict.fromkeys(wanted + keep))
        model, held = self._segment_model(nodes, inputs, outputs)
        folded = {node.outputs[0].name: folded_targets(node, self.folded[node.outputs[0].name])
                  for node in nodes if node.op == "Conv" and node.outputs[0].name in self.folded}
        renormalize_in_model(model, [node for node in nodes if id(node) in self.renormalized], folded)
        mask_in_model(model, norm_masks(nodes, self.removed))
        weights = _external_weights_as_inputs(model, self.tensors, held)
        # Convs run on onnxruntime's blocked NCHWc kernels only with its full optimizations (2x
        # faster); elsewhere those add fusions that cost memory and gave no measured speed
        optimize = "all" if any(node.op == "Conv" for node in nodes) else "basic"
        runner = session(model, optimize=optimize, spinning=False, initializers=held)  # numpy works between runs: no spinning threads
        del model, held
        for index in range(self.batch_count):
            feeds = {name: np.asarray(self.kept.get(name, index)) for name in inputs} | weights
            try:
                values = dict(zip(outputs, runner.run(outputs, feeds)))
            except Exception as error:  # noqa: BLE001 - onnxruntime raises many types
                raise SpaError(f"calibration run failed: {first_line(error)}") from None
            for name in wanted:
                _feed(name, values[name], accumulators[name])
                if name in hold:
                    self.held.setdefault(name, {})[index] = values[name]
            for name in keep:
                self.kept.add(name, index, values[name])

    def _segment_model(self, nodes: list[gs.Node], inputs: list[str],
                       outputs: list[str]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
        """The segment as a model, and the weights it holds only by name (`_held_weights`)."""
        tensors = self.tensors
        segment = gs.Graph(nodes=nodes, inputs=[tensors[n] for n in inputs],
                           outputs=[tensors[n] for n in outputs if n in tensors],
                           opset=self.graph.opset, import_domains=self.graph.import_domains)
        with _held_weights(nodes) as held:
            model = gs.export_onnx(segment, do_type_check=False)
        model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in outputs if n not in tensors)
        for value in model.graph.input:  # an intermediate tensor: type and shape from its values
            _describe(value, [self.kept.get(value.name, i) for i in range(self.batch_count)])
        for value in model.graph.output:  # shapes of intermediate tensors may be stale: let ORT decide
            value.type.tensor_type.ClearField("shape")
            if not value.type.tensor_type.elem_type:
                value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
        model.ir_version = self.ir_version
        return model, held


@contextmanager
def _held_weights(nodes: list[gs.Node]) -> Iterator[dict[str, np.ndarray]]:
    """While exported, the float weights of `nodes` held in memory (the ones earlier tasks
    changed) of HELD_BYTES or more stand in as external-data placeholders: the segment
    model then carries their names and shapes, not their bytes, and onnxruntime takes the
    arrays themselves as initializers (spa.io.runtime.session). Serializing them into every
    segment was most of a segment session's cost on wide layers."""
    held: dict[str, np.ndarray] = {}
    swapped: list[gs.Constant] = []
    for node in nodes:
        for tensor in node.inputs:  # (a tensor read twice is a placeholder the second time: skipped)
            values = tensor._values if isinstance(tensor, gs.Constant) else None
            if isinstance(values, np.ndarray) and values.dtype == np.float32 and tensor.export_dtype == np.float32 \
                    and values.ndim and values.nbytes >= HELD_BYTES:  # (not exported as another type, not a scalar)
                held[tensor.name] = values
                swapped.append(tensor)
                tensor._values = LazyValues(_placeholder(tensor.name, values))
    try:
        yield held
    finally:
        for tensor in swapped:
            tensor._values = held[tensor.name]


def _placeholder(name: str, values: np.ndarray) -> onnx.TensorProto:
    """A float tensor that names external data nobody reads: onnxruntime is given the values."""
    tensor = onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT, dims=values.shape,
                              data_location=onnx.TensorProto.EXTERNAL)
    for key, value in (("location", HELD_LOCATION), ("offset", "0"), ("length", str(values.nbytes))):
        tensor.external_data.add(key=key, value=value)
    return tensor


def _external_weights_as_inputs(model: onnx.ModelProto, tensors: dict[str, gs.Tensor],
                                held: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Weights still in the input's external data file become inputs of the segment, fed
    from the file: a segment model then never points at files beside the input, and never
    holds more than its own layers' weights. (`held` placeholders stay: their values are given.)"""
    external = [t for t in model.graph.initializer if uses_external_data(t) and t.name not in held]
    weights = {t.name: read_values(tensors[t.name]) for t in external}
    for tensor in external:
        model.graph.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
        model.graph.initializer.remove(tensor)
    return weights


def _topological(nodes: list[gs.Node]) -> list[gs.Node]:
    """`nodes` in an order where every node comes after the nodes making what it reads
    (the given order where it already is one). "" (an omitted optional tensor) links none."""
    producer = {t.name: node for node in nodes for t in node.outputs if t.name}
    placed: set[int] = set()
    ordered: list[gs.Node] = []
    for node in nodes:
        stack = [(node, False)]
        while stack:
            current, ready = stack.pop()
            if id(current) in placed:
                continue
            if ready:
                placed.add(id(current))
                ordered.append(current)
                continue
            stack.append((current, True))
            for name in reversed(_reads(current)):
                before = producer.get(name) if name else None
                if before is not None and id(before) not in placed and before is not current:
                    stack.append((before, False))
    return ordered


def _reads(node: gs.Node) -> list[str]:
    """The tensor names a node reads, those its subgraphs read from this graph included."""
    return [t.name for t in node.inputs] + sorted(outer_names(node))


def _readers(reads: list[list[str]]) -> dict[str, list[int]]:
    readers: dict[str, list[int]] = {}
    for index, names in enumerate(reads):
        for name in dict.fromkeys(names):
            readers.setdefault(name, []).append(index)
    return readers


def _feed(name: str, value: np.ndarray, accumulators: list[Accumulator]) -> None:
    if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
        raise SpaError(f"calibration run gives NaN or inf at '{name}' (check the calibration data)")
    for accumulate in accumulators:
        accumulate(value)


def _describe(value: onnx.ValueInfoProto, batches: list[np.ndarray]) -> None:
    """Type a segment input from its values: a dim that differs between batches is left open."""
    shapes = {array.shape for array in batches}
    first = batches[0]
    dims = [size if all(s[axis] == size for s in shapes) else None for axis, size in enumerate(first.shape)]
    value.type.CopyFrom(onnx.helper.make_tensor_type_proto(
        onnx.helper.np_dtype_to_tensor_dtype(first.dtype), [d if d is not None else f"d{i}" for i, d in enumerate(dims)]))


class _Store:
    """Per tensor and batch, an array: in memory up to `budget` bytes, then in .npy files
    opened as memory maps (a temporary folder, removed by `close`)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.in_memory = 0
        self.arrays: dict[str, dict[int, np.ndarray]] = {}
        self.folder: Path | None = None
        self.files = 0

    def __contains__(self, name: str) -> bool:
        return name in self.arrays

    def names(self) -> list[str]:
        return list(self.arrays)

    def get(self, name: str, batch: int) -> np.ndarray:
        return self.arrays[name][batch]

    def add(self, name: str, batch: int, value: np.ndarray) -> None:
        if self.in_memory + value.nbytes <= self.budget:
            self.in_memory += value.nbytes
        else:
            value = self._spill(value)
        self.arrays.setdefault(name, {})[batch] = value

    def drop(self, name: str) -> None:
        for value in self.arrays.pop(name).values():
            if isinstance(value, np.memmap):
                Path(value.filename).unlink(missing_ok=True)
            else:
                self.in_memory -= value.nbytes

    def close(self) -> None:
        self.arrays.clear()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None

    def _spill(self, value: np.ndarray) -> np.ndarray:
        if self.folder is None:
            self.folder = Path(tempfile.mkdtemp(prefix="spa-frontier-"))
        self.files += 1
        path = self.folder / f"{self.files}.npy"
        stored = np.lib.format.open_memmap(path, mode="w+", dtype=value.dtype, shape=value.shape)
        stored[...] = value
        stored.flush()
        return np.load(path, mmap_mode="r")
