"""A GPT-style decoder-only ONNX model with random weights in external data, of any size.

The graph looks like a PyTorch export (opset 17, IR 8): token Gather + position embedding,
then per layer pre-LayerNorm attention (Q, K, V MatMul + Add, Reshape to heads, Transpose,
scaled causal Softmax attention, Transpose + Reshape back, output projection, residual Add)
and a pre-LayerNorm MLP (MatMul + Add, erf GELU or Relu, MatMul + Add, residual Add); a final
LayerNorm and a separate lm_head MatMul give the logits.

Weights go straight to one `<model>.data` file, one tensor at a time, and the ModelProto only
holds references to them (location, offset, length), so the model may exceed protobuf's 2 GB
limit without ever being in memory whole. hidden 2048, 16 heads, ffn 8192, 12 layers and
vocab 32000 is about 2.9 GB of float32:

    python tools/big_decoder.py /tmp/big/decoder.onnx --layers 12
"""

from __future__ import annotations

import argparse
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

WEIGHT_STD = 0.02
ALIGNMENT = 4096  # external tensors start on page boundaries, so they can be memory-mapped
OPSET, IR_VERSION = 17, 8


class ExportNames:
    """`constant` and `node` for a graph builder holding `nodes`, `initializers` and a
    Counter `_names`: nodes are named as a PyTorch export names them."""

    def constant(self, name: str, values: np.ndarray) -> str:
        """A small tensor kept inside the model (shapes, scalars)."""
        self.initializers.append(numpy_helper.from_array(values, name))
        return name

    def node(self, op: str, scope: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        """Node named like a PyTorch export: /scope/Op, output /scope/Op_output_0."""
        name = f"/{scope}/{op}"
        self._names[name] += 1
        if self._names[name] > 1:
            name = f"{name}_{self._names[name] - 1}"
        output = output or f"{name}_output_0"
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output


@dataclass
class _Builder(ExportNames):
    """Collects nodes and initializers; float weights are appended to `data` as they are made."""

    rng: np.random.Generator
    data: BinaryIO
    location: str  # the .data file name, relative to the model
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)
    weight_bytes: int = 0
    _names: Counter = field(default_factory=Counter)

    def external(self, name: str, values: np.ndarray) -> str:
        """Write `values` to the data file at the next aligned offset; reference it by name."""
        values = np.ascontiguousarray(values, dtype="<f4")
        offset = _aligned(self.data.tell())
        self.data.seek(offset)
        self.data.write(memoryview(values).cast("B"))
        tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=values.shape,
                             data_location=TensorProto.EXTERNAL)
        for key, value in (("location", self.location), ("offset", offset), ("length", values.nbytes)):
            tensor.external_data.add(key=key, value=str(value))
        self.initializers.append(tensor)
        self.weight_bytes += values.nbytes
        return name

    def weight(self, name: str, shape: tuple[int, ...], mean: float = 0.0) -> str:
        """A fresh random tensor, normal(mean, WEIGHT_STD)."""
        values = self.rng.standard_normal(shape, dtype=np.float32) * np.float32(WEIGHT_STD)
        return self.external(name, values + np.float32(mean))


def _aligned(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT


@dataclass(frozen=True)
class Config:
    layers: int
    hidden: int
    heads: int
    ffn: int
    vocab: int
    seq: int = 8
    activation: str = "gelu"  # "gelu" (erf decomposition, as exported from torch) or "relu"

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


def _layer_norm(g: _Builder, x: str, module: str, hidden: int) -> str:
    scale = g.weight(f"{module}.weight", (hidden,), mean=1.0)
    bias = g.weight(f"{module}.bias", (hidden,))
    return g.node("LayerNormalization", module, [x, scale, bias], axis=-1, epsilon=1e-5)


def _linear(g: _Builder, x: str, module: str, c_in: int, c_out: int) -> str:
    """MatMul by a [c_in, c_out] weight, then Add a bias: how torch exports nn.Linear on 3-D input."""
    y = g.node("MatMul", module, [x, g.weight(f"{module}.weight", (c_in, c_out))])
    return g.node("Add", module, [g.weight(f"{module}.bias", (c_out,)), y])


def _split_heads(g: _Builder, x: str, module: str, cfg: Config, perm: list[int]) -> str:
    shape = g.constant(f"{module}.heads_shape", np.array([1, cfg.seq, cfg.heads, cfg.head_dim], np.int64))
    return g.node("Transpose", module, [g.node("Reshape", module, [x, shape])], perm=perm)


def _attention(g: _Builder, x: str, module: str, cfg: Config, mask: str, scale: str) -> str:
    q = _split_heads(g, _linear(g, x, f"{module}.q_proj", cfg.hidden, cfg.hidden), f"{module}.q", cfg, [0, 2, 1, 3])
    k = _split_heads(g, _linear(g, x, f"{module}.k_proj", cfg.hidden, cfg.hidden), f"{module}.k", cfg, [0, 2, 3, 1])
    v = _split_heads(g, _linear(g, x, f"{module}.v_proj", cfg.hidden, cfg.hidden), f"{module}.v", cfg, [0, 2, 1, 3])
    scores = g.node("Add", module, [g.node("Mul", module, [g.node("MatMul", module, [q, k]), scale]), mask])
    context = g.node("MatMul", module, [g.node("Softmax", module, [scores], axis=-1), v])
    merged = g.node("Transpose", module, [context], perm=[0, 2, 1, 3])
    shape = g.constant(f"{module}.merge_shape", np.array([1, cfg.seq, cfg.hidden], np.int64))
    merged = g.node("Reshape", module, [merged, shape])
    return _linear(g, merged, f"{module}.o_proj", cfg.hidden, cfg.hidden)


def _activation(g: _Builder, x: str, module: str, kind: str) -> str:
    if kind == "relu":
        return g.node("Relu", module, [x])
    # torch's erf GELU export: x * 0.5 * (1 + erf(x / sqrt(2)))
    erf = g.node("Erf", module, [g.node("Div", module, [x, "gelu.sqrt2"])])
    return g.node("Mul", module, [g.node("Mul", module, [x, g.node("Add", module, [erf, "gelu.one"])]), "gelu.half"])


def _mlp(g: _Builder, x: str, module: str, cfg: Config) -> str:
    hidden = _activation(g, _linear(g, x, f"{module}.fc1", cfg.hidden, cfg.ffn), f"{module}.act", cfg.activation)
    return _linear(g, hidden, f"{module}.fc2", cfg.ffn, cfg.hidden)


def _block(g: _Builder, x: str, module: str, cfg: Config, mask: str, scale: str) -> str:
    attn = _attention(g, _layer_norm(g, x, f"{module}.ln_1", cfg.hidden), f"{module}.attn", cfg, mask, scale)
    x = g.node("Add", module, [x, attn])
    mlp = _mlp(g, _layer_norm(g, x, f"{module}.ln_2", cfg.hidden), f"{module}.mlp", cfg)
    return g.node("Add", module, [x, mlp])


def _shared_constants(g: _Builder, cfg: Config) -> tuple[str, str]:
    """The causal mask [1, 1, seq, seq], the score scale and the GELU constants."""
    causal = np.triu(np.full((cfg.seq, cfg.seq), -1e4, np.float32), k=1)[None, None]
    mask = g.external("attn.causal_mask", causal)
    scale = g.constant("attn.scale", np.array(1 / math.sqrt(cfg.head_dim), np.float32))
    if cfg.activation == "gelu":
        for name, value in (("gelu.sqrt2", math.sqrt(2)), ("gelu.one", 1.0), ("gelu.half", 0.5)):
            g.constant(name, np.array(value, np.float32))
    return mask, scale


def _build_graph(g: _Builder, cfg: Config) -> onnx.GraphProto:
    mask, scale = _shared_constants(g, cfg)
    tokens = g.node("Gather", "wte", [g.weight("wte.weight", (cfg.vocab, cfg.hidden)), "input_ids"], axis=0)
    x = g.node("Add", "wpe", [tokens, g.weight("wpe.weight", (cfg.seq, cfg.hidden))])
    for layer in range(cfg.layers):
        x = _block(g, x, f"h.{layer}", cfg, mask, scale)
    x = _layer_norm(g, x, "ln_f", cfg.hidden)
    g.node("MatMul", "lm_head", [x, g.weight("lm_head.weight", (cfg.hidden, cfg.vocab))], output="logits")
    return helper.make_graph(
        g.nodes, "main_graph",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, cfg.seq])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, cfg.seq, cfg.vocab])],
        g.initializers,
    )


def write_decoder(path: str | Path, layers: int, hidden: int, heads: int, ffn: int, vocab: int,
                  seq: int = 8, seed: int = 0, activation: str = "gelu") -> int:
    """Write the decoder to `path` and its weights to `<path>.data`; returns the weight bytes."""
    if hidden % heads:
        raise ValueError(f"hidden {hidden} is not a multiple of heads {heads}")
    if activation not in ("gelu", "relu"):
        raise ValueError(f"activation must be gelu or relu, got {activation!r}")
    path = Path(path)
    location = f"{path.name}.data"
    cfg = Config(layers, hidden, heads, ffn, vocab, seq, activation)
    with open(path.parent / location, "wb") as data:
        g = _Builder(np.random.default_rng(seed), data, location)
        graph = _build_graph(g, cfg)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="spa-tools-big-decoder")
    path.write_bytes(model.SerializeToString())  # weights are references: this proto is small
    return g.weight_bytes


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    """The decoder's sizes; the defaults make a model of about 2.7 GB."""
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--ffn", type=int, default=8192)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="the .onnx file; weights go to OUTPUT.data beside it")
    add_size_arguments(parser)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--activation", choices=("gelu", "relu"), default="gelu")
    args = parser.parse_args()

    weight_bytes = write_decoder(args.output, args.layers, args.hidden, args.heads, args.ffn, args.vocab,
                                 args.seq, args.seed, args.activation)
    print(f"wrote {args.output} (+ {args.output.name}.data): {weight_bytes:,} weight bytes "
          f"({weight_bytes / 2**30:.2f} GiB, {weight_bytes // 4:,} float32 values)")


if __name__ == "__main__":
    main()
