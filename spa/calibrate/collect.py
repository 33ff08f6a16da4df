"""Run a graph on calibration data and keep per-layer statistics, never the activations.

Each requested tensor becomes a graph output of a temporary model; every batch's values
go to that tensor's accumulators and are dropped, so memory holds statistics only.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs
import onnx
import onnxruntime as ort

from spa.calibrate.sources import Calibration, progress
from spa.errors import SpaError, first_line
from spa.io.runtime import session

Accumulator = Callable[[np.ndarray], None]


class Moments:
    """Per position of one axis: mean, variance and mean absolute value."""

    def __init__(self, axis: int) -> None:
        self.axis = axis
        self.count = 0
        self.total = self.squares = self.absolute = 0.0

    def __call__(self, values: np.ndarray) -> None:
        moved = np.moveaxis(values, self.axis, -1)
        rows = moved.reshape(-1, moved.shape[-1]).astype(np.float64)
        self.count += len(rows)
        self.total = self.total + rows.sum(axis=0)
        self.squares = self.squares + np.square(rows).sum(axis=0)
        self.absolute = self.absolute + np.abs(rows).sum(axis=0)

    @property
    def mean(self) -> np.ndarray:
        return self.total / max(self.count, 1)

    @property
    def variance(self) -> np.ndarray:
        return np.maximum(self.squares / max(self.count, 1) - np.square(self.mean), 0.0)

    @property
    def mean_abs(self) -> np.ndarray:
        return self.absolute / max(self.count, 1)


class Hessian:
    """H = Σ f fᵀ over the feature rows `features(x)` of every batch: each chunk's product
    in float32 (fast, a few thousand rows), the running sum in float64. Each chunk is scaled
    by a power of two before the product and back after, so values far from 1 (1e30) neither
    overflow nor lose precision in float32."""

    def __init__(self, features: Callable[[np.ndarray], np.ndarray]) -> None:
        self.features = features
        self.matrix: np.ndarray | None = None
        self.count = 0

    def __call__(self, values: np.ndarray) -> None:
        for chunk in np.array_split(values, max(1, values.shape[0] // 8)):  # bound im2col memory
            rows = self.features(chunk).astype(np.float32)
            scale = 2.0 ** np.floor(np.log2(max(float(np.max(np.abs(rows), initial=0.0)), 1e-30)))
            rows = rows * np.float32(1 / scale)  # a power of two: exact
            self.count += len(rows)
            product = (rows.T @ rows).astype(np.float64) * scale ** 2
            self.matrix = product if self.matrix is None else self.matrix + product


def collect(graph: gs.Graph, calibration: Calibration, accumulators: dict[str, list[Accumulator]],
            ir_version: int, label: str = "calibration") -> None:
    """Feed every calibration batch through `graph`, passing each requested tensor's
    values to its accumulators."""
    if not accumulators:
        return
    names = list(accumulators)
    session = _session(graph, names, ir_version)
    batches = calibration.batches()
    for feeds in progress(batches, calibration.batch_count(), label):
        try:
            values = session.run(names, feeds)
        except Exception as error:  # noqa: BLE001 - onnxruntime raises many types
            raise SpaError(f"calibration run failed: {first_line(error)}") from None
        for name, value in zip(names, values):
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                raise SpaError(f"calibration run gives NaN or inf at '{name}' (check the calibration data)")
            for accumulate in accumulators[name]:
                accumulate(value)


def _session(graph: gs.Graph, names: list[str], ir_version: int) -> ort.InferenceSession:
    """A session whose outputs are the requested tensors (the graph itself is left as it was)."""
    tensors = graph.tensors()
    saved = graph.outputs
    graph.outputs = [tensors[name] for name in names]
    try:
        model = gs.export_onnx(graph, do_type_check=False)
    finally:
        graph.outputs = saved
    for value in model.graph.output:  # shapes of intermediate tensors may be stale: let ORT decide
        value.type.tensor_type.ClearField("shape")
        if not value.type.tensor_type.elem_type:  # an intermediate tensor inference gave no type
            value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    model.ir_version = ir_version
    return session(model)
