"""Every shipped fixture at ratio 0.4: valid, runs, same interface, smaller as promised."""

import numpy as np
import onnx
import pytest
from conftest import MODELS
from oracle import random_feeds, run

import spa
from spa.latency import block_size

FIXTURES = sorted(MODELS.glob("*.onnx"), key=lambda p: p.name)
RATIO = 0.4


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_fixture_prunes_to_a_valid_smaller_model(path):
    original = onnx.load(str(path))
    result = spa.prune(str(path), RATIO, round_to=1)
    pruned = result.model
    onnx.checker.check_model(pruned, full_check=True)
    assert [(i.name, i.type) for i in pruned.graph.input] == [(i.name, i.type) for i in original.graph.input]
    assert [(o.name, o.type) for o in pruned.graph.output] == [(o.name, o.type) for o in original.graph.output]
    feeds = random_feeds(original)
    for want, got in zip(run(original, feeds), run(pruned, feeds)):
        assert got.shape == want.shape and np.isfinite(got).all()
    params = result.report["after"]["params"] / result.report["before"]["params"]
    # Each prunable weight loses about RATIO of its rows and often of its columns too.
    assert (1 - RATIO) ** 2 - 0.05 <= params <= 1 - RATIO / 2, params


@pytest.mark.parametrize("path", FIXTURES[:4], ids=lambda p: p.stem)
def test_default_round_to_keeps_multiples_of_the_channel_block(path):
    """--round-to auto: Conv channels in multiples of onnxruntime's NCHWc block (16 with AVX-512)."""
    result = spa.prune(str(path), RATIO)
    for group in result.report["groups"]:
        if group["removed"]:
            assert group["kept"] % block_size() == 0, group
