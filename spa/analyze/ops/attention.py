"""Attention as one op: ONNX's `Attention` (opset 23) and onnxruntime's fused
com.microsoft `Attention` and `MultiHeadAttention`. Heads are channels: q, k and v of a
head (with grouped-query attention, a key/value head and the query heads that share it)
go together; head_dim never changes. Where an attribute counts heads, the rewrite updates it.
"""
from __future__ import annotations

import numpy as np

from spa.analyze.context import AxisLabels, NodeContext
from spa.analyze.registry import rule, unknown


def _relate_heads(ctx: NodeContext, q_heads, kv_heads: list) -> bool:
    """q head i goes with kv head i // (q heads per kv head); False if the counts do not fit."""
    if q_heads is None or any(h is None for h in kv_heads):
        for heads in [q_heads, *kv_heads]:
            ctx.fix(heads, f"{ctx.where()}: heads another input cannot follow")
        return False
    for other in kv_heads[1:]:
        ctx.unify(kv_heads[0], other)
    if len(q_heads) % len(kv_heads[0]):
        for heads in [q_heads, *kv_heads]:
            ctx.fix(heads, f"{ctx.where()}: query heads are not a multiple of key/value heads")
        return False
    ctx.unify(np.repeat(kv_heads[0], len(q_heads) // len(kv_heads[0])), q_heads)
    return True


def _head_starts(labels, head_dim: int):
    """One label per head of a flat axis split by `ctx.split_heads`."""
    return None if labels is None or head_dim is None else labels[::head_dim]


def _fix_all_but(ctx: NodeContext, axes: AxisLabels | None, keep: set[int], reason: str) -> None:
    for k, labels in enumerate(axes or []):
        if k not in keep:
            ctx.fix(labels, reason)


@rule("Attention")
def Attention(ctx: NodeContext) -> None:
    """ONNX Attention: q, k, v as [batch, heads, sequence, head_dim], or [batch, sequence,
    heads * head_dim] with q_num_heads / kv_num_heads."""
    q, k, v = ctx.axes(0), ctx.axes(1), ctx.axes(2)
    extra = {index: ctx.axes(index) for index in range(3, len(ctx.node.inputs)) if ctx.has_input(index)}
    if q is None or k is None or v is None or len(q) not in (3, 4) or len(k) != len(q) or len(v) != len(q):
        return unknown(ctx)
    (_attention_4d if len(q) == 4 else _attention_3d)(ctx, q, k, v, extra)


def _attention_4d(ctx: NodeContext, q, k, v, extra: dict) -> None:
    for other in (k[0], v[0]):
        ctx.unify(q[0], other)
    _relate_heads(ctx, q[1], [k[1], v[1]])
    for labels in (q[3], k[3], q[2], k[2], v[2]):
        ctx.fix(labels, f"{ctx.where()}: head_dim and sequence stay whole")
    _attention_extras(ctx, q[1], k[1], extra, head_axis=1)
    outputs = [[q[0], q[1], None, v[3]], [k[0], k[1], None, None], [v[0], v[1], None, v[3]],
               [q[0], q[1], None, None]]
    for index in range(len(ctx.node.outputs)):
        ctx.set_output(index, outputs[index])


def _attention_3d(ctx: NodeContext, q, k, v, extra: dict) -> None:
    q_count, kv_count = ctx.attr("q_num_heads"), ctx.attr("kv_num_heads")
    if not q_count or not kv_count:
        return unknown(ctx)
    for other in (k[0], v[0]):
        ctx.unify(q[0], other)
    head_dims = [ctx.split_heads(q[2], q_count), ctx.split_heads(k[2], kv_count), ctx.split_heads(v[2], kv_count)]
    starts = [_head_starts(labels, d) for labels, d in zip((q[2], k[2], v[2]), head_dims)]
    if not _relate_heads(ctx, starts[0], starts[1:]) or head_dims[0] != head_dims[1]:
        ctx.fix(q[2], f"{ctx.where()}: q and k head_dim differ")
        return unknown(ctx)
    ctx.count_heads("q_num_heads", q[2], head_dims[0])
    ctx.count_heads("kv_num_heads", k[2], head_dims[1])
    _attention_extras(ctx, starts[0], starts[1], extra, head_axis=None)
    out = None if starts[0] is None else np.repeat(starts[0], head_dims[2])
    outputs = [[q[0], None, out], None, None, None]
    for index in range(len(ctx.node.outputs)):
        ctx.set_output(index, outputs[index] if outputs[index] is not None else
                       [None] * len(ctx.node.outputs[index].shape or []))
        if index in (1, 2):  # present key/value: [batch, kv heads, sequence, head_dim]
            ctx.fix(starts[1], f"{ctx.where()}: present key/value in another layout")


def _attention_extras(ctx: NodeContext, q_heads, kv_heads, extra: dict, head_axis: int | None) -> None:
    """Mask and bias: a heads axis follows the query heads; past key/value the kv heads."""
    for index, axes in extra.items():
        heads = q_heads if index == 3 else kv_heads
        keep = set()
        if axes is not None and len(axes) == 4 and axes[1] is not None and heads is not None \
                and len(axes[1]) == len(heads):
            ctx.unify(heads, axes[1])
            keep.add(1)
        _fix_all_but(ctx, axes, keep, f"{ctx.where()}: mask or cache axis")


@rule("com.microsoft:Attention")
def MicrosoftAttention(ctx: NodeContext) -> None:
    """onnxruntime's fused self-attention: input [batch, sequence, hidden_in], packed q/k/v
    weights [hidden_in, 3 * hidden] and bias, `num_heads`. The output holds v's heads."""
    x, weights = ctx.axes(0), ctx.axes(1)
    extra = [ctx.axes(index) for index in range(2, len(ctx.node.inputs)) if ctx.has_input(index)]
    heads = ctx.attr("num_heads")
    if x is None or weights is None or len(weights) != 2 or not heads or ctx.attr("qkv_hidden_sizes") \
            or (ctx.has_input(4) or not ctx.is_const(1)):
        return unknown(ctx)
    ctx.unify(x[-1], weights[0])
    packed = weights[1]
    if len(packed) % 3:
        return unknown(ctx)
    q, k, v = np.split(packed, 3)
    head_dims = [ctx.split_heads(part, heads) for part in (q, k, v)]
    if None in head_dims or not _relate_heads(ctx, q[::head_dims[0]], [k[::head_dims[1]], v[::head_dims[2]]]):
        return unknown(ctx)
    ctx.new_space(packed, 1)
    if ctx.has_input(2):
        ctx.unify(ctx.axis(2, 0), packed)
    for axes in extra[1:]:
        _fix_all_but(ctx, axes, set(), f"{ctx.where()}: mask or bias")
    ctx.count_heads("num_heads", q, head_dims[0])
    ctx.set_output(0, list(x[:-1]) + [v])
    for index in range(1, len(ctx.node.outputs)):
        ctx.set_output(index, None)


@rule("com.microsoft:MultiHeadAttention")
def MultiHeadAttention(ctx: NodeContext) -> None:
    """onnxruntime's multi-head attention on projected q, k, v [batch, sequence, heads * head_dim]."""
    q, k, v = ctx.axes(0), ctx.axes(1), ctx.axes(2) if ctx.has_input(2) else None
    heads = ctx.attr("num_heads")
    if q is None or k is None or v is None or not heads or {len(q), len(k), len(v)} != {3} \
            or any(ctx.has_input(index) for index in (6, 7)):
        return unknown(ctx)
    for other in (k[0], v[0]):
        ctx.unify(q[0], other)
    head_dims = [ctx.split_heads(part[2], heads) for part in (q, k, v)]
    if None in head_dims:
        return unknown(ctx)
    starts = [part[2][::d] for part, d in zip((q, k, v), head_dims)]
    _relate_heads(ctx, starts[0], starts[1:])
    if ctx.has_input(3):  # bias: q, k and v biases packed
        ctx.unify(ctx.axis(3, 0), np.concatenate([q[2], k[2], v[2]]))
    for index in range(4, len(ctx.node.inputs)):
        if ctx.has_input(index):
            _fix_all_but(ctx, ctx.axes(index), set(), f"{ctx.where()}: mask or bias")
    ctx.count_heads("num_heads", q[2], head_dims[0])
    ctx.set_output(0, [q[0], q[1], v[2]])
    for index in range(1, len(ctx.node.outputs)):
        ctx.set_output(index, None)
