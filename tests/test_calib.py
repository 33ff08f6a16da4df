"""Calibration data: npz/npy/folder loading, validation, batching rule, synthetic data, progress."""
import io
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import MODELS
from onnx import TensorProto, helper, numpy_helper

from spa.calibrate import sources as calib
from spa.calibrate.sources import load_calibration, synthetic_calibration
from spa.progress import progress
from spa.errors import SpaError

DIGITS = MODELS / "trained" / "digits_data.npz"


def _model(inputs, nodes=(), initializers=(), outputs=None) -> onnx.ModelProto:
    """Tiny model; by default every input goes through Identity to an output."""
    values = [helper.make_tensor_value_info(name, dtype, shape) for name, dtype, shape in inputs]
    if not nodes:
        nodes = [helper.make_node("Identity", [name], [f"{name}_out"]) for name, _, _ in inputs]
        outputs = [(f"{name}_out", dtype) for name, dtype, _ in inputs]
    graph = helper.make_graph(
        list(nodes), "g", values, [helper.make_tensor_value_info(n, t, None) for n, t in outputs], list(initializers)
    )
    return helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])


def _gather_model(rows=7):
    table = numpy_helper.from_array(np.zeros((rows, 4), np.float32), "table")
    nodes = [
        helper.make_node("Reshape", ["input_ids", "flat"], ["ids_flat"]),
        helper.make_node("Gather", ["table", "ids_flat"], ["emb"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
    ]
    inputs = [(name, TensorProto.INT64, ["batch", "seq"]) for name in ("input_ids", "attention_mask")]
    inits = [table, numpy_helper.from_array(np.array([-1], np.int64), "flat")]
    return _model(inputs, nodes, inits, [("emb", TensorProto.FLOAT), ("mask_f", TensorProto.FLOAT)])


def _run(model, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _load(name):
    return onnx.load(str(MODELS / name), load_external_data=False)


TWO = _model([("a", TensorProto.FLOAT, ["N", 3]), ("b", TensorProto.INT64, ["N", 2])])
ONE = _model([("x", TensorProto.FLOAT, ["N", 3])])


def _static(batch):
    return _model([("x", TensorProto.FLOAT, [batch, 3])])


def _record_loads(monkeypatch) -> list[str]:
    """Make np.load (as used by spa.calibrate.sources) record the names of the files it opens."""
    loaded, real_load = [], np.load

    def load(path, *args, **kwargs):
        loaded.append(Path(path).name)
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(calib.np, "load", load)
    return loaded


def _sizes(cal, batch_size=32):
    return [len(feed["x"]) for feed in cal.batches(batch_size)]


def test_npz_by_name_feeds_every_input(tmp_path):
    a, b = np.random.rand(5, 3).astype(np.float32), np.arange(10).reshape(5, 2)
    np.savez(tmp_path / "d.npz", b=b, a=a, extra=np.zeros(1))
    cal = load_calibration(tmp_path / "d.npz", TWO)
    (feed,) = cal.batches()
    assert cal.samples == 5 and cal.source == str(tmp_path / "d.npz")
    np.testing.assert_array_equal(feed["a"], a)
    np.testing.assert_array_equal(feed["b"], b)
    _run(TWO, feed)


FLAGGED = _model([("x", TensorProto.FLOAT, ["N", 3]), ("deterministic", TensorProto.BOOL, [])])


def test_a_scalar_input_takes_its_one_value_in_every_batch(tmp_path):
    """A flag or a sample rate has no batch axis: files give it as a 0-d array, synthetic
    calibration draws it once, and every batch gets that value."""
    x = np.random.rand(5, 3).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, deterministic=np.array(True))
    feeds = list(load_calibration(tmp_path / "d.npz", FLAGGED).batches(2))
    assert [len(f["x"]) for f in feeds] == [2, 2, 1] and all(f["deterministic"].shape == () for f in feeds)
    np.testing.assert_array_equal(np.concatenate([f["x"] for f in feeds]), x)
    feeds = list(synthetic_calibration(FLAGGED, samples=40).batches(16))
    assert [len(f["x"]) for f in feeds] == [16, 16, 8] and all(f["deterministic"].shape == () for f in feeds)
    _run(FLAGGED, feeds[0])


def test_single_array_npz_with_any_name(tmp_path):
    np.savez(tmp_path / "d.npz", whatever=np.ones((4, 3), np.float32))
    assert _sizes(load_calibration(tmp_path / "d.npz", ONE)) == [4]


def test_folder_streams_npy_batches_and_single_samples_lazily(tmp_path, monkeypatch):
    data = np.arange(30, dtype=np.float32).reshape(10, 3)
    np.save(tmp_path / "00.npy", data[:5])  # a batch
    np.save(tmp_path / "01.npy", data[5])  # one sample
    np.savez(tmp_path / "02.npz", x=data[6:10])  # a batch in an npz
    (tmp_path / "notes.txt").write_text("ignored")
    cal = load_calibration(tmp_path, ONE)
    assert cal.samples == 10 and cal.batch_count(4) == 3 and cal.source == str(tmp_path)

    loaded = _record_loads(monkeypatch)
    batches = cal.batches(4)
    first = next(batches)
    assert loaded == ["00.npy"]  # later files untouched until needed
    rest = list(batches)
    assert loaded == ["00.npy", "01.npy", "02.npz"]
    assert [len(b["x"]) for b in [first, *rest]] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in [first, *rest]]), data)


def test_samples_cap_takes_the_first_n_and_stops_reading(tmp_path, monkeypatch):
    for i in range(3):
        np.save(tmp_path / f"{i}.npy", np.full((4, 3), i, np.float32))
    cal = load_calibration(tmp_path, ONE, samples=6)
    loaded = _record_loads(monkeypatch)
    feeds = list(cal.batches(32))
    assert cal.samples == 6 and len(feeds) == 1 and loaded == ["0.npy", "1.npy"]
    np.testing.assert_array_equal(feeds[0]["x"][:, 0], [0, 0, 0, 0, 1, 1])
    assert load_calibration(tmp_path, ONE, samples=100).samples == 12


def test_static_batch_one_gives_batches_of_one(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((5, 3), np.float32))
    cal = load_calibration(tmp_path / "d.npz", _static(1))
    assert _sizes(cal, 32) == [1] * 5 and cal.batch_count(32) == 5


def test_dynamic_batch_uses_batch_size_and_a_smaller_last_batch(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((70, 3), np.float32))
    cal = load_calibration(tmp_path / "d.npz", ONE)
    assert _sizes(cal) == [32, 32, 6] and cal.batch_count() == 3
    assert _sizes(cal, 50) == [50, 20]


def test_static_batch_four_drops_the_partial_batch(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.arange(30, dtype=np.float32).reshape(10, 3))
    cal = load_calibration(tmp_path / "d.npz", _static(4))
    assert cal.samples == 8 and cal.batch_count() == 2 and _sizes(cal) == [4, 4]
    for feed in cal.batches():
        _run(_static(4), feed)


def test_casts_when_the_kind_matches(tmp_path):
    np.savez(tmp_path / "d.npz", a=np.ones((3, 3), np.float64), b=np.ones((3, 2), np.int32))
    (feed,) = load_calibration(tmp_path / "d.npz", TWO).batches()
    assert feed["a"].dtype == np.float32 and feed["b"].dtype == np.int64
    np.savez(tmp_path / "i.npz", x=np.ones((3, 3), np.int64))  # int data for a float input
    (feed,) = load_calibration(tmp_path / "i.npz", ONE).batches()
    assert feed["x"].dtype == np.float32
    _run(ONE, feed)


def _write(tmp_path, kind):
    """Write one broken calibration source; return (path, model, words the message must contain)."""
    npz = tmp_path / "bad.npz"
    if kind == "missing file":
        return tmp_path / "nope.npz", ONE, ["nope.npz"]
    if kind == "missing folder":
        return tmp_path / "nodir", ONE, ["nodir"]
    if kind == "empty folder":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "a.txt").write_text("x")
        return tmp_path / "empty", ONE, ["empty", ".npz"]
    if kind == "corrupt npz":
        npz.write_bytes(b"not a zip file at all")
        return npz, ONE, ["bad.npz"]
    if kind == "truncated npy":
        np.save(tmp_path / "bad.npy", np.ones((100, 3), np.float32))
        data = (tmp_path / "bad.npy").read_bytes()
        (tmp_path / "bad.npy").write_bytes(data[: len(data) // 2])
        return tmp_path / "bad.npy", ONE, ["bad.npy"]
    if kind == "missing input":
        np.savez(npz, a=np.ones((2, 3), np.float32), c=np.ones((2, 2)))
        return npz, TWO, ["bad.npz", "'b'", "'a'", "'c'"]
    if kind == "several arrays, no match":
        return DIGITS, _load("trained/digits_resnet.onnx"), ["digits_data.npz", "'input'", "calib_x"]
    if kind == "wrong static dim":
        np.savez(npz, x=np.ones((2, 4), np.float32))
        return npz, ONE, ["bad.npz", "'x'", "[4]"]
    if kind == "wrong rank":
        np.savez(npz, x=np.ones((2, 3, 1), np.float32))
        return npz, ONE, ["bad.npz", "'x'"]
    if kind == "different counts":
        np.savez(npz, a=np.ones((3, 3), np.float32), b=np.ones((2, 2), np.int64))
        return npz, TWO, ["bad.npz", "sample counts"]
    if kind == "float for int":
        np.savez(npz, a=np.ones((2, 3), np.float32), b=np.ones((2, 2), np.float32))
        return npz, TWO, ["bad.npz", "'b'", "float32", "int64"]
    if kind == "npy for two inputs":
        (tmp_path / "dir").mkdir()
        np.save(tmp_path / "dir" / "s.npy", np.ones((2, 3), np.float32))
        return tmp_path / "dir", TWO, ["s.npy", ".npz"]
    if kind == "symbol mismatch":
        (tmp_path / "dir").mkdir()
        for i, seq in enumerate([5, 6]):
            ones = np.ones((2, seq), np.int64)
            np.savez(tmp_path / "dir" / f"{i}.npz", input_ids=ones, attention_mask=ones)
        return tmp_path / "dir", _gather_model(), ["1.npz", "'input_ids'", "'seq'"]
    if kind == "samples for a scalar":
        np.savez(npz, x=np.ones((2, 3), np.float32), deterministic=np.ones(2, bool))
        return npz, FLAGGED, ["bad.npz", "'deterministic'", "scalar"]
    if kind == "only scalars":
        np.savez(npz, deterministic=np.array(True))
        return npz, _model([("deterministic", TensorProto.BOOL, [])]), ["'deterministic'", "batch axis"]
    if kind == "too few for static batch":
        np.savez(npz, x=np.ones((3, 3), np.float32))
        return npz, _static(4), ["bad.npz", "4"]
    raise AssertionError(kind)


ERRORS = [
    "missing file", "missing folder", "empty folder", "corrupt npz", "truncated npy", "missing input",
    "several arrays, no match", "wrong static dim", "wrong rank", "different counts", "float for int",
    "npy for two inputs", "symbol mismatch", "too few for static batch", "samples for a scalar", "only scalars",
]


@pytest.mark.parametrize("kind", ERRORS)
def test_bad_calibration_data_is_a_one_line_spa_error(tmp_path, kind):
    path, model, words = _write(tmp_path, kind)
    with pytest.raises(SpaError) as info:
        list(load_calibration(path, model).batches())
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    for word in words:
        assert word in message, (word, message)


def test_samples_must_be_positive(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((3, 3), np.float32))
    with pytest.raises(SpaError, match="at least 1"):
        load_calibration(tmp_path / "d.npz", ONE, samples=0)
    with pytest.raises(SpaError, match="at least 1"):
        load_calibration(tmp_path / "d.npz", ONE).batch_count(0)


def test_synthetic_ids_stay_inside_the_embedding_table():
    model = _gather_model(rows=7)
    cal = synthetic_calibration(model, samples=40, default_dim=5)
    feeds = list(cal.batches())
    assert cal.source == "synthetic" and cal.samples == 40 and [len(f["input_ids"]) for f in feeds] == [32, 8]
    ids = np.concatenate([f["input_ids"] for f in feeds])
    assert ids.shape == (40, 5) and ids.dtype == np.int64 and ids.min() >= 0 and ids.max() == 6
    masks = np.concatenate([f["attention_mask"] for f in feeds])
    assert set(np.unique(masks)) <= {0, 1} and (masks[:, 0] == 1).all()  # padding masks, never empty
    assert (np.diff(masks, axis=1) <= 0).all() and masks.mean() < 1  # ones first, some padding
    for feed in feeds:
        _run(model, feed)
    again = np.concatenate([f["input_ids"] for f in synthetic_calibration(model, samples=40, default_dim=5).batches(7)])
    np.testing.assert_array_equal(ids, again)  # seeded, whatever the batch size


@pytest.mark.parametrize(
    "name, rows", [("bert_tiny_dynamic.onnx", 100), ("gpt2_tiny_dynamic.onnx", 160), ("llama_tiny.onnx", 192)]
)
def test_synthetic_ids_on_real_transformers(name, rows):
    model = _load(f"transformers/{name}")
    cal = synthetic_calibration(model, samples=8)
    ids = np.concatenate([f["input_ids"] for f in cal.batches()])
    assert ids.max() < rows and ids.min() >= 0 and ids.max() >= 10  # table-sized, not 0..9
    assert ids.shape[1] == (16 if "dynamic" in name else 12)


@pytest.mark.parametrize(
    "name, batch",
    [
        ("trained/digits_resnet.onnx", 32),
        ("trained/digits_resnet_b1.onnx", 1),
        ("transformers/bert_tiny_dynamic.onnx", 32),
        ("transformers/bert_tiny.onnx", 1),
        ("transformers/vit_tiny_dynamic.onnx", 32),
    ],
)
def test_synthetic_feeds_run_in_onnxruntime(name, batch):
    model = _load(name)
    cal = synthetic_calibration(model, samples=64 if batch > 1 else 3)
    session = ort.InferenceSession(str(MODELS / name), providers=["CPUExecutionProvider"])
    feeds = list(cal.batches())
    assert len(feeds) == cal.batch_count() and all(len(next(iter(f.values()))) == batch for f in feeds)
    for feed in feeds:
        assert all(np.isfinite(out).all() for out in session.run(None, feed))


def test_real_digits_data_runs_batch_by_batch(tmp_path):
    calib_x = np.load(DIGITS)["calib_x"][:10]
    np.savez(tmp_path / "calib.npz", input=calib_x)
    name = MODELS / "trained" / "digits_resnet_b1.onnx"
    cal = load_calibration(tmp_path / "calib.npz", onnx.load(str(name)))
    session = ort.InferenceSession(str(name), providers=["CPUExecutionProvider"])
    outputs = [session.run(None, feed)[0] for feed in progress(cal.batches(), "calibration", cal.batch_count())]
    assert cal.samples == 10 and len(outputs) == 10 and all(o.shape[0] == 1 and np.isfinite(o).all() for o in outputs)
    dynamic = ort.InferenceSession(str(MODELS / "trained" / "digits_resnet.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(np.concatenate(outputs), dynamic.run(None, {"input": calib_x})[0], rtol=1e-4, atol=1e-5)


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_silent_off_a_tty(capsys):
    assert list(progress(range(3), "calibration", total=3, delay=0)) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_progress_draws_a_bar_on_a_tty_and_clears_it(monkeypatch):
    stream = _Tty()
    monkeypatch.setattr("sys.stderr", stream)
    assert list(progress(iter("abcd"), "calibration", total=4, delay=0)) == list("abcd")
    text = stream.getvalue()
    assert "calibration" in text and "/4" in text
    assert text.split("\r")[-1].strip() == ""  # cleared at the end: the table that follows starts clean


def test_progress_waits_before_drawing(monkeypatch):
    stream = _Tty()
    monkeypatch.setattr("sys.stderr", stream)
    assert list(progress(range(3), "calibration", total=3)) == [0, 1, 2]
    assert stream.getvalue() == ""  # a pass under a second prints nothing


def test_macs_in_the_report_are_per_sample_whatever_the_calibration_batch(tmp_path):
    """The summary counted MACs at the shapes of the first calibration batch: 32 samples with
    --calib, 64 synthetic ones without, 1 with l2. Now one sample each time."""
    import spa
    model = MODELS / "trained" / "digits_resnet_bn.onnx"
    data = np.load(DIGITS)
    np.savez(tmp_path / "calib.npz", input=data["calib_x"])
    runs = [spa.prune(model, 0.3, criterion="l2", correct_stats=False),
            spa.prune(model, 0.3, criterion="l2", calib=tmp_path / "calib.npz"),
            spa.prune(model, 0.3, criterion="obs")]
    before = {run.report["before"]["macs"] for run in runs}
    assert len(before) == 1 and {run.report["after"]["macs"] for run in runs[1:]} == {runs[0].report["after"]["macs"]}
