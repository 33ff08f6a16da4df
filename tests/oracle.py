"""Test-side helpers around spa.oracle: the oracle as assertions, and random feeds."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from spa import oracle as spa_oracle
from spa.io.runtime import session
from spa.oracle import choose_channels, zero_channels  # noqa: F401 - re-exported for the tests


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """All graph outputs, computed by onnxruntime on CPU."""
    return session(model).run(None, feeds)


def _concrete_shape(value: onnx.ValueInfoProto) -> list[int]:
    """Declared shape with symbolic or unknown dims set to 2."""
    return [d.dim_value if d.HasField("dim_value") else 2 for d in value.type.tensor_type.shape.dim]


def random_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal values for every graph input that is not an initializer."""
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name not in initializers:
            dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
            feeds[value.name] = rng.standard_normal(_concrete_shape(value)).astype(dtype)
    return feeds


@dataclass(frozen=True)
class OracleSummary:
    groups_checked: int
    channels_removed: int


def check_oracle(model: onnx.ModelProto | str, ratio: float = 0.4, seed: int = 0,
                 atol: float = 1e-5, rtol: float = 0.0) -> OracleSummary:
    """Zero random channels of every prunable exact group, prune, and assert exactness on
    random normal inputs (absolute tolerance `atol`)."""
    if isinstance(model, str):
        model = onnx.load(model)
    result = spa_oracle.check(model, ratio, seed, feeds=random_feeds(model, seed), atol=atol, rtol=rtol,
                              relative=False)
    assert result.exact, "\n".join(result.problems)
    return OracleSummary(result.groups, result.channels)
