"""Describe a model's graph inputs and build random feeds for onnxruntime."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

Dim = int | str | None


@dataclass
class InputSpec:
    """A graph input: name, numpy dtype and shape (int, symbol name, or None if unknown)."""

    name: str
    dtype: np.dtype
    shape: list[Dim]


def _dim(dim: onnx.TensorShapeProto.Dimension) -> Dim:
    if dim.HasField("dim_value"):
        return dim.dim_value
    if dim.HasField("dim_param"):
        return dim.dim_param
    return None


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """Return the graph inputs that are real inputs (not initializers)."""
    initializer_names = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializer_names:
            continue
        tensor_type = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        shape = [_dim(d) for d in tensor_type.shape.dim]
        specs.append(InputSpec(value.name, dtype, shape))
    return specs


def concrete_shape(
    shape: list[Dim], dim_values: dict[str, int] | None = None, default_dim: int = 1
) -> list[int]:
    """Replace symbolic dims by `dim_values[symbol]` and unknown ones by `default_dim`."""
    dim_values = dim_values or {}
    concrete = []
    for dim in shape:
        if isinstance(dim, int):
            concrete.append(dim)
        else:
            concrete.append(dim_values.get(dim, default_dim) if dim else default_dim)
    return concrete


def _random_array(spec: InputSpec, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    if np.issubdtype(spec.dtype, np.floating):
        values = rng.standard_normal(shape)
    elif spec.dtype == np.bool_:
        values = rng.integers(0, 2, shape)
    elif np.issubdtype(spec.dtype, np.integer):
        # Small values stay valid as token ids, indices and masks.
        values = rng.integers(0, 2 if "mask" in spec.name.lower() else 10, shape)
    else:
        raise ValueError(f"input {spec.name!r}: unsupported dtype {spec.dtype}")
    return np.asarray(values, dtype=spec.dtype)  # also an array for rank-0 inputs


def make_inputs(
    model: onnx.ModelProto,
    seed: int = 0,
    dim_values: dict[str, int] | None = None,
    default_dim: int = 1,
) -> dict[str, np.ndarray]:
    """Random feed for every graph input: floats ~ N(0, 1), ints in 0..9 (0..1 for
    names containing "mask"), random bools. Symbolic dims take `dim_values[symbol]`,
    unknown or unlisted ones `default_dim`."""
    rng = np.random.default_rng(seed)
    return {
        spec.name: _random_array(spec, concrete_shape(spec.shape, dim_values, default_dim), rng)
        for spec in input_specs(model)
    }
