"""Stage 6, verify: the input runs before anything is done (so a broken input is named as
such); a pruned model must pass onnx.checker and run in onnxruntime on the same inputs,
giving outputs of the original shapes, and (where every removal is exact) the outputs of
the full-size model with the removed channels zeroed.

Two sessions do it all where they can: the input's, and the written file's. The input's
session takes weights as inputs (spa.io.runtime.WeightedSession), so the zeroed model,
which is the input model with other values in some initializers wherever preparation left
the graph's nodes as they were, is a second run of it."""
from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.ir.tensor import LazyValues

from spa.calibrate.sources import Calibration
from spa.errors import SpaError, first_line
from spa.io.export import export
from spa.io.inputs import InputMaker
from spa.io.load import Loaded, read_values
from spa.io.runtime import WeightedSession, run, session

# Sizes tried for open input dims, (batch, others), until the input model runs: images need
# room for strides and kernels (and multiples of 32 for detectors), sequences fit small sizes.
OPEN_DIMS = ((3, 8), (1, 8), (1, 64), (1, 224), (1, 32), (1, 16), (1, 1))
EQUIVALENCE_ATOL, EQUIVALENCE_RTOL = 1e-5, 1e-4  # pruned vs zeroed model


@dataclass
class Reference:
    """Inputs the original model accepts, and its outputs on them. `dense`: the session that
    ran them, which runs the model with other weights too (None where weights stay on disk,
    or onnxruntime does not take them as inputs)."""
    feeds: dict[str, np.ndarray]
    outputs: list[np.ndarray]
    dense: WeightedSession | None = None
    output_names: tuple[str, ...] = ()
    calibration: Calibration | None = None  # the calibration `feeds` came from, at a size the model takes


def reference_run(original: Loaded, calibration=None, seed: int = 0) -> Reference:
    """Run the input model once: on a calibration batch if there is one (synthetic
    calibration drawn again at the OPEN_DIMS sizes while the model rejects its sizes), else
    on synthetic inputs (open dims tried at the OPEN_DIMS sizes). Fails, naming the input, if onnxruntime
    cannot run it (as it is: a failure with weights as inputs is tried again without)."""
    dense = _weighted_session(original)
    if dense is not None:
        with contextlib.suppress(SpaError):
            feeds, outputs, calibration = _first_run(original, calibration, seed,
                                                     lambda feeds: dense.run(feeds, what="the input model"))
            return Reference(feeds, outputs, dense, _output_names(original), calibration)
    source = original.path if original.external else original.model
    feeds, outputs, calibration = _first_run(original, calibration, seed,
                                             lambda feeds: run(source, feeds, "the input model"))
    return Reference(feeds, outputs, None, _output_names(original), calibration)


def _output_names(original: Loaded) -> tuple[str, ...]:
    return tuple(output.name for output in original.model.graph.output)


def _weighted_session(original: Loaded) -> WeightedSession | None:
    if original.external:  # its weights are read from its folder: only a path session finds them
        return None
    try:
        return WeightedSession(original.model, original.take_serialized())
    except Exception:  # noqa: BLE001 - onnxruntime refuses some weights as inputs: a plain session then
        return None


Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def _first_run(original: Loaded, calibration: Calibration | None, seed: int,
               runner: Runner) -> tuple[dict[str, np.ndarray], list[np.ndarray], Calibration | None]:
    """The first feeds `runner` runs the model on, its outputs, and the calibration they came from."""
    if calibration is not None and calibration.samples:
        return first_calibration_run(calibration, runner)
    maker = InputMaker(original.model)
    failure: SpaError | None = None
    tried = set()
    for batch, size in OPEN_DIMS:
        feeds = maker.feeds(seed, default_dim=size, batch_dim=batch)
        shapes = tuple(tuple(v.shape) for v in feeds.values())
        if shapes in tried:
            continue
        tried.add(shapes)
        try:
            return feeds, runner(feeds), None
        except SpaError as error:  # try the next size, then report
            failure = failure or error
    if len(tried) > 1:
        raise SpaError(f"{failure} (synthetic inputs with open dims of size {', '.join(str(s) for _, s in OPEN_DIMS)}; "
                       "--calib DATA gives inputs it takes)")
    raise failure


def first_calibration_run(calibration: Calibration,
                           runner: Runner) -> tuple[dict[str, np.ndarray], list[np.ndarray], Calibration]:
    """The first calibration batch, the model's outputs on it, and the calibration. Synthetic
    calibration whose guessed size the model rejects (strides and skip connections that need
    a multiple of 32, say) is drawn again at the OPEN_DIMS sizes, the first that runs kept."""
    feeds = next(iter(calibration.batches()))
    try:
        return feeds, runner(feeds), calibration
    except SpaError as error:
        if calibration.resized is None:
            raise
        failure = error
    tried = [calibration.open_size]
    for size in dict.fromkeys(size for _, size in OPEN_DIMS if size not in tried):
        tried.append(size)
        candidate = calibration.resized(size)
        feeds = next(iter(candidate.batches()))
        with contextlib.suppress(SpaError):
            return feeds, runner(feeds), candidate
    raise SpaError(f"{failure} (synthetic calibration inputs with open dims of size {', '.join(map(str, tried))}; "
                   "--calib DATA gives inputs it takes)")


@dataclass
class Zeroed:
    """The full-size model with the removed channels zeroed, which the pruned model must
    equal: `base` (the model the step started from) with `weights` in place of its own
    initializers of those names, or, where the step's graph is not `base`'s, `exported`."""
    base: onnx.ModelProto | None = None
    weights: dict[str, np.ndarray] | None = None
    exported: onnx.ModelProto | None = None

    def outputs(self, feeds: dict[str, np.ndarray], dense: WeightedSession | None = None) -> list[np.ndarray]:
        """Its outputs on `feeds`: a run of `dense` where that is the session of `base`."""
        what = "internal error: the zeroed model"
        if self.weights is not None and dense is not None and dense.takes(self.base, self.weights):
            return dense.run(feeds, self.weights, what)
        return run(self.model(), feeds, what)

    def model(self) -> onnx.ModelProto:
        if self.exported is None:
            self.exported = _with_weights(self.base, self.weights)
        return self.exported


def zeroed_model(graph: gs.Graph, base: onnx.ModelProto) -> Zeroed:
    """The zeroed full-size model of a step: its graph, before the rewrite, over `base`, the
    model the step imported it from. Where the graph's nodes, inputs and outputs are
    `base`'s, it is `base` with the values of the graph's constants that do not still read
    `base`'s own tensors (nothing is exported); else the graph exported."""
    weights = _changed_weights(graph, base)
    if weights is None:
        return Zeroed(base, exported=export(graph, base))
    return Zeroed(base, weights)


def _changed_weights(graph: gs.Graph, base: onnx.ModelProto) -> dict[str, np.ndarray] | None:
    """The values of the graph's constants that are not `base`'s own tensors, by name; None
    where the graph is not `base`'s graph with other initializer values."""
    if not _same_graph(graph, base):
        return None
    initializers = {tensor.name: tensor for tensor in base.graph.initializer}
    weights = {}
    for name, tensor in graph.tensors().items():
        if not isinstance(tensor, gs.Constant):
            continue
        original = initializers.get(name)
        if original is None:
            return None
        if isinstance(tensor._values, LazyValues) and tensor._values.tensor is original:
            continue  # never loaded: base's values
        weights[name] = read_values(tensor)
    return weights


def _same_graph(graph: gs.Graph, base: onnx.ModelProto) -> bool:
    """Does the graph have `base`'s nodes (as the export would write them, in any order),
    graph inputs and outputs? Documentation strings do not count."""
    if base.graph.sparse_initializer or any(True for _ in graph.subgraphs()):  # constants read from inside
        return False
    initializers = {tensor.name for tensor in base.graph.initializer}
    inputs = [value.name for value in base.graph.input if value.name not in initializers]
    if [t.name for t in graph.inputs] != inputs or [t.name for t in graph.outputs] != [v.name for v in base.graph.output]:
        return False
    ours = Counter(_node_key(OnnxExporter.export_node(node)) for node in graph.nodes)
    return ours == Counter(_node_key(node) for node in base.graph.node)


def _node_key(node: onnx.NodeProto) -> bytes:
    if node.doc_string or node.metadata_props:
        node = onnx.NodeProto.FromString(node.SerializeToString())
        node.ClearField("doc_string")
        node.ClearField("metadata_props")
    return node.SerializeToString(deterministic=True)


def _with_weights(base: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(base)
    for tensor in model.graph.initializer:
        if tensor.name in weights:
            tensor.CopyFrom(onnx.numpy_helper.from_array(weights[tensor.name], tensor.name))
    return model


def verify_pruned(reference: Reference, pruned: onnx.ModelProto | Path,
                  zeroed: tuple[Zeroed, onnx.ModelProto] | None = None) -> dict:
    """Check `pruned` (in memory, or a written file with its external data) and return the
    largest output difference to the original on the reference inputs
    ("max_output_difference") and, per float output, how close it stays ("fidelity": cosine,
    max abs error, top-1 agreement of classifier-like outputs; spa.compare). With `zeroed`
    (the zeroed full-size model and the pruned model in memory), the same run also makes
    the exactness check (verify_equivalent). Raises SpaError, naming it an internal error
    of spa, when the model is broken."""
    try:
        onnx.checker.check_model(str(pruned) if isinstance(pruned, Path) else pruned, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise SpaError(f"internal error: pruned model fails onnx.checker: {first_line(error)}") from None
    actual = run(pruned, reference.feeds, "internal error: the pruned model")
    for want, got in zip(reference.outputs, actual):
        if want.shape != got.shape:
            raise SpaError(f"internal error: output shape changed from {want.shape} to {got.shape}")
    if zeroed is not None:
        verify_equivalent(*zeroed, reference.feeds, actual, reference.dense)
    largest = max((_max_difference(w, g) for w, g in zip(reference.outputs, actual)
                   if np.issubdtype(w.dtype, np.number)), default=0.0)
    return {"max_output_difference": largest, "fidelity": fidelity(reference, actual)}


def fidelity(reference: Reference, actual: list[np.ndarray]) -> dict:
    """How close the pruned model's float outputs stay to the original's on the reference
    inputs (`samples` of them: the first calibration batch, or synthetic inputs)."""
    from spa.compare import OutputStats  # spa.compare reads calibration sources, which read spa.io
    outputs = []
    for index, (want, got) in enumerate(zip(reference.outputs, actual)):
        if np.issubdtype(want.dtype, np.floating):
            stats = OutputStats(reference.output_names[index] if index < len(reference.output_names) else str(index))
            stats.add(want, got, atol=0.0, rtol=0.0)
            entry = stats.to_json()
            outputs.append({key: entry[key] for key in ("name", "cosine", "max_abs", "top1")})
    first = next(iter(reference.feeds.values()), np.zeros(0))
    return {"samples": int(first.shape[0]) if first.ndim else 1, "outputs": outputs}


def verify_equivalent(masked: Zeroed | onnx.ModelProto, pruned: onnx.ModelProto, feeds: dict[str, np.ndarray],
                      actual: list[np.ndarray] | None = None, dense: WeightedSession | None = None) -> float:
    """The built-in exactness check: the pruned model must compute what the full-size
    model with the removed channels zeroed computes, within float rounding (`actual`: the
    pruned model's outputs on `feeds`, where they were computed already; `dense`: the
    input's session, which runs the zeroed model where it is the input with other
    weights). Returns the largest difference."""
    zeroed = masked if isinstance(masked, Zeroed) else Zeroed(exported=masked)
    differences, tolerances = _compare(zeroed, pruned, feeds, actual, dense)
    if any(not d <= t for d, t in zip(differences, tolerances)) and quantizes_activations(zeroed.model()):
        # a float rounding difference can flip a quantization step, and the flip travels:
        # compare the same two models with activations left unquantized
        differences, tolerances = _compare(Zeroed(exported=without_activation_quantization(zeroed.model())),
                                           without_activation_quantization(pruned), feeds)
    for difference, tolerance in zip(differences, tolerances):
        if not difference <= tolerance:
            raise SpaError(f"internal error: the pruned model differs from the zeroed model by {difference:.3g}; "
                           "please report this model")
    return max(differences, default=0.0)


NOISE_FACTOR = 4


def _compare(zeroed: Zeroed, pruned: onnx.ModelProto, feeds: dict, actual: list[np.ndarray] | None = None,
             dense: WeightedSession | None = None) -> tuple[list[float], list[float]]:
    """Per output: the difference, and what is tolerated (allowing the model's own rounding noise)."""
    expected = zeroed.outputs(feeds, dense)
    if actual is None:
        actual = run(pruned, feeds, "internal error: the pruned model")
    differences = [_max_difference(w, g) for w, g in zip(expected, actual)]
    tolerances = [_tolerance(w) for w in expected]
    if any(not d <= t for d, t in zip(differences, tolerances)):  # NaN fails too
        floors = rounding_noise(zeroed.model(), feeds, expected)
        tolerances = [max(t, NOISE_FACTOR * f) for t, f in zip(tolerances, floors)]
    return differences, tolerances


def quantizes_activations(model: onnx.ModelProto) -> bool:
    constants = {t.name for t in model.graph.initializer}
    return any(n.op_type == "QuantizeLinear" and n.input[0] not in constants for n in model.graph.node)


def without_activation_quantization(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where every QuantizeLinear -> DequantizeLinear pair on an activation is
    bypassed: the float value goes on unrounded. Weights stay quantized."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    constants = {t.name for t in copy.graph.initializer}
    quantized = {n.output[0]: n.input[0] for n in copy.graph.node
                 if n.op_type == "QuantizeLinear" and n.input[0] not in constants}
    aliases = {n.output[0]: quantized[n.input[0]] for n in copy.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in quantized}
    outputs = {o.name for o in copy.graph.output}
    for node in copy.graph.node:
        for i, name in enumerate(node.input):
            if name in aliases:
                node.input[i] = aliases[name]
    for node in copy.graph.node:  # a graph output made by a bypassed pair stays an output
        if node.op_type == "DequantizeLinear" and node.output[0] in aliases and node.output[0] in outputs:
            identity = onnx.helper.make_node("Identity", [aliases[node.output[0]]], [node.output[0]])
            node.CopyFrom(identity)
    return copy


def _tolerance(want: np.ndarray) -> float:
    if not np.issubdtype(want.dtype, np.floating) or not want.size:
        return 0.0
    scale = float(np.max(np.abs(want[np.isfinite(want)]), initial=0.0))
    return EQUIVALENCE_ATOL + EQUIVALENCE_RTOL * scale


def rounding_noise(model: onnx.ModelProto, feeds: dict[str, np.ndarray], outputs: list[np.ndarray]) -> list[float]:
    """How far float rounding alone moves each output of `model`: the same model run without
    graph optimizations (other kernels, other summation orders) against `outputs`. Deep
    float32 networks and float16 models differ by more than a fixed tolerance this way."""
    plain = session(model, optimize="none").run(None, feeds)
    return [_max_difference(w, g) if np.issubdtype(w.dtype, np.floating) else 0.0
            for w, g in zip(outputs, plain)]


def _max_difference(want: np.ndarray, got: np.ndarray) -> float:
    """Largest absolute difference; positions where both are the same non-finite value agree."""
    if not want.size:
        return 0.0
    want, got = want.astype(np.float64), got.astype(np.float64)
    same = (want == got) | (np.isnan(want) & np.isnan(got))
    return float(np.max(np.where(same, 0.0, np.abs(want - got))))
