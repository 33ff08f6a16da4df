"""Names a person can use: a layer is called by the module path its exporter wrote into the
node name (`/layer1/layer1.0/conv1/Conv` is `layer1.0.conv1`), not by initializer names
such as `onnx::Conv_144` that exist only inside the file.

Where a node has no name, or only one an exporter numbered (`node_Conv_12`, `Conv__222`),
the name of its output tensor is used, then that of its weight (`layer1.0.conv1.weight` is
`layer1.0.conv1`); where every one of them is numbered, the node's own name (or its output's).
"""
from __future__ import annotations

import re
from functools import lru_cache

import onnx_graphsurgeon as gs

# words exporters number their anonymous names with (besides op types)
_ANONYMOUS = {"onnx", "node", "val", "getitem", "p2o", "pd", "op", "tmp", "output", "conv2d", "linear", "addmm",
              "attention", "quantized", "fused", "bn", "weight", "weights", "bias", "kernel", "oih", "w", "b"}
_OP_PART = re.compile(r"^[A-Z][A-Za-z0-9]*(_\d+)*(_output_\d+)?$")  # /layer1/conv1/Conv, .../Conv_1_output_0
_WEIGHT_SUFFIX = re.compile(r"(?<=.)[./:_](weight|kernel|w_0)$")
_PASS_THROUGH = ("DequantizeLinear", "Cast", "Identity")  # a weight seen through these is the weight


@lru_cache(maxsize=1)
def _op_words() -> frozenset[str]:
    from onnx import defs
    return frozenset(schema.name.lower() for schema in defs.get_all_schemas_with_history())


def numbered(name: str) -> bool:
    """An exporter's anonymous name: only op types, numbers and the words exporters number
    with (`onnx::Conv_144`, `node_MatMul_45`, `val_12`, `Conv.0`, `conv2d_3.tmp_0`, `123`)."""
    words = [w for w in re.split(r"[^A-Za-z0-9]+", name) if w]
    return all(w.isdigit() or w.lower() in _ANONYMOUS or w.lower() in _op_words() for w in words)


def shorten(name: str) -> str:
    """The module path in a node, tensor or weight name: a trailing op name and `:0` go, a
    torch scope (`/layer1/layer1.0/conv1/Conv`) becomes the dotted path `layer1.0.conv1`."""
    name = re.sub(r":\d+$", "", name)
    if "/" in name.strip("/"):
        parts = [p for p in name.split("/") if p]
        if _OP_PART.match(parts[-1]):
            parts = parts[:-1]
        if name.startswith("/"):  # torch: each scope repeats its parent's ("layer1", "layer1.0")
            parts = [p for p, after in zip(parts, parts[1:] + [""]) if not after.startswith(p + ".")]
            name = ".".join(parts)
        else:
            name = "/".join(parts)
    name = name.strip("/")
    return _WEIGHT_SUFFIX.sub("", name)


def weight_of(node: gs.Node) -> str:
    """The first constant of rank 2 or more a node reads (through a dequantization or cast)."""
    for tensor in node.inputs:
        while not isinstance(tensor, gs.Constant) and tensor.inputs and tensor.inputs[0].op in _PASS_THROUGH \
                and tensor.inputs[0].inputs:
            tensor = tensor.inputs[0].inputs[0]
        if isinstance(tensor, gs.Constant) and len(tensor.shape or ()) >= 2:
            return tensor.name
    return ""


def layer_name(node: gs.Node, weight: str = "") -> str:
    """What a person calls the layer `node` is: its name, else its output's, else its weight's."""
    output = node.outputs[0].name if node.outputs else ""
    candidates = [n for n in (node.name, output, weight or weight_of(node)) if n]
    chosen = next((n for n in candidates if not numbered(n)), candidates[0] if candidates else "")
    return shorten(chosen) or chosen


def readers(constant: gs.Constant) -> list[gs.Node]:
    """The layers reading a constant (through DequantizeLinear, Cast, Identity)."""
    found: list[gs.Node] = []
    for node in constant.outputs:
        if node.op in _PASS_THROUGH and node.outputs:
            found += [n for t in node.outputs for n in t.outputs]
        else:
            found.append(node)
    return found


def parts(name: str) -> list[str]:
    return [p for p in re.split(r"[/.]", name) if p]


def common_prefix(names: list[str]) -> str:
    """The longest module path all `names` lie in ("" if none): whole parts only."""
    if not names:
        return ""
    split = [parts(n) for n in names]
    count = 0
    while all(len(p) > count and p[count] == split[0][count] for p in split):
        count += 1
    return _cut(names[0], count)


def name_separator(name: str, prefix: str) -> str:
    """The separator after `prefix` in `name` ("." or "/")."""
    return name[len(prefix):len(prefix) + 1]


def _cut(name: str, count: int) -> str:
    """`name` up to the end of its first `count` parts, separators as written."""
    if count == 0:
        return ""
    seen = 0
    for match in re.finditer(r"[^/.]+", name):
        seen += 1
        if seen == count:
            return name[:match.end()]
    return name


_KERAS_BLOCK = re.compile(r"^(.*?block_?\d+[a-z]?)(?=_)")  # conv2_block1_1_conv, block1a_project_conv


def block_of(name: str, root: str) -> str:
    """The block a layer is in, for headings: past the model's `root`, the path up to its first
    numbered part (`layer1`, `layer.0`, `blocks.3`, keras' `conv2_block1`), else its parent."""
    base = len(parts(root))
    rest = parts(name)[base:]
    for k, part in enumerate(rest[:-1]):
        if any(c.isdigit() for c in part):
            return _cut(name, base + k + 1)
    if rest and (keras := _KERAS_BLOCK.match(rest[-1])):
        stem = name.rstrip("/.")
        return stem[:len(stem) - len(rest[-1])] + keras.group(1)
    return _cut(name, len(parts(name)) - 1) if len(parts(name)) - 1 > base else ""


def layer_nodes(graph: gs.Graph, name: str) -> list[gs.Node]:
    """The nodes of the layer `spa inspect` calls `name`, or of every layer in the module
    `name` (`layer2.0.conv1`, `layer2`), for --ignore."""
    found = []
    for node in graph.nodes:
        layer = layer_name(node)
        if layer == name or layer.startswith(name + ".") or layer.startswith(name + "/"):
            found.append(node)
    return found
