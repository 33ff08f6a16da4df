"""Stage 6, verify: the input runs before anything is done (so a broken input is named as
such); a pruned model must pass onnx.checker and run in onnxruntime on the same inputs,
giving outputs of the original shapes, and (where every removal is exact) the outputs of
the full-size model with the removed channels zeroed."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from spa.errors import SpaError, first_line
from spa.io.inputs import InputMaker
from spa.io.load import Loaded
from spa.io.runtime import run, session

# Sizes tried for open input dims, (batch, others), until the input model runs: images need
# room for strides and kernels (and multiples of 32 for detectors), sequences fit small sizes.
OPEN_DIMS = ((3, 8), (1, 8), (1, 64), (1, 224), (1, 32), (1, 16), (1, 1))
EQUIVALENCE_ATOL, EQUIVALENCE_RTOL = 1e-5, 1e-4  # pruned vs zeroed model


@dataclass
class Reference:
    """Inputs the original model accepts, and its outputs on them."""
    feeds: dict[str, np.ndarray]
    outputs: list[np.ndarray]


def reference_run(original: Loaded, calibration=None, seed: int = 0) -> Reference:
    """Run the input model once: on a calibration batch if there is one, else on synthetic
    inputs (open dims tried at the OPEN_DIMS sizes). Fails, naming the input, if onnxruntime
    cannot run it."""
    source = original.path if original.external else original.model
    if calibration is not None:
        feeds = next(iter(calibration.batches()), None)
        if feeds is not None:
            return Reference(feeds, run(source, feeds, "the input model"))
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
            return Reference(feeds, run(source, feeds, "the input model"))
        except SpaError as error:  # try the next size, then report
            failure = failure or error
    if len(tried) > 1:
        raise SpaError(f"{failure} (synthetic inputs with open dims of size {', '.join(str(s) for _, s in OPEN_DIMS)}; "
                       "--calib DATA gives inputs it takes)")
    raise failure


def verify_pruned(reference: Reference, pruned: onnx.ModelProto | Path,
                  zeroed: tuple[onnx.ModelProto, onnx.ModelProto] | None = None) -> float:
    """Check `pruned` (in memory, or a written file with its external data) and return the
    largest output difference to the original on the reference inputs. With `zeroed`
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
        verify_equivalent(*zeroed, reference.feeds, actual)
    return max((_max_difference(w, g) for w, g in zip(reference.outputs, actual)
                if np.issubdtype(w.dtype, np.number)), default=0.0)


def verify_equivalent(masked: onnx.ModelProto, pruned: onnx.ModelProto, feeds: dict[str, np.ndarray],
                      actual: list[np.ndarray] | None = None) -> float:
    """The built-in exactness check: the pruned model must compute what the full-size
    model with the removed channels zeroed computes, within float rounding (`actual`: the
    pruned model's outputs on `feeds`, where they were computed already). Returns the
    largest difference."""
    differences, tolerances = _compare(masked, pruned, feeds, actual)
    if any(not d <= t for d, t in zip(differences, tolerances)) and quantizes_activations(masked):
        # a float rounding difference can flip a quantization step, and the flip travels:
        # compare the same two models with activations left unquantized
        differences, tolerances = _compare(without_activation_quantization(masked),
                                           without_activation_quantization(pruned), feeds)
    for difference, tolerance in zip(differences, tolerances):
        if not difference <= tolerance:
            raise SpaError(f"internal error: the pruned model differs from the zeroed model by {difference:.3g}; "
                           "please report this model")
    return max(differences, default=0.0)


NOISE_FACTOR = 4


def _compare(masked: onnx.ModelProto, pruned: onnx.ModelProto, feeds: dict,
             actual: list[np.ndarray] | None = None) -> tuple[list[float], list[float]]:
    """Per output: the difference, and what is tolerated (allowing the model's own rounding noise)."""
    expected = run(masked, feeds, "internal error: the zeroed model")
    if actual is None:
        actual = run(pruned, feeds, "internal error: the pruned model")
    differences = [_max_difference(w, g) for w, g in zip(expected, actual)]
    tolerances = [_tolerance(w) for w in expected]
    if any(not d <= t for d, t in zip(differences, tolerances)):  # NaN fails too
        floors = rounding_noise(masked, feeds, expected)
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
