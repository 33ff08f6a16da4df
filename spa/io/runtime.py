"""The one place spa makes onnxruntime sessions: CPU only, onnxruntime's own log quiet
(spa reports problems in its own words, one line)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from spa.errors import SpaError, first_line

ort.set_default_logger_severity(4)  # fatal only: spa catches errors and rewords them

ModelSource = onnx.ModelProto | Path | str | bytes


def session(model: ModelSource, threads: int | None = None, optimize: str = "basic",
            spinning: bool = True, profile_prefix: str | None = None,
            initializers: dict[str, np.ndarray] | None = None) -> ort.InferenceSession:
    """A CPU session for a model (proto, serialized bytes, or a path: a path lets onnxruntime
    read external data beside it). `threads` None: onnxruntime's default. With
    `profile_prefix`, onnxruntime's profiler writes kernel times to a JSON file there.
    `initializers` gives the values of the model's external-data initializers of those
    names (onnxruntime copies them in; the files they name are not read)."""
    options = ort.SessionOptions()
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    options.log_severity_level = 4
    options.graph_optimization_level = {"none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[optimize]
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:  # interleaved sessions: a spinning one steals the cores of the other
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    values = [ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v)) for v in (initializers or {}).values()]
    if values:  # (alive until the session has copied them: `values` lives to the return)
        options.add_external_initializers(list(initializers), values)
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif isinstance(model, (Path, os.PathLike)):
        model = os.fspath(model)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def run(model: ModelSource, feeds: dict[str, np.ndarray], what: str = "model") -> list[np.ndarray]:
    """All outputs of `model` on `feeds`; any onnxruntime failure becomes one SpaError line
    that names `what` failed."""
    try:
        return session(model).run(None, feeds)
    except Exception as error:  # noqa: BLE001 - onnxruntime raises many types
        raise SpaError(f"{what} fails in onnxruntime: {ort_message(error)}") from None


class WeightedSession:
    """One session for a model and every copy of it with other weights: the model's
    initializers are declared graph inputs too, which onnxruntime takes as defaults that a
    run may replace. int64 initializers (shapes, axes, indices) stay constants onnxruntime
    can fold. `serialized` is the model's bytes; the declarations are appended to them
    (protobuf merges concatenated messages: the graph gains the inputs), so a big model
    is not serialized again."""

    def __init__(self, model: onnx.ModelProto, serialized: bytes) -> None:
        self.model = model
        declared = {value.name for value in model.graph.input}
        inputs = [onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
                  for tensor in model.graph.initializer
                  if tensor.data_type != onnx.TensorProto.INT64 and tensor.name not in declared]
        self.session = session(serialized + onnx.ModelProto(graph=onnx.GraphProto(input=inputs)).SerializeToString())
        overridable = {value.name for value in self.session.get_overridable_initializers()}  # none below IR 4
        self.weights = {tensor.name: (tensor.data_type, tuple(tensor.dims)) for tensor in model.graph.initializer
                        if tensor.name in overridable}

    def takes(self, model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> bool:
        """Is `model` with `weights` (by initializer name) a run of this session?"""
        return model is self.model and all(
            name in self.weights and value.shape == self.weights[name][1]
            and value.dtype == onnx.helper.tensor_dtype_to_np_dtype(self.weights[name][0])
            for name, value in weights.items())

    def run(self, feeds: dict[str, np.ndarray], weights: dict[str, np.ndarray] | None = None,
            what: str = "model") -> list[np.ndarray]:
        """All outputs on `feeds`, with `weights` in place of the model's own; a failure is
        one SpaError line naming `what`."""
        try:
            return self.session.run(None, {**feeds, **(weights or {})})
        except Exception as error:  # noqa: BLE001 - onnxruntime raises many types
            raise SpaError(f"{what} fails in onnxruntime: {ort_message(error)}") from None


def ort_message(error: BaseException) -> str:
    """onnxruntime's message without its '[ONNXRuntimeError] : 1 : FAIL :' prefix."""
    text = first_line(error)
    while text.startswith("[ONNXRuntimeError]") and " : " in text:
        text = text.split(" : ", 3)[-1] if text.count(" : ") >= 3 else text.split(" : ", 1)[-1]
    text = re.sub(r"(^|(?<= ))\S+\.(h|cc|cpp):\d+ ([^()]*\([^()]*\)( const)? )?", "", text)  # C++ location, signature
    return text[:300]
