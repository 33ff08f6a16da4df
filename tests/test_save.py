"""Writing: atomic, never partial, never over the input."""
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from edge_models import conv_transpose

import spa
from spa.errors import SpaError
from spa.io.save import check_writable, save_model


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "out.onnx"

    def broken_write(path, data):
        with open(path, "wb") as handle:
            handle.write(data[:7])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", broken_write)
    with pytest.raises(SpaError, match="No space left"):
        save_model(conv_transpose(), target)
    assert list(tmp_path.iterdir()) == []


def _data_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".data"))


def test_external_data_written_beside_model_under_a_new_name(tmp_path):
    """Each write gets its own data file; the one the previous write made goes after."""
    target = tmp_path / "out.onnx"
    save_model(conv_transpose(), target, external_data=True)
    first = _data_files(tmp_path)
    assert len(first) == 1 and re.fullmatch(r"out\.onnx\.[0-9a-f]{8}\.data", first[0])
    onnx.checker.check_model(str(target))
    save_model(conv_transpose(), target, external_data=True)
    second = _data_files(tmp_path)
    assert len(second) == 1 and second != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"] + second
    onnx.checker.check_model(str(target))


def test_input_is_never_the_output(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"x")
    with pytest.raises(SpaError, match="input"):
        check_writable(tmp_path / "." / "m.onnx", path)


def test_export_writes_large_weights_once_and_exactly():
    """Weights past STUB_BYTES go into the model directly: the same model as
    onnx-graphsurgeon's export, and the graph keeps its values."""
    import onnx_graphsurgeon as gs

    from spa.io.export import STUB_BYTES, export
    rng = np.random.default_rng(0)
    big = rng.standard_normal((STUB_BYTES // 4 // 64 + 1, 64)).astype(np.float32)
    small = rng.standard_normal((64, 3)).astype(np.float32)
    x = gs.Variable("x", np.float32, [2, big.shape[0]])
    hidden, y = gs.Variable("hidden", np.float32), gs.Variable("y", np.float32, [2, 3])
    weight = gs.Constant("big", big)
    nodes = [gs.Node("MatMul", "mm1", inputs=[x, weight], outputs=[hidden]),
             gs.Node("MatMul", "mm2", inputs=[hidden, gs.Constant("small", small)], outputs=[y])]
    graph = gs.Graph(nodes=nodes, inputs=[x], outputs=[y], opset=17)
    original = gs.export_onnx(graph)
    original.ir_version = 8
    model = export(graph, original)
    onnx.checker.check_model(model, full_check=True)
    written = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    np.testing.assert_array_equal(written["big"], big)
    np.testing.assert_array_equal(written["small"], small)
    assert weight.values is big  # the graph's own values are back
    assert model.graph.SerializeToString() == original.graph.SerializeToString()


def test_weights_changed_in_memory_leave_the_input_data_file(tmp_path):
    """A consumer's bias (past the inlined size) kept in the input's external data, then
    changed by compensation and statistics correction: it is written with its new values,
    not exported as a reference into the input's file with no location."""
    rng = np.random.default_rng(0)
    width = 1100  # 4400-byte bias: stays external at load
    w1, b1 = rng.standard_normal((16, 64)).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    w2, b2 = rng.standard_normal((64, width)).astype(np.float32), rng.standard_normal(width).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"]), helper.make_node("Add", ["m1", "b1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r1"]), helper.make_node("MatMul", ["r1", "w2"], ["m2"]),
             helper.make_node("Add", ["m2", "b2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])],
                              [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    source = tmp_path / "in" / "mlp.onnx"
    source.parent.mkdir()
    onnx.save(model, str(source), save_as_external_data=True, location="mlp.data", size_threshold=0)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=rng.standard_normal((32, 16)).astype(np.float32))
    out = tmp_path / "out" / "pruned.onnx"
    out.parent.mkdir()
    result = spa.prune(str(source), 0.5, criterion="obs", calib=str(calib), round_to=1, output=out)
    assert result.channels_removed == 32
    written = onnx.load(str(out))
    assert not np.allclose(numpy_helper.to_array(next(t for t in written.graph.initializer if t.name == "b2")), b2)
