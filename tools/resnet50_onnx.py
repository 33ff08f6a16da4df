"""A torchvision-ResNet-50-shaped ONNX model with random weights, built with onnx.helper only.

The graph looks like a legacy PyTorch export (opset 17, IR 8) with BatchNorm folded into the
convolutions: every Conv has a bias, residuals are Add + Relu, the head is GlobalAveragePool,
Flatten and Gemm(2048 -> 1000, transB=1). Weights are He-normal, biases small and random.
About 25.5M parameters, 100 MB, so write it outside the repo:

    python tools/resnet50_onnx.py /tmp/resnet50.onnx
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))  # (bottleneck width, blocks)
EXPANSION = 4
STEM_WIDTH = 64
CLASSES = 1000
BIAS_STD = 0.01


def _scope(module: str) -> str:
    """PyTorch's node scope of a module path: layer1.0.conv1 -> layer1/layer1.0/conv1."""
    parts = module.split(".")
    return "/".join(f"{prev}.{part}" if part.isdigit() else part for prev, part in zip([""] + parts, parts))


@dataclass
class _Builder:
    """Collects nodes and initializers; names follow torchvision's module names."""

    rng: np.random.Generator
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    initializers: list[onnx.TensorProto] = field(default_factory=list)

    def weight(self, name: str, shape: tuple[int, ...], fan_in: int) -> str:
        values = self.rng.standard_normal(shape, dtype=np.float32) * np.float32(math.sqrt(2.0 / fan_in))
        self.initializers.append(numpy_helper.from_array(values, name))
        return name

    def bias(self, name: str, size: int) -> str:
        values = self.rng.standard_normal(size, dtype=np.float32) * np.float32(BIAS_STD)
        self.initializers.append(numpy_helper.from_array(values, name))
        return name

    def node(self, op: str, scope: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        """Node named like a PyTorch export: /scope/Op, output /scope/Op_output_0."""
        name = f"/{scope}/{op}" if scope else f"/{op}"
        output = output or f"{name}_output_0"
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output

    def conv(self, x: str, module: str, c_in: int, c_out: int, kernel: int, stride: int = 1) -> str:
        """Conv with a folded-BatchNorm bias, 'same' padding."""
        w = self.weight(f"{module}.weight", (c_out, c_in, kernel, kernel), c_in * kernel * kernel)
        b = self.bias(f"{module}.bias", c_out)
        return self.node("Conv", _scope(module), [x, w, b], kernel_shape=[kernel, kernel],
                         strides=[stride, stride], pads=[kernel // 2] * 4, dilations=[1, 1], group=1)

    def relu(self, x: str, scope: str) -> str:
        return self.node("Relu", scope, [x])


def _bottleneck(g: _Builder, x: str, module: str, c_in: int, width: int, stride: int) -> str:
    """1x1 reduce -> 3x3 (stride here) -> 1x1 expand, plus identity or 1x1 downsample shortcut."""
    scope = _scope(module)
    y = g.relu(g.conv(x, f"{module}.conv1", c_in, width, 1), f"{scope}/relu")
    y = g.relu(g.conv(y, f"{module}.conv2", width, width, 3, stride), f"{scope}/relu_1")
    y = g.conv(y, f"{module}.conv3", width, width * EXPANSION, 1)
    shortcut = x
    if stride != 1 or c_in != width * EXPANSION:
        shortcut = g.conv(x, f"{module}.downsample.0", c_in, width * EXPANSION, 1, stride)
    return g.relu(g.node("Add", scope, [y, shortcut]), f"{scope}/relu_2")


def _head(g: _Builder, x: str, c_in: int) -> str:
    pooled = g.node("GlobalAveragePool", "avgpool", [x])
    flat = g.node("Flatten", "", [pooled], axis=1)
    w = g.weight("fc.weight", (CLASSES, c_in), c_in)
    b = g.bias("fc.bias", CLASSES)
    return g.node("Gemm", "fc", [flat, w, b], output="output", alpha=1.0, beta=1.0, transB=1)


def build_resnet50(seed: int = 0, batch: int = 1, image: int = 224) -> onnx.ModelProto:
    """ResNet-50 (torchvision layout, BatchNorm folded) on a batch x 3 x image x image input."""
    g = _Builder(np.random.default_rng(seed))
    x = g.relu(g.conv("input", "conv1", 3, STEM_WIDTH, 7, 2), "relu")
    x = g.node("MaxPool", "maxpool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
               ceil_mode=0, dilations=[1, 1])
    c_in = STEM_WIDTH
    for stage, (width, blocks) in enumerate(STAGES, start=1):
        for block in range(blocks):
            stride = 2 if stage > 1 and block == 0 else 1
            x = _bottleneck(g, x, f"layer{stage}.{block}", c_in, width, stride)
            c_in = width * EXPANSION
    _head(g, x, c_in)
    graph = helper.make_graph(
        g.nodes, "main_graph",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, image, image])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, CLASSES])],
        g.initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def count_params(model: onnx.ModelProto) -> int:
    return sum(math.prod(init.dims) for init in model.graph.initializer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="where to write the .onnx file (about 100 MB)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model = build_resnet50(args.seed)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, args.output)
    print(f"wrote {args.output}: {count_params(model):,} params, {len(model.graph.node)} nodes")


if __name__ == "__main__":
    main()
