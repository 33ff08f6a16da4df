"""A BERT-style encoder ONNX model (transformers BertModel layout) with random weights, no torch.

The graph looks like a legacy PyTorch export of BertModel (opset 17, IR 8, constant-folded, static
shapes): word + token-type + position embeddings and LayerNorm; an extended attention mask
(Unsqueeze, Cast, Sub from 1, Mul by float32's lowest value); per layer Q, K, V MatMul + Add,
Reshape to heads and Transpose, MatMul, Div by sqrt(head_dim), Add mask, Softmax, MatMul,
Transpose + Reshape back, output MatMul + Add, residual Add, LayerNorm (post-norm), then an erf
GELU MLP with residual Add and LayerNorm; a tanh pooler (Gather of token 0, Gemm transB=1).
Outputs last_hidden_state and pooler_output. BERT-base (the defaults: 12 layers, hidden 768, 12
heads, MLP 3072, seq 128) is 109M parameters, about 440 MB, so write it outside the repo:

    python tools/bert_encoder.py /tmp/bert_base.onnx
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from big_decoder import ExportNames  # tools/ is on sys.path when run as a script

WEIGHT_STD = 0.02  # BertConfig.initializer_range
OPSET, IR_VERSION = 17, 8


@dataclass
class _Builder(ExportNames):
    rng: np.random.Generator
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    _names: Counter = field(default_factory=Counter)

    def weight(self, name: str, shape: tuple[int, ...], mean: float = 0.0, std: float = WEIGHT_STD) -> str:
        values = self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std) + np.float32(mean)
        return self.constant(name, values)


@dataclass(frozen=True)
class Config:
    layers: int = 12
    hidden: int = 768
    heads: int = 12
    mlp: int = 3072
    vocab: int = 30522
    seq: int = 128
    batch: int = 1

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def _layer_norm(g: _Builder, x: str, module: str, hidden: int) -> str:
    scale = g.weight(f"{module}.weight", (hidden,), mean=1.0, std=0.1)
    bias = g.weight(f"{module}.bias", (hidden,), std=0.1)
    return g.node("LayerNormalization", module, [x, scale, bias], axis=-1, epsilon=1e-12)


def _linear(g: _Builder, x: str, module: str, c_in: int, c_out: int) -> str:
    """torch's export of nn.Linear on 3-D input: MatMul by the [c_in, c_out] weight, Add the bias."""
    y = g.node("MatMul", module, [x, g.weight(f"{module}.weight", (c_in, c_out))])
    return g.node("Add", module, [g.weight(f"{module}.bias", (c_out,)), y])


def _heads(g: _Builder, x: str, module: str, cfg: Config, perm: list[int]) -> str:
    shape = g.constant(f"{module}.heads_shape", np.array([cfg.batch, cfg.seq, cfg.heads, cfg.head_dim], np.int64))
    return g.node("Transpose", module, [g.node("Reshape", module, [x, shape])], perm=perm)


def _attention(g: _Builder, x: str, module: str, cfg: Config, mask: str) -> str:
    own = f"{module}.self"
    q, k, v = (_heads(g, _linear(g, x, f"{own}.{name}", cfg.hidden, cfg.hidden), f"{own}.{name}", cfg, perm)
               for name, perm in (("query", [0, 2, 1, 3]), ("key", [0, 2, 3, 1]), ("value", [0, 2, 1, 3])))
    scores = g.node("Div", own, [g.node("MatMul", own, [q, k]), f"{own}.scale"])
    g.constant(f"{own}.scale", np.array(math.sqrt(cfg.head_dim), np.float32))
    probs = g.node("Softmax", own, [g.node("Add", own, [scores, mask])], axis=-1)
    context = g.node("Transpose", own, [g.node("MatMul", own, [probs, v])], perm=[0, 2, 1, 3])
    shape = g.constant(f"{own}.merge_shape", np.array([cfg.batch, cfg.seq, cfg.hidden], np.int64))
    context = g.node("Reshape", own, [context, shape])
    out = _linear(g, context, f"{module}.output.dense", cfg.hidden, cfg.hidden)
    return _layer_norm(g, g.node("Add", f"{module}.output", [out, x]), f"{module}.output.LayerNorm", cfg.hidden)


def _gelu(g: _Builder, x: str, module: str) -> str:
    """torch's erf GELU export: x * 0.5 * (1 + erf(x / sqrt(2)))."""
    erf = g.node("Erf", module, [g.node("Div", module, [x, "gelu.sqrt2"])])
    return g.node("Mul", module, [g.node("Mul", module, [x, g.node("Add", module, [erf, "gelu.one"])]), "gelu.half"])


def _layer(g: _Builder, x: str, module: str, cfg: Config, mask: str) -> str:
    x = _attention(g, x, f"{module}.attention", cfg, mask)
    hidden = _gelu(g, _linear(g, x, f"{module}.intermediate.dense", cfg.hidden, cfg.mlp), f"{module}.intermediate")
    out = _linear(g, hidden, f"{module}.output.dense", cfg.mlp, cfg.hidden)
    return _layer_norm(g, g.node("Add", f"{module}.output", [out, x]), f"{module}.output.LayerNorm", cfg.hidden)


def _embeddings(g: _Builder, cfg: Config) -> str:
    words = g.node("Gather", "embeddings.word_embeddings",
                   [g.weight("embeddings.word_embeddings.weight", (cfg.vocab, cfg.hidden)), "input_ids"], axis=0)
    token_types = g.constant("embeddings.token_type_ids", np.zeros((cfg.batch, cfg.seq), np.int64))
    types = g.node("Gather", "embeddings.token_type_embeddings",
                   [g.weight("embeddings.token_type_embeddings.weight", (2, cfg.hidden)), token_types], axis=0)
    positions = g.constant("embeddings.position_ids", np.arange(cfg.seq, dtype=np.int64)[None])
    position = g.node("Gather", "embeddings.position_embeddings",
                      [g.weight("embeddings.position_embeddings.weight", (512, cfg.hidden)), positions], axis=0)
    x = g.node("Add", "embeddings", [g.node("Add", "embeddings", [words, types]), position])
    return _layer_norm(g, x, "embeddings.LayerNorm", cfg.hidden)


def _extended_mask(g: _Builder) -> str:
    """(1 - mask[:, None, None, :]) * finfo(float32).min, as BertModel.get_extended_attention_mask."""
    g.constant("mask.axes", np.array([1, 2], np.int64))
    g.constant("mask.one", np.array(1.0, np.float32))
    g.constant("mask.min", np.array(np.finfo(np.float32).min, np.float32))
    mask = g.node("Cast", "", [g.node("Unsqueeze", "", ["attention_mask", "mask.axes"])], to=TensorProto.FLOAT)
    return g.node("Mul", "", [g.node("Sub", "", ["mask.one", mask]), "mask.min"])


def build_bert(cfg: Config = Config(), seed: int = 0) -> onnx.ModelProto:
    g = _Builder(np.random.default_rng(seed))
    for name, value in (("gelu.sqrt2", math.sqrt(2)), ("gelu.one", 1.0), ("gelu.half", 0.5)):
        g.constant(name, np.array(value, np.float32))
    mask = _extended_mask(g)
    x = _embeddings(g, cfg)
    for layer in range(cfg.layers):
        x = _layer(g, x, f"encoder.layer.{layer}", cfg, mask)
    g.nodes[-1].output[0] = x = "last_hidden_state"
    first = g.node("Gather", "pooler", [x, g.constant("pooler.index", np.array(0, np.int64))], axis=1)
    w = g.weight("pooler.dense.weight", (cfg.hidden, cfg.hidden))  # [out, in], as torch stores it
    pooled = g.node("Gemm", "pooler/dense", [first, w, g.weight("pooler.dense.bias", (cfg.hidden,))], transB=1)
    g.node("Tanh", "pooler/activation", [pooled], output="pooler_output")
    tokens = [cfg.batch, cfg.seq]
    graph = helper.make_graph(
        g.nodes, "main_graph",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, tokens),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, tokens)],
        [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, tokens + [cfg.hidden]),
         helper.make_tensor_value_info("pooler_output", TensorProto.FLOAT, [cfg.batch, cfg.hidden])],
        g.initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                             producer_name="spa-tools-bert-encoder")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path)
    defaults = Config()
    for name in ("layers", "hidden", "heads", "mlp", "vocab", "seq", "batch"):
        parser.add_argument(f"--{name}", type=int, default=getattr(defaults, name))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cfg = Config(args.layers, args.hidden, args.heads, args.mlp, args.vocab, args.seq, args.batch)
    model = build_bert(cfg, args.seed)
    onnx.save(model, args.output)
    params = sum(math.prod(t.dims) for t in model.graph.initializer)
    print(f"wrote {args.output}: {params:,} params, {len(model.graph.node)} nodes")


if __name__ == "__main__":
    main()
