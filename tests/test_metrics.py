import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from spa.metrics import (
    count_macs,
    count_params,
    model_size_bytes,
    node_counts,
    summarize,
)


def weight(name: str, *shape: int) -> TensorProto:
    return numpy_helper.from_array(np.ones(shape, dtype=np.float32), name)


def float_input(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def make_model(nodes, inputs, output_shape, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", inputs, [float_input("y", output_shape)], list(initializers)
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_grouped_conv():
    # 8 -> 12 channels in 2 groups: each output sees 4 inputs * 3x3.
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=2, pads=[1, 1, 1, 1])
    model = make_model(
        [conv], [float_input("x", [1, 8, 10, 10])], [1, 12, 10, 10],
        [weight("w", 12, 4, 3, 3), weight("b", 12)],
    )
    assert count_macs(model) == (12 * 10 * 10) * 4 * 9
    assert count_params(model) == 12 * 4 * 9 + 12


def test_depthwise_strided_conv():
    conv = helper.make_node("Conv", ["x", "w"], ["y"], group=8, strides=[2, 2], pads=[1, 1, 1, 1])
    model = make_model(
        [conv], [float_input("x", [1, 8, 10, 10])], [1, 8, 5, 5], [weight("w", 8, 1, 3, 3)]
    )
    assert count_macs(model) == (8 * 5 * 5) * 1 * 9


def test_conv_transpose():
    # W is (C_in, C_out / group, kH, kW); each input element feeds C_out/group * k outputs.
    deconv = helper.make_node("ConvTranspose", ["x", "w"], ["y"], group=2, strides=[2, 2])
    model = make_model(
        [deconv], [float_input("x", [1, 4, 5, 5])], [1, 6, 10, 10], [weight("w", 4, 3, 2, 2)]
    )
    assert count_macs(model) == (4 * 5 * 5) * 3 * 4


def test_gemm_trans_b():
    gemm = helper.make_node("Gemm", ["a", "w", "c"], ["y"], transB=1)
    model = make_model(
        [gemm], [float_input("a", [3, 5])], [3, 7], [weight("w", 7, 5), weight("c", 7)]
    )
    assert count_macs(model) == 3 * 7 * 5
    assert count_params(model) == 7 * 5 + 7


def test_conv_after_resize_uses_scale_values():
    # The weight is large enough to be stripped for shape inference; the scales are not.
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["r"], mode="nearest"),
        helper.make_node("Conv", ["r", "w"], ["y"]),
    ]
    model = make_model(
        nodes, [float_input("x", [1, 8, 4, 4])], [1, 32, 6, 6], [scales, weight("w", 32, 8, 3, 3)]
    )
    assert count_macs(model) == (32 * 6 * 6) * 8 * 9


def test_batched_matmul_of_two_activations():
    matmul = helper.make_node("MatMul", ["a", "b"], ["y"])
    model = make_model(
        [matmul], [float_input("a", [2, 4, 3, 5]), float_input("b", [4, 5, 6])], [2, 4, 3, 6]
    )
    assert count_macs(model) == (2 * 4) * 3 * 6 * 5
    assert count_params(model) == 0


def dynamic_batch_model() -> onnx.ModelProto:
    """1x1 Conv 3 -> 4 on Nx3x8x8, flattened by a Shape-computed Reshape, then Gemm to 10."""
    constant = helper.make_node(
        "Constant", [], ["flat"], value=numpy_helper.from_array(np.array([0, -1], np.int64))
    )
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        constant,
        helper.make_node("Reshape", ["c", "flat"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["y"]),
    ]
    return make_model(
        nodes, [float_input("x", ["N", 3, 8, 8])], ["N", 10],
        [weight("w", 4, 3, 1, 1), weight("fc", 4 * 8 * 8, 10)],
    )


@pytest.mark.parametrize("batch", [1, 5])
def test_dynamic_batch(batch):
    per_sample = (4 * 8 * 8) * 3 + (4 * 8 * 8) * 10
    model = dynamic_batch_model()
    assert count_macs(model, {"N": batch}) == batch * per_sample
    assert count_macs(model, default_dim=batch) == batch * per_sample


def test_params_skip_integer_constants():
    model = dynamic_batch_model()
    assert count_params(model) == 4 * 3 + 4 * 8 * 8 * 10


def test_float_constant_node_counts_as_params():
    constant = helper.make_node(
        "Constant", [], ["k"], value=numpy_helper.from_array(np.ones((2, 3), np.float32))
    )
    add = helper.make_node("Add", ["x", "k"], ["y"])
    model = make_model([constant, add], [float_input("x", [2, 3])], [2, 3])
    assert count_params(model) == 6
    assert count_macs(model) == 0


def test_unknown_shape_warns_and_is_skipped():
    # The Reshape target is a runtime input, so the MatMul operand shape is unknown.
    nodes = [
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("MatMul", ["r", "w"], ["y"]),
    ]
    target = helper.make_tensor_value_info("target", TensorProto.INT64, [2])
    model = make_model(
        nodes, [float_input("x", [2, 3]), target], ["M", 4], [weight("w", 3, 4)]
    )
    with pytest.warns(UserWarning, match="unknown shapes"):
        assert count_macs(model) == 0


@settings(max_examples=40, deadline=None)
@given(
    batch=st.lists(st.integers(1, 3), max_size=3),
    b_batch_mask=st.lists(st.booleans(), max_size=3),
    m=st.integers(1, 4), k=st.integers(1, 4), n=st.integers(1, 4),
    a_is_vector=st.booleans(),
)
def test_matmul_macs_follow_numpy_broadcasting(batch, b_batch_mask, m, k, n, a_is_vector):
    # b gets the trailing batch dims of a, some of them broadcast as 1.
    b_batch = [d if keep else 1 for d, keep in zip(batch[-len(b_batch_mask):], b_batch_mask)]
    a_shape = [k] if a_is_vector else [*batch, m, k]
    b_shape = [*b_batch, k, n]
    out_shape = np.matmul(np.zeros(a_shape), np.zeros(b_shape)).shape
    matmul = helper.make_node("MatMul", ["a", "b"], ["y"])
    model = make_model(
        [matmul], [float_input("a", a_shape), float_input("b", b_shape)], list(out_shape)
    )
    assert count_macs(model) == int(np.prod(out_shape)) * k


def test_size_counts_external_data(tmp_path):
    model = dynamic_batch_model()
    path = tmp_path / "model.onnx"
    onnx.save(model, path, save_as_external_data=True, size_threshold=0)
    stub = onnx.load(path, load_external_data=False)
    weight_bytes = (4 * 3 + 4 * 8 * 8 * 10) * 4
    assert stub.ByteSize() < weight_bytes
    assert abs(model_size_bytes(stub) - model_size_bytes(model)) < 200
    assert count_params(stub) == count_params(model)
    assert count_macs(stub) == count_macs(model)


def test_node_counts_and_summary():
    model = dynamic_batch_model()
    assert node_counts(model) == {"Conv": 1, "Constant": 1, "Reshape": 1, "Gemm": 1}
    summary = summarize(model, {"N": 2})
    size = summary.pop("size_bytes")
    assert summary == {
        "params": count_params(model),
        "macs": count_macs(model, {"N": 2}),
        "nodes": 4,
        "op_types": node_counts(model),
    }
    # names and dims of each initializer are left out of the size: a few bytes each
    assert 0 <= model.ByteSize() - size <= 32 * len(model.graph.initializer)


def test_shape_only_copy_keeps_what_shape_inference_reads():
    """A large float table added to the activations (a ViT's position embedding) keeps its
    data: onnxruntime's symbolic inference reads it. A MatMul weight loses it. Shapes on
    the copy are those on the model."""
    from onnx import TensorProto, helper, numpy_helper

    from spa.io.load import infer_shapes, shape_only_copy
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((1, 17, 128)).astype(np.float32), "position")
    weight = numpy_helper.from_array(rng.standard_normal((128, 64)).astype(np.float32), "weight")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "position"], ["embedded"]),
         helper.make_node("MatMul", ["embedded", "weight"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 17, 128])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [table, weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    copy = shape_only_copy(model)
    data = {t.name: t.raw_data or t.float_data for t in copy.graph.initializer}
    assert data["position"] and not data["weight"]

    def shapes(inferred: onnx.ModelProto) -> dict:
        return {v.name: str(v.type) for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    assert shapes(infer_shapes(copy)) == shapes(infer_shapes(model))
