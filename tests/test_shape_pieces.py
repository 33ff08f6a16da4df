"""Reshape shape pieces read from another tensor's static channel axis are frozen to the
pruned size; dynamic sizes (batch) keep being traced."""
import copy
from pathlib import Path

import numpy as np
import onnx
import pytest
from edge_models import (
    reshape_dynamic_size_of_other_tensor,
    reshape_static_size_also_read,
    reshape_static_size_of_other_tensor,
)
from oracle import check_oracle, choose_channels, run, zero_channels

import spa

TRANSFORMER = Path(__file__).parent.parent / "models" / "trained" / "digits_transformer.onnx"
BATCHES = (1, 3, 7)


def _groups(model) -> list[dict]:
    return spa.inspect(model).to_json()["groups"]


def _zeroed_and_pruned(model: onnx.ModelProto, ratio: float, seed: int) -> tuple[onnx.ModelProto, spa.PruneResult]:
    """The oracle's two models: random channels of every prunable exact group zeroed, and
    that model pruned (l2 picks exactly the zeroed channels)."""
    rng = np.random.default_rng(seed)
    zeroed = model
    for group in _groups(model):
        if group["prunable"] and group["exact"]:
            zeroed = zero_channels(zeroed, group, choose_channels(group, ratio, rng))
    return zeroed, spa.prune(copy.deepcopy(zeroed), ratio, criterion="l2", round_to=1, seed=seed)


def _assert_same_at_batches(zeroed: onnx.ModelProto, pruned: onnx.ModelProto, shape: list[int]) -> None:
    rng = np.random.default_rng(5)
    for batch in BATCHES:
        feeds = {"input": rng.standard_normal([batch, *shape]).astype(np.float32)}
        for want, got in zip(run(zeroed, feeds), run(pruned, feeds)):
            assert got.shape == want.shape and got.shape[0] == batch
            np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_dynamic_batch_transformer_heads_are_prunable():
    groups = _groups(str(TRANSFORMER))
    heads = [g for g in groups if g["kind"] == "heads"]
    assert len(heads) == 2 and all(g["prunable"] and g["exact"] for g in heads)
    assert all(g["prunable"] for g in groups if g["kind"] in ("heads", "mlp") and g["size"] != 10)


@pytest.mark.parametrize("ratio", [0.25, 0.5])
def test_dynamic_batch_transformer_oracle(ratio):
    summary = check_oracle(str(TRANSFORMER), ratio=ratio, seed=3)
    assert summary.channels_removed > 0
    zeroed, result = _zeroed_and_pruned(onnx.load(str(TRANSFORMER)), ratio, seed=3)
    heads = [g for g in result.report["groups"] if g["kind"] == "heads"]
    assert all(len(g["removed"]) == int(ratio * 4) for g in heads)
    _assert_same_at_batches(zeroed, result.model, [16, 4])


def test_dynamic_batch_transformer_hidden_prunes_at_any_batch():
    """Pruning the hidden size changes the traced 64 but not the heads' width: the frozen
    piece keeps the attention output at 4 heads x 16."""
    model = onnx.load(str(TRANSFORMER))
    result = spa.prune(model, 0.5, round_to=1, targets=("hidden",))
    onnx.checker.check_model(result.model, full_check=True)
    assert [len(g["removed"]) for g in result.report["groups"] if g["kind"] == "hidden"] == [32]
    for batch in BATCHES:
        feeds = {"input": np.zeros([batch, 16, 4], np.float32)}
        assert run(result.model, feeds)[0].shape == (batch, 10)


def test_static_size_of_other_group_is_frozen():
    model = reshape_static_size_of_other_tensor()
    groups = _groups(model)
    assert [g["prunable"] for g in groups] == [True, True, False]
    check_oracle(model, ratio=0.5, seed=2)
    zeroed, result = _zeroed_and_pruned(model, 0.5, seed=2)
    assert [len(g["removed"]) for g in result.report["groups"]] == [3, 3, 0]
    _assert_same_at_batches(zeroed, result.model, [3, 8, 8])


def test_static_size_read_elsewhere_still_keeps_its_group():
    groups = _groups(reshape_static_size_also_read())
    assert groups[0]["prunable"]
    assert not groups[1]["prunable"] and "ConstantOfShape" in groups[1]["reason"]


def test_dynamic_size_is_never_frozen():
    """Shape(other)[0] is the batch: onnxruntime's auto-merge infers it as 6 (the model only
    runs at N == 6), but a batch axis carries no channels, so the piece stays traced and
    the Reshape's channels are kept whole."""
    groups = _groups(reshape_dynamic_size_of_other_tensor())
    assert not groups[0]["prunable"]
    assert "Reshape 'reshape0': shape element 2 cannot be rewritten" in groups[0]["reason"]
    assert groups[1]["prunable"]
