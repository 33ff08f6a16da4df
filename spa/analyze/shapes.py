"""Shape values: where each element of a small integer tensor comes from.

Exporters compute Reshape/Expand shapes and Pad pads from initializers, Constant nodes, or
Shape -> Gather -> Concat (-> Reshape -> Slice -> Transpose) chains. Each element of such a
tensor is a constant, the size of some tensor axis (`Dim`, which follows pruning by itself
at run time), a product or maximum of sizes (`Product`, `Either`: decided once it is
known which axes carry channels), or a computation on sizes (`Opaque`). What each use of a
size means after pruning is checked in spa.analyze.shape_uses.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from spa.analyze.context import static_dim


@dataclass(frozen=True)
class Const:
    value: int


@dataclass(frozen=True)
class Dim:
    """`scale` times the size of a tensor axis (GQA shapes multiply a head count)."""
    tensor: str
    axis: int
    value: int | None  # scale * size before pruning, when static
    scale: int = 1


@dataclass(frozen=True)
class Opaque:
    deps: frozenset[tuple[str, int]]


@dataclass(frozen=True)
class Product:
    """A product of sizes (ReduceProd of a shape, tf2onnx's batch * heads): decided after the
    analysis, when it is known which factors are channel axes (`resolve`)."""
    factors: tuple


@dataclass(frozen=True)
class Either:
    """Max/Min of sizes that may well be equal (tf2onnx's broadcast of two batch shapes)."""
    options: tuple


Elem = Const | Dim | Opaque | Product | Either
PLUMBING = {"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast", "Identity", "Reshape", "ReduceProd",
            "Transpose", "Add", "Sub", "Mul", "Div", "Mod", "Max", "Min", "Neg", "Abs", "Ceil", "Floor",
            "Clip", "ConstantOfShape", "Equal", "Where"}
MAX_SHAPE_VECTOR = 64
Values = np.ndarray  # an object array of Elem, traced like the integer tensor it stands for


def deps_of(elem: Elem) -> frozenset[tuple[str, int]]:
    if isinstance(elem, Dim):
        return frozenset({(elem.tensor, elem.axis)})
    if isinstance(elem, (Product, Either)):
        return frozenset().union(*(deps_of(e) for e in (elem.factors if isinstance(elem, Product) else elem.options)))
    return elem.deps if isinstance(elem, Opaque) else frozenset()


def value_of(elem: Elem) -> int | None:
    if isinstance(elem, Product):
        values = [value_of(e) for e in elem.factors]
        return None if None in values else int(np.prod(values))
    if isinstance(elem, Either):
        values = {value_of(e) for e in elem.options}
        return values.pop() if len(values) == 1 else None
    return elem.value if isinstance(elem, (Const, Dim)) else None


def trace_shape_values(graph: gs.Graph) -> dict[str, list[Elem]]:
    """Element provenance of every small integer tensor computed from constants and Shape
    (vectors as exporters build shapes and pads with, also reshaped, sliced and transposed
    on the way). Returns the vectors (rank 0 or 1) by tensor name."""
    arrays: dict[str, Values] = {}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and _is_small_int(tensor):
            values = np.asarray(tensor.values)
            arrays[tensor.name] = _array([Const(int(v)) for v in values.ravel()], values.shape)
    for node in graph.nodes:
        if node.op in PLUMBING:
            result = _traced(node, arrays)
            if result is not None and result.size <= MAX_SHAPE_VECTOR:
                arrays[node.outputs[0].name] = result
    return {name: list(values.ravel()) for name, values in arrays.items() if values.ndim <= 1}


def _array(elems: list[Elem], shape) -> Values:
    array = np.empty(len(elems), dtype=object)
    array[:] = elems
    return array.reshape(shape)


def _is_small_int(tensor: gs.Constant) -> bool:
    return np.issubdtype(tensor.dtype, np.integer) and int(np.prod(tensor.shape)) <= MAX_SHAPE_VECTOR


def _traced(node: gs.Node, arrays: dict[str, Values]) -> Values | None:
    try:
        result = _trace_node(node, arrays)
        if result is None:
            return None
        if not isinstance(result, np.ndarray):  # a single element (a scalar Gather)
            single = np.empty((), dtype=object)
            single[()] = result
            return single
        return result
    except (ValueError, IndexError, TypeError):  # shapes that do not fit: not traced
        return None


def _trace_node(node: gs.Node, arrays: dict[str, Values]) -> Values | None:
    if node.op == "Shape":
        return _trace_shape(node)
    inputs = [arrays.get(t.name) if t.name else None for t in node.inputs]
    if not inputs or inputs[0] is None:
        return None
    x, attrs = inputs[0], node.attrs
    if node.op == "ConstantOfShape":
        return _trace_constant_of_shape(node, x)
    if node.op in ("Cast", "Identity"):
        return x
    if node.op in ("Unsqueeze", "Squeeze", "Reshape"):
        shape = node.outputs[0].shape
        target = _ints(inputs[1]) if node.op == "Reshape" and len(inputs) > 1 else None
        if target is not None and all(t > 0 or t == -1 for t in target):
            return x.reshape(target)
        return x.reshape(shape) if shape is not None and all(isinstance(d, int) for d in shape) else None
    if node.op == "Transpose":
        return np.transpose(x, attrs.get("perm"))
    if node.op == "Concat":
        return None if any(v is None for v in inputs) else np.concatenate(inputs, axis=attrs.get("axis", 0))
    if node.op == "Gather":
        indices = _ints_array(inputs[1]) if len(inputs) > 1 else None
        return None if indices is None else np.take(x, indices, axis=attrs.get("axis", 0))
    if node.op == "Slice":
        if "starts" in attrs:  # opset < 10: bounds are attributes
            bounds = [attrs["starts"], attrs["ends"], attrs.get("axes", list(range(len(attrs["starts"]))))]
            return _trace_slice(x, [_array([Const(int(v)) for v in b], (len(b),)) for b in bounds])
        return _trace_slice(x, inputs[1:])
    if node.op == "Where":
        return _trace_where(inputs)
    if node.op in ("Neg", "Abs", "Ceil", "Floor", "Clip"):
        return _trace_unary(node, inputs)
    if node.op == "ReduceProd":
        if x.ndim != 1 or (len(inputs) > 1 and inputs[1] is not None) or attrs.get("axes") not in (None, [0]):
            return None
        product = _array([Product(tuple(x)) if len(x) != 1 else x[0]], (1,))
        return product if attrs.get("keepdims", 1) else product.reshape(())
    if len(inputs) != 2 or inputs[1] is None:
        return None
    return _vectorized(lambda a, b: _combine(node.op, a, b))(x, inputs[1])


def _vectorized(function):
    return np.frompyfunc(function, 2, 1)


def _ints(values: Values | None) -> list[int] | None:
    if values is None or any(not isinstance(e, Const) for e in values.ravel()):
        return None
    return [e.value for e in values.ravel()]


def _ints_array(values: Values) -> np.ndarray | None:
    flat = _ints(values)
    return None if flat is None else np.array(flat, dtype=np.int64).reshape(values.shape)


def _trace_shape(node: gs.Node) -> Values | None:
    tensor = node.inputs[0]
    if tensor.shape is None:
        return None
    rank = len(tensor.shape)
    start, end = node.attrs.get("start", 0), node.attrs.get("end", rank)
    axes = range(rank)[slice(start, end)]
    return _array([Dim(tensor.name, a, static_dim(tensor.shape[a])) for a in axes], (len(axes),))


def _trace_slice(x: Values, params: list) -> Values | None:
    """Slice with constant starts, ends, axes and steps (any step, any axis)."""
    starts, ends = _ints(params[0]) if params else None, _ints(params[1]) if len(params) > 1 else None
    if starts is None or ends is None:
        return None
    axes = _ints(params[2]) if len(params) > 2 and params[2] is not None else list(range(len(starts)))
    steps = _ints(params[3]) if len(params) > 3 and params[3] is not None else [1] * len(starts)
    if axes is None or steps is None:
        return None
    index = [slice(None)] * x.ndim
    for axis, start, end, step in zip(axes, starts, ends, steps):
        index[axis] = slice(*_clamped(start, end, step, x.shape[axis]))
    return x[tuple(index)]


def _clamped(start: int, end: int, step: int, size: int) -> tuple[int, int | None, int]:
    """ONNX Slice bounds (huge or negative sentinels) as Python slice bounds."""
    start, end = (start + size if start < 0 else start), (end + size if end < 0 else end)
    if step > 0:
        return min(max(start, 0), size), min(max(end, 0), size), step
    start = min(max(start, -1), size - 1)
    return start, (None if end < 0 else min(end, size - 1)), step


def _trace_constant_of_shape(node: gs.Node, shape: Values) -> Values | None:
    """A small tensor filled with one value, as exporters build Expand shapes and pads with."""
    dims = [value_of(e) for e in shape.ravel()]  # a static size traced from Shape counts too
    if None in dims or int(np.prod(dims)) > MAX_SHAPE_VECTOR:
        return None
    fill = node.attrs.get("value")
    value = np.asarray(fill.values).ravel()[0] if fill is not None else 0
    if not float(value).is_integer():
        return None
    return _array([Const(int(value))] * int(np.prod(dims)), dims)


def _trace_where(inputs: list) -> Values | None:
    if len(inputs) != 3 or any(x is None for x in inputs):
        return None
    condition, a, b = np.broadcast_arrays(*inputs)
    if any(not isinstance(c, Const) for c in condition.ravel()):
        return None
    picked = [x if c.value else y for c, x, y in zip(condition.ravel(), a.ravel(), b.ravel())]
    return _array(picked, condition.shape)


def _trace_unary(node: gs.Node, inputs: list) -> Values:
    """Ceil/Floor of integers change nothing; Neg/Abs/Clip of constants compute, else opaque."""
    x = inputs[0]
    if node.op in ("Ceil", "Floor"):
        return x
    bounds = [_ints(v) for v in inputs[1:3]] if node.op == "Clip" else []

    def apply(elem: Elem) -> Elem:
        if not isinstance(elem, Const) or any(b is None for b in bounds):
            return Opaque(deps_of(elem))
        value = {"Neg": lambda v: -v, "Abs": abs}.get(node.op, lambda v: v)(elem.value)
        if node.op == "Clip":
            low, high = (bounds + [None, None])[:2]
            value = min(max(value, low[0] if low else value), high[0] if high else value)
        return Const(value)
    return np.frompyfunc(apply, 1, 1)(x)


def _combine(op: str, a: Elem, b: Elem) -> Elem:
    if isinstance(a, Const) and isinstance(b, Const):
        return Const(_apply(op, a.value, b.value))
    if op == "Mul" and {type(a), type(b)} == {Dim, Const}:
        return scaled(a if isinstance(a, Dim) else b, (b if isinstance(b, Const) else a).value)
    sizes = (Const, Dim, Product, Either)
    if op == "Mul" and isinstance(a, sizes) and isinstance(b, sizes):
        return Product(tuple(e for x in (a, b) for e in (x.factors if isinstance(x, Product) else (x,))))
    if op in ("Max", "Min") and isinstance(a, sizes) and isinstance(b, sizes):
        return Either(tuple(e for x in (a, b) for e in (x.options if isinstance(x, Either) else (x,))))
    if op == "Equal" and (isinstance(a, Dim) and _is_negative(b) or isinstance(b, Dim) and _is_negative(a)):
        return Const(0)  # a size is never negative: exporters' `Where(shape == -1, 1, shape)`
    return Opaque(deps_of(a) | deps_of(b))


def scaled(dim: Dim, factor: int) -> Elem:
    if factor <= 0:
        return Opaque(deps_of(dim))
    value = None if dim.value is None else dim.value * factor
    return Dim(dim.tensor, dim.axis, value, dim.scale * factor)


def _is_negative(elem: Elem) -> bool:
    return isinstance(elem, Const) and elem.value < 0


def _apply(op: str, a: int, b: int) -> int:
    if op == "Div":
        return int(a / b) if b else 0  # ONNX integer division truncates
    if op == "Mod":
        return a % b if b else 0
    return {"Add": a + b, "Sub": a - b, "Mul": a * b, "Equal": int(a == b), "Max": max(a, b), "Min": min(a, b)}[op]

