"""A ResNeXt-like stack for the grouped-conv width rule of --round-to auto (README, "Speed").

Three residual blocks at 28x28: 1x1 conv 128 -> 256, grouped 3x3 conv in 4 groups of 64,
1x1 conv 256 -> 128, each with bias and Relu, random weights. Writes it to OUT, e.g.

    python tools/resnext_stack.py /tmp/resnext.onnx
    spa prune /tmp/resnext.onnx --ratio 0.4 -o /tmp/resnext.pruned.onnx
    spa bench /tmp/resnext.onnx /tmp/resnext.pruned.onnx --threads 1 --runs 200
"""
from __future__ import annotations

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CHANNELS, WIDTH, GROUPS, SIDE, BLOCKS = 128, 256, 4, 28, 3


def build(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)

    def tensor(name: str, shape: tuple[int, ...], scale: float) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    nodes, initializers, current = [], [], "x"
    for b in range(BLOCKS):
        initializers += [tensor(f"a{b}", (WIDTH, CHANNELS, 1, 1), (2 / CHANNELS) ** 0.5),
                         tensor(f"g{b}", (WIDTH, WIDTH // GROUPS, 3, 3), (2 / (WIDTH // GROUPS * 9)) ** 0.5),
                         tensor(f"c{b}", (CHANNELS, WIDTH, 1, 1), (2 / WIDTH) ** 0.5),
                         tensor(f"ab{b}", (WIDTH,), 0.1), tensor(f"gb{b}", (WIDTH,), 0.1), tensor(f"cb{b}", (CHANNELS,), 0.1)]
        nodes += [helper.make_node("Conv", [current, f"a{b}", f"ab{b}"], [f"A{b}"]),
                  helper.make_node("Relu", [f"A{b}"], [f"RA{b}"]),
                  helper.make_node("Conv", [f"RA{b}", f"g{b}", f"gb{b}"], [f"G{b}"], pads=[1] * 4, group=GROUPS),
                  helper.make_node("Relu", [f"G{b}"], [f"RG{b}"]),
                  helper.make_node("Conv", [f"RG{b}", f"c{b}", f"cb{b}"], [f"C{b}"]),
                  helper.make_node("Add", [f"C{b}", current], [f"S{b}"]),
                  helper.make_node("Relu", [f"S{b}"], [f"y{b}"])]
        current = f"y{b}"
    shape = [1, CHANNELS, SIDE, SIDE]
    graph = helper.make_graph(nodes, "resnext_stack", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(current, TensorProto.FLOAT, shape)], initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


if __name__ == "__main__":
    model = build()
    onnx.checker.check_model(model)
    onnx.save(model, sys.argv[1])
