"""Verification with two onnxruntime sessions, the input's and the written file's: the
zeroed model is a second run of the input's session (its weights fed as inputs), and a
wrong cut is still caught on every route the zeroed model can take."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from criteria_helpers import duplicate_model, stacked_model
from onnx import helper, numpy_helper

import spa
import spa.io.runtime
import spa.step
import spa.verify
from spa.analyze.prepare import prepare
from spa.errors import SpaError
from spa.io.load import import_graph, load_model
from spa.repair.compensate import zero_channels
from spa.step import analyze_loaded


@pytest.fixture
def sessions(monkeypatch) -> list[str]:
    """What every onnxruntime session spa makes is made from, by type name."""
    made: list[str] = []
    real = spa.io.runtime.session

    def counted(model, *args, **kwargs):
        made.append(type(model).__name__)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(spa.io.runtime, "session", counted)
    return made


def _shift_rewrite(monkeypatch) -> None:
    """The rewrite cuts the channel next to each chosen one."""
    real = spa.step.rewrite

    def shifted(analysis, removed):
        sizes = {g.id: g.size for g in analysis.groups}
        real(analysis, {gid: sorted((c + 1) % sizes[gid] for c in channels) for gid, channels in removed.items()})

    monkeypatch.setattr(spa.step, "rewrite", shifted)


def _saved(tmp_path, model: onnx.ModelProto) -> str:
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return str(path)


def test_a_written_prune_makes_two_sessions(tmp_path, sessions):
    """The input's session (from the file's own bytes) and the written file's; the zeroed
    model is a run of the first."""
    result = spa.prune(_saved(tmp_path, stacked_model()), 0.5, round_to=1, output=tmp_path / "out.onnx")
    assert result.channels_removed > 0
    assert sessions == ["bytes", "PosixPath"]


@pytest.mark.parametrize("kept_bytes, expected", [(256 << 20, ["bytes", "PosixPath"]),
                                                   (0, ["bytes", "PosixPath", "ModelProto"])])
def test_with_calibration_a_small_input_keeps_its_session_for_the_check(tmp_path, monkeypatch, sessions,
                                                                         kept_bytes, expected):
    """With data, a small input's session lives through the calibration passes and runs the
    zeroed (compensated) model at the end; past KEPT_SESSION_BYTES it is dropped, and the
    zeroed model gets a session of its own."""
    monkeypatch.setattr("spa.pipeline.KEPT_SESSION_BYTES", kept_bytes)
    np.savez(tmp_path / "calib.npz", input=np.random.default_rng(0).standard_normal((8, 1, 6, 6)).astype(np.float32))
    result = spa.prune(_saved(tmp_path, stacked_model()), 0.5, round_to=1, criterion="obs",
                       calib=tmp_path / "calib.npz", output=tmp_path / "out.onnx")
    assert result.channels_removed > 0
    assert sessions == expected


def test_a_wrong_cut_is_caught_on_the_input_session(tmp_path, monkeypatch, sessions):
    _shift_rewrite(monkeypatch)
    with pytest.raises(SpaError, match="differs from the zeroed model"):
        spa.prune(_saved(tmp_path, stacked_model()), 0.5, round_to=1, output=tmp_path / "out.onnx")
    assert sessions[0] == "bytes" and len(sessions) == 2  # no session of a zeroed model of its own
    assert not (tmp_path / "out.onnx").exists()


def _shared_bias_model() -> onnx.ModelProto:
    """conv1 and conv2 (1 -> 4 each) share one zero bias: preparation gives each its own
    copy, so the step's graph is not the input's graph with other values."""
    rng = np.random.default_rng(3)
    weights = [numpy_helper.from_array(rng.normal(size=(4, 1, 3, 3)).astype(np.float32), f"w{i}") for i in (1, 2)]
    bias = numpy_helper.from_array(np.zeros(4, np.float32), "shared_bias")
    head = numpy_helper.from_array(rng.normal(size=(2, 8, 1, 1)).astype(np.float32), "w3")
    nodes = [helper.make_node("Conv", ["input", "w1", "shared_bias"], ["c1"], name="conv1", pads=[1] * 4),
             helper.make_node("Conv", ["input", "w2", "shared_bias"], ["c2"], name="conv2", pads=[1] * 4),
             helper.make_node("Concat", ["c1", "c2"], ["cat"], name="cat", axis=1),
             helper.make_node("Relu", ["cat"], ["relu"], name="relu"),
             helper.make_node("Conv", ["relu", "w3"], ["output"], name="conv3")]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT,
                                                                              [1, 1, 6, 6])],
                              [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [1, 2, 6, 6])],
                              weights + [bias, head])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_prepared_graph_is_exported_and_still_checked(tmp_path, monkeypatch, sessions):
    """Where preparation changed the graph, the zeroed model is exported and run on its
    own session, and a wrong cut is caught there too."""
    model = _shared_bias_model()
    loaded = load_model(model)
    graph = import_graph(loaded)
    prepare(graph)
    assert spa.verify.zeroed_model(graph, loaded.model).exported is not None
    _shift_rewrite(monkeypatch)
    with pytest.raises(SpaError, match="differs from the zeroed model"):
        spa.prune(_saved(tmp_path, model), 0.5, round_to=1, output=tmp_path / "out.onnx")
    assert len(sessions) == 3  # the input's, the written file's, the zeroed model's


def test_the_zeroed_model_holds_exactly_the_changed_weights():
    """Untouched constants still read the input's tensors and are not fed; a zeroed one is
    fed, and the zeroed model built from the fed weights is the exported graph."""
    loaded = load_model(stacked_model())
    graph = import_graph(loaded)
    prepare(graph)
    assert spa.verify.zeroed_model(graph, loaded.model).weights == {}
    analysis = analyze_loaded(loaded, ())
    group = next(g for g in analysis.groups if g.prunable)
    graph = analysis.state.graph
    zero_channels(graph, group, [0])
    zeroed = spa.verify.zeroed_model(graph, loaded.model)
    assert set(zeroed.weights) == {m.initializer for m in group.members}
    exported = spa.io.export.export(graph, loaded.model)
    feeds = {"input": np.random.default_rng(0).normal(size=(2, 1, 6, 6)).astype(np.float32)}
    dense = spa.io.runtime.WeightedSession(loaded.model, loaded.model.SerializeToString())
    np.testing.assert_allclose(zeroed.outputs(feeds, dense)[0], spa.io.runtime.run(exported, feeds)[0],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(spa.io.runtime.run(zeroed.model(), feeds)[0], spa.io.runtime.run(exported, feeds)[0])


def test_weights_onnxruntime_will_not_take_as_inputs_fall_back(tmp_path, monkeypatch, sessions):
    """If the input's session cannot take weights as inputs, a plain session checks the
    input and the zeroed model gets its own: a wrong cut is still caught."""
    def refused(*args, **kwargs):
        raise RuntimeError("refused")

    monkeypatch.setattr(spa.verify, "WeightedSession", refused)
    _shift_rewrite(monkeypatch)
    with pytest.raises(SpaError, match="differs from the zeroed model"):
        spa.prune(_saved(tmp_path, duplicate_model()), 0.25, round_to=1, output=tmp_path / "out.onnx")
    assert sessions[0] == "ModelProto" and len(sessions) == 3


def test_an_onnxruntime_failure_reads_as_one_line_without_its_source_location():
    """The C++ file, line and signature onnxruntime puts mid-message are cut, so the line
    (300 characters at most) keeps the part that says what was wrong."""
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])], "g",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["N", "M"]) for n in "ab"],
        [helper.make_tensor_value_info("c", onnx.TensorProto.FLOAT, None)]), ir_version=8,
        opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"a": np.ones((2, 16), np.float32), "b": np.ones((2, 32), np.float32)}
    with pytest.raises(SpaError) as error:
        spa.io.runtime.run(model, feeds, "the model")
    message = str(error.value)
    assert "\n" not in message and ".h:" not in message and "onnxruntime::" not in message
    assert "16 by 32" in message, message
