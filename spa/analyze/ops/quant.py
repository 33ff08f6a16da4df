"""Quantized graphs, as onnxruntime's quantizer writes them.

QDQ: QuantizeLinear/DequantizeLinear pairs around float ops; a per-axis scale and zero
point follow the channels of their axis. QOperator: QLinearConv, QLinearMatMul, QGemm,
ConvInteger, MatMulInteger, ... are the float op on their data, weight and bias inputs
(`ctx.view`), with per-tensor scales and zero points (one number: no channels) and per-channel
ones that follow the weight's output channels. A zeroed channel stays zero through them:
it quantizes to the zero point, which dequantizes to 0.
"""
from __future__ import annotations

from spa.analyze.context import NodeContext
from spa.analyze.ops.conv import Conv
from spa.analyze.ops.elementwise import broadcast, elementwise_unary
from spa.analyze.ops.linear import Gemm, MatMul
from spa.analyze.ops.pieces import Concat
from spa.analyze.ops.reduce import pool
from spa.analyze.registry import rule, unknown


@rule("QuantizeLinear", "DequantizeLinear")
def quantize_linear(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    if x is None or ctx.attr("block_size", 0):
        return unknown(ctx)
    axis = ctx.attr("axis", 1) % len(x) if x else 0
    _neutral_one(ctx, 1)
    for index in (1, 2):
        if ctx.has_input(index) and not _per_axis(ctx, index, x[axis] if x else None):
            return unknown(ctx)
    ctx.set_output(0, x)


def _per_axis(ctx: NodeContext, index: int, labels) -> bool:
    """A scale or zero point: one number, or one per position of `labels`' axis."""
    axes = ctx.axes(index)
    if axes is None:
        return False
    sizes = [len(a) if a is not None else None for a in axes]
    if all(size == 1 for size in sizes):
        return True
    if len(axes) == 1:
        ctx.unify(labels, axes[0])
        return True
    return False


def _neutral_one(ctx: NodeContext, *indices: int) -> None:
    """Scales: a removed channel's scale is set to 1, not 0, in the zeroed model (its zeroed
    integer weight is 0 at any scale; a scale of 0 makes fused kernels divide by it)."""
    for index in indices:
        if ctx.is_const(index):
            ctx.state.divisors.add(ctx.tensor(index).name)


def _scalars(ctx: NodeContext, *indices: int) -> bool:
    """Per-tensor scales and zero points: one number each."""
    for index in indices:
        if ctx.has_input(index):
            axes = ctx.axes(index)
            if axes is None or any(a is not None and len(a) != 1 for a in axes):
                return False
    return True


def _per_output(ctx: NodeContext, indices: tuple[int, ...], weight: int, axis: int, scaled: bool = True) -> bool:
    """Scales and zero points of a weight (the scale first where `scaled`), per tensor or
    per output channel (`axis`)."""
    if scaled:
        _neutral_one(ctx, indices[0])
    w = ctx.axes(weight)
    return w is not None and all(_per_axis(ctx, index, w[axis]) for index in indices if ctx.has_input(index))


@rule("QLinearConv")
def QLinearConv(ctx: NodeContext) -> None:
    """x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B."""
    if not _scalars(ctx, 1, 2, 6, 7) or not _per_output(ctx, (4, 5), weight=3, axis=0):
        return unknown(ctx)
    Conv(ctx.view([0, 3, 8]))


@rule("ConvInteger")
def ConvInteger(ctx: NodeContext) -> None:
    """x, w, x_zero_point, w_zero_point."""
    if not _scalars(ctx, 2) or not _per_output(ctx, (3,), weight=1, axis=0, scaled=False):
        return unknown(ctx)
    Conv(ctx.view([0, 1]))


@rule("QLinearMatMul")
def QLinearMatMul(ctx: NodeContext) -> None:
    """a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point."""
    if not _scalars(ctx, 1, 2, 6, 7) or not _per_output(ctx, (4, 5), weight=3, axis=-1):
        return unknown(ctx)
    MatMul(ctx.view([0, 3]))


@rule("MatMulInteger")
def MatMulInteger(ctx: NodeContext) -> None:
    """A, B, a_zero_point, b_zero_point."""
    if not _scalars(ctx, 2) or not _per_output(ctx, (3,), weight=1, axis=-1, scaled=False):
        return unknown(ctx)
    MatMul(ctx.view([0, 1]))


@rule("com.microsoft:DynamicQuantizeMatMul")
def DynamicQuantizeMatMul(ctx: NodeContext) -> None:
    """A (float), B (int8), b_scale, b_zero_point, bias."""
    if not _per_output(ctx, (2, 3), weight=1, axis=-1):
        return unknown(ctx)
    MatMul(ctx.view([0, 1]))
    _bias(ctx, 4)


@rule("com.microsoft:MatMulIntegerToFloat")
def MatMulIntegerToFloat(ctx: NodeContext) -> None:
    """A, B, a_scale, b_scale, a_zero_point, b_zero_point, bias."""
    if not _scalars(ctx, 2, 4) or not _per_output(ctx, (3, 5), weight=1, axis=-1):
        return unknown(ctx)
    MatMul(ctx.view([0, 1]))
    _bias(ctx, 6)


def _bias(ctx: NodeContext, index: int) -> None:
    if ctx.has_input(index):
        ctx.unify(ctx.axis(index, 0), ctx.state.axes[ctx.node.outputs[0].name][-1])


@rule("com.microsoft:QGemm")
def QGemm(ctx: NodeContext) -> None:
    """A, a_scale, a_zero_point, B, b_scale, b_zero_point, C, y_scale, y_zero_point."""
    axis = 0 if ctx.attr("transB", 0) else 1
    if not _scalars(ctx, 1, 2, 7, 8) or not _per_output(ctx, (4, 5), weight=3, axis=axis):
        return unknown(ctx)
    Gemm(ctx.view([0, 3, 6]))


@rule("DynamicQuantizeLinear", known=(0,))
def DynamicQuantizeLinear(ctx: NodeContext) -> None:
    """y, y_scale, y_zero_point from x's own range: a zeroed channel's 0 is always in the range."""
    x = ctx.axes(0)
    ctx.set_output(0, x)
    for index in (1, 2):
        ctx.set_output(index, [])


@rule("com.microsoft:QLinearAdd", "com.microsoft:QLinearMul")
def QLinearAdd(ctx: NodeContext) -> None:
    """A, A_scale, A_zero_point, B, B_scale, B_zero_point, C_scale, C_zero_point."""
    if not _scalars(ctx, 1, 2, 4, 5, 6, 7):
        return unknown(ctx)
    broadcast(ctx.view([0, 3]))


@rule("com.microsoft:QLinearSigmoid", "com.microsoft:QLinearLeakyRelu")
def QLinearUnary(ctx: NodeContext) -> None:
    """X, X_scale, X_zero_point, Y_scale, Y_zero_point."""
    if not _scalars(ctx, 1, 2, 3, 4):
        return unknown(ctx)
    elementwise_unary(ctx.view([0]))


@rule("com.microsoft:QLinearGlobalAveragePool", "com.microsoft:QLinearAveragePool")
def QLinearPool(ctx: NodeContext) -> None:
    """X, x_scale, x_zero_point, y_scale, y_zero_point; NCHW unless channels_last."""
    if not _scalars(ctx, 1, 2, 3, 4) or ctx.attr("channels_last", 0):
        return unknown(ctx)
    pool(ctx.view([0]))


@rule("com.microsoft:QLinearConcat")
def QLinearConcat(ctx: NodeContext) -> None:
    """Y_scale, Y_zero_point, then (X, X_scale, X_zero_point) per input."""
    data = list(range(2, ctx.input_count, 3))
    if not _scalars(ctx, 0, 1, *[i + 1 for i in data], *[i + 2 for i in data]):
        return unknown(ctx)
    Concat(ctx.view(data))


@rule("com.microsoft:QAttention")
def QAttention(ctx: NodeContext) -> None:
    """input, int8 weight, bias, input_scale, weight_scale, mask_index, input_zero_point,
    weight_zero_point, past: com.microsoft Attention on quantized weights."""
    from spa.analyze.ops.attention import MicrosoftAttention
    if ctx.has_input(8) or not _scalars(ctx, 3, 4, 6, 7):
        return unknown(ctx)
    MicrosoftAttention(ctx.view([0, 1, 2, 5]))


@rule("com.microsoft:QEmbedLayerNormalization")
def QEmbedLayerNormalization(ctx: NodeContext) -> None:
    """EmbedLayerNormalization on quantized tables, gamma and beta, with per-tensor scales and
    zero points (inputs 8 to 17)."""
    from spa.analyze.ops.contrib import EmbedLayerNormalization
    if not _scalars(ctx, *range(8, 18)):
        return unknown(ctx)
    EmbedLayerNormalization(ctx.view(list(range(8))))
