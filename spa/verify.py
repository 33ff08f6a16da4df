"""Stage 6, verify: a pruned model must pass onnx.checker and run in onnxruntime with the
original inputs, giving outputs of the original shapes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from spa.errors import SpaError, first_line
from spa.inputs import make_inputs
from spa.load import Loaded

DYNAMIC_DIMS = (3, 1)  # sizes tried for symbolic dims: 3 first, 1 for exports that bake batch 1
EQUIVALENCE_ATOL, EQUIVALENCE_RTOL = 1e-5, 1e-4  # pruned vs zeroed model


def run_model(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def verify_pruned(original: Loaded, pruned: onnx.ModelProto | Path, seed: int = 0) -> float:
    """Check `pruned` (in memory, or a written file with its external data) and return the
    largest output difference to the original on a random input. Raises SpaError, naming
    it an internal error of spa, when the model is broken."""
    try:
        onnx.checker.check_model(str(pruned) if isinstance(pruned, Path) else pruned, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise SpaError(f"internal error: pruned model fails onnx.checker: {first_line(error)}") from None
    feeds, expected = _reference_run(original, seed)
    try:
        actual = run_model(pruned, feeds)
    except Exception as error:  # noqa: BLE001 - any onnxruntime failure is a broken model
        raise SpaError(f"internal error: pruned model fails in onnxruntime: {first_line(error)}") from None
    for want, got in zip(expected, actual):
        if want.shape != got.shape:
            raise SpaError(f"internal error: output shape changed from {want.shape} to {got.shape}")
    return max((float(np.max(np.abs(w - g))) if w.size else 0.0 for w, g in zip(expected, actual)
                if np.issubdtype(w.dtype, np.number)), default=0.0)


def _reference_run(original: Loaded, seed: int) -> tuple[dict, list[np.ndarray]]:
    """A random input the original model accepts, and its outputs."""
    source = original.path if original.external else original.model
    for size in DYNAMIC_DIMS:
        feeds = make_inputs(original.model, seed=seed, default_dim=size)
        try:
            return feeds, run_model(source, feeds)
        except Exception as error:  # noqa: BLE001 - try the next size, then report
            failure = error
    raise SpaError(f"the input model fails in onnxruntime: {first_line(failure)}")


def verify_equivalent(masked: onnx.ModelProto, pruned: onnx.ModelProto, calibration=None, seed: int = 0) -> float:
    """The built-in exactness check: the pruned model must compute what the full-size
    model with the removed channels zeroed computes. Returns the largest difference."""
    feeds = next(iter(calibration.batches()), None) if calibration is not None else None
    if feeds is None:
        feeds = make_inputs(masked, seed=seed, default_dim=DYNAMIC_DIMS[-1])
    try:
        expected, actual = run_model(masked, feeds), run_model(pruned, feeds)
    except Exception as error:  # noqa: BLE001 - any onnxruntime failure is a broken model
        raise SpaError(f"internal error: pruned model fails in onnxruntime: {first_line(error)}") from None
    worst = 0.0
    for want, got in zip(expected, actual):
        if not np.issubdtype(want.dtype, np.floating) or not want.size:
            continue
        difference = float(np.max(np.abs(want.astype(np.float64) - got)))
        if not difference <= EQUIVALENCE_ATOL + EQUIVALENCE_RTOL * float(np.max(np.abs(want))):  # NaN fails too
            raise SpaError(f"internal error: the pruned model differs from the zeroed model by {difference:.3g}; "
                           "please report this model")
        worst = max(worst, difference)
    return worst
