"""Small models, one per class of real-world export spa once failed on, written to
models/regression/ (tests/test_regressions.py checks each).

    python tools/regression_models.py

Each reproduces the graph pattern of an exporter or tool (named in its docstring) in a few
nodes, with seeded random weights; the quantized ones go through onnxruntime's own
quantizer, the fused-attention one through onnxruntime's transformer optimizer.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUT = Path(__file__).resolve().parent.parent / "models" / "regression"
MODELS = Path(__file__).resolve().parent.parent / "models"
IR_VERSION = 8
BIG = 9223372036854775807


class Graph:
    """Nodes and initializers under generated names."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def const(self, values, prefix: str = "c") -> str:
        name = self.name(prefix)
        self.initializers.append(numpy_helper.from_array(np.asarray(values), name))
        return name

    def ints(self, values) -> str:
        return self.const(np.array(values, dtype=np.int64), "shape")

    def weight(self, *shape: int, scale: float = 0.5) -> str:
        return self.const((self.rng.standard_normal(shape) * scale / np.sqrt(shape[0])).astype(np.float32), "w")

    def op(self, op: str, inputs: list[str], outputs: int = 1, domain: str = "", **attrs) -> str | list[str]:
        names = [self.name(op.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=self.name(op), domain=domain, **attrs))
        return names[0] if outputs == 1 else names

    def linear(self, x: str, n_in: int, n_out: int, bias: str | None = None) -> str:
        y = self.op("MatMul", [x, self.weight(n_in, n_out)])
        return self.op("Add", [y, bias or self.const(self.rng.standard_normal(n_out).astype(np.float32) * 0.1, "b")])

    def conv(self, x: str, c_in: int, c_out: int, k: int = 3, **attrs) -> str:
        bias = self.const(self.rng.standard_normal(c_out).astype(np.float32) * 0.1, "b")
        return self.op("Conv", [x, self.weight(c_out, c_in, k, k), bias], **attrs)

    def model(self, inputs, outputs, opset: int = 17, extra_opsets=()) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, "g", inputs, outputs, self.initializers)
        opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in extra_opsets]
        return helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION)


def tensor(name: str, shape, elem=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def layer_norm(g: Graph, x: str, scale: str, bias: str) -> str:
    return g.op("LayerNormalization", [x, scale, bias], axis=-1)


# --- 1. shared initializers ----------------------------------------------------------------

def shared_uniform_constants() -> onnx.ModelProto:
    """torch.onnx of a freshly initialized transformer MLP stack: every zero bias is one
    initializer, every unit LayerNorm scale another, some read through Identity aliases."""
    g = Graph(1)
    zeros32, ones16, zeros16 = g.const(np.zeros(32, np.float32)), g.const(np.ones(16, np.float32)), \
        g.const(np.zeros(16, np.float32))
    alias = g.op("Identity", [zeros16])
    x = "input"
    for layer in range(2):
        h = g.op("Relu", [g.linear(x, 16, 32, bias=zeros32)])
        x = layer_norm(g, g.op("Add", [x, g.linear(h, 32, 16, bias=zeros16)]), ones16, alias)
    return g.model([tensor("input", [1, 4, 16])], [tensor(x, [1, 4, 16])])


def tied_weight() -> onnx.ModelProto:
    """ALBERT: one layer's weights (distinct values) used at every depth: shared for real."""
    g = Graph(2)
    w1, b1, w2, b2 = g.weight(16, 32), g.const(np.full(32, 0.1, np.float32) + g.rng.random(32, np.float32) * 0.1), \
        g.weight(32, 16), g.const(g.rng.random(16, np.float32))
    x = "input"
    for _ in range(2):
        h = g.op("Relu", [g.op("Add", [g.op("MatMul", [x, w1]), b1])])
        x = g.op("Add", [x, g.op("Add", [g.op("MatMul", [h, w2]), b2])])
    return g.model([tensor("input", [1, 4, 16])], [tensor(x, [1, 4, 16])])


# --- 2. computed padding -------------------------------------------------------------------

def _pads_idiom(g: Graph, pads: str, rank: int = 4) -> str:
    """torch.onnx's F.pad: pads (last axis first) completed with zeros, reordered to ONNX's
    begin/end order through Reshape, a reversing Slice and a Transpose."""
    zeros = g.op("ConstantOfShape", [g.ints([2 * rank - 4])], value=numpy_helper.from_array(np.array([0], np.int64)))
    full = g.op("Concat", [pads, zeros], axis=0)
    pairs = g.op("Reshape", [full, g.ints([-1, 2])])
    reversed_pairs = g.op("Slice", [pairs, g.ints([-1]), g.ints([-BIG]), g.ints([0]), g.ints([-1])])
    return g.op("Reshape", [g.op("Transpose", [reversed_pairs], perm=[1, 0]), g.ints([-1])])


def computed_same_padding() -> onnx.ModelProto:
    """timm's tf_ models (TF "same" padding computed from the input size) and F.pad with
    constant pads: both through torch.onnx's pads idiom."""
    g = Graph(3)
    x = g.op("Relu", [g.conv("input", 3, 16, pads=[1, 1, 1, 1])])
    size = g.op("Gather", [g.op("Shape", [x]), g.ints([2, 3])], axis=0)  # H, W
    stride, kernel = 2, 3
    out = g.op("Div", [g.op("Add", [size, g.ints([stride - 1])]), g.ints([stride])])
    total = g.op("Max", [g.op("Sub", [g.op("Add", [g.op("Mul", [g.op("Sub", [out, g.ints([1])]), g.ints([stride])]),
                                                    g.ints([kernel])]), size]), g.ints([0])])
    begin = g.op("Div", [total, g.ints([2])])
    end = g.op("Sub", [total, begin])
    h_w = [g.op("Gather", [t, g.ints(i)], axis=0) for t, i in ((begin, [1]), (end, [1]), (begin, [0]), (end, [0]))]
    padded = g.op("Pad", [x, _pads_idiom(g, g.op("Concat", h_w, axis=0))])
    y = g.op("Relu", [g.conv(padded, 16, 16, strides=[2, 2])])
    y = g.op("Pad", [y, _pads_idiom(g, g.ints([1, 1, 1, 1]))])  # F.pad with constant pads
    y = g.op("Relu", [g.conv(y, 16, 16)])
    y = g.op("Flatten", [g.op("GlobalAveragePool", [y])], axis=1)
    y = g.op("Gemm", [y, g.weight(16, 10), g.const(np.zeros(10, np.float32) + 0.1)])
    return g.model([tensor("input", [1, 3, 15, 15])], [tensor(y, [1, 10])])


def reversed_slice() -> onnx.ModelProto:
    """A step -1 Slice over channels (a flip, or the pads idiom's reversal on a tensor with
    channel labels): kept whole, and its bounds left alone when other channels are cut."""
    g = Graph(18)
    y = g.op("Relu", [g.conv("input", 3, 16, pads=[1, 1, 1, 1])])
    y = g.conv(y, 16, 16, pads=[1, 1, 1, 1])
    y = g.op("Slice", [y, g.ints([-1]), g.ints([-BIG]), g.ints([1]), g.ints([-1])])
    return g.model([tensor("input", [1, 3, 8, 8])], [tensor(y, [1, 16, 8, 8])])


# --- 3. paddle2onnx quirks -----------------------------------------------------------------

def paddle_style() -> onnx.ModelProto:
    """paddle2onnx: batch written as dim_value -1, other open dims named '?', conv biases
    added through Reshape(bias, Identity(Constant)), and (a trained model's) dead channels
    whose weights are float32 denormals."""
    g = Graph(4)
    x = "x"
    biases = []
    for c_in, c_out in ((3, 16), (16, 16)):
        weight = last_weight = g.weight(c_out, c_in, 3, 3)
        conv = g.op("Conv", [x, weight], pads=[1, 1, 1, 1])
        shape = g.op("Identity", [g.op("Constant", [], value=numpy_helper.from_array(np.array([1, -1, 1, 1], np.int64)))])
        biases.append(g.const(g.rng.standard_normal(c_out).astype(np.float32) * 0.1, "b"))
        x = g.op("Relu", [g.op("Add", [conv, g.op("Reshape", [biases[-1], shape])])])
    head = g.weight(16, 4)
    for name in (last_weight, biases[-1], head):  # channels 0-2 of the second conv: dead, denormal weights
        stored = next(t for t in g.initializers if t.name == name)
        values = numpy_helper.to_array(stored).copy()
        values[:3] = 1e-41  # their squares underflow to 0 in float32
        stored.CopyFrom(numpy_helper.from_array(values, stored.name))
    y = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    y = g.op("Softmax", [g.op("Gemm", [y, head, g.const(np.zeros(4, np.float32))])], axis=1)
    model = g.model([tensor("x", [-1, 3, "?", "?"])], [tensor(y, ["?", 4])], opset=11)
    return model


# --- 4. quantized ---------------------------------------------------------------------------

def _quantized(source: Path, fmt, per_channel: bool) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static  # noqa: F401

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(5)
            self.batches = iter([{"input": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    with tempfile.TemporaryDirectory() as scratch:
        target = Path(scratch) / "q.onnx"
        quantize_static(str(source), str(target), Reader(), quant_format=fmt, per_channel=per_channel)
        return onnx.load(str(target))


def qdq_per_channel() -> onnx.ModelProto:
    """onnxruntime's quantize_static, QDQ, per-channel: weights through DequantizeLinear."""
    from onnxruntime.quantization import QuantFormat
    return _quantized(MODELS / "mobilenetv2.onnx", QuantFormat.QDQ, True)


def qoperator() -> onnx.ModelProto:
    """onnxruntime's quantize_static, QOperator: QLinearConv, QLinearAdd, QGemm, ..."""
    from onnxruntime.quantization import QuantFormat
    return _quantized(MODELS / "resnet_basic.onnx", QuantFormat.QOperator, True)


# --- 5. inputs the model takes ---------------------------------------------------------------

def token_types() -> onnx.ModelProto:
    """A sentence-transformers style encoder: ids, a 2-row token-type table, a 0/1 mask, mean
    pooling over the mask."""
    g = Graph(6)
    hidden = 16
    words = g.op("Gather", [g.const(g.rng.standard_normal((50, hidden)).astype(np.float32), "words"), "input_ids"])
    types = g.op("Gather", [g.const(g.rng.standard_normal((2, hidden)).astype(np.float32), "types"), "token_type_ids"])
    x = layer_norm(g, g.op("Add", [words, types]), g.const(1 + g.rng.random(hidden, np.float32) * 0.1),
                   g.const(g.rng.random(hidden, np.float32) * 0.1))
    h = g.linear(g.op("Relu", [g.linear(x, hidden, 32)]), 32, hidden)
    mask = g.op("Unsqueeze", [g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT), g.ints([-1])])
    summed = g.op("ReduceSum", [g.op("Mul", [h, mask]), g.ints([1])], keepdims=0)
    count = g.op("Clip", [g.op("ReduceSum", [mask, g.ints([1])], keepdims=0), g.const(np.array(1e-9, np.float32))])
    pooled = g.op("Div", [summed, count])
    ints = TensorProto.INT64
    return g.model([tensor(n, [1, 8], ints) for n in ("input_ids", "attention_mask", "token_type_ids")],
                   [tensor(pooled, [1, hidden])])


def dynamic_image() -> onnx.ModelProto:
    """tf2onnx with every input dim open (unk__N names): strided 3x3 convs need an image of
    some size, which the graph does not say."""
    g = Graph(7)
    x = "input"
    for c_in, c_out in ((3, 16), (16, 16), (16, 16)):
        x = g.op("Relu", [g.conv(x, c_in, c_out, strides=[2, 2])])
    y = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    y = g.op("Gemm", [y, g.weight(16, 4), g.const(np.zeros(4, np.float32))])
    return g.model([tensor("input", ["unk__1", 3, "unk__2", "unk__3"])], [tensor(y, ["unk__4", 4])])


def open_size_skip() -> onnx.ModelProto:
    """Open H and W (tf2onnx's unk__N) and a skip connection across five stride-2 convs and
    one 32x upsampling, as in U-Nets and detectors' feature pyramids: only multiples of 32 run
    (16, the size synthetic calibration guesses first, does not)."""
    g = Graph(19)
    skip = g.op("Relu", [g.conv("input", 3, 16, pads=[1, 1, 1, 1])])
    x = skip
    for _ in range(5):
        x = g.op("Relu", [g.conv(x, 16, 16, strides=[2, 2], pads=[1, 1, 1, 1])])
    up = g.op("Resize", [x, "", g.const(np.array([1, 1, 32, 32], np.float32), "scales")], mode="nearest")
    y = g.conv(g.op("Add", [up, skip]), 16, 4, k=1)
    return g.model([tensor("input", ["unk__1", 3, "unk__2", "unk__3"])], [tensor(y, ["unk__4", 4, "unk__5", "unk__6"])])

def scalar_flag() -> onnx.ModelProto:
    """jax2onnx's flax models take `deterministic`, a bool scalar input with no batch axis
    (dropout on or off), beside the batched data: an MLP that halves its hidden units without it."""
    g = Graph(23)
    h = g.op("Relu", [g.linear("input", 16, 32)])
    h = g.op("Where", ["deterministic", h, g.op("Mul", [h, g.const(np.array(0.5, np.float32))])])
    y = g.linear(h, 32, 8)
    return g.model([tensor("input", ["B", 16]), tensor("deterministic", [], TensorProto.BOOL)], [tensor(y, ["B", 8])])

# --- 6. attention the analysis must see -------------------------------------------------------

def _attention_tail(g: Graph, q: str, k: str, v: str, head_dim: int) -> str:
    scores = g.op("Softmax", [g.op("Mul", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])]),
                                          g.const(np.array(head_dim ** -0.5, np.float32))])], axis=-1)
    return g.op("MatMul", [scores, v])


def fused_qkv_unbind() -> onnx.ModelProto:
    """timm's ViT/DeiT attention: one qkv Linear reshaped to (B, N, 3, heads, head_dim),
    permuted, split along the q/k/v axis and squeezed."""
    g = Graph(8)
    heads, head_dim, dim, tokens = 4, 8, 32, 5
    qkv = g.linear("input", dim, 3 * dim)
    qkv = g.op("Transpose", [g.op("Reshape", [qkv, g.ints([1, tokens, 3, heads, head_dim])])], perm=[2, 0, 3, 1, 4])
    q, k, v = [g.op("Squeeze", [part, g.ints([0])])
               for part in g.op("Split", [qkv, g.ints([1, 1, 1])], outputs=3, axis=0)]
    out = g.op("Reshape", [g.op("Transpose", [_attention_tail(g, q, k, v, head_dim)], perm=[0, 2, 1, 3]),
                           g.ints([1, tokens, dim])])
    out = g.op("Add", ["input", g.linear(out, dim, dim)])
    return g.model([tensor("input", [1, tokens, dim])], [tensor(out, [1, tokens, dim])])


def _heads(g: Graph, x: str, tokens: int, heads: int, head_dim: int) -> str:
    return g.op("Transpose", [g.op("Reshape", [x, g.ints([1, tokens, heads, head_dim])])], perm=[0, 2, 1, 3])


def _rms(g: Graph, x: str, width: int, reciprocal: bool = False) -> str:
    """Qwen3's per-head q/k RMSNorm as torch.onnx writes it: x * (1 / sqrt(mean(x^2) + eps)) * w
    (the dynamo exporter: Reciprocal(Sqrt(...)))."""
    mean = g.op("ReduceMean", [g.op("Pow", [x, g.const(np.array(2.0, np.float32))])], axes=[-1], keepdims=1)
    root = g.op("Sqrt", [g.op("Add", [mean, g.const(np.array(1e-6, np.float32))])])
    inverse = g.op("Reciprocal", [root]) if reciprocal else g.op("Div", [g.const(np.array(1.0, np.float32)), root])
    return g.op("Mul", [g.op("Mul", [x, inverse]), g.const(1 + g.rng.random(width, np.float32) * 0.1)])


def per_head_norm(reciprocal: bool = False) -> onnx.ModelProto:
    """Qwen3: q and k normalized per head (over head_dim only) before attention."""
    g = Graph(9)
    heads, head_dim, dim, tokens = 4, 8, 32, 5
    q, k, v = [_heads(g, g.linear("input", dim, dim), tokens, heads, head_dim) for _ in range(3)]
    q, k = _rms(g, q, head_dim, reciprocal), _rms(g, k, head_dim, reciprocal)
    out = g.op("Reshape", [g.op("Transpose", [_attention_tail(g, q, k, v, head_dim)], perm=[0, 2, 1, 3]),
                           g.ints([1, tokens, dim])])
    out = g.op("Add", ["input", g.linear(out, dim, dim)])
    return g.model([tensor("input", [1, tokens, dim])], [tensor(out, [1, tokens, dim])])


def per_head_norm_reciprocal() -> onnx.ModelProto:
    """Qwen3 through the dynamo exporter: the per-head norm's 1 / sqrt as Reciprocal."""
    return per_head_norm(reciprocal=True)


def dynamic_batch_tokens() -> onnx.ModelProto:
    """jax2onnx: a dynamic batch folded with the tokens ([B * N, D]) around every projection,
    then split into [B, N, heads, head_dim]."""
    g = Graph(19)
    heads, head_dim, dim, tokens = 4, 8, 32, 5
    flat = g.op("Reshape", ["input", g.ints([-1, dim])])
    q, k, v = [g.op("Transpose", [g.op("Reshape", [g.op("Gemm", [flat, g.weight(dim, dim), g.const(
        g.rng.random(dim, np.float32) * 0.1)]), g.ints([-1, tokens, heads, head_dim])])], perm=[0, 2, 1, 3])
        for _ in range(3)]
    out = g.op("Reshape", [g.op("Transpose", [_attention_tail(g, q, k, v, head_dim)], perm=[0, 2, 1, 3]),
                           g.ints([-1, dim])])
    out = g.op("Reshape", [g.op("Gemm", [out, g.weight(dim, dim), g.const(np.zeros(dim, np.float32))]),
                           g.ints([-1, tokens, dim])])
    out = g.op("Add", ["input", out])
    return g.model([tensor("input", ["B", tokens, dim])], [tensor(out, ["B", tokens, dim])])


def onnx_attention_gqa() -> onnx.ModelProto:
    """torch.onnx dynamo at opset 23+: the standard Attention op, grouped-query (4 query
    heads share 2 key/value heads)."""
    g = Graph(10)
    q_heads, kv_heads, head_dim, dim, tokens = 4, 2, 8, 32, 5
    q = _heads(g, g.linear("input", dim, q_heads * head_dim), tokens, q_heads, head_dim)
    k = _heads(g, g.linear("input", dim, kv_heads * head_dim), tokens, kv_heads, head_dim)
    v = _heads(g, g.linear("input", dim, kv_heads * head_dim), tokens, kv_heads, head_dim)
    attended = g.op("Attention", [q, k, v], scale=head_dim ** -0.5)
    out = g.op("Reshape", [g.op("Transpose", [attended], perm=[0, 2, 1, 3]), g.ints([1, tokens, dim])])
    out = g.op("Add", ["input", g.linear(out, dim, dim)])
    return g.model([tensor("input", [1, tokens, dim])], [tensor(out, [1, tokens, dim])], opset=23)


def onnx_attention_3d() -> onnx.ModelProto:
    """The standard Attention op on [batch, sequence, heads * head_dim] with q_num_heads."""
    g = Graph(11)
    heads, dim, tokens = 4, 32, 5
    q, k, v = [g.linear("input", dim, dim) for _ in range(3)]
    attended = g.op("Attention", [q, k, v], q_num_heads=heads, kv_num_heads=heads)
    out = g.op("Add", ["input", g.linear(attended, dim, dim)])
    return g.model([tensor("input", [1, tokens, dim])], [tensor(out, [1, tokens, dim])], opset=23)


def ort_optimized_bert() -> onnx.ModelProto:
    """onnxruntime's transformer optimizer on the BERT fixture: com.microsoft Attention,
    SkipLayerNormalization, BiasGelu."""
    from onnxruntime.transformers.optimizer import optimize_model
    model = optimize_model(str(MODELS / "transformers" / "bert_tiny.onnx"), model_type="bert", num_heads=4,
                           hidden_size=32, opt_level=0, use_gpu=False)
    with tempfile.TemporaryDirectory() as scratch:
        model.save_model_to_file(str(Path(scratch) / "m.onnx"))  # adds the com.microsoft opset import
        return onnx.load(str(Path(scratch) / "m.onnx"))


def multi_head_attention() -> onnx.ModelProto:
    """onnxruntime's com.microsoft MultiHeadAttention on projected q, k, v."""
    g = Graph(12)
    heads, dim, tokens = 4, 32, 5
    q, k, v = [g.linear("input", dim, dim) for _ in range(3)]
    attended = g.op("MultiHeadAttention", [q, k, v], domain="com.microsoft", num_heads=heads)
    out = g.op("Add", ["input", g.linear(attended, dim, dim)])
    return g.model([tensor("input", [1, tokens, dim])], [tensor(out, [1, tokens, dim])],
                   extra_opsets=[("com.microsoft", 1)])


def keras_attention() -> onnx.ModelProto:
    """tf2onnx of Keras MultiHeadAttention (EinsumDense): projection weights reshaped in the
    graph from a shape read off another constant, heads folded into the batch with a
    ReduceProd-computed shape, and the output projection left as an Einsum."""
    g = Graph(17)
    heads, head_dim, dim, tokens = 4, 8, 32, 5
    carrier = g.const(np.zeros((1, 1, heads, head_dim, dim), np.float32), "kernel_shape")  # only its shape is read
    size = g.op("ReduceProd", [g.op("Gather", [g.op("Shape", [carrier]), g.ints([2, 3])], axis=0)], keepdims=1)
    flat = g.op("Reshape", ["input", g.ints([-1, dim])])

    def project() -> str:
        weight = g.op("Reshape", [g.weight(heads * head_dim, dim), g.op("Concat", [size, g.ints([dim])], axis=0)])
        y = g.op("Gemm", [flat, weight], transB=1)
        y = g.op("Reshape", [y, g.ints([1, tokens, heads, head_dim])])
        y = g.op("Transpose", [y], perm=[0, 2, 1, 3])  # [1, heads, tokens, head_dim]
        shape = g.op("Shape", [y])
        batch_heads = g.op("ReduceProd", [g.op("Gather", [shape, g.ints([0, 1])], axis=0)], keepdims=1)
        rest = g.op("Gather", [shape, g.ints([2, 3])], axis=0)
        return g.op("Reshape", [y, g.op("Concat", [batch_heads, rest], axis=0)])  # [heads, tokens, head_dim]

    q, k, v = project(), project(), project()
    scores = g.op("Softmax", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 2, 1])])], axis=-1)
    attended = g.op("Reshape", [g.op("MatMul", [scores, v]), g.ints([1, heads, tokens, head_dim])])
    output = g.const((g.rng.standard_normal((heads, head_dim, dim)) * 0.2).astype(np.float32), "w")
    out = g.op("Einsum", [attended, output], equation="bhtd,hde->bte")
    out = g.op("Add", ["input", out])
    return g.model([tensor("input", [1, tokens, dim])], [tensor(out, [1, tokens, dim])], opset=13)


# --- 7. normalizations over channels that are prunable, inexactly ------------------------------

def global_response_norm() -> onnx.ModelProto:
    """ConvNeXt V2's GRN inside the MLP: channels normalized by their mean over channels."""
    g = Graph(13)
    dim, hidden = 16, 32
    h = g.op("Gelu", [g.linear("input", dim, hidden)])
    norm = g.op("ReduceL2", [h, g.ints([1, 2])], keepdims=1)
    ratio = g.op("Div", [norm, g.op("Add", [g.op("ReduceMean", [norm, g.ints([-1])], keepdims=1),
                                            g.const(np.array(1e-6, np.float32))])])
    h = g.op("Add", [g.op("Add", [g.op("Mul", [g.const(g.rng.random(hidden, np.float32)), g.op("Mul", [h, ratio])]),
                                  g.const(g.rng.random(hidden, np.float32) * 0.1)]), h])
    out = g.op("Add", ["input", g.linear(h, hidden, dim)])
    return g.model([tensor("input", [1, 4, 4, dim])], [tensor(out, [1, 4, 4, dim])], opset=20)


def weight_standardization() -> onnx.ModelProto:
    """timm's BiT StdConv: each conv weight standardized in the graph by a BatchNormalization
    in training mode over its input channels: removing an input channel changes the others."""
    g = Graph(14)
    x = "input"
    for c_in, c_out in ((3, 16), (16, 16)):
        weight = g.weight(c_out, c_in, 3, 3)
        flat = g.op("Reshape", [weight, g.ints([1, c_out, -1])])
        standardized = g.op("BatchNormalization", [flat, g.const(np.ones(c_out, np.float32)),
                                                   g.const(np.zeros(c_out, np.float32)),
                                                   g.const(np.zeros(c_out, np.float32)),
                                                   g.const(np.ones(c_out, np.float32))], outputs=3,
                                    training_mode=1)[0]
        x = g.op("Relu", [g.op("Conv", [x, g.op("Reshape", [standardized, g.ints([c_out, c_in, 3, 3])])],
                               pads=[1, 1, 1, 1])])
    y = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    y = g.op("Gemm", [y, g.weight(16, 4), g.const(np.zeros(4, np.float32))])
    return g.model([tensor("input", [1, 3, 8, 8])], [tensor(y, [1, 4])], opset=15)


def local_functions() -> onnx.ModelProto:
    """jax2onnx's @onnx_function: the network inside a local function, whose opset import
    of its own domain disagrees with the model's."""
    g = Graph(15)
    body = Graph(16)
    y = body.op("Relu", [body.conv("x", 3, 16, pads=[1, 1, 1, 1])])
    y = body.op("Relu", [body.conv(y, 16, 16, pads=[1, 1, 1, 1])])
    nodes = [helper.make_node("Constant", [], [t.name], value=t) for t in body.initializers] + body.nodes
    function = helper.make_function("custom.Block", "Block", ["x"], [y], nodes,
                                    [helper.make_opsetid("", 17), helper.make_opsetid("custom.Block", 17)])
    out = g.op("Block", ["input"], domain="custom.Block")
    out = g.op("Flatten", [g.op("GlobalAveragePool", [out])], axis=1)
    out = g.op("Gemm", [out, g.weight(16, 4), g.const(np.zeros(4, np.float32))])
    model = g.model([tensor("input", [1, 3, 8, 8])], [tensor(out, [1, 4])], extra_opsets=[("custom.Block", 1)])
    model.functions.append(function)
    return model


def ort_fused_gemm_names() -> onnx.ModelProto:
    """A graph onnxruntime optimized and saved: its MatMul+Add fusion left Reshape -> Gemm ->
    Reshape with shape initializers named gemm_input_shape, gemm_output_shape(_token_N);
    static shapes and a MatMul without a bias after it (which compensation gives one)."""
    g = Graph(17)
    x = g.op("Reshape", ["input", g.ints([8, 16])])
    named = {"gemm_input_shape": [8, 16], "gemm_output_shape": [1, 8, 32], "gemm_output_shape_token_0": [1, 8, 16]}
    g.initializers += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in named.items()]
    h = g.op("Gemm", [x, g.weight(16, 32), g.const(np.zeros(32, np.float32))])
    h = g.op("Relu", [g.op("Reshape", [h, "gemm_output_shape"])])
    y = g.op("MatMul", [h, g.weight(32, 16)])
    y = g.op("Add", [g.op("Reshape", [g.op("Reshape", [y, g.ints([8, 16])]), "gemm_output_shape_token_0"]), "input"])
    return g.model([tensor("input", [1, 8, 16])], [tensor(y, [1, 8, 16])])


BUILDERS = {name: value for name, value in globals().items()
            if callable(value) and value.__module__ == __name__ and value.__doc__
            and name not in ("Graph", "tensor", "layer_norm", "main") and not name.startswith("_")}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, build in BUILDERS.items():
        model = build()
        onnx.checker.check_model(model)
        path = OUT / f"{name}.onnx"
        onnx.save(model, str(path))
        print(f"{path.name:32} {path.stat().st_size / 1024:7.1f}K  {build.__doc__.splitlines()[0]}")


if __name__ == "__main__":
    main()
