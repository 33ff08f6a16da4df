"""The dependency analysis: which slices belong together, and why groups are kept."""

import onnx
import pytest
from conftest import MODELS
from edge_models import EDGE_MODELS

import spa


def _groups(model) -> list[dict]:
    return spa.inspect(model).to_json()["groups"]


def _by_reason(groups, text):
    return [g for g in groups if g["reason"] and text in g["reason"]]


def test_flattened_channel_owns_its_h_times_w_features():
    """vgg: Flatten of [1, 128, 2, 2]? No: the last conv map feeds Flatten + Gemm, so each
    channel owns a contiguous run of H*W columns of the Gemm weight."""
    model = onnx.load(str(MODELS / "vgg.onnx"))
    gemm_weights = {n.input[1] for n in model.graph.node if n.op_type == "Gemm"}
    for group in _groups(model):
        for member in group["members"]:
            if member["initializer"] in gemm_weights and member["axis"] == 1:
                sizes = {len(index) for index in member["index"]}
                assert len(sizes) == 1 and sizes.pop() > 1
                first = member["index"][1]
                assert first == list(range(first[0], first[0] + len(first)))
                return
    pytest.fail("no Gemm columns coupled to a conv group")


def test_concat_members_are_offset():
    """densenet: a layer's channels appear in later convs' weights at their concat offset."""
    groups = _groups(str(MODELS / "densenet.onnx"))
    offsets = {m["index"][0][0] for g in groups for m in g["members"] if m["axis"] == 1}
    assert len(offsets) > 3  # consumers read the same channels at different offsets


def test_grouped_conv_balances_segments_and_slices_within_rows():
    groups = _groups(str(MODELS / "resnext.onnx"))
    segmented = [g for g in groups if "segments" in g]
    assert segmented
    group = segmented[0]
    assert len({len(s) for s in group["segments"]}) == 1
    within = [m for g in segmented for m in g["members"] if "within" in m]
    assert within and all(len(rows) > 0 for m in within for rows in m["within"])


def test_depthwise_weights_join_their_input_group():
    model = onnx.load(str(MODELS / "mobilenetv2.onnx"))
    depthwise = {n.input[1] for n in model.graph.node if n.op_type == "Conv"
                 and any(a.name == "group" and a.i > 1 for a in n.attribute)}
    groups = _groups(model)
    owners = {m["initializer"] for g in groups for m in g["members"] if m["axis"] == 0} & depthwise
    assert owners == depthwise


def test_residual_adds_merge_groups():
    groups = _groups(str(MODELS / "resnet_basic.onnx"))
    stem = groups[0]
    assert sum(m["axis"] == 0 for m in stem["members"]) >= 3  # stem conv + the block convs it adds to


def test_graph_output_keeps_group():
    groups = _groups(EDGE_MODELS["intermediate_output"]())
    assert len(_by_reason(groups, "reaches graph output")) == 2


def test_unknown_op_is_named():
    groups = _groups(EDGE_MODELS["unknown_op"]())
    assert _by_reason(groups, "LpNormalization 'lpnormalization0' is not supported")


def test_layer_norm_over_channels_is_prunable_but_not_exact():
    groups = _groups(EDGE_MODELS["layer_norm_channels"]())
    inexact = [g for g in groups if not g["exact"]]
    assert inexact and inexact[0]["prunable"]
    result = spa.prune(EDGE_MODELS["layer_norm_channels"](), 0.5, round_to=1)
    assert result.channels_removed == 0  # not pruned unless asked
    assert inexact[0]["kind"] == "mlp"  # one layer makes it: not a residual stream
    result = spa.prune(EDGE_MODELS["layer_norm_channels"](), 0.5, round_to=1, include_inexact=True)
    assert result.channels_removed == 6


def test_size_read_by_arithmetic_keeps_group():
    groups = _groups(EDGE_MODELS["slice_size_from_shape"]())
    assert not groups[0]["prunable"]


def test_split_pieces_never_empty():
    groups = _groups(EDGE_MODELS["split_then_branches"]())
    assert groups[0]["pieces"] == [[0, 1], [2, 3, 4, 5]]
    result = spa.prune(EDGE_MODELS["split_then_branches"](), 0.9, round_to=1)
    assert result.removed[0] and all(set(p) - set(result.removed[0]) for p in groups[0]["pieces"])


def test_channel_shuffle_prunes_whole_shuffle_groups():
    groups = _groups(EDGE_MODELS["channel_shuffle"]())
    assert groups[0]["size"] == 2
    assert all(len(index) == 4 for m in groups[0]["members"] if m["axis"] == 0 for index in m["index"])


def test_ignore_keeps_named_node():
    model = str(MODELS / "resnet_basic.onnx")
    first = spa.inspect(model).groups[0]
    kept = spa.inspect(model, ignore=[first.node]).groups[0]  # the node as the file names it
    assert first.prunable and not kept.prunable and "ignore" in kept.reasons[0]


def test_dynamic_batch_reshape_chain_stays_prunable():
    groups = _groups(str(MODELS / "resnet_basic_dynbatch.onnx"))
    assert sum(g["prunable"] for g in groups) == len(groups) - 1


@pytest.mark.parametrize("name", sorted(EDGE_MODELS))
def test_members_cover_each_channel(name):
    """Every channel owns a slice of some member (a Slice's consumer sees only some)."""
    for group in _groups(EDGE_MODELS[name]()):
        assert all(len(m["index"]) == group["size"] for m in group["members"])
        for channel in range(group["size"]):
            assert any(m["index"][channel] for m in group["members"])


def test_analysis_rejects_nothing_it_should_not():
    """Every fixture has prunable groups besides its classifier head."""
    for path in sorted(MODELS.glob("*.onnx")):
        groups = _groups(str(path))
        assert sum(g["prunable"] for g in groups) >= len(groups) - 1, path.name
