"""onnxruntime's fused com.microsoft ops, as its transformer optimizer writes them: each is
the composition of standard ops it replaces, and follows the same rules."""
from __future__ import annotations

from spa.analyze.context import NodeContext
from spa.analyze.ops.elementwise import broadcast, broadcast_inputs, elementwise_unary
from spa.analyze.ops.norm import trailing_parameter
from spa.analyze.registry import rule, unknown

rule("com.microsoft:Gelu", "com.microsoft:QuickGelu")(elementwise_unary)
rule("com.microsoft:FastGelu", "com.microsoft:BiasGelu", "com.microsoft:BiasAdd")(broadcast)


def _normalized_last_axis(ctx: NodeContext, out, scale_inputs: tuple[int, ...]) -> None:
    """Normalization over the last axis (LayerNorm, RMSNorm): its positions are inexact,
    the scale and bias follow them."""
    ctx.inexact(out[-1], f"normalized by {ctx.where()}")
    for index in scale_inputs:
        if ctx.has_input(index):
            trailing_parameter(ctx, index, out)


@rule("com.microsoft:SkipLayerNormalization", "com.microsoft:SkipSimplifiedLayerNormalization")
def SkipLayerNormalization(ctx: NodeContext) -> None:
    """LayerNorm(input + skip (+ bias)); outputs: normalized, mean, inv std, and the sum."""
    simplified = ctx.node.op.startswith("SkipSimplified")
    bias = 3 if simplified else 4
    out = broadcast_inputs(ctx, [0, 1] + ([bias] if ctx.has_input(bias) else []))
    if out is None:
        return unknown(ctx)
    _normalized_last_axis(ctx, out, (2,) if simplified else (2, 3))
    for index, tensor in enumerate(ctx.node.outputs):
        if index in (1, 2):  # per-row statistics: the last axis is reduced
            ctx.set_output(index, out[:-1] + [None])
        else:
            ctx.set_output(index, out)


@rule("com.microsoft:SimplifiedLayerNormalization")
def SimplifiedLayerNormalization(ctx: NodeContext) -> None:
    x = ctx.axes(0)
    if x is None or ctx.attr("axis", -1) % len(x) != len(x) - 1:
        return unknown(ctx)
    _normalized_last_axis(ctx, x, (1,))
    ctx.set_output(0, x)
    for index in range(1, len(ctx.node.outputs)):
        ctx.set_output(index, x[:-1] + [None])


@rule("com.microsoft:EmbedLayerNormalization")
def EmbedLayerNormalization(ctx: NodeContext) -> None:
    """LayerNorm(word + position + segment embeddings): the tables' columns are the hidden
    units. Outputs: the normalized sum, the mask index, and the sum before normalization."""
    ids = ctx.axes(0)
    for index in (1, 7, 8):
        if ctx.has_input(index):
            ctx.fix_all(ctx.axes(index), f"{ctx.where()}: ids and masks")
    tables = [ctx.axes(index) for index in (2, 3, 4) if ctx.has_input(index)]
    if ids is None or any(t is None or len(t) != 2 for t in tables):
        return unknown(ctx)
    hidden = tables[0][1]
    for table in tables:
        ctx.fix(table[0], f"{ctx.where()} picks rows of this table")
        ctx.unify(hidden, table[1])
    out = list(ids) + [hidden]
    _normalized_last_axis(ctx, out, (5, 6))
    ctx.set_output(0, out)
    for index in range(1, len(ctx.node.outputs)):
        ctx.set_output(index, [ids[0]] if index == 1 else out)
