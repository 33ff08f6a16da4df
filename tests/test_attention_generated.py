"""Generated attention blocks: valid ONNX, heads found by the analysis, exact pruning."""
import numpy as np
import onnx
from attngen import attention_models
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st
from oracle import check_oracle, random_feeds, run

import spa


@settings(max_examples=30, deadline=None)
@given(attention_models())
def test_generated_attention_model_is_valid(model: onnx.ModelProto) -> None:
    note(model.doc_string)
    onnx.checker.check_model(model, full_check=True)
    for value, array in zip(model.graph.output, run(model, random_feeds(model))):
        assert list(array.shape) == [d.dim_value for d in value.type.tensor_type.shape.dim]
        assert np.isfinite(array).all() and np.abs(array).max() < 100, value.name


@settings(max_examples=100, deadline=None)
@given(attention_models())
def test_heads_are_found(model: onnx.ModelProto) -> None:
    """Every layout gives prunable heads, except multi-query attention (one key/value head
    read by every query head): spa keeps those whole, a known limitation."""
    note(model.doc_string)
    assume("kv_heads=1 " not in model.doc_string)
    heads = [g for g in spa.inspect(model).to_json()["groups"] if g["kind"] == "heads"]
    assert heads, f"no group of kind 'heads' in: {model.doc_string}"
    kept = [f"{g['description']}: {g['reason']}" for g in heads if not g["prunable"]]
    assert not kept, f"heads kept whole in: {model.doc_string}\n" + "\n".join(kept)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(attention_models(), st.sampled_from([0.25, 0.5, 0.75]), st.integers(0, 9))
def test_oracle_on_generated_attention(model: onnx.ModelProto, ratio: float, seed: int) -> None:
    note(model.doc_string)
    check_oracle(model, ratio=ratio, seed=seed)
