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


GRAM_CASES = [
    dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[3, 3], dilations=[2, 2], pads=[2, 2, 2, 2]),
    dict(kernel_shape=[5, 3], dilations=[1, 2], pads=[0, 1, 3, 0]),
    dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER"),
    dict(kernel_shape=[4, 2], auto_pad="SAME_LOWER"),
    dict(kernel_shape=[3, 3], auto_pad="VALID"),
    dict(kernel_shape=[7, 7], pads=[3, 3, 3, 3]),  # the kernel is as wide as the input: empty boxes
    dict(kernel_shape=[3], pads=[2, 1]),
    dict(kernel_shape=[3, 2, 2], pads=[1, 0, 1, 1, 1, 0]),
]


@pytest.mark.parametrize("attrs", GRAM_CASES, ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
@pytest.mark.parametrize("with_bias", [False, True])
def test_the_gram_of_shifted_inputs_is_that_of_the_im2col_rows(attrs, with_bias):
    """A unit-stride Conv's XᵀX from products of the input with its shifts equals XᵀX of
    the im2col rows, values far from 1 included (they are scaled by a power of two)."""
    rng = np.random.default_rng(1)
    kernel = attrs["kernel_shape"]
    shape = [3, 4, *[7, 6, 5][:len(kernel)]]
    x = (rng.standard_normal(shape) * 1e20).astype(np.float32)
    weight = np.zeros((2, shape[1], *kernel), np.float32)
    layer = _layer(weight, np.zeros(2, np.float32), **attrs)
    if not with_bias:
        layer = LinearLayer(layer.node, layer.weight, None, layer.output)
    assert layer.has_gram
    rows = layer.features(x).astype(np.float64)
    gram, count = layer.gram(x)
    assert count == len(rows) and layer.feature_shape(x.shape) == rows.shape
    np.testing.assert_allclose(gram, rows.T @ rows, rtol=1e-5, atol=1e-6 * np.abs(rows.T @ rows).max())


def test_strided_and_pointwise_convs_have_no_shifted_gram():
    weight, bias = np.zeros((2, 3, 3, 3), np.float32), np.zeros(2, np.float32)
    assert not _layer(weight, bias, kernel_shape=[3, 3], strides=[2, 2]).has_gram
    assert not _layer(weight[:, :, :1, :1], bias, kernel_shape=[1, 1]).has_gram


@pytest.mark.parametrize("samples", [1, 3, 40])  # low rank throughout, past it on the way, past it at once
def test_a_hessian_from_shifted_products_equals_the_one_from_rows(samples):
    """Batches wait for one product; while H has low rank they become rows (which obs's
    low-rank inverse reads), and the matrix is the same either way."""
    from spa.calibrate.collect import Hessian
    rng = np.random.default_rng(2)
    layer = _layer(np.zeros((2, 8, 3, 3), np.float32), np.zeros(2, np.float32), kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    batches = [rng.standard_normal((1, 8, 3, 3)).astype(np.float32) for _ in range(samples)]
    plain, shifted = Hessian(layer.features), Hessian(layer.features, layer.gram, layer.feature_shape)
    for batch in batches:
        plain(batch)
        shifted(batch)
    assert shifted.count == plain.count == 9 * samples
    assert (shifted.rows is None) == (plain.rows is None) == (2 * 9 * samples > 73)
    if plain.rows is not None:
        np.testing.assert_array_equal(shifted.rows, plain.rows)
    np.testing.assert_allclose(shifted.matrix, plain.matrix, rtol=1e-5, atol=1e-4)


def test_a_hessian_from_shifted_products_takes_batches_of_other_sizes():
    """Images of different sizes cannot share one product: each size gets its own."""
    from spa.calibrate.collect import Hessian
    rng = np.random.default_rng(4)
    layer = _layer(np.zeros((2, 3, 3, 3), np.float32), np.zeros(2, np.float32), kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    plain, shifted = Hessian(layer.features), Hessian(layer.features, layer.gram, layer.feature_shape)
    for size in [(6, 5), (6, 5), (4, 7), (6, 5)]:
        batch = rng.standard_normal((2, 3, *size)).astype(np.float32)
        plain(batch)
        shifted(batch)
    np.testing.assert_allclose(shifted.matrix, plain.matrix, rtol=1e-5, atol=1e-4)
