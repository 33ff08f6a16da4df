"""How channel labels travel through Reshape and Flatten.

Input and output axes are paired into blocks of consecutive axes whose sizes multiply to
the same number. Within a block one input axis may carry channels. Merging (C, H, W) into
C*H*W gives each output position the label of its channel, so a channel owns H*W
positions. Splitting C into (heads, head_dim) cannot keep per-position channels on both
axes, so the positions of each outer slice become one channel (a head) and the inner axis
never changes size.
"""
from __future__ import annotations

import math

import numpy as np

from spa.analyze.context import AxisLabels, NodeContext, static_dim

Block = tuple[list[int], list[int]]  # (input axes, output axes)


def reshape_axes(ctx: NodeContext, x: AxisLabels, in_shape: list, out_shape: list | None) -> AxisLabels | None:
    """Output labels of reshaping an input with labels `x`; fixes what cannot be carried."""
    in_dims = [len(lab) if lab is not None else d for lab, d in zip(x, in_shape)]
    blocks = None
    if out_shape is not None and _sizes_disagree(in_dims, out_shape):
        out_shape = None  # inference contradicts itself here: relate nothing
    if out_shape is not None:
        blocks = _blocks(in_dims, out_shape) or _static_tail_blocks(in_dims, out_shape) \
            or _outer_blocks(in_dims, out_shape)
    if blocks is None:
        ctx.fix_all(x, f"{ctx.where()}: cannot relate input and output shapes")
        return None if out_shape is None else [None] * len(out_shape)
    out: AxisLabels = [None] * len(out_shape)
    for in_axes, out_axes in blocks:
        _carry_block(ctx, x, in_dims, out_shape, in_axes, out_axes, out)
    return out


def _sizes_disagree(in_dims: list, out_dims: list) -> bool:
    static_in, static_out = [static_dim(d) for d in in_dims], [static_dim(d) for d in out_dims]
    if None in static_in or None in static_out:
        return False
    return math.prod(static_in) != math.prod(static_out)


def _carry_block(ctx: NodeContext, x: AxisLabels, in_dims: list, out_shape: list,
                 in_axes: list[int], out_axes: list[int], out: AxisLabels) -> None:
    labeled = [a for a in in_axes if x[a] is not None]
    if not labeled:
        return
    if len(labeled) > 1 or not out_axes:
        for a in labeled:
            ctx.fix(x[a], f"{ctx.where()} mixes channel axes or drops one")
        return
    axis = labeled[0]
    block_in = [in_dims[a] for a in in_axes]
    block_out = [static_dim(out_shape[o]) for o in out_axes]
    if None in block_out or any(static_dim(d) is None for d in block_in):
        ctx.fix(x[axis], f"{ctx.where()}: channel axis in a dynamic block")
        return
    flat = _block_labels(x[axis], block_in, in_axes.index(axis))
    grid = flat.reshape(block_out)
    roots = ctx.space.roots(flat).reshape(block_out)
    carrier = _single_varying_axis(roots)
    if carrier is None:
        carrier = _head_axis(block_out, [o in _split_axes(ctx) for o in out_axes])
        for q in range(block_out[carrier]):
            head = np.take(grid, q, axis=carrier).ravel()
            head_dim = block_out[-1] if carrier < len(block_out) - 1 else len(head)  # the innermost axis
            ctx.state.head_labels.append((ctx.space.merge_all(head), head_dim))
    first_slice = [0] * len(block_out)
    first_slice[carrier] = slice(None)
    out[out_axes[carrier]] = grid[tuple(first_slice)].copy()


def _head_axis(block_out: list[int], split: list[bool]) -> int:
    """Where channels split into several axes, the one whose slices become channels (heads):
    not an axis the graph then splits or indexes (the q/k/v axis of a fused projection
    reshaped to (3, heads, head_dim)), and not the innermost of several (head_dim)."""
    candidates = [i for i, n in enumerate(block_out) if n > 1 and not split[i]]
    if len(candidates) > 1:
        candidates = candidates[:-1]
    return candidates[0] if candidates else next(i for i, n in enumerate(block_out) if n > 1)


SPLITTING = ("Split", "Gather", "Slice")


def _split_axes(ctx: NodeContext) -> set[int]:
    """Axes of the Reshape's output that a later Split, Gather or Slice cuts along, followed
    through Transposes (fused q/k/v unbinding)."""
    found: set[int] = set()
    frontier = [(ctx.node.outputs[0], list(range(len(ctx.node.outputs[0].shape or []))))]
    while frontier:
        tensor, origin = frontier.pop()  # origin[k]: the Reshape output axis at axis k here
        for reader in tensor.outputs:
            if reader.op == "Transpose" and reader.inputs[0] is tensor:
                perm = reader.attrs.get("perm", list(reversed(range(len(origin)))))
                frontier.append((reader.outputs[0], [origin[p] for p in perm]))
            elif reader.op in SPLITTING and reader.inputs[0] is tensor:
                found.update(origin[a % len(origin)] for a in _cut_axes(reader, len(origin)))
    return found


def _cut_axes(node, rank: int) -> list[int]:
    if node.op in ("Split", "Gather"):
        return [node.attrs.get("axis", 0)]
    if "axes" in node.attrs:
        return list(node.attrs["axes"])
    axes = node.inputs[3] if len(node.inputs) > 3 else None
    values = getattr(axes, "values", None)
    if values is not None:
        return [int(a) for a in np.ravel(values)]
    starts = node.inputs[1] if len(node.inputs) > 1 else None
    count = len(starts.shape) and starts.shape[0] if starts is not None and starts.shape else 0
    return list(range(count)) if isinstance(count, int) else []


def _block_labels(labels: np.ndarray, block_in: list[int], position: int) -> np.ndarray:
    """Labels of every element of the block, flattened row-major."""
    shape = [1] * len(block_in)
    shape[position] = len(labels)
    return np.broadcast_to(labels.reshape(shape), block_in).ravel()


def _single_varying_axis(roots: np.ndarray) -> int | None:
    """The one axis along which channel roots vary, if they vary along one axis only."""
    varying = [k for k in range(roots.ndim) if roots.shape[k] > 1
               and not np.all(roots == np.take(roots, [0], axis=k))]
    if len(varying) > 1:
        return None
    if not varying:  # a single channel, spread over the block
        return next((k for k in range(roots.ndim) if roots.shape[k] > 1), 0)
    return varying[0]


def _blocks(in_dims: list, out_dims: list) -> list[Block] | None:
    """Pair consecutive axes with equal size products; size-1 axes stand alone."""
    blocks: list[Block] = []
    i = j = 0
    while i < len(in_dims) or j < len(out_dims):
        if i < len(in_dims) and in_dims[i] == 1:
            blocks.append(([i], []))
            i += 1
        elif j < len(out_dims) and out_dims[j] == 1:
            blocks.append(([], [j]))
            j += 1
        elif i == len(in_dims) or j == len(out_dims):
            return None
        elif static_dim(in_dims[i]) is None or static_dim(out_dims[j]) is None:
            if not _same_dynamic_dim(in_dims, out_dims, i, j):
                return None
            blocks.append(([i], [j]))
            i, j = i + 1, j + 1
        else:
            block = _grow_block(in_dims, out_dims, i, j)
            if block is None:
                return None
            blocks.append(block)
            i, j = block[0][-1] + 1, block[1][-1] + 1
    return blocks


def _outer_blocks(in_dims: list, out_dims: list) -> list[Block] | None:
    """Equal leading and trailing dims pair one to one; what is left between them is one
    block (e.g. [batch, seq, 64] -> [-1, 64] merges the two dynamic dims)."""
    head = 0
    while head < min(len(in_dims), len(out_dims)) and _equal_dims(in_dims[head], out_dims[head]):
        head += 1
    tail = 0
    while tail < min(len(in_dims), len(out_dims)) - head and \
            _equal_dims(in_dims[-1 - tail], out_dims[-1 - tail]):
        tail += 1
    middle = (list(range(head, len(in_dims) - tail)), list(range(head, len(out_dims) - tail)))
    if not middle[0] or not middle[1]:
        return None
    pairs = [([k], [k]) for k in range(head)]
    pairs += [([len(in_dims) - t], [len(out_dims) - t]) for t in range(tail, 0, -1)]
    return pairs[:head] + [middle] + pairs[head:]


def _static_tail_blocks(in_dims: list, out_dims: list) -> list[Block] | None:
    """Static axes pair up by products from the right ([batch * tokens, 128] -> [batch,
    tokens, 4, 32]: 128 <-> 4 x 32) until a dynamic axis; everything left of that is one
    block ([batch * tokens] <-> [batch, tokens])."""
    i, j, tail = len(in_dims), len(out_dims), []
    while i and j and static_dim(in_dims[i - 1]) is not None and static_dim(out_dims[j - 1]) is not None:
        ins, outs = [i - 1], [j - 1]
        in_size, out_size = in_dims[i - 1], out_dims[j - 1]
        while in_size != out_size:
            if in_size < out_size and ins[0] > 0 and static_dim(in_dims[ins[0] - 1]) is not None:
                ins.insert(0, ins[0] - 1)
                in_size *= in_dims[ins[0]]
            elif out_size < in_size and outs[0] > 0 and static_dim(out_dims[outs[0] - 1]) is not None:
                outs.insert(0, outs[0] - 1)
                out_size *= out_dims[outs[0]]
            else:
                break
        if in_size != out_size:
            break
        tail.insert(0, (ins, outs))
        i, j = ins[0], outs[0]
    if not tail or not i or not j:
        return None
    return [(list(range(i)), list(range(j)))] + tail


def _equal_dims(a, b) -> bool:
    return a == b and a is not None


def _same_dynamic_dim(in_dims: list, out_dims: list, i: int, j: int) -> bool:
    """Two dynamic dims correspond if they have the same symbol, or if each is the only
    dynamic dim of its shape (the static parts then match, so the dynamic ones are equal)."""
    a, b = in_dims[i], out_dims[j]
    if static_dim(a) is not None or static_dim(b) is not None:
        return False
    if isinstance(a, str) and a == b:
        return True
    return _dynamic_count(in_dims) == 1 and _dynamic_count(out_dims) == 1


def _dynamic_count(dims: list) -> int:
    return sum(static_dim(d) is None for d in dims)


def _grow_block(in_dims: list, out_dims: list, i: int, j: int) -> Block | None:
    in_axes, out_axes = [i], [j]
    in_size, out_size = in_dims[i], out_dims[j]
    while in_size != out_size:
        if in_size < out_size:
            i += 1
            if i == len(in_dims) or static_dim(in_dims[i]) is None:
                return None
            in_axes.append(i)
            in_size *= in_dims[i]
        else:
            j += 1
            if j == len(out_dims) or static_dim(out_dims[j]) is None:
                return None
            out_axes.append(j)
            out_size *= out_dims[j]
    return in_axes, out_axes


def flatten_shape(in_shape: list, axis: int) -> list:
    """Flatten's output shape; an unknown product is None."""
    axis = axis % len(in_shape) if in_shape else 0
    return [_product(in_shape[:axis]), _product(in_shape[axis:])]


def _product(dims: list):
    if len(dims) == 1:
        return dims[0]
    static = [static_dim(d) for d in dims]
    return None if None in static else math.prod(static)
