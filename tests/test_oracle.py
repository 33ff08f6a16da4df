"""The central oracle: pruning zeroed channels gives exactly the zeroed model's outputs."""

import pytest
from conftest import MODELS
from edge_models import EDGE_MODELS
from graphgen import cnn_models
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracle import check_oracle

FIXTURES = sorted(MODELS.glob("*.onnx"))


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_oracle_on_fixture(path):
    summary = check_oracle(str(path), ratio=0.4, seed=1)
    assert summary.channels_removed > 0


@pytest.mark.parametrize("name", sorted(EDGE_MODELS))
def test_oracle_on_edge_model(name):
    check_oracle(EDGE_MODELS[name](), ratio=0.5, seed=2)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cnn_models(max_blocks=8), st.sampled_from([0.25, 0.4, 0.5, 0.75]), st.integers(0, 9))
def test_oracle_on_generated_graph(model, ratio, seed):
    check_oracle(model, ratio=ratio, seed=seed)
