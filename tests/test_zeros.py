"""Sums over channels (ReduceSum, ReduceMean, a MatMul of two activations) are exact only where the
zeroed model's removed channels are 0: spa/analyze/zeros.py follows where they stop being 0."""
from __future__ import annotations

import numpy as np
import pytest
from graphgen import GraphBuilder, tensor_info
from oracle import check_oracle

import spa


def _chain(g: GraphBuilder, x: str, kind: str) -> str:
    """What stands between the conv making the channels and the sum over them."""
    if kind == "relu":
        return g.op("Relu", [x])
    if kind == "sigmoid":
        return g.op("Sigmoid", [x])
    if kind == "exp":  # a softmax over channels written out
        return g.op("Exp", [x])
    if kind == "add_scalar":
        return g.op("Add", [x, g.constant("one", np.array(1.0, np.float32))])
    if kind == "add_channel_bias":  # sliced with the channels: 0 where they are removed
        return g.op("Add", [x, g.param("bias", [1, 8, 1, 1])])
    if kind == "sigmoid_gate":  # SE-style: a Sigmoid times the zeroed channels is 0
        return g.op("Mul", [g.op("Sigmoid", [x]), g.op("Relu", [x])])
    if kind == "clip_above_zero":
        return g.op("Clip", [x, g.constant("low", np.array(0.1, np.float32)), g.constant("high", np.array(6.0, np.float32))])
    if kind == "clip_relu6":
        return g.op("Clip", [x, g.constant("low", np.array(0.0, np.float32)), g.constant("high", np.array(6.0, np.float32))])
    if kind == "prelu_scalar_slope":  # PRelu(0) = 0 whatever the slope
        return g.op("PRelu", [x, g.constant("slope", np.array(0.1, np.float32))])
    if kind == "max_with_positive":
        return g.op("Max", [x, g.constant("floor", np.array(0.1, np.float32))])
    if kind == "greater_than_negative":  # true, so 1, where the channel is 0
        return g.op("Cast", [g.op("Greater", [x, g.constant("low", np.array(-0.5, np.float32))])], to=1)
    if kind == "equal_to_bias":  # 0 == 0 where both are zeroed: true
        return g.op("Cast", [g.op("Equal", [x, g.param("bias", [1, 8, 1, 1])])], to=1)
    if kind == "pad_with_one":  # shifted by one: the new border is 1 in every channel, removed or not
        return g.op("Pad", [x, g.ints("pads", [0, 0, 1, 1, 0, 0, -1, -1]), g.constant("one", np.array(1.0, np.float32))])
    raise AssertionError(kind)


EXACT = {"relu": True, "sigmoid": False, "exp": False, "add_scalar": False, "add_channel_bias": True,
         "sigmoid_gate": True, "clip_above_zero": False, "clip_relu6": True, "prelu_scalar_slope": True,
         "max_with_positive": False, "greater_than_negative": False, "equal_to_bias": False,
         "pad_with_one": False}


def _summed_model(kind: str, contraction: str):
    """conv -> chain -> t; the channels of t are read by a 1x1 conv and summed over, by a
    ReduceSum or ReduceMean normalizing t, or by the Gram matrix of t (a MatMul of two
    activations)."""
    g = GraphBuilder(seed=3)
    t = _chain(g, g.conv("x", 3, 8, 3), kind)
    if contraction in ("ReduceSum", "ReduceMean"):  # a mean keeps its divisor in the rewrite
        total = (g.op("ReduceSum", [t, g.ints("axes", [1])], keepdims=1) if contraction == "ReduceSum" else
                 g.op("ReduceMean", [t], axes=[1], keepdims=1))  # opset 17: axes an attribute
        read = g.op("Div", [t, g.op("Add", [g.op("Abs", [total]), g.constant("eps", np.array(1.0, np.float32))])])
        outputs = [(g.conv(read, 8, 4, 1), [1, 4, 6, 6])]
    else:
        flat = g.op("Reshape", [t, g.ints("shape", [1, 8, 36])])
        gram = g.op("MatMul", [g.op("Transpose", [flat], perm=[0, 2, 1]), flat])
        outputs = [(g.conv(t, 8, 4, 1), [1, 4, 6, 6]), (gram, [1, 36, 36])]
    return g.build([tensor_info("x", [1, 3, 6, 6])], [tensor_info(name, shape) for name, shape in outputs])


@pytest.mark.parametrize("contraction", ["ReduceSum", "ReduceMean", "gram"])
@pytest.mark.parametrize("kind", EXACT)
def test_a_sum_over_channels_is_exact_only_where_removed_channels_are_zero(kind, contraction):
    model = _summed_model(kind, contraction)
    [group] = [g for g in spa.inspect(model).groups if g.prunable]
    assert group.exact == EXACT[kind], group.inexact_reasons
    if not EXACT[kind]:
        assert any("not 0" in reason for reason in group.inexact_reasons)
    summary = check_oracle(model, ratio=0.5, seed=1)  # every exact group: pruned equals zeroed
    assert summary.groups_checked == int(EXACT[kind])


def test_a_one_operand_einsum_passes_zeros_through():
    """Einsum with one operand (a transpose): its channels stay 0, so the sum is exact."""
    g = GraphBuilder(seed=5)
    t = g.op("Einsum", [g.op("Relu", [g.conv("x", 3, 8, 3)])], equation="nchw->nhwc")
    total = g.op("ReduceSum", [t, g.ints("axes", [3])], keepdims=1)
    y = g.op("Einsum", [g.op("Div", [t, g.op("Add", [g.op("Abs", [total]), g.constant("one", np.array(1.0, np.float32))])]),
                        g.param("w", [8, 4])], equation="nhwc,cd->nhwd")
    model = g.build([tensor_info("x", [1, 3, 6, 6])], [tensor_info(y, [1, 6, 6, 4])])
    assert [g.exact for g in spa.inspect(model).groups if g.prunable] == [True]
    assert check_oracle(model, ratio=0.5, seed=1).groups_checked == 1
