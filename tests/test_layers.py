"""Linear layers as data criteria see them: the im2col unfolding of a Conv's input times its
weight matrix must be what onnxruntime's Conv computes, for every stride, dilation,
padding and group layout."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from spa.calibrate.layers import LinearLayer
from spa.io.runtime import session


def _conv_model(weight: np.ndarray, bias: np.ndarray, shape: list[int], **attrs) -> onnx.ModelProto:
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _layer(weight: np.ndarray, bias: np.ndarray, **attrs) -> LinearLayer:
    x, y = gs.Variable("x"), gs.Variable("y")
    w, b = gs.Constant("w", weight), gs.Constant("b", bias)
    node = gs.Node("Conv", "conv", attrs, [x, w, b], [y])
    return LinearLayer(node, w, b, y)


CASES = [
    dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[3, 3], strides=[2, 2]),
    dict(kernel_shape=[3, 3], strides=[2, 1], pads=[0, 1, 2, 1]),
    dict(kernel_shape=[3, 3], dilations=[2, 2], pads=[2, 2, 2, 2]),
    dict(kernel_shape=[3, 2], dilations=[1, 2], strides=[3, 2]),
    dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(kernel_shape=[4, 4], auto_pad="SAME_LOWER", strides=[3, 3]),
    dict(kernel_shape=[3, 3], auto_pad="VALID"),
    dict(kernel_shape=[1, 1], strides=[2, 2]),
]


@pytest.mark.parametrize("attrs", CASES, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
@pytest.mark.parametrize("group", [1, 2])
def test_im2col_times_the_weight_is_the_conv(attrs, group):
    """Each group of a grouped Conv is a linear layer over its own input channels."""
    rng = np.random.default_rng(0)
    c_in, c_out, shape = 4, 6, [2, 4, 9, 10]
    kernel = attrs["kernel_shape"]
    weight = rng.standard_normal((c_out, c_in // group, *kernel)).astype(np.float32)
    bias = rng.standard_normal(c_out).astype(np.float32)
    x = rng.standard_normal(shape).astype(np.float32)
    expected = session(_conv_model(weight, bias, shape, group=group, **attrs)).run(None, {"x": x})[0]
    per_in, per_out = c_in // group, c_out // group
    for g in range(group):
        rows = slice(g * per_out, (g + 1) * per_out)
        layer = _layer(weight[rows], bias[rows], **attrs)
        features = layer.features(x[:, g * per_in:(g + 1) * per_in])
        got = features @ layer.matrix().T  # [N * positions, out], the bias column included
        want = np.moveaxis(expected[:, rows], 1, -1).reshape(-1, per_out)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
