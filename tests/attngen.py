"""Random transformer blocks (attention + MLP) as exporters emit them, for property tests.

Every model records the variants it was drawn with in its `doc_string`, so a failing
example names the code path that built it.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from graphgen import Draw, GraphBuilder, he_scale, tensor_info
from hypothesis import strategies as st

GELU_OPSET = 20  # Gelu is not an ONNX op before opset 20
GELU_IR_VERSION = 9


@dataclass
class _Block:
    """Builder state: the graph, the sizes, and the variants drawn so far."""
    g: GraphBuilder
    draw: Draw
    s: int
    heads: int
    head_dim: int
    n_rep: int  # query heads per key/value head (1: plain multi-head attention)
    variants: list[str] = field(default_factory=list)

    @property
    def hidden(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_heads(self) -> int:
        return self.heads // self.n_rep

    def choose(self, name: str, strategy: st.SearchStrategy[Any]) -> Any:
        """Draw a variant and record it as name=value."""
        value = self.draw(strategy)
        self.variants.append(f"{name}={value}")
        return value

    def sample(self, name: str, options: Sequence[Any]) -> Any:
        return self.choose(name, st.sampled_from(options))


# --- linear layers and shapes -------------------------------------------------------------

def _linear(b: _Block, x: str, n_in: int, n_out: int, bias: bool) -> str:
    """[1, S, n_in] -> [1, S, n_out]: MatMul (+ Add bias), or a 2-D Gemm between Reshapes."""
    g = b.g
    style = b.sample("linear", ["matmul", "gemm"])
    if style == "matmul":
        y = g.op("MatMul", [x, g.param("w", [n_in, n_out], he_scale(n_in))])
        return g.op("Add", [y, g.param("b", [n_out], 0.5)]) if bias else y
    trans_b = b.sample("trans_b", [0, 1])
    flat = g.op("Reshape", [x, g.ints("shape", [-1, n_in])])
    y = g.dense(flat, n_in, n_out, trans_b, bias)
    return g.op("Reshape", [y, g.ints("shape", [1, b.s, n_out])])


def _shape_chain(b: _Block, source: str, leading: int, tail: Sequence[int]) -> str:
    """Shape -> Gather -> Unsqueeze per leading dim of `source`, Concat with constant `tail`."""
    g = b.g
    as_node = b.choose("pieces_as_nodes", st.booleans())
    shape = g.op("Shape", [source])
    pieces = [g.op("Unsqueeze", [g.op("Gather", [shape, g.constant("i", np.array(i, np.int64), as_node)],
                                      axis=0), g.constant("axes", np.array([0], np.int64), as_node)])
              for i in range(leading)]
    pieces += [g.constant("dim", np.array([n], np.int64), as_node) for n in tail]
    return g.op("Concat", pieces, axis=0)


def _reshape(b: _Block, x: str, name: str, static: Sequence[int], leading: int) -> str:
    """Reshape to `static` = [1, S, *tail]: as an initializer, with 0/-1, or a Shape chain."""
    tail = list(static[leading:])
    style = b.sample(name, ["initializer", "zero_minus_one", "shape_chain"])
    if style == "initializer":
        shape = b.g.ints("shape", static)
    elif style == "zero_minus_one":
        shape = b.g.ints("shape", [0] * leading + [-1] + tail[1:])
    else:
        shape = _shape_chain(b, x, leading, tail)
    return b.g.op("Reshape", [x, shape])


# --- attention ----------------------------------------------------------------------------

def _projections(b: _Block, x: str) -> tuple[str, str, str]:
    """Q [1, S, H] and K, V [1, S, kv_heads * head_dim], separate or fused and Split."""
    kv_width = b.kv_heads * b.head_dim
    widths = [b.hidden, kv_width, kv_width]
    bias = b.choose("qkv_bias", st.booleans())
    if b.sample("qkv", ["separate", "fused"]) == "separate":
        q, k, v = (_linear(b, x, b.hidden, w, bias) for w in widths)
        return q, k, v
    fused = _linear(b, x, b.hidden, sum(widths), bias)
    q, k, v = b.g.multi_op("Split", [fused, b.g.ints("split", widths)], 3, axis=-1)
    return q, k, v


def _split_heads(b: _Block, x: str, heads: int) -> str:
    """[1, S, heads * head_dim] -> [1, S, heads, head_dim]."""
    return _reshape(b, x, "head_split", [1, b.s, heads, b.head_dim], leading=2)


def _rotary(b: _Block, x: str) -> str:
    """x * cos + rotate_half(x) * sin on [1, heads, S, head_dim]."""
    g, half = b.g, b.head_dim // 2
    freq = 1.0 / 10000 ** (np.arange(half) / half)
    angles = np.tile(np.outer(np.arange(b.s), freq), 2).astype(np.float32)
    axis = g.ints("axis", [-1])
    upper = g.op("Slice", [x, g.ints("start", [half]), g.ints("end", [b.head_dim]), axis])
    lower = g.op("Slice", [x, g.ints("start", [0]), g.ints("end", [half]), axis])
    rotated = g.op("Concat", [g.op("Neg", [upper]), lower], axis=-1)
    x_cos = g.op("Mul", [x, g.constant("cos", np.cos(angles))])
    return g.op("Add", [x_cos, g.op("Mul", [rotated, g.constant("sin", np.sin(angles))])])


def _repeat_kv(b: _Block, x: str, inner: Sequence[int]) -> str:
    """[1, kv_heads, *inner] -> [1, heads, *inner] with each kv head repeated n_rep times."""
    g = b.g
    if b.n_rep == 1:
        return x
    expanded = g.op("Expand", [g.op("Unsqueeze", [x, g.ints("axes", [2])]),
                               g.ints("shape", [1, b.kv_heads, b.n_rep, *inner])])
    return g.op("Reshape", [expanded, g.ints("shape", [1, b.heads, *inner])])


def _scale(b: _Block, x: str) -> str:
    g, root = b.g, np.sqrt(b.head_dim)
    if b.sample("scale_op", ["Div", "Mul"]) == "Div":
        return g.op("Div", [x, g.constant("scale", np.array(root, np.float32))])
    return g.op("Mul", [x, g.constant("scale", np.array(1 / root, np.float32))])


def _keys_transposed(b: _Block, k: str, rotary: bool) -> str:
    """K as [1, heads, head_dim, S]: one Transpose [0, 2, 3, 1], or Transpose [0, 2, 1, 3]
    (rotary, repeat) and Transpose [0, 1, 3, 2] as Llama exports do."""
    g = b.g
    if not rotary and b.sample("k_transpose", ["direct", "two_step"]) == "direct":
        return _repeat_kv(b, g.op("Transpose", [k], perm=[0, 2, 3, 1]), [b.head_dim, b.s])
    k = g.op("Transpose", [k], perm=[0, 2, 1, 3])
    k = _rotary(b, k) if rotary else k
    return g.op("Transpose", [_repeat_kv(b, k, [b.s, b.head_dim])], perm=[0, 1, 3, 2])


def _attention(b: _Block, x: str, mask: str | None) -> str:
    """Multi-head (or grouped-query) self-attention with output projection: [1, S, H]."""
    g = b.g
    q, k, v = _projections(b, x)
    rotary = b.head_dim % 2 == 0 and b.choose("rotary", st.booleans())
    q = g.op("Transpose", [_split_heads(b, q, b.heads)], perm=[0, 2, 1, 3])
    q = _rotary(b, q) if rotary else q
    k = _keys_transposed(b, _split_heads(b, k, b.kv_heads), rotary)
    v = g.op("Transpose", [_split_heads(b, v, b.kv_heads)], perm=[0, 2, 1, 3])
    v = _repeat_kv(b, v, [b.s, b.head_dim])
    if b.sample("scale_on", ["scores", "query"]) == "query":
        scores = g.op("MatMul", [_scale(b, q), k])
    else:
        scores = _scale(b, g.op("MatMul", [q, k]))
    scores = g.op("Add", [scores, mask]) if mask else scores
    context = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
    merged = _reshape(b, g.op("Transpose", [context], perm=[0, 2, 1, 3]), "head_merge",
                      [1, b.s, b.hidden], leading=2)
    return _linear(b, merged, b.hidden, b.hidden, b.choose("out_bias", st.booleans()))


# --- MLP ----------------------------------------------------------------------------------

def _gelu_erf(g: GraphBuilder, x: str) -> str:
    """x * 0.5 * (1 + Erf(x / sqrt 2)), as torch exports nn.GELU below opset 20."""
    erf = g.op("Erf", [g.op("Div", [x, g.constant("sqrt2", np.array(np.sqrt(2), np.float32))])])
    one_plus = g.op("Add", [erf, g.constant("one", np.array(1, np.float32))])
    return g.op("Mul", [g.op("Mul", [x, g.constant("half", np.array(0.5, np.float32))]), one_plus])


def _gelu_tanh(g: GraphBuilder, x: str) -> str:
    """0.5 * x * (1 + Tanh(sqrt(2/pi) * (x + 0.044715 * x^3))), GPT-2's gelu_new."""
    cube = g.op("Pow", [x, g.constant("three", np.array(3, np.float32))])
    inner = g.op("Add", [x, g.op("Mul", [cube, g.constant("c", np.array(0.044715, np.float32))])])
    scaled = g.op("Mul", [inner, g.constant("c", np.array(np.sqrt(2 / np.pi), np.float32))])
    one_plus = g.op("Add", [g.op("Tanh", [scaled]), g.constant("one", np.array(1, np.float32))])
    return g.op("Mul", [g.op("Mul", [x, g.constant("half", np.array(0.5, np.float32))]), one_plus])


def _activation(b: _Block, x: str) -> str:
    kind = b.sample("activation", ["Relu", "Gelu", "gelu_erf", "gelu_tanh"])
    if kind == "gelu_erf":
        return _gelu_erf(b.g, x)
    if kind == "gelu_tanh":
        return _gelu_tanh(b.g, x)
    return b.g.op(kind, [x])


def _mlp(b: _Block, x: str) -> str:
    """Plain MLP H -> F -> H with biases, or a gated (SwiGLU) one without."""
    f = b.choose("mlp_width", st.integers(3, 8))
    if b.sample("mlp", ["plain", "gated"]) == "plain":
        return _linear(b, _activation(b, _linear(b, x, b.hidden, f, True)), f, b.hidden, True)
    gate = _linear(b, x, b.hidden, f, False)
    silu = b.g.op("Mul", [gate, b.g.op("Sigmoid", [gate])])
    return _linear(b, b.g.op("Mul", [silu, _linear(b, x, b.hidden, f, False)]), f, b.hidden, False)


# --- the block ----------------------------------------------------------------------------

def _layer_norm(b: _Block, x: str) -> str:
    return b.g.op("LayerNormalization", [x, b.g.positive("ln_scale", [b.hidden]),
                                         b.g.param("ln_bias", [b.hidden], 0.5)], axis=-1)


def _transformer_block(b: _Block, x: str, mask: str | None) -> str:
    """x + attention(x), optional LayerNorm, then + MLP: [1, S, H]."""
    x = b.g.op("Add", [x, _attention(b, x, mask)])
    x = _layer_norm(b, x) if b.choose("layer_norm", st.booleans()) else x
    return b.g.op("Add", [x, _mlp(b, x)])


def _build(b: _Block, out: str, out_width: int, mask: str | None) -> onnx.ModelProto:
    inputs = [tensor_info("x", [1, b.s, b.hidden])]
    if mask:
        inputs.append(tensor_info(mask, [1, 1, b.s, b.s]))
    model = b.g.build(inputs, [tensor_info(out, [1, b.s, out_width])], name="attention_block")
    if any(n.op_type == "Gelu" for n in model.graph.node):
        model.opset_import[0].version, model.ir_version = GELU_OPSET, GELU_IR_VERSION
    sizes = f"seq={b.s} heads={b.heads} kv_heads={b.kv_heads} head_dim={b.head_dim}"
    model.doc_string = " ".join([sizes, *b.variants])
    return model


def attention_models() -> st.SearchStrategy[onnx.ModelProto]:
    """One transformer block on x [1, S, H] (S 3..6, H = heads * head_dim), optional
    additive mask [1, 1, S, S], output [1, S, H] or logits [1, S, C] from a MatMul head."""

    @st.composite
    def strategy(draw: Draw) -> onnx.ModelProto:
        s, heads, head_dim = draw(st.integers(3, 6)), draw(st.integers(2, 4)), draw(st.integers(2, 4))
        n_rep = 2 if heads % 2 == 0 and draw(st.booleans()) else 1
        b = _Block(GraphBuilder(draw(st.integers(0, 2**32 - 1))), draw, s, heads, head_dim, n_rep)
        mask = "mask" if b.choose("mask", st.booleans()) else None
        out = _transformer_block(b, "x", mask)
        width = b.hidden
        if b.sample("output", ["hidden", "logits"]) == "logits":
            width = b.choose("classes", st.integers(2, 6))
            out = b.g.op("MatMul", [out, b.g.param("head_w", [b.hidden, width], he_scale(b.hidden))])
        return _build(b, out, width, mask)

    return strategy()
