"""Hand-built edge-case models (opset 17, ir_version 8), input [1, 3, 8, 8] unless noted."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from graphgen import GraphBuilder, he_scale, tensor_info

IMAGE = [1, 3, 8, 8]


def _image_model(g: GraphBuilder, output: str, shape: list[int | str],
                 input_shape: list[int | str] = IMAGE) -> onnx.ModelProto:
    return g.build([tensor_info("input", input_shape)], [tensor_info(output, shape)])


def _conv_relu(g: GraphBuilder, c_out: int = 6) -> str:
    """Relu(conv(input)) with 3 input channels and `c_out` output channels."""
    return g.op("Relu", [g.conv("input", 3, c_out)])


def _reshape_matmul(shape_as_node: bool) -> onnx.ModelProto:
    g = GraphBuilder(1)
    shape = g.constant("shape", np.array([1, -1], np.int64), as_node=shape_as_node)
    flat = g.op("Reshape", [_conv_relu(g), shape])
    out = g.op("MatMul", [flat, g.param("w", [384, 5], he_scale(384))])
    return _image_model(g, out, [1, 5])


def reshape_shape_initializer() -> onnx.ModelProto:
    """Reshape to [1, -1] whose shape is an initializer, then MatMul: 64 features per channel."""
    return _reshape_matmul(shape_as_node=False)


def reshape_shape_constant_node() -> onnx.ModelProto:
    """Reshape to [1, -1] whose shape comes from a Constant node, then MatMul."""
    return _reshape_matmul(shape_as_node=True)


def reshape_dynamic_shape_chain() -> onnx.ModelProto:
    """Dynamic batch N: Shape->Gather->Unsqueeze->Concat([N, -1]) feeds Reshape, then MatMul."""
    g = GraphBuilder(2)
    trunk = _conv_relu(g)
    batch = g.op("Gather", [g.op("Shape", [trunk]), g.constant("idx", np.array(0, np.int64))], axis=0)
    batch = g.op("Unsqueeze", [batch, g.ints("axes", [0])])
    shape = g.op("Concat", [batch, g.ints("minus_one", [-1])], axis=0)
    flat = g.op("Reshape", [trunk, shape])
    out = g.op("MatMul", [flat, g.param("w", [384, 5], he_scale(384))])
    return _image_model(g, out, ["N", 5], ["N", 3, 8, 8])


def _flatten_gemm(trans_b: int) -> onnx.ModelProto:
    g = GraphBuilder(3 + trans_b)
    flat = g.op("Flatten", [_conv_relu(g)])
    return _image_model(g, g.dense(flat, 384, 5, trans_b=trans_b), [1, 5])


def flatten_gemm_trans_b0() -> onnx.ModelProto:
    """Flatten of a conv map into Gemm with W [C*H*W, K] (transB=0)."""
    return _flatten_gemm(0)


def flatten_gemm_trans_b1() -> onnx.ModelProto:
    """Flatten of a conv map into Gemm with W [K, C*H*W] (transB=1)."""
    return _flatten_gemm(1)


def matmul_bias() -> onnx.ModelProto:
    """MLP on input [1, 8]: MatMul+Add bias -> Relu -> MatMul+Add; 12 hidden neurons."""
    g = GraphBuilder(5)
    hidden = g.op("MatMul", ["input", g.param("w1", [8, 12], he_scale(8))])
    hidden = g.op("Relu", [g.op("Add", [hidden, g.param("b1", [12], 0.5)])])
    out = g.op("MatMul", [hidden, g.param("w2", [12, 4], he_scale(12))])
    out = g.op("Add", [out, g.param("b2", [4], 0.5)])
    return _image_model(g, out, [1, 4], [1, 8])


def conv_transpose() -> onnx.ModelProto:
    """ConvTranspose (groups 1, weight [C_in, C_out, k, k], stride 2) between two convs."""
    g = GraphBuilder(6)
    weight = g.param("deconv_w", [6, 4, 2, 2], he_scale(6))
    up = g.op("ConvTranspose", [_conv_relu(g), weight, g.param("deconv_b", [4], 0.5)],
              kernel_shape=[2, 2], strides=[2, 2])
    out = g.conv(g.op("Relu", [up]), 4, 5)
    return _image_model(g, out, [1, 5, 16, 16])


def instance_norm() -> onnx.ModelProto:
    """InstanceNormalization with per-channel scale and bias between two convs."""
    g = GraphBuilder(7)
    normed = g.op("InstanceNormalization", [g.conv("input", 3, 6), g.positive("in_scale", [6]),
                                            g.param("in_bias", [6], 0.5)])
    out = g.conv(g.op("Relu", [normed]), 6, 4)
    return _image_model(g, out, [1, 4, 8, 8])


def layer_norm_channels() -> onnx.ModelProto:
    """LayerNormalization over the 12 features of an [N, C] tensor (pruning it is inexact)."""
    g = GraphBuilder(8)
    hidden = g.dense("input", 8, 12)
    normed = g.op("LayerNormalization", [hidden, g.positive("ln_scale", [12]),
                                         g.param("ln_bias", [12], 0.5)], axis=-1)
    out = g.dense(g.op("Relu", [normed]), 12, 4)
    return _image_model(g, out, [1, 4], [1, 8])


def intermediate_output() -> onnx.ModelProto:
    """conv0 -> conv1 -> conv2 where conv1's output is also a graph output (must be kept)."""
    g = GraphBuilder(9)
    side = g.conv(_conv_relu(g, 5), 5, 6)
    out = g.conv(g.op("Relu", [side]), 6, 4)
    return g.build([tensor_info("input", IMAGE)],
                   [tensor_info(side, [1, 6, 8, 8]), tensor_info(out, [1, 4, 8, 8])])


def unknown_op() -> onnx.ModelProto:
    """LpNormalization over axis 1 (mixes channels; spa need not know it) between two convs."""
    g = GraphBuilder(10)
    normed = g.op("LpNormalization", [g.conv("input", 3, 6)], axis=1, p=2)
    return _image_model(g, g.conv(normed, 6, 4), [1, 4, 8, 8])


def slice_channels() -> onnx.ModelProto:
    """Slice channels 2..5 of an 8-channel map, then a conv on the 4 kept channels."""
    g = GraphBuilder(11)
    sliced = g.op("Slice", [_conv_relu(g, 8), g.ints("starts", [2]), g.ints("ends", [6]),
                            g.ints("axes", [1])])
    return _image_model(g, g.conv(sliced, 4, 5), [1, 5, 8, 8])


def pad_spatial() -> onnx.ModelProto:
    """Constant Pad of H and W only, then an unpadded conv."""
    g = GraphBuilder(12)
    padded = g.op("Pad", [_conv_relu(g), g.ints("pads", [0, 0, 1, 1, 0, 0, 1, 1])])
    return _image_model(g, g.conv(padded, 6, 4, pad=False), [1, 4, 8, 8])


def resize_nearest() -> onnx.ModelProto:
    """Resize nearest x2 (scales input, empty roi) between two convs."""
    g = GraphBuilder(13)
    scales = g.constant("scales", np.array([1, 1, 2, 2], np.float32))
    up = g.op("Resize", [_conv_relu(g), "", scales], mode="nearest")
    return _image_model(g, g.conv(up, 6, 4), [1, 4, 16, 16])


def transpose_matmul() -> onnx.ModelProto:
    """Transpose NCHW->NHWC, then MatMul with a [C, K] weight over the last axis."""
    g = GraphBuilder(14)
    nhwc = g.op("Transpose", [_conv_relu(g)], perm=[0, 2, 3, 1])
    out = g.op("MatMul", [nhwc, g.param("w", [6, 5], he_scale(6))])
    return _image_model(g, out, [1, 8, 8, 5])


def squeeze_gemm_unsqueeze() -> onnx.ModelProto:
    """GAP -> Squeeze [1,C] -> Gemm -> Relu -> Unsqueeze [1,K,1,1] -> 1x1 conv."""
    g = GraphBuilder(15)
    pooled = g.op("GlobalAveragePool", [_conv_relu(g)])
    flat = g.op("Squeeze", [pooled, g.ints("axes", [2, 3])])
    hidden = g.op("Relu", [g.dense(flat, 6, 7)])
    expanded = g.op("Unsqueeze", [hidden, g.ints("axes", [2, 3])])
    return _image_model(g, g.conv(expanded, 7, 4, kernel=1), [1, 4, 1, 1])


def sub_div_constants() -> onnx.ModelProto:
    """Sub and Div by per-channel [1,C,1,1] constants between two convs."""
    g = GraphBuilder(16)
    shifted = g.op("Sub", [g.conv("input", 3, 6), g.param("shift", [1, 6, 1, 1], 0.5)])
    scaled = g.op("Div", [shifted, g.positive("divisor", [1, 6, 1, 1])])
    return _image_model(g, g.conv(g.op("Relu", [scaled]), 6, 4), [1, 4, 8, 8])


def tied_conv_weight() -> onnx.ModelProto:
    """One [6, 6, 3, 3] weight initializer shared by two Conv nodes in sequence."""
    g = GraphBuilder(17)
    weight = g.param("tied_w", [6, 6, 3, 3], he_scale(54))
    x = _conv_relu(g)
    for _ in range(2):
        x = g.op("Relu", [g.op("Conv", [x, weight], kernel_shape=[3, 3], pads=[1, 1, 1, 1])])
    return _image_model(g, x, [1, 6, 8, 8])


def nothing_prunable() -> onnx.ModelProto:
    """A single conv whose output is the graph output: no channel can be removed."""
    g = GraphBuilder(18)
    return _image_model(g, g.conv("input", 3, 4), [1, 4, 8, 8])


def reshape_chain_with_channel_count() -> onnx.ModelProto:
    """Dynamic batch: Reshape to Concat([N, 6, 64]) with the channel count as a constant
    piece (it must be rewritten), then mean over space and MatMul."""
    g = GraphBuilder(20)
    trunk = _conv_relu(g)
    batch = g.op("Gather", [g.op("Shape", [trunk]), g.ints("idx", [0])], axis=0)
    shape = g.op("Concat", [batch, g.ints("channels", [6]), g.ints("space", [64])], axis=0)
    pooled = g.op("ReduceMean", [g.op("Reshape", [trunk, shape])], axes=[2], keepdims=0)
    out = g.op("MatMul", [pooled, g.param("w", [6, 5], he_scale(6))])
    return _image_model(g, out, ["N", 5], ["N", 3, 8, 8])


def slice_size_from_shape() -> onnx.ModelProto:
    """x[:, :C//2] with C read by Shape: the channel count is used by arithmetic, so the
    group must be kept whole."""
    g = GraphBuilder(21)
    trunk = _conv_relu(g)
    channels = g.op("Gather", [g.op("Shape", [trunk]), g.ints("idx", [1])], axis=0)
    half = g.op("Div", [channels, g.ints("two", [2])])
    first = g.op("Slice", [trunk, g.ints("start", [0]), half, g.ints("axis", [1])])
    return _image_model(g, g.conv(first, 3, 4), [1, 4, 8, 8])


def channel_shuffle() -> onnx.ModelProto:
    """ShuffleNet's shuffle: Reshape [1, 2, 4, H, W] -> Transpose -> Reshape [1, 8, H, W];
    each of the 2 groups becomes one coarse channel."""
    g = GraphBuilder(22)
    trunk = _conv_relu(g, 8)
    split = g.op("Reshape", [trunk, g.ints("split_shape", [1, 2, 4, 8, 8])])
    swapped = g.op("Transpose", [split], perm=[0, 2, 1, 3, 4])
    shuffled = g.op("Reshape", [swapped, g.ints("merge_shape", [1, 8, 8, 8])])
    return _image_model(g, g.conv(shuffled, 8, 4), [1, 4, 8, 8])


def split_then_branches() -> onnx.ModelProto:
    """Split [2, 4] on channels, each piece through its own conv, then Add."""
    g = GraphBuilder(23)
    left, right = g.multi_op("Split", [_conv_relu(g), g.ints("sizes", [2, 4])], 2, axis=1)
    out = g.op("Add", [g.conv(left, 2, 4), g.conv(right, 4, 4)])
    return _image_model(g, out, [1, 4, 8, 8])


def depthwise_multiplier() -> onnx.ModelProto:
    """Depthwise conv with channel multiplier 2: input channel c owns outputs 2c and 2c+1."""
    g = GraphBuilder(24)
    depthwise = g.op("Relu", [g.conv(_conv_relu(g), 6, 12, group=6)])
    return _image_model(g, g.conv(depthwise, 12, 4), [1, 4, 8, 8])


def _size_piece(g: GraphBuilder, tensor: str, axis: int) -> str:
    """Unsqueeze(Gather(Shape(tensor), axis)): one size as a 1-element Concat piece."""
    size = g.op("Gather", [g.op("Shape", [tensor]), g.constant("idx", np.array(axis, np.int64))], axis=0)
    return g.op("Unsqueeze", [size, g.ints("axes", [0])])


def _reshape_by_other_size(seed: int, source_axis: int, size_also_read: bool = False) -> onnx.ModelProto:
    """Dynamic batch N. Group A: a conv map [N, 6, 8, 8] transposed to [N, 8, 8, 6] and
    reshaped by Concat(Shape(input)[0], [64], Shape(other)[source_axis]); group B: `other`,
    a second conv branch [N, 6, 8, 8]. Both are pooled and read by a MatMul each.
    `size_also_read`: the same size piece also feeds a ConstantOfShape."""
    g = GraphBuilder(seed)
    trunk = _conv_relu(g)
    other = g.op("Relu", [g.conv("input", 3, 6)])
    size = _size_piece(g, other, source_axis)
    shape = g.op("Concat", [_size_piece(g, "input", 0), g.ints("space", [64]), size], axis=0)
    rows = g.op("Reshape", [g.op("Transpose", [trunk], perm=[0, 2, 3, 1]), shape])
    pooled = g.op("ReduceMean", [rows], axes=[1], keepdims=0)
    pooled_other = g.op("ReduceMean", [other], axes=[2, 3], keepdims=0)
    out = g.op("Add", [g.op("MatMul", [pooled, g.param("w", [6, 5], he_scale(6))]),
                       g.op("MatMul", [pooled_other, g.param("w", [6, 5], he_scale(6))])])
    if size_also_read:
        zeros = g.op("ConstantOfShape", [size])
        out = g.op("Add", [out, g.op("ReduceSum", [zeros], keepdims=0)])
    return _image_model(g, out, ["N", 5], ["N", 3, 8, 8])


def reshape_static_size_of_other_tensor() -> onnx.ModelProto:
    """A Reshape's channel element is Shape(other)[1], another group's static channel count
    (as the attention output of a dynamic-batch export reads the hidden size): the rewriter
    freezes it to group A's pruned count, and both groups prune."""
    return _reshape_by_other_size(25, 1)


def reshape_static_size_also_read() -> onnx.ModelProto:
    """As reshape_static_size_of_other_tensor, but the same Shape(other)[1] also feeds a
    ConstantOfShape: group A still prunes, group B is kept whole."""
    return _reshape_by_other_size(26, 1, size_also_read=True)


def reshape_dynamic_size_of_other_tensor() -> onnx.ModelProto:
    """The channel element is Shape(other)[0], the dynamic batch: it runs only at N == 6
    and must never be frozen, so group A is kept whole. Not in EDGE_MODELS (the oracle
    runs at N == 2)."""
    return _reshape_by_other_size(27, 0)


EDGE_MODELS: dict[str, Callable[[], onnx.ModelProto]] = {
    f.__name__: f for f in (
        reshape_shape_initializer, reshape_shape_constant_node, reshape_dynamic_shape_chain,
        flatten_gemm_trans_b0, flatten_gemm_trans_b1, matmul_bias, conv_transpose, instance_norm,
        layer_norm_channels, intermediate_output, unknown_op, slice_channels, pad_spatial,
        resize_nearest, transpose_matmul, squeeze_gemm_unsqueeze, sub_div_constants,
        tied_conv_weight, nothing_prunable, reshape_chain_with_channel_count, slice_size_from_shape,
        channel_shuffle, split_then_branches, depthwise_multiplier,
        reshape_static_size_of_other_tensor, reshape_static_size_also_read)
}
