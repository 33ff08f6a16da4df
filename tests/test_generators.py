"""The test-model generators and the oracle's own machinery (no real pruner needed)."""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from types import SimpleNamespace

import numpy as np
import onnx
import oracle
import pytest
from edge_models import EDGE_MODELS, reshape_dynamic_shape_chain
from graphgen import BLOCKS, HEADS, GraphBuilder, cnn_models, tensor_info
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from spa import oracle as spa_oracle


def _assert_valid(model: onnx.ModelProto) -> None:
    """Checker passes, names are unique, weights nonzero, onnxruntime runs it."""
    onnx.checker.check_model(model, full_check=True)
    node_names = [n.name for n in model.graph.node]
    init_names = [t.name for t in model.graph.initializer]
    assert len(set(node_names)) == len(node_names) and len(set(init_names)) == len(init_names)
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor)
        assert array.dtype != np.float32 or np.all(array != 0), f"{tensor.name} has zeros"
    outputs = oracle.run(model, oracle.random_feeds(model))
    for value, array in zip(model.graph.output, outputs):
        dims = [d.dim_value or 2 for d in value.type.tensor_type.shape.dim]
        assert list(array.shape) == dims, value.name
        assert np.isfinite(array).all(), value.name


@settings(max_examples=30, deadline=None)
@given(cnn_models())
def test_random_cnn_is_valid(model: onnx.ModelProto) -> None:
    _assert_valid(model)


@pytest.mark.parametrize("block", BLOCKS)
@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_each_block_kind_is_valid(block: str, data: st.DataObject) -> None:
    _assert_valid(data.draw(cnn_models(blocks=[block], max_blocks=3)))


@pytest.mark.parametrize("head", HEADS)
@settings(max_examples=4, deadline=None)
@given(data=st.data())
def test_each_head_kind_is_valid(head: str, data: st.DataObject) -> None:
    _assert_valid(data.draw(cnn_models(heads=[head], max_blocks=2)))


@pytest.mark.parametrize("name", EDGE_MODELS)
def test_edge_model_is_valid(name: str) -> None:
    _assert_valid(EDGE_MODELS[name]())


def _bare_model(initializers: list[onnx.TensorProto],
                nodes: Sequence[onnx.NodeProto] = ()) -> onnx.ModelProto:
    return helper.make_model(helper.make_graph(list(nodes), "g", [], [], initializer=initializers))


def test_zero_channels_honours_within() -> None:
    model = _bare_model([numpy_helper.from_array(np.ones([4, 2, 1, 1], np.float32), "w")])
    member = {"initializer": "w", "axis": 1, "index": [[0], [1]],
              "within_axis": 0, "within": [[0, 1], [2, 3]]}
    zeroed = oracle.zero_channels(model, {"id": 0, "members": [member]}, [1])
    array = numpy_helper.to_array(zeroed.graph.initializer[0])
    assert np.all(array[2:, 1] == 0) and np.count_nonzero(array) == 6
    assert np.all(numpy_helper.to_array(model.graph.initializer[0]) == 1)


def test_zero_channels_edits_constant_nodes() -> None:
    g = GraphBuilder()
    name = g.constant("c", np.ones([4, 3], np.float32), as_node=True)
    member = {"initializer": name, "axis": 0, "index": [[0, 1], [2, 3]]}
    zeroed = oracle.zero_channels(_bare_model([], g.nodes), {"id": 0, "members": [member]}, [0])
    array = numpy_helper.to_array(zeroed.graph.node[0].attribute[0].t)
    assert np.all(array[:2] == 0) and np.all(array[2:] == 1)


def test_choose_channels_counts() -> None:
    rng = np.random.default_rng(0)
    plain = oracle.choose_channels({"size": 10}, 0.4, rng)
    assert len(set(plain)) == 4 and all(0 <= c < 10 for c in plain)
    segments = [list(range(s, s + 3)) for s in range(0, 12, 3)]
    chosen = oracle.choose_channels({"size": 12, "segments": segments}, 0.4, rng)
    assert [sum(c in seg for c in chosen) for seg in segments] == [1, 1, 1, 1]


def test_random_feeds_fills_symbolic_dims() -> None:
    feeds = oracle.random_feeds(reshape_dynamic_shape_chain())
    assert feeds["input"].shape == (2, 3, 8, 8) and feeds["input"].dtype == np.float32


# A fake pruner for conv0 (3->6) -> Relu -> conv1 (6->4) exercises check_oracle itself.

def _two_conv_model() -> onnx.ModelProto:
    g = GraphBuilder(0)
    out = g.conv(g.op("Relu", [g.conv("input", 3, 6)]), 6, 4)
    return g.build([tensor_info("input", [1, 3, 8, 8])], [tensor_info(out, [1, 4, 8, 8])])


def _two_conv_groups() -> list[dict]:
    rows = [[i] for i in range(6)]
    hidden = {"id": 0, "size": 6, "prunable": True, "reason": None, "exact": True, "kind": "channels", "members": [
        {"initializer": "conv_w0", "axis": 0, "index": rows},
        {"initializer": "conv_b0", "axis": 0, "index": rows},
        {"initializer": "conv_w1", "axis": 1, "index": rows}]}
    output = {"id": 1, "size": 4, "prunable": False, "reason": "graph output", "exact": True, "kind": "channels",
              "members": [{"initializer": "conv_w1", "axis": 0, "index": [[i] for i in range(4)]}]}
    return [hidden, output]


def _fake_prune(mode: str) -> Callable[..., SimpleNamespace]:
    """Prune group 0 by l2; `mode` injects a bug: 'wrong_channels' or 'perturb'."""

    def prune(model: onnx.ModelProto, ratio: float, **_) -> SimpleNamespace:
        model = copy.deepcopy(model)
        slots = {t.name: t for t in model.graph.initializer}
        group = _two_conv_groups()[0]
        arrays = {m["initializer"]: numpy_helper.to_array(slots[m["initializer"]]) for m in group["members"]}
        norms = sum((np.moveaxis(arrays[m["initializer"]], m["axis"], 0).reshape(6, -1) ** 2).sum(1)
                    for m in group["members"])
        order = np.argsort(norms, kind="stable")[:: -1 if mode == "wrong_channels" else 1]
        removed = sorted(order[: math.floor(ratio * 6)].tolist())
        for m in group["members"]:
            pruned = np.delete(arrays[m["initializer"]], removed, axis=m["axis"])
            slots[m["initializer"]].CopyFrom(numpy_helper.from_array(pruned, m["initializer"]))
        if mode == "perturb":
            bias = numpy_helper.to_array(slots["conv_b1"]) + 1e-3
            slots["conv_b1"].CopyFrom(numpy_helper.from_array(bias, "conv_b1"))
        report = {"groups": [{"id": 0, "removed": removed}, {"id": 1, "removed": []}]}
        return SimpleNamespace(model=model, report=report)

    return prune


@pytest.fixture
def fake_spa(monkeypatch: pytest.MonkeyPatch):
    analysis = SimpleNamespace(to_json=lambda: {"groups": _two_conv_groups()})
    monkeypatch.setattr(spa_oracle.api, "inspect", lambda model: analysis)
    return lambda mode: monkeypatch.setattr(spa_oracle.api, "prune", _fake_prune(mode))


def test_check_oracle_accepts_correct_pruner(fake_spa) -> None:
    fake_spa("correct")
    assert oracle.check_oracle(_two_conv_model()) == oracle.OracleSummary(1, 2)


@pytest.mark.parametrize("mode, message", [("wrong_channels", "group 0"),
                                           ("perturb", "differs after pruning")])
def test_check_oracle_catches_bugs(fake_spa, mode: str, message: str) -> None:
    fake_spa(mode)
    with pytest.raises(AssertionError, match=message):
        oracle.check_oracle(_two_conv_model())
