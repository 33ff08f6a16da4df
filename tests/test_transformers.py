"""Transformer exports: heads, MLP neurons and hidden size, exactly and at any length."""
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import TRANSFORMERS
from oracle import check_oracle, run

import spa
from spa.io.inputs import make_inputs

MODELS = sorted(TRANSFORMERS.glob("*.onnx"))
DYNAMIC = [p for p in MODELS if "dynamic" in p.stem]
# model family -> (attention layers, heads per group, query heads per group)
HEADS = {"bert_tiny": (2, 4, 1), "vit_tiny": (2, 4, 1), "gpt2_tiny": (2, 4, 1), "llama_tiny": (2, 2, 2)}


def _family(path: Path) -> str:
    return next(name for name in HEADS if path.stem.startswith(name))


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_oracle_on_heads_and_neurons(path):
    summary = check_oracle(str(path), ratio=0.5, seed=4)
    assert summary.channels_removed > 0


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_heads_are_found_as_heads(path):
    layers, size, shared = HEADS[_family(path)]
    groups = spa.inspect(str(path)).groups
    heads = [g for g in groups if g.kind == "heads"]
    assert len(heads) == layers and all(g.size == size and g.prunable and g.exact for g in heads)
    text = heads[0].describe()
    assert f"{size} heads" in text
    assert (f"shared by {shared} query heads" in text) == (shared > 1)
    assert any(g.kind == "mlp" and g.prunable for g in groups)
    # LayerNorm subtracts the mean: inexact; LLaMA's RMSNorm written out only averages squares
    rms_norm = _family(path) == "llama_tiny"
    assert any(g.kind == "hidden" and g.exact == rms_norm for g in groups)


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.stem)
def test_half_the_heads_and_neurons_gives_a_valid_model(path):
    result = spa.prune(str(path), 0.5, round_to=1)
    onnx.checker.check_model(result.model, full_check=True)
    kinds = {g["kind"] for g in result.report["groups"] if g["removed"]}
    assert kinds == {"heads", "mlp"}
    assert result.report["after"]["macs"] < 0.8 * result.report["before"]["macs"]


@pytest.mark.parametrize("path", DYNAMIC, ids=lambda p: p.stem)
@pytest.mark.parametrize("batch, length", [(1, 3), (2, 7), (3, 16)])
def test_dynamic_axes_still_dynamic(path, batch, length):
    original = onnx.load(str(path))
    pruned = spa.prune(str(path), 0.5, round_to=1).model
    feeds = make_inputs(original, seed=1, dim_values={"batch": batch, "sequence": length})
    for want, got in zip(run(original, feeds), run(pruned, feeds)):
        assert got.shape == want.shape


@pytest.mark.parametrize("path", MODELS[::3], ids=lambda p: p.stem)
def test_hidden_size_prunes_when_asked(path):
    result = spa.prune(str(path), 0.5, round_to=1, targets=("hidden",))
    onnx.checker.check_model(result.model, full_check=True)
    hidden = [g for g in result.report["groups"] if g["kind"] == "hidden"]
    assert hidden and all(len(g["removed"]) == g["size"] // 2 for g in hidden)


def test_external_data_round_trip(tmp_path):
    source = MODELS[0]
    stored = tmp_path / "model.onnx"
    onnx.save(onnx.load(str(source)), str(stored), save_as_external_data=True,
              location="model.onnx.data", size_threshold=0)
    result = spa.prune(stored, 0.5, round_to=1, output=tmp_path / "out.onnx")
    assert len(list(tmp_path.glob("out.onnx.*.data"))) == 1
    in_memory = spa.prune(str(source), 0.5, round_to=1).model
    feeds = make_inputs(in_memory, seed=2)
    written = onnx.load(str(result.written))
    for want, got in zip(run(in_memory, feeds), run(written, feeds)):
        np.testing.assert_array_equal(want, got)


def test_external_data_needs_an_output(tmp_path):
    stored = tmp_path / "model.onnx"
    onnx.save(onnx.load(str(MODELS[0])), str(stored), save_as_external_data=True, location="w.data")
    with pytest.raises(spa.SpaError, match="output"):
        spa.prune(stored, 0.5)


def test_default_rounding_counts_head_width():
    """--round-to 16 rounds widths: a 16-wide head is a multiple of 16 by itself."""
    result = spa.prune(str(MODELS[0].with_name("llama_tiny.onnx")), 0.5, round_to=16)
    heads = [g for g in result.report["groups"] if g["kind"] == "heads"]
    assert heads and all(g["kept"] == 1 for g in heads)
