"""One small model per class of real-world export spa once failed on (models/regression,
built by tools/regression_models.py), and every committed model, through the corpus runner
(tools/corpus_check.py): pruned into a valid model, and exact under the zero-group oracle."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import REGRESSION, ROOT

import spa
import spa.api
from spa.errors import SpaError

sys.path.insert(0, str(ROOT / "tools"))
import corpus_check  # noqa: E402

RATIO = 0.5


def _entry(path: Path) -> corpus_check.Entry:
    return corpus_check.Entry(path.stem, path, None, {"family": path.parent.name})


def _check(path: Path, *extra: str) -> corpus_check.Row:
    return corpus_check.check_entry(_entry(path), RATIO, runs=0, extra=["--round-to", "1", *extra], in_process=True)


def _groups(path: Path, kind: str | None = None) -> list:
    return [g for g in spa.inspect(str(path)).groups if kind is None or g.kind == kind]


ALL_COMMITTED = sorted(p for p in (ROOT / "models").rglob("*.onnx"))


@pytest.mark.parametrize("path", ALL_COMMITTED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_runner_prunes_and_oracle_is_exact(path):
    row = _check(path)
    assert row.outcome in ("valid", "nothing"), (row.outcome, row.message)
    assert not row.oracle.startswith(("FAIL", "CRASH", "refused")), (row.oracle, row.oracle_problems)
    if row.outcome == "valid":
        assert row.params_kept < 1 and row.macs_kept <= 1


def test_uniform_constants_shared_by_the_exporter_do_not_couple_layers():
    """Class 1: every layer its own MLP group, though one zero bias serves them all."""
    path = REGRESSION / "shared_uniform_constants.onnx"
    mlp = [g for g in _groups(path, "mlp") if g.size == 32]
    assert len(mlp) == 2 and all(g.prunable and g.exact and not g.shared for g in mlp)
    result = spa.prune(str(path), RATIO, round_to=1)
    names = [t.name for t in result.model.graph.initializer]
    assert not any("__spa_copy" in name for name in names)  # equal copies are shared again
    assert result.report["after"]["params"] < result.report["before"]["params"]


def test_weights_shared_for_real_stay_coupled_and_are_named():
    path = REGRESSION / "tied_weight.onnx"
    [mlp] = [g for g in _groups(path, "mlp") if g.size == 32]
    assert mlp.prunable and mlp.shared and all(count == 2 for count in mlp.shared.values())
    assert "coupled through shared" in mlp.describe()


def test_computed_padding_keeps_channels_prunable_and_counts_macs():
    """Class 2: pads computed from the input size (TF "same") and the F.pad reorder idiom."""
    path = REGRESSION / "computed_same_padding.onnx"
    channels = _groups(path, "channels")
    assert len(channels) == 3 and all(g.prunable and g.exact for g in channels)
    report = spa.prune(str(path), RATIO, round_to=1).report
    assert report["before"]["macs"] > 0 and 0 < report["after"]["macs"] < report["before"]["macs"]


def test_paddle_open_dims_and_dead_channels():
    """Class 3: a -1 batch, '?' dims, biases through Identity(Constant), denormal weights."""
    path = REGRESSION / "paddle_style.onnx"
    assert all(g.prunable and g.exact for g in _groups(path, "channels"))
    scores = spa.prune(str(path), RATIO, round_to=1).report["groups"]
    second = next(g for g in scores if g["size"] == 16 and g["removed"] and 0 in g["removed"])
    assert {0, 1, 2} <= set(second["removed"])  # the denormal channels rank lowest, not tied with zeros


@pytest.mark.parametrize("name", ["qdq_per_channel", "qoperator"])
def test_quantized_models_prune(name):
    """Class 4: Q/DQ pairs and QLinear ops follow their channels; per-channel scales too."""
    path = REGRESSION / f"{name}.onnx"
    groups = _groups(path)
    assert sum(g.prunable and g.exact for g in groups) >= 5
    report = spa.prune(str(path), RATIO, round_to=1).report
    assert report["after"]["params"] < 0.7 * report["before"]["params"]
    with pytest.raises(SpaError, match=r"can score none .*is quantized \((DequantizeLinear|QLinearConv) "):
        spa.prune(str(path), RATIO, criterion="obs", round_to=1)  # obs compensates float weights only: it says so


@pytest.mark.parametrize("name", ["token_types", "dynamic_image"])
def test_synthetic_inputs_the_model_takes(name):
    """Class 5: token types within their 2-row table; an image size the strided convs take."""
    result = spa.prune(str(REGRESSION / f"{name}.onnx"), RATIO, round_to=1)
    assert result.channels_removed > 0


def test_synthetic_calibration_at_a_size_the_model_takes():
    """Class 5: data-free obs calibrates on synthetic images; where the first size it draws
    (16) is one the model rejects, it draws them again at a size the model runs."""
    result = spa.prune(str(REGRESSION / "open_size_skip.onnx"), RATIO, criterion="obs", round_to=1)
    assert result.channels_removed > 0
    assert result.report["calibration"]["samples"] == spa.api.SYNTHETIC_SAMPLES
    assert result.report["calibration"]["open_size"] == 64  # 16 and 8 fail


def test_scalar_inputs_keep_their_value_through_calibration():
    """Class 5: a scalar input (flax's `deterministic`) has no batch axis: data-free obs
    feeds its one value to every calibration batch instead of refusing the model."""
    result = spa.prune(str(REGRESSION / "scalar_flag.onnx"), RATIO, criterion="obs", round_to=1)
    assert result.channels_removed > 0


@pytest.mark.parametrize("name, heads, head_dim", [("fused_qkv_unbind", 4, 8), ("per_head_norm", 4, 8),
                                                   ("onnx_attention_gqa", 2, 8), ("onnx_attention_3d", 4, 8),
                                                   ("multi_head_attention", 4, 8), ("ort_optimized_bert", 4, 8),
                                                   ("keras_attention", 4, 8), ("per_head_norm_reciprocal", 4, 8),
                                                   ("dynamic_batch_tokens", 4, 8)])
def test_attention_heads_are_seen(name, heads, head_dim):
    """Class 6: fused q/k/v unbinding, per-head norms, the Attention op, onnxruntime's fused
    attention ops and Keras MultiHeadAttention through tf2onnx all give one exact heads
    group per layer."""
    found = _groups(REGRESSION / f"{name}.onnx", "heads")
    assert found and all(g.size == heads and g.head_dim == head_dim and g.prunable and g.exact for g in found)


@pytest.mark.parametrize("name, attribute", [("onnx_attention_3d", "q_num_heads"),
                                             ("multi_head_attention", "num_heads"),
                                             ("ort_optimized_bert", "num_heads")])
def test_head_count_attributes_follow(name, attribute):
    model = spa.prune(str(REGRESSION / f"{name}.onnx"), RATIO, round_to=1).model
    counts = [a.i for n in model.graph.node for a in n.attribute if a.name == attribute]
    assert counts and all(count == 2 for count in counts)


def test_a_mean_over_channels_keeps_its_divisor():
    """Class 7: ConvNeXt V2's GRN divides each channel by the mean over channels of their
    norms. The removed channels' norms are 0 there, so the MLP is exact once the mean keeps
    its original divisor (the rewrite scales it by kept / original channels)."""
    path = REGRESSION / "global_response_norm.onnx"
    [mlp] = [g for g in _groups(path, "mlp") if g.size == 32]
    assert mlp.prunable and mlp.exact
    pruned = spa.prune(str(path), RATIO, round_to=1).model  # verified against the zeroed model
    [scale] = [t for t in pruned.graph.initializer if "_kept_share" in t.name]
    assert onnx.numpy_helper.to_array(scale) == pytest.approx(16 / 32)
    assert _check(path).oracle.startswith("exact 1 groups")


def test_weight_standardization_is_not_exact_over_input_channels():
    """BiT's StdConv: the channels a standardized conv reads are never called exact."""
    groups = {g.name: g for g in _groups(REGRESSION / "weight_standardization.onnx", "channels")}
    assert not any(g.prunable and g.exact and "Conv_17" in g.name for g in groups.values())


def test_local_functions_are_inlined():
    assert sum(g.prunable and g.exact for g in _groups(REGRESSION / "local_functions.onnx")) == 2


def test_macs_count_attention_at_the_verified_shapes():
    """Class 8: activation x activation MatMuls of a dynamic-sequence model are counted at the
    input shapes the model was run with, not skipped: at the static model's shapes, the
    dynamic export counts exactly what the static one does."""
    from spa.metrics import count_macs
    dynamic = onnx.load(str(ROOT / "models" / "transformers" / "bert_tiny_dynamic.onnx"))
    static = onnx.load(str(ROOT / "models" / "transformers" / "bert_tiny.onnx"))
    feeds = {name: np.ones((1, 12), np.int64) for name in ("input_ids", "attention_mask")}
    assert count_macs(dynamic, feeds=feeds) == count_macs(static) > 0
    report = spa.prune(str(ROOT / "models" / "transformers" / "bert_tiny_dynamic.onnx"), 0.0, round_to=1).report
    assert report["before"]["macs"] > count_macs(dynamic)  # the verified batch and sequence, not 1 x 1


@pytest.mark.parametrize("path", ALL_COMMITTED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_preparation_is_idempotent(path):
    """The oracle zeroes the prepared model by the names `inspect` reports: preparing it
    again must change nothing."""
    once = spa.api.prepared_model(str(path))
    twice = spa.api.prepared_model(once)
    assert sorted(t.name for t in twice.graph.initializer) == sorted(t.name for t in once.graph.initializer)
    assert sorted(n.op_type for n in twice.graph.node) == sorted(n.op_type for n in once.graph.node)


def test_a_graph_onnxruntime_optimized_takes_compensation(tmp_path):
    """onnxruntime's MatMul+Add fusion names the shapes it adds among node names only: in a
    graph it optimized before (gemm_input_shape, ...), a session that fuses again fails, as
    a calibration segment with concrete shapes or the MatMul compensation gives a bias did.
    Those initializers are renamed: obs prunes it, and the result loads at the default level."""
    import onnxruntime as ort
    path = REGRESSION / "ort_fused_gemm_names.onnx"
    result = spa.prune(path, 0.5, criterion="obs", round_to=1, output=tmp_path / "pruned.onnx")
    assert any(g["removed"] for g in result.report["groups"])
    ort.InferenceSession(str(tmp_path / "pruned.onnx"), providers=["CPUExecutionProvider"])  # ORT_ENABLE_ALL
    assert not {t.name for t in result.model.graph.initializer} & {"gemm_input_shape", "gemm_output_shape"}
