"""The exactness oracle: zero chosen channels, prune them away, compare outputs.

Zeroing every member slice of a channel (a divisor's slice set to 1) kills its contribution
everywhere, so a correct structural prune of exactly those channels must give the zeroed
model's outputs, and the l2 criterion must pick exactly the zeroed channels (every other
channel has nonzero weights). Used by the tests on every generated and shipped model, and
by tools/corpus_check.py on models nobody on the team built.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from spa import api
from spa.io.load import load_model
from spa.io.runtime import run
from spa.select import removable_in_order
from spa.verify import (NOISE_FACTOR, quantizes_activations, reference_run, rounding_noise,
                        without_activation_quantization)


@dataclass
class OracleResult:
    groups: int  # exact prunable groups whose channels were zeroed
    channels: int  # channels zeroed (and expected removed)
    max_difference: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not self.problems


def tensor_slots(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """Initializers and Constant-node values by the name the graph uses."""
    slots = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    slots[node.output[0]] = attr.t
    return slots


def member_index(member: dict, channel: int, ndim: int) -> tuple:
    """Numpy index selecting one channel's slice of a member tensor (`within` rows too)."""
    index: list = [slice(None)] * ndim
    positions = np.asarray(member["index"][channel], dtype=np.int64)
    if "within" in member:
        index[member["axis"]] = positions.reshape(-1, 1)
        index[member["within_axis"]] = np.asarray(member["within"][channel], dtype=np.int64).reshape(1, -1)
    else:
        index[member["axis"]] = positions
    return tuple(index)


def zero_in_place(model: onnx.ModelProto, group: dict, channels: list[int]) -> None:
    slots = tensor_slots(model)
    for member in group["members"]:
        name = member["initializer"]
        if name not in slots:
            raise KeyError(f"group {group['id']}: member {name!r} is neither an initializer nor a Constant output")
        tensor = slots[name]
        array = numpy_helper.to_array(tensor).copy()
        for channel in channels:  # a divisor is made inert with 1, anything else with 0
            array[member_index(member, channel, array.ndim)] = member.get("neutral", 0.0)
        tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))


def zero_channels(model: onnx.ModelProto, group: dict, channels: list[int]) -> onnx.ModelProto:
    """Copy of `model` with every member slice of `channels` set to zero."""
    zeroed = copy.deepcopy(model)
    zero_in_place(zeroed, group, channels)
    return zeroed


def choose_channels(group: dict, ratio: float, rng: np.random.Generator) -> list[int]:
    """Random floor(ratio * n) channels per segment (the whole group if unsegmented),
    never every channel of a piece (a Split output must keep one)."""
    segments = group.get("segments") or [list(range(group["size"]))]
    chosen: list[int] = []
    for segment in segments:
        count = math.floor(ratio * len(segment))
        chosen += removable_in_order(rng.permutation(segment).tolist(), count, group.get("pieces", []))
    return sorted(chosen)


def declared_shape(value: onnx.ValueInfoProto) -> list:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in value.type.tensor_type.shape.dim]


def check(model: onnx.ModelProto, ratio: float = 0.4, seed: int = 0, feeds: dict[str, np.ndarray] | None = None,
          atol: float = 1e-5, rtol: float = 0.0, relative: bool = True) -> OracleResult:
    """Zero random channels of every prunable exact group, prune with l2 at round-to 1, and
    compare: the removed channels, the interface, and the outputs on `feeds` (synthetic
    inputs where none are given). With `relative`, `atol` scales with each output's largest
    value where that exceeds 1 (float32 sums of large values round at that scale); no
    output needs to agree closer than NOISE_FACTOR times its rounding noise (the zeroed
    model against itself without graph optimizations)."""
    model = api.prepared_model(model)  # as spa sees it: the initializers `inspect` names
    groups = {g["id"]: g for g in api.inspect(model).to_json()["groups"]}
    rng = np.random.default_rng(seed)
    # targeting hidden prunes its inexact groups too: exact hidden ones are checked where there are none
    inexact_hidden = any(g["kind"] == "hidden" and g["prunable"] and not g["exact"] for g in groups.values())
    chosen = {gid: choose_channels(g, ratio, rng) for gid, g in groups.items()
              if g["prunable"] and g["exact"] and not (inexact_hidden and g["kind"] == "hidden")}
    zeroed = copy.deepcopy(model)
    for gid, channels in chosen.items():
        zero_in_place(zeroed, groups[gid], channels)
    result = OracleResult(len(chosen), sum(map(len, chosen.values())))
    if not result.channels:
        return result
    kinds = tuple(dict.fromkeys(groups[gid]["kind"] for gid in chosen))  # an exact hidden group too
    pruned = api.prune(copy.deepcopy(zeroed), ratio, criterion="l2", round_to=1, seed=seed, targets=kinds)
    result.problems += _removed_problems(pruned.report, chosen, groups)
    result.problems += _interface_problems(zeroed, pruned.model)
    if feeds is None:
        feeds = reference_run(load_model(zeroed), seed=seed).feeds
    difference, problems = _output_problems(zeroed, pruned.model, feeds, atol, rtol, relative)
    if problems and quantizes_activations(zeroed):  # a rounding flip travels: compare unquantized
        difference, problems = _output_problems(without_activation_quantization(zeroed),
                                                without_activation_quantization(pruned.model), feeds, atol, rtol,
                                                relative)
    result.max_difference = difference
    result.problems += problems
    return result


def _removed_problems(report: dict, chosen: dict[int, list[int]], groups: dict[int, dict]) -> list[str]:
    reported = {g["id"]: sorted(g.get("removed", [])) for g in report["groups"]}
    problems = []
    for gid in sorted(set(chosen) | set(reported)):
        expected, actual = chosen.get(gid, []), reported.get(gid, [])
        if expected != actual:
            members = [m["initializer"] for m in groups.get(gid, {}).get("members", [])][:4]
            problems.append(f"group {gid} (members {members}): zeroed {expected}, removed {actual}")
    return problems


def _interface_problems(zeroed: onnx.ModelProto, pruned: onnx.ModelProto) -> list[str]:
    before, after = zeroed.graph.output, pruned.graph.output
    if [o.name for o in after] != [o.name for o in before]:
        return ["graph output names changed"]
    return [f"output {old.name!r}: declared shape {declared_shape(new)} != {declared_shape(old)}"
            for old, new in zip(before, after) if declared_shape(new) != declared_shape(old)]


def _output_problems(zeroed: onnx.ModelProto, pruned: onnx.ModelProto, feeds: dict[str, np.ndarray],
                     atol: float, rtol: float, relative: bool) -> tuple[float, list[str]]:
    worst, problems = 0.0, []
    names = [o.name for o in zeroed.graph.output]
    expected_outputs = run(zeroed, feeds, "the zeroed model")
    floors = rounding_noise(zeroed, feeds, expected_outputs)
    for name, expected, actual, floor in zip(names, expected_outputs, run(pruned, feeds, "the pruned model"), floors):
        if actual.shape != expected.shape:
            problems.append(f"output {name!r}: shape {actual.shape} != {expected.shape}")
            continue
        if not np.issubdtype(expected.dtype, np.number) or not expected.size:
            if not np.array_equal(actual, expected):
                problems.append(f"output {name!r} differs after pruning")
            continue
        want, got = expected.astype(np.float64), actual.astype(np.float64)
        same = (want == got) | (np.isnan(want) & np.isnan(got))
        difference = float(np.max(np.where(same, 0.0, np.abs(want - got))))
        largest = float(np.max(np.abs(want[np.isfinite(want)]), initial=0.0))
        worst = max(worst, difference)
        tolerance = atol * (max(1.0, largest) if relative else 1.0) + rtol * largest
        if not difference <= max(tolerance, NOISE_FACTOR * floor):  # float rounding of this model
            problems.append(f"output {name!r} differs after pruning by {difference:.3g}")
    return worst, problems
