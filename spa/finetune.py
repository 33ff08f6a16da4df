"""Fine-tuning a pruned model, and training a model pruned before training: the ONNX file as a
trainable PyTorch module, and back.

Optional: needs the `finetune` extra (`pip install "spa-prune[finetune]"`: torch and onnx2pytorch).
Nothing else in spa imports this module, and it imports torch only when called.

- `to_torch(model)`: the ONNX model as a `torch.nn.Module` (onnx2pytorch's converter). Every float
  weight is a trainable parameter: besides the Conv/Gemm/BatchNorm weights the converter puts in
  layers, the weights ONNX ops read directly (MatMul weights, LayerNorm scales, position
  embeddings, embedding tables) become parameters too. BatchNorm trains with batch statistics in
  `module.train()`, as in the original framework, and updates its running statistics with the
  graph's momentum read as ONNX means it (the weight of the old statistic: 0.9 is torch's 0.1).
- `max_difference(module, model, inputs)` / `check_equal(...)`: the module's outputs against
  onnxruntime's on the same inputs.
- `export_onnx(module, path)`: the trained module's weights written into the initializers of the
  model it was converted from: the same graph, names and dynamic axes.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import numpy_helper

from spa.errors import SpaError

if TYPE_CHECKING:
    import torch

EXTRA = 'pip install "spa-prune[finetune]"'
TRAINABLE_LIMIT = 1e4  # a float constant holding larger (or non-finite) values is a mask, not a weight


class FinetuneUnavailable(SpaError):
    """torch or onnx2pytorch is not installed."""


def _require() -> tuple[Any, Any]:
    """torch and onnx2pytorch, or a one-line error naming the extra."""
    try:
        import torch
        import onnx2pytorch
    except ImportError as error:
        raise FinetuneUnavailable(f"spa.finetune needs torch and onnx2pytorch ({error.name} is missing): "
                                  f"{EXTRA}") from None
    except Exception as error:  # torchvision built for another torch fails at import with a RuntimeError
        raise FinetuneUnavailable(f"spa.finetune could not import torch/onnx2pytorch "
                                  f"({type(error).__name__}: {error}); torch and torchvision must match: "
                                  f"{EXTRA}") from None
    return torch, onnx2pytorch


def _load(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def _convertible(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy that computes the same, for training: `training_mode=0` on BatchNormalization (the
    default, which torch's exporter writes when it keeps BatchNorm) is dropped, as onnx2pytorch
    refuses the attribute; an Identity of an initializer becomes an initializer (torch's exporter
    writes them for merged constants, and onnx2pytorch does not take a BatchNorm's weights from
    one); and an initializer read by several node inputs gets a copy per input
    (NAME, NAME__spa1, ...). Exporters merge equal constants: every zero bias and unit scale of a
    freshly initialized network, or a BatchNorm's zero bias with its zero running mean, can be one
    initializer, and trained as one they would stay equal. (Weights tied by design, as GPT-2's
    embeddings, are untied too: each copy trains on its own.)"""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    initializers = {t.name: t for t in copy.graph.initializer}
    outputs = {o.name for o in copy.graph.output}
    for node in list(copy.graph.node):  # Identity of an initializer: the initializer, under the output's name
        if node.op_type == "Identity" and node.input[0] in initializers and node.output[0] not in outputs:
            constant = copy.graph.initializer.add()
            constant.CopyFrom(initializers[node.input[0]])
            constant.name = node.output[0]
            initializers[constant.name] = constant
            copy.graph.node.remove(node)
    seen: dict[str, int] = {}
    for node in copy.graph.node:
        for index, name in enumerate(node.input):
            if name not in initializers:
                continue
            uses = seen[name] = seen.get(name, 0) + 1
            if uses > 1:
                duplicate = copy.graph.initializer.add()
                duplicate.CopyFrom(initializers[name])
                duplicate.name = node.input[index] = f"{name}__spa{uses - 1}"
    for node in copy.graph.node:
        if node.op_type == "BatchNormalization":
            for attribute in [a for a in node.attribute if a.name == "training_mode"]:
                if onnx.helper.get_attribute_value(attribute) != 0:
                    raise SpaError(f"BatchNormalization {node.name!r} has training_mode=1: export the model in "
                                   "eval mode")
                node.attribute.remove(attribute)
    return copy


# Inputs that hold learnable weights when an initializer feeds them: op type -> input indices (None:
# any). A float constant anywhere else (Resize scales, Pad values, Clip bounds, Range limits) stays one.
WEIGHT_INPUTS: dict[str, tuple[int, ...] | None] = {
    "MatMul": None, "Gemm": (1, 2), "Conv": (1, 2), "ConvTranspose": (1, 2), "Add": None, "Sub": None,
    "Mul": None, "Div": (0,), "Gather": (0,), "Einsum": None, "Concat": None, "Expand": (0,), "Where": (1, 2),
    "Sum": None, "PRelu": (1,), "LayerNormalization": (1, 2), "GroupNormalization": (1, 2),
    "InstanceNormalization": (1, 2), "BatchNormalization": (1, 2), "SimplifiedLayerNormalization": (1,)}


def _root_reads(module: "torch.nn.Module") -> dict[str, set[tuple[str, int]]]:
    """Initializers that the converted module reads from its root buffers at run time -> the (op
    type, input index) pairs reading them: the inputs of nodes the converter did not turn into a
    layer holding its own weights (onnx2pytorch's rule in ConvertModel.forward, on the graph it
    keeps: it fuses a MatMul and the Add of its bias into one node)."""
    initializers = {t.name for t in module.onnx_model.graph.initializer}
    reads: dict[str, set[tuple[str, int]]] = {}
    for node in module.onnx_model.graph.node:
        if _holds_weights(getattr(module, module.mapping[node.output[0]])):
            continue
        for index, name in enumerate(node.input):
            if name in initializers:
                reads.setdefault(name, set()).add((node.op_type, index))
    return reads


def _holds_weights(op: Any) -> bool:
    from onnx2pytorch.constants import COMPOSITE_LAYERS, STANDARD_LAYERS

    return isinstance(op, STANDARD_LAYERS) or (
        isinstance(op, COMPOSITE_LAYERS) and any(isinstance(m, STANDARD_LAYERS) for m in op.modules()))


def _is_weight(array: np.ndarray, reads: set[tuple[str, int]]) -> bool:
    """A float tensor of more than one element with finite values of moderate size (a causal or
    padding mask of -inf or -1e9 stays a constant), read only where ops take weights (WEIGHT_INPUTS)."""
    return (array.dtype.kind == "f" and array.size > 1 and bool(np.isfinite(array).all())
            and float(np.abs(array).max()) < TRAINABLE_LIMIT
            and all(op in WEIGHT_INPUTS and (WEIGHT_INPUTS[op] is None or index in WEIGHT_INPUTS[op])
                    for op, index in reads))


def to_torch(model: str | Path | onnx.ModelProto, *, train_constants: bool = True) -> "torch.nn.Module":
    """The ONNX model as a torch module in eval mode, taking the graph inputs positionally (in graph
    order) and returning the output (a list of outputs if there are several). With
    `train_constants`, float weights that ONNX ops read directly become trainable parameters
    (see `_is_weight` for what stays constant). An initializer that feeds several inputs is one
    parameter per input (see `_convertible`)."""
    torch, onnx2pytorch = _require()
    from onnx2pytorch.convert.operations import get_buffer_name

    convertible = _convertible(_load(model))
    converted = onnx.ModelProto()
    converted.CopyFrom(convertible)  # the converter edits the graph it is given (fuses MatMul + Add)
    module = onnx2pytorch.ConvertModel(converted, experimental=True)
    _onnx_momentum(module)
    arrays = {t.name: numpy_helper.to_array(t) for t in convertible.graph.initializer}
    reads = _root_reads(module)
    if train_constants:
        for name, readers in sorted(reads.items()):
            buffer_name = get_buffer_name(name)
            if buffer_name in module._buffers and _is_weight(arrays[name], readers):
                tensor = module._buffers.pop(buffer_name)
                module.register_parameter(buffer_name, torch.nn.Parameter(tensor.clone()))
    module.spa_graph = convertible  # for export_onnx: the graph the module computes, weights by name
    module.spa_sources = _sources(module, convertible)
    return module.eval()


def _onnx_momentum(module: "torch.nn.Module") -> None:
    """BatchNorm's running statistics updated as ONNX (and the exporting framework) means them.
    ONNX's momentum weighs the old statistic, running * momentum + batch * (1 - momentum), torch's
    the new one, running * (1 - momentum) + batch * momentum: onnx2pytorch hands the attribute over
    as it is, so torch's exporter's 0.9 (torch's 0.1) became 0.9 in torch, and after training the
    running statistics were those of the last batch or two, not an average over the epoch."""
    from onnx2pytorch.operations import BatchNormWrapper

    for node in module.onnx_model.graph.node:
        op = getattr(module, module.mapping[node.output[0]], None)
        if node.op_type == "BatchNormalization" and isinstance(op, BatchNormWrapper):
            attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            op.bnu.momentum = 1.0 - float(attributes.get("momentum", 0.9))


def _outputs(module: "torch.nn.Module", model: onnx.ModelProto, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    torch, _ = _require()
    names = [i.name for i in model.graph.input if i.name in inputs]
    with torch.no_grad():
        got = module(*(torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in names))
    got = list(got) if isinstance(got, (list, tuple)) else [got]
    return [g.detach().cpu().numpy() for g in got]


def max_difference(module: "torch.nn.Module", model: str | Path | onnx.ModelProto,
                   inputs: Mapping[str, np.ndarray]) -> float:
    """The largest absolute difference between the module's float outputs (in eval mode) and
    onnxruntime's on `inputs` (graph input name -> array)."""
    import onnxruntime as ort

    proto = _load(model)
    was_training = module.training
    module.eval()
    try:
        got = _outputs(module, proto, inputs)
    finally:
        module.train(was_training)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {i.name: inputs[i.name] for i in session.get_inputs()})
    if len(got) != len(expected):
        raise SpaError(f"the module returns {len(got)} outputs, the ONNX model {len(expected)}")
    worst = 0.0
    for name, a, b in zip([o.name for o in proto.graph.output], got, expected):
        if a.shape != b.shape:
            raise SpaError(f"output {name!r}: the module gives shape {a.shape}, the ONNX model {b.shape}")
        if b.dtype.kind == "f":
            worst = max(worst, float(np.abs(a.astype(np.float64) - b).max()))
    return worst


def check_equal(module: "torch.nn.Module", model: str | Path | onnx.ModelProto, inputs: Mapping[str, np.ndarray],
                atol: float = 1e-5) -> float:
    """`max_difference`, raising SpaError if it is above `atol`; returns it."""
    worst = max_difference(module, model, inputs)
    if not worst <= atol:
        raise SpaError(f"the module's outputs differ from the ONNX model's by up to {worst:.3g} (atol {atol:g})")
    return worst


def export_onnx(module: "torch.nn.Module", path: str | Path) -> Path:
    """Write the model `module` was converted from (by to_torch) to `path` with the module's current
    weights in its initializers: the same graph, input and output names, dynamic axes and opset, so
    a fine-tuned pruned model goes back to where it came from. (An initializer that several inputs
    read is written once per input: see `_convertible`.) Returns `path`."""
    _require()
    sources, graph = getattr(module, "spa_sources", None), getattr(module, "spa_graph", None)
    if sources is None or graph is None:
        raise SpaError("export_onnx takes a module made by spa.finetune.to_torch")
    tensors = dict(module.named_parameters()) | dict(module.named_buffers())
    copy = onnx.ModelProto()
    copy.CopyFrom(graph)
    for index, initializer in enumerate(copy.graph.initializer):
        source = sources.get(initializer.name)
        if source is None:
            continue
        name, layout, scale = source
        original = numpy_helper.to_array(initializer)
        value = _from_layer(tensors[name].detach().cpu().numpy(), layout, scale, original.shape)
        copy.graph.initializer[index].CopyFrom(numpy_helper.from_array(value.astype(original.dtype),
                                                                       initializer.name))
    onnx.save(copy, str(path))
    return Path(path)


def _from_layer(value: np.ndarray, layout: str, scale: float, shape: tuple[int, ...]) -> np.ndarray:
    """An initializer's value from the tensor the converter made of it (see _sources)."""
    value = value.T if layout == "transposed" else value
    return (value / scale if scale != 1 else value).reshape(shape)


def _sources(module: "torch.nn.Module", model: onnx.ModelProto) -> dict[str, tuple[str, str, float]]:
    """Initializer name -> (the module tensor holding it, "same" or "transposed", the factor the
    converter multiplied it by). Layers hold the weights of the nodes they were made from (Conv,
    ConvTranspose, BatchNormalization, Gemm, MatMul with the Add of its bias fused); every other
    initializer is read from the module's root under its buffer name. Each entry is checked against
    the initializer's value, so a converter that builds a layer differently fails here, not later."""
    from onnx2pytorch.convert.operations import get_buffer_name

    torch, _ = _require()
    names = {id(t): n for n, t in [*module.named_parameters(), *module.named_buffers()]}
    initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    sources: dict[str, tuple[str, str, float]] = {}
    for name, owner, attr, layout, scale in _layer_entries(module, model, torch):
        sources.setdefault(name, (names[id(getattr(owner, attr))], layout, scale))
    root = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
    for name in initializers:
        if name not in sources and get_buffer_name(name) in root:
            sources[name] = (get_buffer_name(name), "same", 1.0)
    tensors = dict(module.named_parameters()) | dict(module.named_buffers())
    for name, (tensor_name, layout, scale) in sources.items():
        expected = initializers[name]
        got = _from_layer(tensors[tensor_name].detach().cpu().numpy(), layout, scale, expected.shape)
        if not np.allclose(got, expected, rtol=1e-6, atol=1e-7):
            raise SpaError(f"cannot tell where the converted module keeps initializer {name!r}")
    return sources


def _layer_entries(module: "torch.nn.Module", model: onnx.ModelProto, torch: Any) -> list[tuple]:
    """(initializer name, owner module, attribute, layout, factor) for every weight a layer holds."""
    initializers = {t.name for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    entries = []
    for node in module.onnx_model.graph.node:
        op = getattr(module, module.mapping[node.output[0]])
        for name, owner, attr, layout, scale in _layer_tensors(op, node, producers, initializers, torch) or []:
            if name in initializers and getattr(owner, attr, None) is not None:
                entries.append((name, owner, attr, layout, scale))
    return entries


def _layer_tensors(op: Any, node: onnx.NodeProto, producers: dict[str, onnx.NodeProto],
                   initializers: dict[str, np.ndarray], torch: Any) -> list[tuple] | None:
    """For a node the converter turned into a layer: (input name, owner module, attribute, layout,
    factor) for each weight input; None for a node whose weights the module reads from its root."""
    from onnx2pytorch.constants import COMPOSITE_LAYERS, STANDARD_LAYERS
    from onnx2pytorch.operations import BatchNormWrapper

    if isinstance(op, COMPOSITE_LAYERS):
        layers = [m for m in op.modules() if isinstance(m, STANDARD_LAYERS)]
        if not layers:
            return None
        op = layers[0]
    if not isinstance(op, STANDARD_LAYERS):
        return None
    inputs = list(node.input) + [""] * 5
    if isinstance(op, BatchNormWrapper):
        return [(inputs[index], op.bnu, attr, "same", 1.0)
                for index, attr in enumerate(("weight", "bias", "running_mean", "running_var"), start=1)]
    if isinstance(op, torch.nn.Linear):
        if node.op_type == "Gemm":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            layout = "same" if attrs.get("transB", 0) else "transposed"
            return [(inputs[1], op, "weight", layout, float(attrs.get("alpha", 1.0))),
                    (inputs[2], op, "bias", "same", float(attrs.get("beta", 1.0)))]
        # MatMul, its bias Add fused in: the fused node carries the Add's output
        add = producers.get(node.output[0])
        bias = "" if add is None or add.op_type != "Add" else next(n for n in add.input if n in initializers)
        return [(inputs[1], op, "weight", "transposed", 1.0), (bias, op, "bias", "same", 1.0)]
    conv = getattr(op, "conv", op)  # onnx2pytorch's ConvTranspose wraps torch's
    if hasattr(conv, "weight"):
        return [(inputs[1], conv, "weight", "same", 1.0), (inputs[2], conv, "bias", "same", 1.0)]
    raise SpaError(f"spa.finetune cannot map the weights of {node.op_type} node {node.name!r} "
                   f"({type(op).__name__}) back to ONNX")
