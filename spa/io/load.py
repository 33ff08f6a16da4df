"""Stage 1, load: read an ONNX file (external data included), validate it, infer shapes and
import it into onnx-graphsurgeon's IR with Constant nodes turned into initializers."""
from __future__ import annotations

import contextlib
import io
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner
import onnx_graphsurgeon as gs
from google.protobuf.message import DecodeError
from onnx import numpy_helper
from onnx.external_data_helper import uses_external_data
from onnx_graphsurgeon.ir.tensor import LazyValues

from spa.errors import SpaError, first_line

ModelSource = str | os.PathLike | onnx.ModelProto
logging.getLogger("onnxruntime.tools.symbolic_shape_infer").setLevel(logging.CRITICAL)


@dataclass
class Loaded:
    """A validated model. Weights stored as external data stay on disk, read from
    `base_dir` when needed, so a model over 2 GB is never held twice in memory."""
    model: onnx.ModelProto
    base_dir: Path | None = None  # where external data lives; None: all weights in `model`
    path: Path | None = None
    inferred: onnx.ModelProto | None = None  # the model's graph with every shape that can be known (import_graph)
    serialized: bytes | None = field(default=None, repr=False)  # the file's bytes, where they are `model` exactly

    @property
    def external(self) -> bool:
        return self.base_dir is not None

    def take_serialized(self) -> bytes:
        """The model as bytes, once: the file's own where they are at hand (no second
        serialization of a big model), and forgotten after, so they are not held twice."""
        serialized, self.serialized = self.serialized, None
        return serialized if serialized is not None else self.model.SerializeToString()


def load_model(source: ModelSource) -> Loaded:
    """The validated model at `source` (a path, or a ModelProto with its weights loaded)."""
    if isinstance(source, onnx.ModelProto):
        check_model(source)
        _check_finite(source, None)
        return Loaded(_inlined(source))
    path = Path(source)
    try:
        if not path.exists():
            raise SpaError(f"no such file: {path}")
        if not path.is_file():
            raise SpaError(f"not a file: {path}")
        serialized = path.read_bytes()
        model = onnx.load_model_from_string(serialized)
    except OSError as error:
        raise SpaError(f"cannot read {path}: {error.strerror or first_line(error)}") from None
    except (DecodeError, RuntimeError, ValueError) as error:
        raise SpaError(f"{path} is not a readable ONNX model ({first_line(error)})") from None
    exact = not _external_tensors(model)  # the bytes hold the whole model
    check_model(model, path, serialized if exact else None)
    inlined = _inlined(model)
    _check_external_files(inlined, path)
    _load_small_external(inlined, path.parent)
    external = bool(_external_tensors(inlined))
    loaded = Loaded(inlined, path.parent if external else None, path,
                    serialized=serialized if exact and inlined is model else None)
    _check_finite(inlined, loaded.base_dir)
    return loaded


def _inlined(model: onnx.ModelProto) -> onnx.ModelProto:
    """Calls of the model's local functions replaced by their bodies (jax2onnx and others put
    whole networks in functions): the channels inside become visible, and prunable."""
    if not model.functions:
        return model
    model = _function_domains_agreed(model)
    try:
        return onnx.inliner.inline_local_functions(model)
    except Exception as error:  # noqa: BLE001 - onnx raises several types
        raise SpaError(f"cannot inline the model's local functions: {first_line(error)}") from None


def _function_domains_agreed(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where every import of a local function's domain has the model's version: some
    exporters stamp them differently (jax2onnx), which the inliner refuses, though a
    function domain's version means nothing."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    local = {f.domain for f in copy.functions}
    versions = {o.domain: o.version for o in copy.opset_import}
    for domain in local - set(versions):
        copy.opset_import.add(domain=domain, version=1)
        versions[domain] = 1
    for function in copy.functions:
        for opset in function.opset_import:
            if opset.domain in local:
                opset.version = versions[opset.domain]
    return copy


def input_files(loaded: Loaded) -> set[Path]:
    """Every file the input model reads: the model file and its external data files."""
    if loaded.path is None:
        return set()
    files = {loaded.path.resolve()}
    for tensor in _external_tensors(loaded.model):
        files.add((loaded.path.parent / external_info(tensor)["location"]).resolve())
    return files


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in model.graph.initializer if uses_external_data(t)]


def _check_external_files(model: onnx.ModelProto, path: Path) -> None:
    """Every external tensor's bytes exist: a missing or short data file is the input's problem."""
    sizes: dict[Path, int] = {}
    for tensor in _external_tensors(model):
        info = external_info(tensor)
        data = path.parent / info.get("location", "")
        if data not in sizes:
            try:
                sizes[data] = data.stat().st_size if data.is_file() else -1
            except OSError:
                sizes[data] = -1
        if sizes[data] < 0:
            raise SpaError(f"{path}: external data file {info.get('location')!r} of '{tensor.name}' is missing")
        needed = int(info.get("offset", 0)) + tensor_nbytes(tensor)
        if sizes[data] < needed:
            raise SpaError(f"{path}: external data file {info.get('location')!r} is truncated "
                           f"({sizes[data]} bytes, '{tensor.name}' needs {needed})")


FLOAT_KINDS = "fc"


def _check_finite(model: onnx.ModelProto, base_dir: Path | None) -> None:
    """A weight holding NaN or inf makes every output comparison meaningless: the input's fault."""
    for tensor in model.graph.initializer:
        if np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).kind not in FLOAT_KINDS:
            continue
        if uses_external_data(tensor):
            finite = _external_finite(tensor, base_dir)
        else:
            finite = bool(np.isfinite(numpy_helper.to_array(tensor)).all())
        if not finite:
            raise SpaError(f"the input model's weight '{tensor.name}' holds NaN or inf")


def _external_finite(tensor: onnx.TensorProto, base_dir: Path | None) -> bool:
    info = external_info(tensor)
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    count = int(np.prod(tensor.dims))
    if base_dir is None or count == 0:
        return True
    values = np.memmap(base_dir / info["location"], dtype=dtype, mode="r", offset=int(info.get("offset", 0)),
                       shape=(count,))
    step = 1 << 24
    return all(np.isfinite(values[i:i + step]).all() for i in range(0, count, step))


def check_model(model: onnx.ModelProto, path: Path | None = None, serialized: bytes | None = None) -> None:
    """onnx.checker on the model: on its `serialized` bytes where they are at hand, else on
    the file at `path` (which reads external data and works past 2 GB), else in memory."""
    if not model.HasField("graph") or not model.graph.node:
        raise SpaError(f"{path or 'model'} has no graph: not an ONNX model, or truncated")
    source = serialized if serialized is not None else str(path) if path is not None else model
    try:
        onnx.checker.check_model(source)
    except (onnx.checker.ValidationError, ValueError, OSError) as error:
        raise SpaError(f"{path or 'model'} is not a valid ONNX model: {first_line(error)}") from None


def import_graph(loaded: Loaded) -> gs.Graph:
    """gs graph of the model with inferred shapes, Constant nodes as initializers, sorted.
    Shapes are inferred on a copy holding weights as dims only; the graph's constants read
    their values from the model itself (or its folder), never copied."""
    if loaded.inferred is None:
        inferred = infer_shapes(shape_only_copy(loaded.model))
        loaded.inferred = inferred if loaded.external else measure_open_shapes(inferred, loaded.model)
    graph = gs.import_onnx(loaded.inferred)
    _read_lazily(graph, loaded.model, loaded.base_dir)
    _constant_nodes_to_initializers(graph)
    graph.toposort()
    return graph


KEEP_DATA_ELEMENTS = 1024  # float initializers up to this size keep their values in shape-only copies
FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                         onnx.TensorProto.BFLOAT16, onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E4M3FNUZ,
                         onnx.TensorProto.FLOAT8E5M2, onnx.TensorProto.FLOAT8E5M2FNUZ})


# (op, input) positions whose values no shape inference reads, only their dims. Symbolic
# inference does read other float initializers (an Add of a position table, say), so only
# tensors read nowhere else lose their data in a shape-only copy.
WEIGHT_INPUTS = {"Conv": {1, 2}, "ConvTranspose": {1, 2}, "Gemm": {0, 1, 2}, "MatMul": {0, 1}, "Gather": {0},
                 "BatchNormalization": {1, 2, 3, 4}, "LayerNormalization": {1, 2}, "InstanceNormalization": {1, 2},
                 "GroupNormalization": {1, 2}, "SkipLayerNormalization": {2, 3, 4}, "Attention": {1, 2}}


def shape_only_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without the data of large float weights: shape inference needs only their
    dims, and a copy without them is cheap (and inferable past 2 GB). Everything else keeps
    its values, which inference may read (Resize scales, an added position table)."""
    copy = without_initializers(model)
    weights = _weights_only(model)
    for init in model.graph.initializer:
        if init.name in weights and init.data_type in FLOAT_TYPES and math.prod(init.dims) > KEEP_DATA_ELEMENTS:
            copy.graph.initializer.add(name=init.name, data_type=init.data_type, dims=init.dims)
        else:
            copy.graph.initializer.add().CopyFrom(init)
    return copy


def _weights_only(model: onnx.ModelProto) -> set[str]:
    """Names read only at WEIGHT_INPUTS positions of the main graph (none where subgraphs
    may read the main graph's tensors)."""
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in model.graph.node for a in n.attribute):
        return set()
    weights: set[str] = set()
    elsewhere: set[str] = set()
    for node in model.graph.node:
        positions = WEIGHT_INPUTS.get(node.op_type, set())
        for index, name in enumerate(node.input):
            (weights if index in positions else elsewhere).add(name)
    return weights - elsewhere


def without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of everything but the main graph's initializers, made without copying their data."""
    copy = onnx.ModelProto()
    for descriptor, value in model.ListFields():
        if descriptor.name != "graph":
            _copy_field(copy, descriptor.name, value)
    for descriptor, value in model.graph.ListFields():
        if descriptor.name != "initializer":
            _copy_field(copy.graph, descriptor.name, value)
    return copy


def _copy_field(message, name: str, value) -> None:
    target = getattr(message, name)
    if hasattr(target, "extend"):  # a repeated field
        target.extend(value)
    elif hasattr(target, "CopyFrom"):  # a message
        target.CopyFrom(value)
    else:
        setattr(message, name, value)


SMALL_TENSOR_BYTES = 4096


def _load_small_external(model: onnx.ModelProto, base_dir: Path) -> None:
    """Shape constants must be readable by shape inference: small external tensors are
    read into the model; large weights stay on disk."""
    for tensor in model.graph.initializer:
        if uses_external_data(tensor) and tensor_nbytes(tensor) <= SMALL_TENSOR_BYTES:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor, str(base_dir)), tensor.name))


def external_info(tensor: onnx.TensorProto) -> dict[str, str]:
    """An external tensor's location, offset and length entries."""
    return {entry.key: entry.value for entry in tensor.external_data}


def tensor_nbytes(tensor: onnx.TensorProto) -> int:
    """Bytes of a tensor's data, wherever it is stored."""
    info = external_info(tensor)
    if "length" in info:
        return int(info["length"])
    return int(np.prod(tensor.dims)) * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _read_lazily(graph: gs.Graph, model: onnx.ModelProto, base_dir: Path | None) -> None:
    """Every constant that is one of the model's initializers reads its values from the
    model's own tensor (external ones from `base_dir`), when needed."""
    tensors = graph.tensors()
    for init in model.graph.initializer:
        constant = tensors.get(init.name)
        if isinstance(constant, gs.Constant) and isinstance(constant._values, LazyValues):
            constant._values = ExternalValues(init, base_dir) if uses_external_data(init) else LazyValues(init)


class ExternalValues(LazyValues):
    """Weights in an external data file, read on demand from the model's folder."""

    def __init__(self, tensor: onnx.TensorProto, base_dir: Path) -> None:
        super().__init__(tensor)
        self.base_dir = base_dir

    def load(self) -> np.ndarray:
        return numpy_helper.to_array(self.tensor, base_dir=str(self.base_dir))


def read_values(tensor: gs.Constant) -> np.ndarray:
    """A constant's values, without keeping lazily loaded weights in memory afterwards."""
    values = tensor._values
    return values.load() if isinstance(values, LazyValues) else np.asarray(values)


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Static shapes wherever they can be known. onnxruntime's symbolic shape inference
    follows Shape/Gather/Concat chains and names dynamic dims consistently; where it fails
    (an op it does not know), onnx's own inference with data propagation is used. Shapes
    that stay unknown make the analysis keep the channels involved whole.

    Where onnx's inference alone, from the inputs and weights, gives every computed tensor
    a static shape, that is all there is to know, and the symbolic inference (and the
    sympy it imports, half a second) is skipped. It starts without the exporter's
    value_info: onnx's inference keeps those entries as written, and a jax2onnx ResNet's
    went stale after the rewrite."""
    fresh = onnx.ModelProto()
    fresh.CopyFrom(model)
    del fresh.graph.value_info[:]
    inferred = _onnx_shapes(fresh)
    if inferred is not None and _all_static(inferred):
        return inferred
    return _symbolic_shapes(model) or _onnx_shapes(model) or model


def _onnx_shapes(model: onnx.ModelProto) -> onnx.ModelProto | None:
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - unknown shapes are kept whole
        return None


def _all_static(model: onnx.ModelProto) -> bool:
    """Does every tensor the main graph computes have a static shape?"""
    described = {value.name: value for value in list(model.graph.value_info) + list(model.graph.output)}
    made = [name for node in model.graph.node for name in node.output if name]
    return all(name in described and _static_value(described[name]) for name in made)


def measure_open_shapes(model: onnx.ModelProto, full: onnx.ModelProto) -> onnx.ModelProto:
    """Where every graph input is static but inference left intermediate shapes open (sizes
    computed by ops it cannot follow), they are static too: run the model (`full`: with
    its weights) once on a synthetic input and write the shapes onnxruntime saw into
    `model`'s copy. Unchanged where inputs are open or the run fails."""
    from spa.io.inputs import (
        InputMaker,  # here: inputs needs nothing of load, but load is imported first
    )
    from spa.io.runtime import session
    maker = InputMaker(model)
    if any(not isinstance(d, int) for spec in maker.specs for d in spec.shape):
        return model
    outputs = {o.name for o in model.graph.output}
    open_values = [v for v in model.graph.value_info if v.name not in outputs and not _static_value(v)]
    if not open_values:
        return model
    runnable = onnx.ModelProto()
    runnable.CopyFrom(full)
    runnable.graph.output.extend(onnx.ValueInfoProto(name=v.name) for v in open_values)
    try:
        measured = session(runnable).run([v.name for v in open_values], maker.feeds())
    except Exception:  # noqa: BLE001 - a best effort: shapes stay as inferred
        return model
    shapes = {v.name: value.shape for v, value in zip(open_values, measured)}
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for value in copy.graph.value_info:
        if value.name in shapes:
            del value.type.tensor_type.shape.dim[:]
            for size in shapes[value.name]:
                value.type.tensor_type.shape.dim.add().dim_value = size
    return copy


def _static_value(value: onnx.ValueInfoProto) -> bool:
    tensor_type = value.type.tensor_type
    return value.type.HasField("tensor_type") and tensor_type.HasField("shape") \
        and all(d.HasField("dim_value") for d in tensor_type.shape.dim)


def _symbolic_shapes(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """onnxruntime's symbolic inference, or None where it is incomplete. Run step by step:
    its `infer_shapes` writes a debugging copy of the model (and all its weights) into the
    current folder whenever it is incomplete."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 7:  # it supports opset 7 and above
        return None
    from onnxruntime.tools.symbolic_shape_infer import (
        SymbolicShapeInference,  # here: it imports sympy, slowly
    )
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            inference = SymbolicShapeInference(2**31 - 1, True, False, 0)
            inference._preprocess(model)
            complete = False
            while inference.run_:
                complete = inference._infer_impl()
            inference._update_output_from_vi()
        return inference.out_mp_ if complete else None
    except Exception:  # noqa: BLE001 - any failure: the weaker inference
        return None


def _constant_nodes_to_initializers(graph: gs.Graph) -> None:
    graph_outputs = {tensor.name for tensor in graph.outputs}
    for node in list(graph.nodes):
        if node.op != "Constant" or node.outputs[0].name in graph_outputs:
            continue
        values = _constant_value(node)
        if values is None:
            continue
        output = node.outputs[0]
        constant = gs.Constant(output.name, values)
        for consumer in list(output.outputs):
            for index, tensor in enumerate(consumer.inputs):
                if tensor is output:
                    consumer.inputs[index] = constant
        node.outputs.clear()
        graph.nodes.remove(node)


def _constant_value(node: gs.Node) -> np.ndarray | None:
    attrs = node.attrs
    if "value" in attrs:
        return np.asarray(attrs["value"].values)
    scalar_kinds = {"value_int": np.int64, "value_ints": np.int64,
                    "value_float": np.float32, "value_floats": np.float32}
    for name, dtype in scalar_kinds.items():
        if name in attrs:
            return np.asarray(attrs[name], dtype=dtype)
    return None
