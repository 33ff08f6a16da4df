"""The rewrite stage on its own: given an analysis and the channels to remove, each op's
rewrite hook keeps the node in step (Flatten/Reshape shapes, Split sizes, Slice bounds,
depthwise groups), initializers lose exactly the removed positions, and the graph runs."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from graphgen import GraphBuilder, tensor_info
from spa.analyze import analyze
from spa.io.export import export
from spa.io.load import import_graph, load_model
from spa.io.runtime import run
from spa.rewrite import rewrite

IMAGE = [1, 3, 4, 4]


def _pruned(model: onnx.ModelProto, channels: dict[str, list[int]]) -> onnx.ModelProto:
    """Analyze, remove `channels` of the groups started by the named nodes, rewrite, export."""
    loaded = load_model(model)
    graph = import_graph(loaded)
    analysis = analyze(graph, 17)
    removed = {g.id: channels[g.name] for g in analysis.groups if g.name in channels}
    assert len(removed) == len(channels), [g.name for g in analysis.groups]
    rewrite(analysis, removed)
    pruned = export(graph, loaded.model)
    onnx.checker.check_model(pruned, full_check=True)
    run(pruned, {"input": np.ones(IMAGE, np.float32)})
    return pruned


def _initializer(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def test_flatten_then_gemm_loses_each_channel_s_columns():
    g = GraphBuilder(0)
    y = g.op("Relu", [g.conv("input", 3, 4)])
    flat = g.op("Reshape", [y, g.ints("shape", [1, 64])])
    out = g.op("MatMul", [flat, g.param("w", [64, 5])])
    model = g.build([tensor_info("input", IMAGE)], [tensor_info(out, [1, 5])])
    before = _initializer(model, "w0")
    pruned = _pruned(model, {"conv0": [1, 3]})
    kept_columns = np.r_[0:16, 32:48]  # channels 0 and 2, 16 positions each
    np.testing.assert_array_equal(_initializer(pruned, "w0"), before[kept_columns])
    shapes = [numpy_helper.to_array(t).tolist() for t in pruned.graph.initializer if t.name.startswith("shape0")]
    assert shapes == [[1, 32]]


def test_split_sizes_follow_the_kept_channels():
    g = GraphBuilder(1)
    y = g.op("Relu", [g.conv("input", 3, 8)])
    left, right = g.multi_op("Split", [y, g.ints("split", [4, 4])], 2, axis=1)
    out = g.op("Add", [g.conv(left, 4, 2), g.conv(right, 4, 2)])
    model = g.build([tensor_info("input", IMAGE)], [tensor_info(out, [1, 2, 4, 4])])
    pruned = _pruned(model, {"conv0": [1, 6, 7]})
    split = next(n for n in pruned.graph.node if n.op_type == "Split")
    sizes = next(numpy_helper.to_array(t) for t in pruned.graph.initializer if t.name == split.input[1])
    assert sizes.tolist() == [3, 2]


def test_slice_bounds_move_with_removed_channels():
    g = GraphBuilder(2)
    y = g.op("Relu", [g.conv("input", 3, 8)])
    part = g.op("Slice", [y, g.ints("starts", [2]), g.ints("ends", [6]), g.ints("axes", [1])])
    out = g.conv(part, 4, 2)
    model = g.build([tensor_info("input", IMAGE)], [tensor_info(out, [1, 2, 4, 4])])
    pruned = _pruned(model, {"conv0": [0, 3, 7]})  # one before the window, one inside, one after
    node = next(n for n in pruned.graph.node if n.op_type == "Slice")
    bounds = [numpy_helper.to_array(next(t for t in pruned.graph.initializer if t.name == name)).tolist()
              for name in node.input[1:3]]
    assert bounds == [[1], [4]]  # channels 2, 4, 5 of the kept 1, 2, 4, 5, 6


def test_depthwise_groups_follow_the_kept_channels():
    g = GraphBuilder(3)
    y = g.op("Relu", [g.conv("input", 3, 8)])
    y = g.op("Relu", [g.conv(y, 8, 8, group=8)])
    out = g.conv(y, 8, 2)
    model = g.build([tensor_info("input", IMAGE)], [tensor_info(out, [1, 2, 4, 4])])
    pruned = _pruned(model, {"conv0": [2, 5]})
    depthwise = [n for n in pruned.graph.node if n.op_type == "Conv"][1]
    assert next(a.i for a in depthwise.attribute if a.name == "group") == 6


def test_nothing_removed_changes_nothing():
    g = GraphBuilder(4)
    out = g.conv(g.op("Relu", [g.conv("input", 3, 8)]), 8, 2)
    model = g.build([tensor_info("input", IMAGE)], [tensor_info(out, [1, 2, 4, 4])])
    pruned = _pruned(model, {"conv0": []})
    assert [t.dims for t in pruned.graph.initializer] == [t.dims for t in model.graph.initializer]
