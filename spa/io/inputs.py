"""Graph inputs: what they are, and synthetic values a model accepts.

Where the declared shape leaves a dim open, the graph often says what it must be: a Conv
reading the input fixes its channels, a MatMul's weight its features, a normalization's
scale its width. Integer inputs that index a table (token ids, token types, positions)
take values within the table's rows; masks are 0/1 padding masks (ones first, never all
zero). Everything that needs synthetic inputs (verification, data-free statistics,
benchmarks) builds them here, so they agree.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

Dim = int | str | None
PASS_THROUGH = {"Identity", "Cast", "Relu", "Sigmoid", "Tanh", "Clip", "Neg", "Abs", "Dropout", "Softplus",
                "LeakyRelu", "HardSwish", "HardSigmoid", "Exp", "Erf"}
INDEX_PASS_THROUGH = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast"}
BROADCAST = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"}
UNBOUND_SYMBOLS = ("?", "")  # paddle2onnx names every open dim "?": such names bind nothing
DEFAULT_INT_RANGE = 10


@dataclass
class InputSpec:
    """A graph input: name, numpy dtype and shape (int, symbol name, or None if unknown)."""
    name: str
    dtype: np.dtype
    shape: list[Dim]


def _dim(dim: onnx.TensorShapeProto.Dimension) -> Dim:
    if dim.HasField("dim_value"):  # old paddle2onnx writes -1 for an open dim
        return dim.dim_value if dim.dim_value >= 0 else None
    if dim.HasField("dim_param") and bindable(dim.dim_param):
        return dim.dim_param
    return None


def bindable(symbol: str) -> bool:
    """Does this dim name tie equal-named dims together? `?`, empty and `unk__N` do not."""
    return symbol not in UNBOUND_SYMBOLS and not symbol.startswith("unk__")


def input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs that are real inputs (not initializers)."""
    initializer_names = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializer_names:
            continue
        tensor_type = value.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
        specs.append(InputSpec(value.name, dtype, [_dim(d) for d in tensor_type.shape.dim]))
    return specs


def concrete_shape(shape: list[Dim], dim_values: dict[str, int] | None = None, default_dim: int = 1) -> list[int]:
    """Replace symbolic dims by `dim_values[symbol]` and unknown ones by `default_dim`."""
    dim_values = dim_values or {}
    return [dim if isinstance(dim, int) else dim_values.get(dim, default_dim) if dim else default_dim
            for dim in shape]


# --- what the graph implies ----------------------------------------------------------------

def constant_tensors(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """The main graph's initializers and Constant node values, by name."""
    found = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = node.attribute[0].t
    return found


class _Graph:
    """Readers of every tensor, and initializer shapes and small values."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for name in node.input:
                self.readers.setdefault(name, []).append(node)
        self.shapes = {name: list(tensor.dims) for name, tensor in constant_tensors(model).items()}


def implied_dims(model: onnx.ModelProto) -> dict[tuple[str, int], int]:
    """(input name, axis) -> the size the graph requires there, for open dims it fixes."""
    graph, implied = _Graph(model), {}
    for spec in input_specs(model):
        for axis, size in _implied_by_readers(graph, spec.name, len(spec.shape), set()).items():
            if not isinstance(spec.shape[axis], int):
                implied[(spec.name, axis)] = size
    return implied


def _implied_by_readers(graph: _Graph, tensor: str, rank: int, seen: set[str]) -> dict[int, int]:
    found: dict[int, int] = {}
    if tensor in seen:
        return found
    seen.add(tensor)
    for node in graph.readers.get(tensor, []):
        for axis, size in _implied_by_node(graph, node, tensor, rank, seen).items():
            found.setdefault(axis % rank, size)
    return found


def _implied_by_node(graph: _Graph, node: onnx.NodeProto, tensor: str, rank: int, seen: set[str]) -> dict[int, int]:
    op, inputs = node.op_type, list(node.input)
    weight = graph.shapes.get(inputs[1]) if len(inputs) > 1 and inputs[0] == tensor else None
    if op == "Conv" and weight and len(weight) == rank:
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        return {1: weight[1] * group}
    if op == "MatMul" and weight and len(weight) >= 2:
        return {-1: weight[-2]}
    if op == "Gemm" and weight and len(weight) == 2:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return {-1: weight[1] if trans_b else weight[0]}
    if op in ("BatchNormalization", "InstanceNormalization") and weight:
        return {1: weight[0]}
    if op == "LayerNormalization" and weight:
        return {rank - len(weight) + k: size for k, size in enumerate(weight)}
    if op in BROADCAST:
        return _implied_by_broadcast(graph, node, tensor, rank, seen)
    if op in PASS_THROUGH and inputs[0] == tensor:
        return _implied_by_readers(graph, node.output[0], rank, seen)
    if op == "Transpose" and inputs[0] == tensor:
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), list(reversed(range(rank))))
        after = _implied_by_readers(graph, node.output[0], rank, seen)
        return {perm[k]: size for k, size in after.items()}
    return {}


def _implied_by_broadcast(graph: _Graph, node: onnx.NodeProto, tensor: str, rank: int, seen: set[str]) -> dict[int, int]:
    """A constant operand fixes the axes where it is not 1; the result passes on the rest."""
    found: dict[int, int] = {}
    for name in node.input:
        shape = graph.shapes.get(name)
        if name != tensor and shape is not None and len(shape) <= rank:
            found.update({rank - len(shape) + k: size for k, size in enumerate(shape) if size != 1})
    for axis, size in _implied_by_readers(graph, node.output[0], rank, seen).items():
        found.setdefault(axis, size)
    return found


def index_ranges(model: onnx.ModelProto) -> dict[str, int]:
    """Integer input -> rows of the smallest table it indexes (through Cast/Reshape/...)."""
    graph, ranges = _Graph(model), {}
    for spec in input_specs(model):
        if spec.dtype.kind in "iu":
            rows = _table_rows(graph, spec.name)
            if rows:
                ranges[spec.name] = min(rows)
    return ranges


# Fused embedding ops: index input -> the input holding the table it indexes (rows on axis 0).
EMBEDDING_TABLES = {"EmbedLayerNormalization": {0: 2, 1: 4}, "QEmbedLayerNormalization": {0: 2, 1: 4}}


def _table_rows(graph: _Graph, name: str) -> list[int]:
    rows, frontier, seen = [], [name], {name}
    while frontier:
        tensor = frontier.pop()
        for node in graph.readers.get(tensor, []):
            tables = EMBEDDING_TABLES.get(node.op_type, {})
            if node.op_type == "Gather" and node.input[1:2] == [tensor] and node.input[0] in graph.shapes:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                rows.append(graph.shapes[node.input[0]][axis])
            elif node.domain == "com.microsoft" and tensor in node.input[:2]:
                table = tables.get(list(node.input).index(tensor))
                if table is not None and table < len(node.input) and node.input[table] in graph.shapes:
                    rows.append(graph.shapes[node.input[table]][0])
            elif node.op_type in INDEX_PASS_THROUGH and node.input[:1] == [tensor] and node.output[0] not in seen:
                seen.add(node.output[0])
                frontier.append(node.output[0])
    return rows


def is_mask(spec: InputSpec) -> bool:
    return "mask" in spec.name.lower()


class InputMaker:
    """Synthetic inputs for one model: shapes with the dims the graph implies, values the
    model accepts. Floats ~ N(0, 1); table indices uniform over the table; masks 0/1 with
    ones first; other integers in 0..9; bools like masks."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.specs = input_specs(model)
        self.implied = implied_dims(model)
        self.rows = index_ranges(model)

    def shape(self, spec: InputSpec, dim_values: dict[str, int] | None, default_dim: int,
              batch_dim: int | None = None) -> list[int]:
        """Declared dims, the ones the graph implies, then `dim_values` by symbol; `batch_dim`
        for an open first axis and `default_dim` for other open axes."""
        dims = self.dims(spec)
        if batch_dim is not None and dims and not isinstance(dims[0], int) and (dims[0] not in (dim_values or {})):
            dims[0] = batch_dim
        return concrete_shape(dims, dim_values, default_dim)

    def dims(self, spec: InputSpec) -> list:
        """The input's declared dims, with the sizes the graph implies for open ones."""
        return [self.implied.get((spec.name, k), dim) for k, dim in enumerate(spec.shape)]

    def has_open_sizes(self) -> bool:
        """Does some input have an open axis past the batch axis that the graph does not fix
        (an image's H or W, a sequence length)? Synthetic inputs then guess its size."""
        return any(not isinstance(dim, int) for spec in self.specs for dim in self.dims(spec)[1:])

    def values(self, spec: InputSpec, shape: list[int], rng: np.random.Generator) -> np.ndarray:
        kind = spec.dtype.kind
        if kind == "f":
            return rng.standard_normal(shape).astype(spec.dtype)
        if kind == "b" or (kind in "iu" and is_mask(spec)):
            return padding_mask(shape, rng).astype(spec.dtype)
        if kind in "iu":
            high = self.rows.get(spec.name, DEFAULT_INT_RANGE)
            return rng.integers(0, max(high, 1), shape).astype(spec.dtype)
        raise ValueError(f"input {spec.name!r}: no synthetic values for dtype {spec.dtype}")

    def feeds(self, seed: int = 0, dim_values: dict[str, int] | None = None, default_dim: int = 1,
              batch: int | None = None, batch_dim: int | None = None) -> dict[str, np.ndarray]:
        """One feed. `batch` forces axis 0 (calibration chunks); `batch_dim` only fills an open one."""
        rng = np.random.default_rng(seed)
        feeds = {}
        for spec in self.specs:
            shape = self.shape(spec, dim_values, default_dim, batch_dim)
            if batch is not None and shape:
                shape[0] = batch
            feeds[spec.name] = np.asarray(self.values(spec, shape, rng))
        return feeds


def padding_mask(shape: list[int], rng: np.random.Generator) -> np.ndarray:
    """1 up to a random length along the last axis, 0 after; the first position is always 1."""
    if not shape:
        return np.ones((), dtype=np.int64)
    length = shape[-1]
    ends = rng.integers(1, length + 1, size=shape[:-1]) if length else np.zeros(shape[:-1], dtype=np.int64)
    return (np.arange(length) < ends[..., None]).astype(np.int64)


def make_inputs(model: onnx.ModelProto, seed: int = 0, dim_values: dict[str, int] | None = None,
                default_dim: int = 1) -> dict[str, np.ndarray]:
    """Synthetic feed for every graph input (see InputMaker)."""
    return InputMaker(model).feeds(seed, dim_values, default_dim)
