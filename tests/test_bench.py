import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from spa.bench import bench, format_bench
from spa.io.inputs import InputSpec, input_specs, make_inputs
from spa.metrics import count_macs, count_params


def conv_net(width: int) -> onnx.ModelProto:
    """Nx3x16x16 -> Conv3x3(width) -> Relu -> Conv3x3(width) -> Relu -> Conv1x1(4)."""
    rng = np.random.default_rng(width)
    layers = [(width, 3, 3), (width, width, 3), (4, width, 1)]
    nodes, initializers, current = [], [], "x"
    for index, (c_out, c_in, kernel) in enumerate(layers):
        w = rng.standard_normal((c_out, c_in, kernel, kernel)).astype(np.float32)
        initializers.append(numpy_helper.from_array(w, f"w{index}"))
        pad = kernel // 2
        nodes.append(
            helper.make_node("Conv", [current, f"w{index}"], [f"c{index}"], pads=[pad] * 4)
        )
        current = f"c{index}"
        if index < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [current], [f"r{index}"]))
            current = f"r{index}"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes, "net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 16, 16])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def result() -> dict:
    return bench(conv_net(16), conv_net(8), runs=5, warmup=1, dim_values={"N": 2})


def test_bench_report_keys(result):
    for key in ("speedup", "macs_ratio", "params_ratio", "promised_speedup"):
        assert key in result
    for model in ("a", "b"):
        for key in ("median_ms", "p10_ms", "p90_ms", "params", "macs", "size_bytes"):
            assert key in result[model]
        assert result[model]["p10_ms"] <= result[model]["median_ms"] <= result[model]["p90_ms"]
    json.dumps(result)


def test_bench_ratios_match_metrics(result):
    wide, narrow = conv_net(16), conv_net(8)
    assert result["speedup"] > 0
    macs_wide, macs_narrow = count_macs(wide, {"N": 2}), count_macs(narrow, {"N": 2})
    assert result["a"]["macs"] == macs_wide
    assert result["macs_ratio"] == pytest.approx(macs_narrow / macs_wide)
    assert result["promised_speedup"] == pytest.approx(1 / result["macs_ratio"])
    assert result["params_ratio"] == pytest.approx(count_params(narrow) / count_params(wide))


def test_bench_counts_macs_where_shape_inference_stops(monkeypatch):
    """Where inference leaves a conv's shapes unknown (a quantized export's com.microsoft
    QLinearAdd did, on a real model), its MACs come from the shapes of the timed run; they
    were skipped, and both models reported the first conv's MACs only (ratio 1.0)."""
    import spa.metrics
    inferred = spa.metrics._inferred_shapes

    def stopping_at_the_relu(model, input_shapes):
        shapes = inferred(model, input_shapes)
        return {name: shape for name, shape in shapes.items() if name not in ("r0", "c1", "r1", "y")}
    monkeypatch.setattr(spa.metrics, "_inferred_shapes", stopping_at_the_relu)
    wide, narrow = conv_net(16), conv_net(8)
    found = bench(wide, narrow, runs=2, warmup=0, dim_values={"N": 1})
    monkeypatch.undo()
    assert found["a"]["macs"] == count_macs(wide, {"N": 1})
    assert found["macs_ratio"] == pytest.approx(count_macs(narrow, {"N": 1}) / count_macs(wide, {"N": 1}))


def test_format_bench_lists_every_row(result):
    text = format_bench(result)
    for label in ("before", "after", "median ms", "params", "MACs", "size bytes", "speedup"):
        assert label in text
    assert f"{result['a']['macs']:,}" in text


def test_bench_accepts_paths_with_external_data(tmp_path):
    path = tmp_path / "wide.onnx"
    onnx.save(conv_net(16), path, save_as_external_data=True, size_threshold=0)
    from_path = bench(path, conv_net(16), runs=2, warmup=1)
    assert from_path["macs_ratio"] == 1.0
    assert from_path["params_ratio"] == 1.0
    assert from_path["a"]["size_bytes"] == pytest.approx(from_path["b"]["size_bytes"], rel=0.05)


def test_input_specs_skip_initializers():
    model = conv_net(8)
    model.graph.input.append(helper.make_tensor_value_info("w0", TensorProto.FLOAT, [8, 3, 3, 3]))
    assert input_specs(model) == [InputSpec("x", np.dtype(np.float32), ["N", 3, 16, 16])]


def test_make_inputs_dtypes_ranges_and_dims():
    inputs = [
        helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"]),
        helper.make_tensor_value_info("flag", TensorProto.BOOL, [None]),
        helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["batch", 4]),
        helper.make_tensor_value_info("scale", TensorProto.FLOAT, []),
    ]
    graph = helper.make_graph([], "g", inputs, inputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)

    feed = make_inputs(model, dim_values={"seq": 7}, default_dim=3)
    assert feed["ids"].shape == (3, 7) and feed["ids"].dtype == np.int64
    assert feed["ids"].min() >= 0 and feed["ids"].max() <= 9
    assert set(np.unique(feed["attention_mask"])) <= {0, 1}
    assert feed["flag"].shape == (3,) and feed["flag"].dtype == np.bool_
    assert feed["x"].shape == (3, 4) and feed["x"].dtype == np.float16
    assert isinstance(feed["scale"], np.ndarray) and feed["scale"].shape == ()
    again = make_inputs(model, dim_values={"seq": 7}, default_dim=3)
    assert all(np.array_equal(feed[name], again[name]) for name in feed)
