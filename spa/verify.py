"""Stage 6, verify: a pruned model must pass onnx.checker and run in onnxruntime with the
original inputs, giving outputs of the original shapes."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from spa.errors import SpaError
from spa.inputs import make_inputs


def run_model(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def verify_pruned(original: onnx.ModelProto, pruned: onnx.ModelProto, seed: int = 0) -> float:
    """Check `pruned` and return the largest output difference to `original` on a random
    input. Raises SpaError (a bug in spa, never the user's) when the model is broken."""
    try:
        onnx.checker.check_model(pruned, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as error:
        raise SpaError(f"internal error: pruned model fails onnx.checker: {_line(error)}") from None
    feeds = make_inputs(original, seed=seed)
    expected = run_model(original, feeds)
    try:
        actual = run_model(pruned, feeds)
    except Exception as error:  # noqa: BLE001 - any onnxruntime failure is a broken model
        raise SpaError(f"internal error: pruned model fails in onnxruntime: {_line(error)}") from None
    for want, got in zip(expected, actual):
        if want.shape != got.shape:
            raise SpaError(f"internal error: output shape changed from {want.shape} to {got.shape}")
    return max((float(np.max(np.abs(w - g))) if w.size else 0.0 for w, g in zip(expected, actual)
                if np.issubdtype(w.dtype, np.number)), default=0.0)


def _line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
