"""The sequential calibration pass (spa.calibrate.frontier): each group and each corrected
layer is measured on the graph as the earlier ones left it, running only the part of the
graph that changed. Its results must be those of running the whole graph for every group
(the per-group path it replaced), which `WholeGraphRuns` below still does."""
from __future__ import annotations

import contextlib

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

import spa
import spa.api
import spa.calibrate.frontier as frontier_module
from spa.calibrate.frontier import Frontier
from spa.calibrate.layernorm import mask_in_model, norm_masks
from spa.calibrate.sources import Calibration
from spa.io.runtime import session

MODELS = Path(__file__).resolve().parent.parent / "models"


class WholeGraphRuns:
    """The per-group path: every measurement exports the whole graph with the requested
    tensors as outputs and runs every calibration batch through it (LayerNormalizations
    over removed units normalizing the kept ones, as in the frontier's segments)."""

    def __init__(self, graph: gs.Graph, calibration: Calibration, ir_version: int, written=(), budget=0,
                 removed=None) -> None:
        self.graph, self.calibration, self.ir_version = graph, calibration, ir_version
        self.removed = removed if removed is not None else {}

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass

    def done_with(self, task: int, updates=None) -> None:  # (runs everything again: nothing to update)
        pass

    def measure(self, accumulators: dict, hold=()) -> None:
        names = list(accumulators)
        tensors = self.graph.tensors()
        saved = self.graph.outputs
        self.graph.outputs = [tensors[name] for name in names]
        try:
            model = gs.export_onnx(self.graph, do_type_check=False)
        finally:
            self.graph.outputs = saved
        for value in model.graph.output:
            value.type.tensor_type.ClearField("shape")
            value.type.tensor_type.elem_type = value.type.tensor_type.elem_type or onnx.TensorProto.FLOAT
        model.ir_version = self.ir_version
        mask_in_model(model, norm_masks(self.graph.nodes, self.removed))
        runner = session(model)
        for feeds in self.calibration.batches(frontier_module.BATCH_SIZE):
            for name, value in zip(names, runner.run(names, feeds)):
                for accumulate in accumulators[name]:
                    accumulate(value)


def _per_group_path(monkeypatch) -> None:
    for module in ("spa.repair.compensate", "spa.repair.correct", "spa.criteria.score"):
        monkeypatch.setattr(f"{module}.Frontier", WholeGraphRuns)


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}


def _digits(samples: int, model: str = "") -> np.ndarray:
    key = "calib_x_tokens" if "transformer" in model else "calib_x"
    return np.load(MODELS / "trained" / "digits_data.npz")[key][:samples]


CASES = [  # model, criterion, options
    ("trained/digits_resnet_bn.onnx", "obs", {}),
    ("trained/digits_resnet.onnx", "greedy", {}),
    ("trained/digits_mobilenet.onnx", "fluctuation", {}),
    ("trained/digits_resnet.onnx", "obs", {"scope": "global"}),
    ("trained/digits_transformer.onnx", "obs", {"targets": ("heads", "mlp")}),
]


@pytest.mark.parametrize("name,criterion,options", CASES, ids=[f"{c[0].split('/')[-1]}-{c[1]}" for c in CASES])
def test_sequential_pass_equals_the_per_group_path(tmp_path, monkeypatch, name, criterion, options):
    np.savez(tmp_path / "calib.npz", input=_digits(40, name))
    run = dict(ratio=0.4, criterion=criterion, round_to=1, calib=tmp_path / "calib.npz", **options)
    sequential = spa.prune(MODELS / name, **run)
    _per_group_path(monkeypatch)
    per_group = spa.prune(MODELS / name, **run)
    removed = {g["id"]: g["removed"] for g in sequential.report["groups"]}
    assert removed == {g["id"]: g["removed"] for g in per_group.report["groups"]}
    assert any(removed.values())
    ours, theirs = _weights(sequential.model), _weights(per_group.model)
    assert ours.keys() == theirs.keys()
    for key in ours:
        scale = max(float(np.abs(theirs[key]).max(initial=0.0)), 1e-6)
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-4, atol=1e-4 * scale, err_msg=key)


def _counting_segments(monkeypatch) -> list[int]:
    """Patch the Frontier to record how many nodes each segment it runs holds."""
    sizes: list[int] = []
    original = Frontier._run_segment

    def counted(self, needed, *args):
        sizes.append(len(needed))
        return original(self, needed, *args)

    monkeypatch.setattr(Frontier, "_run_segment", counted)
    return sizes


def test_each_part_of_the_graph_runs_about_once(tmp_path, monkeypatch):
    """obs on the digits ResNet: the nodes run over the whole pass stay within a small
    multiple of the graph's size, where one whole-graph run per group would be far more."""
    np.savez(tmp_path / "calib.npz", input=_digits(16))
    sizes = _counting_segments(monkeypatch)
    result = spa.prune(MODELS / "trained" / "digits_resnet.onnx", 0.4, criterion="obs", round_to=1,
                       calib=tmp_path / "calib.npz", correct_stats=False)
    pruned_groups = sum(1 for g in result.report["groups"] if g["removed"])
    nodes = len(spa.api.prepared_model(MODELS / "trained" / "digits_resnet.onnx").graph.node)
    print(f"segments: {sizes}, graph: {nodes} nodes, {pruned_groups} groups")
    assert pruned_groups >= 5 and len(sizes) == pruned_groups  # one segment (one session) per group
    assert sum(sizes) <= 2 * nodes < pruned_groups * nodes / 2


def test_spilling_to_disk_changes_nothing_and_leaves_nothing(tmp_path, monkeypatch):
    np.savez(tmp_path / "calib.npz", input=_digits(24))
    run = dict(ratio=0.4, criterion="obs", round_to=1, calib=tmp_path / "calib.npz", correct_stats=False)
    in_memory = spa.prune(MODELS / "trained" / "digits_resnet.onnx", **run)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    spilled_files: list[Path] = []
    original = frontier_module._Store._spill

    def spill(self, *args):
        stored = original(self, *args)
        spilled_files.append(Path(stored.filename))
        return stored

    monkeypatch.setattr(frontier_module._Store, "_spill", spill)
    spilled = spa.prune(MODELS / "trained" / "digits_resnet.onnx", memory_budget=1, **run)
    assert spilled_files  # everything went to disk
    assert [g["removed"] for g in spilled.report["groups"]] == [g["removed"] for g in in_memory.report["groups"]]
    for key, value in _weights(in_memory.model).items():
        np.testing.assert_array_equal(_weights(spilled.model)[key], value)
    assert list(scratch.iterdir()) == []  # the temporary folder is gone


@pytest.mark.parametrize("text,size", [("512M", 512 << 20), ("1.5g", 3 << 29), ("2GiB", 2 << 30), ("800k", 800 << 10),
                                       ("4096", 4096)])
def test_memory_budget_sizes(text, size):
    from spa.plan import memory_size
    assert memory_size(text) == size


@pytest.mark.parametrize("text", ["lots", "-1G", "0", "1X"])
def test_memory_budget_refuses_nonsense(text):
    from spa.errors import SpaError
    from spa.plan import memory_size
    with pytest.raises(SpaError, match="memory-budget"):
        memory_size(text)


def test_external_data_weights_are_fed_to_segments(tmp_path):
    """A model whose weights live in an external data file: segments never point at that
    file (their weights are fed as inputs), and obs prunes it like the in-file model."""
    source = onnx.load(str(MODELS / "trained" / "digits_resnet.onnx"))
    onnx.save_model(source, str(tmp_path / "external.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="external.onnx.data", size_threshold=0)
    np.savez(tmp_path / "calib.npz", input=_digits(16))
    run = dict(ratio=0.4, criterion="obs", round_to=1, calib=tmp_path / "calib.npz")
    (tmp_path / "out").mkdir()
    external = spa.prune(tmp_path / "external.onnx", output=tmp_path / "out" / "pruned.onnx", **run)
    internal = spa.prune(MODELS / "trained" / "digits_resnet.onnx", **run)
    assert [g["removed"] for g in external.report["groups"]] == [g["removed"] for g in internal.report["groups"]]
    written = onnx.load(str(tmp_path / "out" / "pruned.onnx"))
    ours, theirs = _weights(written), _weights(internal.model)
    for key, value in theirs.items():  # fed weights are not prepacked as constants are: float32 rounding differs
        np.testing.assert_allclose(ours[key], value, rtol=1e-4, atol=1e-5, err_msg=key)


@pytest.mark.parametrize("name", ["trained/digits_resnet_bn.onnx", "trained/digits_transformer.onnx"])
def test_weights_held_in_memory_reach_segments_by_name_alone(tmp_path, monkeypatch, name):
    """With every changed weight held (HELD_BYTES 0), segments carry only placeholders for
    them and onnxruntime gets the arrays: the pruned weights are the same, bit for bit."""
    np.savez(tmp_path / "calib.npz", input=_digits(24, name))
    run = dict(ratio=0.4, criterion="obs", round_to=1, calib=tmp_path / "calib.npz")
    serialized = spa.prune(MODELS / name, **run)
    monkeypatch.setattr(frontier_module, "HELD_BYTES", 0)
    held: list[int] = []
    original = frontier_module._held_weights

    @contextlib.contextmanager
    def counted(nodes):
        with original(nodes) as weights:
            held.append(len(weights))
            yield weights

    monkeypatch.setattr(frontier_module, "_held_weights", counted)
    by_name = spa.prune(MODELS / name, **run)
    assert sum(held) > 0
    assert [g["removed"] for g in by_name.report["groups"]] == [g["removed"] for g in serialized.report["groups"]]
    for key, value in _weights(serialized.model).items():
        np.testing.assert_array_equal(_weights(by_name.model)[key], value, err_msg=key)


def test_omitted_optional_tensors_are_no_dependency():
    """An omitted optional input and an unused optional output are both named "" (an
    optimized BERT's SkipLayerNormalization and Attention): "" links no nodes."""
    rng = np.random.default_rng(0)
    x = gs.Variable("x", np.float32, ["n", 8])
    clipped, normed, product = gs.Variable("clipped", np.float32), gs.Variable("normed", np.float32), \
        gs.Variable("product", np.float32)
    nodes = [gs.Node("Clip", "clip", inputs=[x, gs.Variable(""), gs.Constant("max", np.array(2.0, np.float32))],
                     outputs=[clipped]),
             gs.Node("LayerNormalization", "norm", attrs={"axis": -1},
                     inputs=[clipped, gs.Constant("scale", np.ones(8, np.float32))], outputs=[normed, gs.Variable("")]),
             gs.Node("MatMul", "matmul", inputs=[normed, gs.Constant("w", rng.standard_normal((8, 4)).astype(np.float32))],
                     outputs=[product])]
    graph = gs.Graph(nodes=nodes, inputs=[x], outputs=[product], opset=17)
    data = rng.standard_normal((6, 8)).astype(np.float32)
    calibration = Calibration("test", [], 6, lambda: iter([{"x": data}]))
    seen: list[np.ndarray] = []
    with Frontier(graph, calibration, 8) as frontier:
        frontier.measure({"normed": [seen.append]})
    clipped_data = np.minimum(data, 2.0)
    want = (clipped_data - clipped_data.mean(-1, keepdims=True)) / np.sqrt(clipped_data.var(-1, keepdims=True) + 1e-5)
    np.testing.assert_allclose(np.concatenate(seen), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["trained/digits_resnet.onnx", "trained/digits_resnet_b1.onnx"])
def test_correction_keeps_its_scaled_outputs_instead_of_running_the_layers_again(tmp_path, monkeypatch, name):
    """Statistics correction scales a folded layer's output channels: the frontier keeps the
    measured outputs, scaled the same way, so no layer runs twice in the correction pass,
    and the corrected weights are those of running the layers again."""
    from spa.calibrate.frontier import Frontier
    np.savez(tmp_path / "calib.npz", input=_digits(16, name))
    run = dict(ratio=0.4, criterion="l2", round_to=1, calib=tmp_path / "calib.npz", correct_stats=True)
    runs: list[int] = []
    segment = Frontier._run_segment

    def counting(self, needed, *args):
        runs.extend(id(self.nodes[i]) for i in needed if self.nodes[i].op in ("Conv", "Gemm"))
        return segment(self, needed, *args)
    monkeypatch.setattr(Frontier, "_run_segment", counting)
    held = spa.prune(MODELS / name, **run)
    held_runs = list(runs)
    done_with = Frontier.done_with
    monkeypatch.setattr(Frontier, "done_with", lambda self, task, updates=None: done_with(self, task))
    runs.clear()
    rerun = spa.prune(MODELS / name, **run)
    corrected = [node.name for node in held.model.graph.node if node.op_type in ("Conv", "Gemm")]
    assert len(held_runs) < len(runs)
    assert len(held_runs) - len(set(held_runs)) < len(runs) - len(set(runs))  # fewer layers run twice
    ours, theirs = _weights(held.model), _weights(rerun.model)
    assert corrected and ours.keys() == theirs.keys()
    for key, value in theirs.items():
        np.testing.assert_allclose(ours[key], value, rtol=1e-4, atol=1e-5, err_msg=key)


def test_updated_outputs_let_what_their_layers_read_go():
    """A chain of MatMul+Add layers corrected in order: each task's held output is kept,
    updated, and what the layer read is dropped once nothing will run the layer again, so
    the kept activations stay a few, however deep the chain."""
    rng = np.random.default_rng(3)
    depth, width = 8, 6
    nodes, current = [], gs.Variable("x", np.float32, [4, width])
    weights = []
    for i in range(depth):
        w = gs.Constant(f"w{i}", rng.standard_normal((width, width)).astype(np.float32))
        b = gs.Constant(f"b{i}", rng.standard_normal(width).astype(np.float32))
        product, added, relu = (gs.Variable(f"{kind}{i}", np.float32) for kind in ("p", "a", "r"))
        nodes += [gs.Node("MatMul", f"mm{i}", inputs=[current, w], outputs=[product]),
                  gs.Node("Add", f"add{i}", inputs=[product, b], outputs=[added]),
                  gs.Node("Relu", f"relu{i}", inputs=[added], outputs=[relu])]
        weights.append({w.name, b.name})
        current = relu
    graph = gs.Graph(nodes=nodes, inputs=[nodes[0].inputs[0]], outputs=[current], opset=17)
    data = rng.standard_normal((4, width)).astype(np.float32)
    calibration = Calibration("test", [], 4, lambda: iter([{"x": data}]))
    most, previous = 0, data
    with Frontier(graph, calibration, 8, weights) as frontier:
        for task in range(depth):
            seen: list[np.ndarray] = []
            frontier.measure({f"a{task}": [seen.append]}, hold=[f"a{task}"])
            frontier.done_with(task, {f"a{task}": lambda values: values * 2})
            most = max(most, len(frontier.kept.names()))
            if task:  # the previous layer's output, doubled by its update, is what this one read
                expected = np.maximum(previous * 2, 0) @ graph.tensors()[f"w{task}"].values + graph.tensors()[f"b{task}"].values
                np.testing.assert_allclose(seen[0], expected, rtol=1e-5)
            previous = seen[0]
    assert most <= 3
