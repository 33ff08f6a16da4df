"""Group names a person can use (issue 14): the module paths exporters write into node names,
not initializer names such as `onnx::Conv_134` that exist only inside the file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import spa
from spa.analyze import analyze
from spa.analyze.names import numbered, shorten
from spa.cli import main
from spa.io.load import import_graph, load_model
from spa.report import inspect_table

MODELS = Path(__file__).resolve().parent.parent / "models"
RESNET = MODELS / "resnet_basic.onnx"  # torch export, BatchNorm folded: weights are `onnx::Conv_NNN`


def _blocks_model(names: dict[str, tuple[str, str, str]] | None = None) -> onnx.ModelProto:
    """x -> conv a -> relu -> conv b -> relu -> conv c -> y; `names` gives each conv's
    (node, output, weight) names, by default a torch export's of a two-block net."""
    names = names or {"a": ("/layer1/layer1.0/conv1/Conv", "/layer1/layer1.0/conv1/Conv_output_0", "onnx::Conv_12"),
                      "b": ("/layer1/layer1.0/conv2/Conv", "/layer1/layer1.0/conv2/Conv_output_0", "onnx::Conv_15"),
                      "c": ("/layer2/layer2.0/conv1/Conv", "/layer2/layer2.0/conv1/Conv_output_0", "onnx::Conv_18")}
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for key, channels_in, channels in (("a", 3, 4), ("b", 4, 6), ("c", 6, 5)):
        node, output, weight = names[key]
        inits.append(numpy_helper.from_array(rng.standard_normal((channels, channels_in, 1, 1)).astype(np.float32), weight))
        nodes.append(helper.make_node("Conv", [x, weight], [output], name=node))
        x = output
        if key != "c":
            nodes.append(helper.make_node("Relu", [output], [output + "_relu"], name=""))
            x = output + "_relu"
    graph = helper.make_graph(nodes, "blocks", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 5, 4, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _analysis(model: onnx.ModelProto, keep: tuple[str, ...] = ()):
    loaded = load_model(model)
    return analyze(import_graph(loaded), 17, keep)


def test_torch_export_with_folded_batchnorm_is_named_by_its_modules(capsys):
    groups = spa.inspect(str(RESNET)).groups
    first = groups[0]
    assert first.node == "/0/0.0/Conv"  # the node as the file names it, for --ignore
    assert first.name == "0.0"  # module 0.0, as the torch model calls it (0.0.weight)
    assert first.layers == ["0.0", "1.body.1.0", "2.body.1.0"]  # the residual stream's convs
    assert [g.name for g in groups[1:4]] == ["1.body.0.0", "2.body.0.0", "3.body.0.0"]
    assert groups[7].name == "5" and groups[7].layers == ["5.shortcut.0", "5.body.1.0"]  # the module making it
    assert main(["inspect", str(RESNET)]) == 0
    table = capsys.readouterr().out
    assert "onnx::" not in table
    assert "0.0: 16 channels made by 0.0, 1.body.1.0, 2.body.1.0; read by 1.body.0.0, 2.body.0.0," in table
    assert "1.body.0.0: 16 channels; read by 1.body.1.0" in table
    assert main(["inspect", str(RESNET), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)["groups"][0]
    assert (data["name"], data["node"], data["block"]) == ("0.0", "/0/0.0/Conv", "0")
    producer = next(m for m in data["members"] if m["producer"] and m["axis"] == 0)
    assert producer["initializer"].startswith("onnx::Conv_") and producer["layer"] == "0.0"  # both, in --json


def test_prune_report_names_groups_by_module(tmp_path):
    report = spa.prune(str(RESNET), 0.5, round_to=1, output=tmp_path / "p.onnx").report
    assert [g["name"] for g in report["groups"]][:3] == ["0.0", "1.body.0.0", "2.body.0.0"]
    assert not any("onnx::" in g["name"] for g in report["groups"])


def test_tiny_torch_graph_names_and_describe():
    groups = _analysis(_blocks_model()).groups
    assert [g.name for g in groups] == ["layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1"]
    assert [g.block for g in groups] == ["layer1", "layer1", "layer2"]
    assert groups[0].describe() == "4 channels made by layer1.0.conv1; read by layer1.0.conv2"
    assert groups[0].describe(named=True) == "4 channels; read by layer1.0.conv2"


def test_unnamed_nodes_fall_back_to_output_then_weight_names():
    model = _blocks_model({"a": ("", "stem_out", "onnx::Conv_3"),  # output named by hand
                           "b": ("", "onnx::Relu_7", "body.conv.weight"),  # numbered output: the weight
                           "c": ("", "21", "onnx::Conv_9")})  # every name numbered: the output's
    groups = _analysis(model).groups
    assert [g.name for g in groups] == ["stem_out", "body.conv", "21"]
    assert groups[0].node == "stem_out"
    assert groups[0].describe() == "4 channels made by stem_out; read by body.conv"


def test_numbered_names():
    assert all(numbered(n) for n in ("onnx::Conv_144", "node_MatMul_45", "val_12", "Conv.0", "conv2d_3.tmp_0",
                                     "123", "Conv__222", "getitem_6"))
    assert not any(numbered(n) for n in ("conv1", "/layer1/layer1.0/conv1/Conv", "layer1.0.conv2.weight", "fc",
                                         "resnet50/conv1_bn/FusedBatchNormV3:0"))
    assert shorten("/layer1/layer1.0/conv1/Conv") == "layer1.0.conv1"
    assert shorten("/model/encoder/layer.0/attention/self/query/MatMul") == "model.encoder.layer.0.attention.self.query"
    assert shorten("/layer1/layer1.0/conv1/Conv_output_0") == "layer1.0.conv1"
    assert shorten("resnet50/conv1_bn/FusedBatchNormV3:0") == "resnet50/conv1_bn"
    assert shorten("layer1.0.conv2.weight") == "layer1.0.conv2"
    assert shorten("conv1") == "conv1"


def test_inspect_table_has_a_heading_per_block():
    table = inspect_table(_analysis(_blocks_model())).splitlines()
    assert table[1] == "layer1" and table[4] == "layer2"
    assert table[2].split()[0] == "0" and table[3].split()[0] == "1" and table[5].split()[0] == "2"
    assert table[2].endswith("layer1.0.conv1: 4 channels; read by layer1.0.conv2")


def test_inspect_table_gathers_a_block_split_by_another_group():
    """A transformer's hidden group, made first in layer 0, does not split layer 0's rows; a
    layer outside any block keeps its place."""
    lines = inspect_table(spa.inspect(str(MODELS / "transformers" / "bert_tiny.onnx"))).splitlines()
    headings = [line for line in lines[1:-1] if not line.startswith(" ")]
    assert headings == ["model.bert.encoder.layer.0", "model.bert.encoder", "model.bert.encoder.layer.1",
                        "model.bert.pooler", "(top level)"]
    rows = [line.split()[0] for line in lines[1:-1] if line.startswith(" ")]
    assert rows == ["0", "2", "1", "3", "4", "5", "6"]
    assert lines[-3:-1] == ["(top level)", "    6  mlp        4  no        yes    model.classifier: reaches graph output 'logits'"]


def test_inspect_table_has_no_headings_where_each_would_head_one_row():
    lines = inspect_table(spa.inspect(str(RESNET))).splitlines()  # blocks 0..5 of one or two groups each
    assert all(line.startswith(" ") for line in lines[1:-1])


def test_ignore_takes_a_layer_or_module_name():
    """As for a node: its output channels and every axis of its weights (the channels it reads)."""
    def ignored(keep: str) -> list[bool]:
        return [any(f"--ignore {keep}" in r for r in g.reasons) for g in _analysis(_blocks_model(), (keep,)).groups]
    assert ignored("layer1.0.conv2") == [True, True, False]
    assert ignored("layer2") == [False, True, False]  # layer2.0.conv1 reads group 1 (group 2 is an output already)
    assert ignored("layer1.0.conv1") == [True, False, False]
    assert ignored("layer1.0.conv") == [False, False, False]  # whole parts only


def test_a_stream_two_blocks_pass_on_is_named_by_its_first_layer():
    """MobileNetV2's residual stream through features.2 and features.3: not `features`."""
    rng = np.random.default_rng(0)
    weights = {"onnx::Conv_1": (4, 3), "onnx::Conv_2": (4, 4), "onnx::Conv_3": (2, 4)}
    inits = [numpy_helper.from_array(rng.standard_normal((o, i, 1, 1)).astype(np.float32), n)
             for n, (o, i) in weights.items()]
    nodes = [helper.make_node("Conv", ["x", "onnx::Conv_1"], ["s"], name="/features/features.2/conv/Conv"),
             helper.make_node("Conv", ["s", "onnx::Conv_2"], ["p"], name="/features/features.3/conv/Conv"),
             helper.make_node("Add", ["s", "p"], ["a"], name="/features/features.3/Add"),
             helper.make_node("Conv", ["a", "onnx::Conv_3"], ["y"], name="/classifier/Conv")]
    graph = helper.make_graph(nodes, "stream", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 4])], inits)
    [stream, _] = _analysis(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])).groups
    assert stream.layers == ["features.2.conv", "features.3.conv"]
    assert stream.name == "features.2.conv" and stream.block == "features.2"
    assert stream.describe() == "4 channels made by features.{2.conv, 3.conv}; read by classifier"


def test_prune_ignores_a_layer_by_the_name_inspect_shows():
    """`spa prune --ignore` takes the layer and module names of `spa inspect`, not only node
    and initializer names; an unknown name is still one line."""
    import pytest

    import spa
    from spa.errors import SpaError
    model = MODELS / "resnet_basic.onnx"
    name = next(g for g in spa.inspect(model).groups if g.prunable).name
    result = spa.prune(model, 0.3, ignore=[name])
    kept = next(g for g in result.report["groups"] if g["name"] == name)
    assert kept["removed"] == [] and f"--ignore {name}" in (kept["reason"] or "")
    with pytest.raises(SpaError, match="no node, initializer, layer or module"):
        spa.prune(model, 0.3, ignore=["no.such.layer"])
