"""Models users bring that are unusual or broken: each one a class of bad or odd input
spa must refuse in one line or prune correctly (tests/test_bad_inputs.py)."""
from __future__ import annotations

import numpy as np
import onnx
from graphgen import GraphBuilder, he_scale, tensor_info
from onnx import TensorProto, helper, numpy_helper

IMAGE = [1, 3, 8, 8]


def _conv_net(g: GraphBuilder, x: str = "input", c_in: int = 3, width: int = 8) -> str:
    """conv -> relu -> conv -> relu -> global pool -> flatten -> gemm: two prunable groups."""
    y = g.op("Relu", [g.conv(x, c_in, width)])
    y = g.op("Relu", [g.conv(y, width, width)])
    y = g.op("Flatten", [g.op("GlobalAveragePool", [y])], axis=1)
    return g.op("Gemm", [y, g.param("fc_w", [4, width], he_scale(width)), g.param("fc_b", [4])], transB=1)


def _model(g: GraphBuilder, output: str, out_shape, input_shape=IMAGE, opset: int = 17, ir_version: int = 8,
           inputs=None, **kwargs) -> onnx.ModelProto:
    graph = helper.make_graph(g.nodes, "g", inputs or [tensor_info("input", input_shape)],
                              [tensor_info(output, out_shape)], g.initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=ir_version, **kwargs)


def plain() -> onnx.ModelProto:
    g = GraphBuilder(0)
    return _model(g, _conv_net(g), [1, 4])


def custom_op_unknown_shape() -> onnx.ModelProto:
    """A custom-domain op (onnxruntime does not have it) whose output shape nobody knows."""
    g = GraphBuilder(1)
    y = g.op("Relu", [g.conv("input", 3, 8)])
    node = helper.make_node("Mystery", [y], ["mystery_out"], domain="com.example", name="mystery")
    g.nodes.append(node)
    out = g.op("Relu", [g.conv("mystery_out", 8, 8)])
    model = _model(g, out, [1, 8, 8, 8])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    return model


def contrib_op_unknown_shape() -> onnx.ModelProto:
    """A com.microsoft op onnxruntime runs, whose output shape onnx's inference cannot give."""
    g = GraphBuilder(2)
    y = g.conv("input", 3, 8)
    g.nodes.append(helper.make_node("Gelu", [y], ["gelu_out"], domain="com.microsoft", name="ms_gelu"))
    out = g.op("Relu", [g.conv("gelu_out", 8, 8)])
    model = _model(g, out, [1, 8, 8, 8])
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def opset(version: int) -> onnx.ModelProto:
    """The plain model declared at another opset (the ops used are the same in 6 and 7+... mostly)."""
    model = plain()
    model.opset_import[0].version = version
    return model


def ir3() -> onnx.ModelProto:
    """IR version 3: every initializer is also a graph input."""
    model = opset(8)
    model.ir_version = 3
    for tensor in model.graph.initializer:
        model.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    return model


def nested_if() -> onnx.ModelProto:
    """An If inside an If reads a conv output from the outer graph two levels down."""
    g = GraphBuilder(3)
    y = g.op("Relu", [g.conv(g.op("Relu", [g.conv("input", 3, 8)]), 8, 8)])  # the first conv stays prunable
    inner_then = helper.make_graph([helper.make_node("Identity", [y], ["inner_then_out"])], "inner_then", [],
                                   [tensor_info("inner_then_out", [1, 8, 8, 8])])
    inner_else = helper.make_graph([helper.make_node("Neg", [y], ["inner_else_out"])], "inner_else", [],
                                   [tensor_info("inner_else_out", [1, 8, 8, 8])])
    cond = g.constant("cond", np.array(True))
    inner = helper.make_node("If", [cond], ["inner_out"], then_branch=inner_then, else_branch=inner_else)
    outer_then = helper.make_graph([inner], "outer_then", [], [tensor_info("inner_out", [1, 8, 8, 8])])
    outer_else = helper.make_graph([helper.make_node("Identity", [y], ["outer_else_out"])], "outer_else", [],
                                   [tensor_info("outer_else_out", [1, 8, 8, 8])])
    g.nodes.append(helper.make_node("If", [cond], ["if_out"], name="outer_if",
                                    then_branch=outer_then, else_branch=outer_else))
    out = g.op("Relu", [g.conv("if_out", 8, 8)])
    return _model(g, out, [1, 8, 8, 8])


def symbolic_channels() -> onnx.ModelProto:
    """Input N x C x H x W with every dim symbolic."""
    g = GraphBuilder(4)
    return _model(g, _conv_net(g), ["N", 4], input_shape=["N", "C", "H", "W"])


def nan_weight() -> onnx.ModelProto:
    model = plain()
    tensor = model.graph.initializer[0]
    values = numpy_helper.to_array(tensor).copy()
    values.flat[0] = np.nan
    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    return model


def duplicate_node_names() -> onnx.ModelProto:
    model = plain()
    for node in model.graph.node:
        node.name = "same"
    return model


def two_inputs() -> onnx.ModelProto:
    g = GraphBuilder(5)
    y = g.op("Add", ["input", "other"])
    return _model(g, _conv_net(g, y), [1, 4], inputs=[tensor_info("input", IMAGE), tensor_info("other", IMAGE)])


def fp16() -> onnx.ModelProto:
    model = plain()
    for tensor in model.graph.initializer:
        values = numpy_helper.to_array(tensor).astype(np.float16)
        tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    return model


def cycle() -> onnx.ModelProto:
    """Two nodes reading each other's outputs."""
    g = GraphBuilder(6)
    g.nodes.append(helper.make_node("Add", ["input", "b"], ["a"], name="a"))
    g.nodes.append(helper.make_node("Relu", ["a"], ["b"], name="b"))
    return _model(g, "b", IMAGE)


def loop_model() -> onnx.ModelProto:
    """Control flow: a Loop whose body reads a conv output (kept whole, never guessed)."""
    g = GraphBuilder(7)
    y = g.op("Relu", [g.conv("input", 3, 8)])
    body = helper.make_graph(
        [helper.make_node("Add", ["carried", y], ["carried_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), tensor_info("carried", [1, 8, 8, 8])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), tensor_info("carried_out", [1, 8, 8, 8])])
    trips = g.constant("trips", np.array(2, np.int64))
    cond = g.constant("cond", np.array(True))
    g.nodes.append(helper.make_node("Loop", [trips, cond, y], ["loop_out"], name="loop", body=body))
    out = g.op("Relu", [g.conv("loop_out", 8, 8)])
    return _model(g, out, [1, 8, 8, 8])


def fails_at_run_time() -> onnx.ModelProto:
    """Valid to onnx.checker, but the Reshape cannot be done: onnxruntime fails while running."""
    g = GraphBuilder(8)
    y = g.op("Reshape", [g.op("Relu", [g.conv("input", 3, 8)]), g.ints("shape", [5, -1])])
    return _model(g, y, [5, "n"])
