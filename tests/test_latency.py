"""The latency model (spa.latency) and --target-latency. No test asserts a measured time:
only how profiles are traced to nodes, how work scales, and that predictions follow the
work model exactly."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import MODELS, TRANSFORMERS
from onnx import TensorProto, helper, numpy_helper

import spa
from spa.bench import per_node
from spa.cli import main
from spa.errors import SpaError
from spa.io.inputs import make_inputs
from spa.latency import OFF_BLOCK_COST, LatencyModel, Profile, _Tracer, block_size, key_of, node_work, profile
from spa.metrics import tensor_shapes
from spa.select import Selection, kernel_round_to, ranked_cuts


def conv_relu_model(channels: int = 32, groups: int = 1) -> onnx.ModelProto:
    """x (1x32x8x8) -> Conv 3x3 (32 -> channels, `groups`) -> Relu -> Conv 1x1 (channels -> 16) -> y."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((channels, 32 // groups, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((16, channels, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1] * 4, group=groups),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8, 8])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_kernel_names_trace_back_to_original_nodes():
    """onnxruntime names fused kernels after the tensor they make (NCHWc: `<tensor>_nchwc`),
    after the node with a fusion suffix, or 'fused <node>'; a Conv kernel named after its
    fused Relu's output is the Conv's time."""
    tracer = _Tracer(conv_relu_model().graph)
    assert tracer.node_key("conv1", "Conv") == "c1"
    assert tracer.node_key("r1_nchwc", "Conv") == "c1"  # Conv+Relu, named after the Relu's output
    assert tracer.node_key("r1_nchwc", "Relu") == "r1"
    assert tracer.node_key("conv2/MatMulAddFusion/", "Gemm") == "y"
    assert tracer.node_key("fused conv2", "FusedConv") == "y"
    assert tracer.node_key("InsertedPrecisionFreeCast_conv1", "Conv") == "c1"  # an fp16 node run in float
    assert tracer.node_key("conv2_quant_token_1", "QLinearConv") == "y"
    assert tracer.node_key("ReorderInput_token_3", "ReorderInput") is None


@pytest.mark.parametrize("path", [MODELS / "resnet_bottleneck.onnx", MODELS / "mobilenetv2.onnx",
                                  TRANSFORMERS / "bert_tiny.onnx"])
def test_profiles_of_real_exports_trace_every_conv_and_matmul(path):
    """The naming rules hold for this onnxruntime: every weighted Conv/Gemm/MatMul of a real
    export gets kernel time (a renamed fusion would leave one untraced, and unpredicted)."""
    model = onnx.load(path)
    measured = profile(model, model, make_inputs(model), runs=2)
    weighted = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")
                and any(i in {t.name for t in model.graph.initializer} for i in n.input)]
    assert weighted
    assert [key_of(n) for n in weighted if key_of(n) not in measured.node_ms] == []


def test_conv_work_counts_the_slower_path_off_the_channel_block():
    for channels, groups, kind in [(31, 1, "dense"), (31, 31, "depthwise"), (48, 2, "grouped")]:
        model = conv_relu_model(channels, groups) if groups != 31 else _depthwise(channels)
        conv = model.graph.node[0]
        shapes = tensor_shapes(model)
        macs = 8 * 8 * channels * (32 // groups if groups != 31 else 1) * 9
        assert node_work(conv, shapes, block=16) == pytest.approx(macs * OFF_BLOCK_COST[kind])
        assert node_work(conv, shapes, block=1) == pytest.approx(macs)
    aligned = conv_relu_model(32)
    assert node_work(aligned.graph.node[0], tensor_shapes(aligned), block=16) == 8 * 8 * 32 * 32 * 9


def _depthwise(channels: int) -> onnx.ModelProto:
    model = conv_relu_model(channels)
    w1 = np.ones((channels, 1, 3, 3), np.float32)
    next(a for a in model.graph.node[0].attribute if a.name == "group").i = channels
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = channels
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w1, "w1"))
    return model


def test_memory_bound_work_is_elements_read_and_written():
    model = conv_relu_model()
    relu = model.graph.node[1]
    assert node_work(relu, tensor_shapes(model), block=16) == 2 * 32 * 8 * 8


def test_prediction_scales_each_node_by_its_work():
    """With made-up kernel times: conv1 loses half its outputs (half its MACs), relu1 half
    its elements, conv2 half its inputs; untraced kernels shrink as relu1 (the only
    memory-bound one) does, the time between kernels stays."""
    model, half = conv_relu_model(32), conv_relu_model(16)
    timed = Profile({"c1": 4.0, "r1": 1.0, "y": 2.0}, untraced_ms=0.5, wall_ms=8.0, threads=1,
                    kernels={"c1": "Conv", "r1": "Relu", "y": "Conv"})
    latency = LatencyModel(model, model, timed, make_inputs(model), block=16)
    assert latency.predict(model).ms == pytest.approx(8.0)
    prediction = latency.predict(half)
    assert prediction.node_ms == pytest.approx({"c1": 2.0, "r1": 0.5, "y": 1.0})
    assert prediction.ms == pytest.approx(3.5 + 0.25 + 0.5)  # kernels, untraced, overhead (8 - 7.5)
    gone = conv_relu_model(32)
    del gone.graph.node[1]
    gone.graph.node[1].input[0] = "c1"
    assert latency.predict(gone).node_ms["r1"] == 0.0


def test_target_latency_reports_predicted_and_measured(tmp_path):
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    assert main(["prune", str(MODELS / "resnet_bottleneck.onnx"), "-o", str(out), "--target-latency", "0.6",
                 "--report", str(report)]) == 0
    latency = json.loads(report.read_text())["latency"]
    assert set(latency) == {"threads", "original_ms", "predicted_ratio", "realized_ratio"}
    assert 0 < latency["predicted_ratio"] < 1 and latency["realized_ratio"] > 0
    onnx.checker.check_model(onnx.load(out))


def test_target_latency_refuses_steps():
    with pytest.raises(SpaError, match="one step"):
        spa.prune(onnx.load(MODELS / "resnet_bottleneck.onnx"), target_latency=0.5, steps=2)


def test_one_target_at_a_time():
    with pytest.raises(SpaError, match="one of"):
        spa.prune(onnx.load(MODELS / "resnet_bottleneck.onnx"), target_latency=0.5, target_macs=0.5)


def test_groups_record_the_nodes_their_channels_flow_through():
    """conv1's 32 channels flow through conv1 (its filters), relu1 and conv2 (its columns);
    one channel is 1/32 of each."""
    group = next(g for g in spa.inspect(conv_relu_model()).groups if g.name == "conv1")
    assert group.touches == pytest.approx({"c1": 1 / 32, "r1": 1 / 32, "y": 1 / 32})
    assert group.touch_ops == {"Conv", "Relu"}


def test_auto_widths_follow_the_kernels():
    """Conv channels round to the NCHWc block, MatMul-only neurons to 1 (any width)."""
    conv = next(g for g in spa.inspect(conv_relu_model()).groups if g.name == "conv1")
    assert kernel_round_to(conv) == block_size()
    bert = spa.inspect(str(TRANSFORMERS / "bert_tiny.onnx"))
    mlp = [g for g in bert.groups if g.kind == "mlp" and g.prunable]
    assert mlp and all(kernel_round_to(g) == 1 for g in mlp)
    kept = spa.prune(str(TRANSFORMERS / "bert_tiny.onnx"), 0.3, targets=["mlp"]).report["groups"]
    assert any(g["kept"] % 16 for g in kept if g["removed"])  # not rounded to 16


def test_global_cuts_rank_by_score_per_saving():
    """Two groups with equal scores: the one whose channels save twice the latency goes first."""
    model = conv_relu_model()
    groups = spa.inspect(model).groups
    scores = {g.id: np.linspace(0.5, 1.5, g.size) for g in groups}
    cheap, dear = groups[0].id, groups[-1].id
    selection = Selection(0.5, scope="global", round_to=8)
    first = ranked_cuts(groups, scores, selection, savings={cheap: 1.0, dear: 2.0})[0]
    assert first.gid == dear
    first = ranked_cuts(groups, scores, selection, savings={cheap: 2.0, dear: 1.0})[0]
    assert first.gid == cheap


def test_bench_per_node_lists_every_traced_node(tmp_path, capsys):
    out = tmp_path / "out.onnx"
    source = MODELS / "resnet_bottleneck.onnx"
    spa.prune(str(source), 0.5, output=out)
    result = per_node(source, out)
    convs = [n.output[0] for n in onnx.load(source).graph.node if n.op_type == "Conv"]
    assert set(convs) <= {row["node"] for row in result["nodes"]}
    shrunk = [row for row in result["nodes"] if row["predicted_ms"] < row["before_ms"]]
    assert shrunk  # half the channels: the model predicts less time for some nodes
    assert main(["bench", str(source), str(out), "--per-node", "--runs", "2"]) == 0
    assert "wall time per run" in capsys.readouterr().out


def test_latency_goal_correction_follows_the_measurements():
    from spa.targets import _corrected_goal
    assert _corrected_goal([(0.5, 0.4, {})], 0.5) == pytest.approx(0.625)  # one point: scaled by the miss
    # two points: the line through (0.5, 0.4) and (0.625, 0.55) meets 0.5 at 0.5 + 0.1 / 1.2
    assert _corrected_goal([(0.5, 0.4, {}), (0.625, 0.55, {})], 0.5) == pytest.approx(0.5 + 0.1 / 1.2)
    # measurements that fall as predictions rise are noise: scale the last point instead
    assert _corrected_goal([(0.5, 0.45, {}), (0.6, 0.4, {})], 0.5) == pytest.approx(0.6 * 0.5 / 0.4)
