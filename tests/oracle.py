"""Exactness oracle: zero chosen channels, prune them away, compare outputs.

Zeroing every member slice of a channel kills its contribution everywhere, so
a correct structural prune of exactly those channels must give the same
outputs as the zeroed (unpruned) model, and the l2 criterion must pick exactly
the zeroed channels (all other channels have nonzero weights).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

import spa
from spa.select import removable_in_order


def _tensor_slots(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers and Constant-node values by the name the graph uses."""
    slots = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    slots[node.output[0]] = attr.t
    return slots


def _member_index(member: dict, channel: int, ndim: int) -> tuple:
    """Numpy index selecting one channel's slice of a member tensor."""
    index: list = [slice(None)] * ndim
    positions = np.asarray(member["index"][channel], dtype=np.int64)
    if "within" in member:
        index[member["axis"]] = positions.reshape(-1, 1)
        index[member["within_axis"]] = np.asarray(member["within"][channel], dtype=np.int64).reshape(1, -1)
    else:
        index[member["axis"]] = positions
    return tuple(index)


def _zero_in_place(model: onnx.ModelProto, group: dict, channels: list[int]) -> None:
    slots = _tensor_slots(model)
    for member in group["members"]:
        name = member["initializer"]
        if name not in slots:
            raise KeyError(f"group {group['id']}: member {name!r} is neither an initializer "
                           "nor a Constant output")
        tensor = slots[name]
        array = numpy_helper.to_array(tensor).copy()
        for channel in channels:  # a divisor is made inert with 1, anything else with 0
            array[_member_index(member, channel, array.ndim)] = member.get("neutral", 0.0)
        tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))


def zero_channels(model: onnx.ModelProto, group_json: dict, channels: list[int]) -> onnx.ModelProto:
    """Copy of `model` with every member slice of `channels` set to zero."""
    zeroed = copy.deepcopy(model)
    _zero_in_place(zeroed, group_json, channels)
    return zeroed


def choose_channels(group_json: dict, ratio: float, rng: np.random.Generator) -> list[int]:
    """Random floor(ratio * n) channels per segment (the whole group if unsegmented),
    never every channel of a piece (a Split output must keep one)."""
    segments = group_json.get("segments") or [list(range(group_json["size"]))]
    pieces = group_json.get("pieces", [])
    chosen: list[int] = []
    for segment in segments:
        count = math.floor(ratio * len(segment))
        order = rng.permutation(segment).tolist()
        chosen += removable_in_order(order, count, pieces)
    return sorted(chosen)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """All graph outputs, computed by onnxruntime on CPU."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _concrete_shape(value: onnx.ValueInfoProto) -> list[int]:
    """Declared shape with symbolic or unknown dims set to 2."""
    return [d.dim_value if d.HasField("dim_value") else 2 for d in value.type.tensor_type.shape.dim]


def random_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Standard-normal values for every graph input that is not an initializer."""
    rng = np.random.default_rng(seed)
    initializers = {t.name for t in model.graph.initializer}
    feeds = {}
    for value in model.graph.input:
        if value.name not in initializers:
            dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
            feeds[value.name] = rng.standard_normal(_concrete_shape(value)).astype(dtype)
    return feeds


def _declared_shape(value: onnx.ValueInfoProto) -> list[int | str | None]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param or None
            for d in value.type.tensor_type.shape.dim]


@dataclass(frozen=True)
class OracleSummary:
    groups_checked: int
    channels_removed: int


def _check_removed(report: dict, chosen: dict[int, list[int]], groups: dict[int, dict]) -> None:
    reported = {g["id"]: sorted(g.get("removed", [])) for g in report["groups"]}
    problems = []
    for gid in sorted(set(chosen) | set(reported)):
        expected, actual = chosen.get(gid, []), reported.get(gid, [])
        if expected != actual:
            members = [m["initializer"] for m in groups.get(gid, {}).get("members", [])]
            problems.append(f"group {gid} (members {members}): zeroed {expected}, removed {actual}")
    assert not problems, "pruner removed other channels than the zeroed ones:\n" + "\n".join(problems)


def _check_outputs(zeroed: onnx.ModelProto, pruned: onnx.ModelProto,
                   seed: int, atol: float, rtol: float) -> None:
    before, after = zeroed.graph.output, pruned.graph.output
    assert [o.name for o in after] == [o.name for o in before], "graph output names changed"
    for old, new in zip(before, after):
        assert _declared_shape(new) == _declared_shape(old), (
            f"output {old.name!r}: declared shape {_declared_shape(new)} != {_declared_shape(old)}")
    feeds = random_feeds(zeroed, seed)
    for value, expected, actual in zip(before, run(zeroed, feeds), run(pruned, feeds)):
        assert actual.shape == expected.shape, (
            f"output {value.name!r}: shape {actual.shape} != {expected.shape}")
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol,
                                   err_msg=f"output {value.name!r} differs after pruning")


def check_oracle(model: onnx.ModelProto | str, ratio: float = 0.4, seed: int = 0,
                 atol: float = 1e-5, rtol: float = 0.0) -> OracleSummary:
    """Zero random channels of every prunable exact group, prune, and verify exactness."""
    if isinstance(model, str):
        model = onnx.load(model)
    groups = {g["id"]: g for g in spa.inspect(model).to_json()["groups"]}
    rng = np.random.default_rng(seed)
    chosen = {gid: choose_channels(g, ratio, rng) for gid, g in groups.items()
              if g["prunable"] and g["exact"]}
    zeroed = copy.deepcopy(model)
    for gid, channels in chosen.items():
        _zero_in_place(zeroed, groups[gid], channels)
    result = spa.prune(copy.deepcopy(zeroed), ratio, criterion="l2", round_to=1, seed=seed)
    onnx.checker.check_model(result.model, full_check=True)
    _check_removed(result.report, chosen, groups)
    _check_outputs(zeroed, result.model, seed, atol, rtol)
    return OracleSummary(len(chosen), sum(map(len, chosen.values())))
