"""Stage 2, analyze: which channels are coupled, and which can be removed."""
from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from spa.analyze.context import AnalysisState, NodeContext, static_dim
from spa.analyze.groups import KINDS, Group, Member, build_groups
from spa.analyze.names import layer_nodes
from spa.analyze import ops  # noqa: F401 - the op modules register their rules and rewrite hooks
from spa.analyze.registry import rule_for, unknown
from spa.analyze.shape_uses import check_shape_uses
from spa.analyze.shapes import trace_shape_values
from spa.analyze.zeros import offset_reason

__all__ = ["DEFAULT_TARGETS", "KINDS", "Analysis", "Group", "Member", "analyze"]
DEFAULT_TARGETS = ("channels", "heads", "mlp")  # every kind whose removal is exact


@dataclass
class Analysis:
    state: AnalysisState
    groups: list[Group]

    @property
    def graph(self) -> gs.Graph:
        return self.state.graph

    def to_json(self) -> dict:
        return {"groups": [group.to_json() for group in self.groups], "unsupported": self.state.unsupported}

    def prunable_groups(self, include_inexact: bool = False,
                        targets: tuple[str, ...] = DEFAULT_TARGETS) -> list[Group]:
        """Groups to prune: of a targeted kind, prunable, and exact unless inexact removal is
        asked for (targeting "hidden" asks for it: hidden groups are seldom exact)."""
        return [g for g in self.groups if g.prunable and g.kind in targets
                and (g.exact or include_inexact or g.kind == "hidden")]


def analyze(graph: gs.Graph, opset: int, keep: tuple[str, ...] = ()) -> Analysis:
    """Run every op rule in graph order, then the checks that need the whole picture."""
    state = AnalysisState(graph=graph, opset=opset)
    state.shape_values = trace_shape_values(graph)
    for tensor in graph.inputs:
        state.axes[tensor.name] = [None] * len(tensor.shape) if tensor.shape is not None else None
    for node in graph.nodes:
        _run_rule(state, node)
    for tensor in graph.outputs:
        _fix_tensor(state, tensor.name, f"reaches graph output '{tensor.name}'")
    check_shape_uses(state, state.shape_values)
    _keep_requested(state, keep)
    state.space.freeze()
    return Analysis(state, build_groups(state))


def _run_rule(state: AnalysisState, node: gs.Node) -> None:
    ctx = NodeContext(state, node)
    (rule_for(node) or unknown)(ctx)
    for index, tensor in enumerate(node.inputs):
        axes = state.axes.get(tensor.name) if tensor.name else None
        for k, labels in enumerate(axes or []):
            if labels is not None and (index, k) not in ctx.read:
                state.space.fix(labels, f"{ctx.where()} does not carry axis {k} of '{tensor.name}'")
    for index, tensor in enumerate(node.outputs):
        if index not in ctx.outputs_set:
            state.axes[tensor.name] = [None] * len(tensor.shape) if tensor.shape is not None else None
        _check_against_inferred(state, ctx, tensor)
    reason = offset_reason(ctx)
    if reason is not None:
        state.offset.update((tensor.name, reason) for tensor in node.outputs)


def _check_against_inferred(state: AnalysisState, ctx: NodeContext, tensor: gs.Tensor) -> None:
    """A rule that disagrees with shape inference is wrong about this node: keep it whole."""
    axes = state.axes.get(tensor.name)
    shape = tensor.shape
    if axes is None or shape is None:
        return
    mismatch = len(axes) != len(shape) or any(
        labels is not None and static_dim(dim) is not None and len(labels) != dim
        for labels, dim in zip(axes, shape))
    if mismatch:
        reason = f"{ctx.where()}: output shape disagrees with the analysis"
        for index in range(len(ctx.node.inputs)):
            _fix_tensor(state, ctx.node.inputs[index].name, reason)
        _fix_tensor(state, tensor.name, reason)


def _fix_tensor(state: AnalysisState, name: str, reason: str) -> None:
    for labels in state.axes.get(name) or []:
        if labels is not None:
            state.space.fix(labels, reason)


def _keep_requested(state: AnalysisState, names: tuple[str, ...]) -> None:
    """--ignore: a node keeps its outputs' channels, an initializer all of its channels; a
    layer or module as `spa inspect` names it (`layer2.0.conv1`, `layer2`) is its nodes."""
    nodes = {node.name: node for node in state.graph.nodes}
    known = set(state.graph.tensors())
    for name in names:
        found = [nodes[name]] if name in nodes else [] if name in known else layer_nodes(state.graph, name)
        tensors = [t.name for node in found for t in node.outputs] if found else [name]
        tensors += [t.name for node in found for t in node.inputs if isinstance(t, gs.Constant)]
        for tensor in tensors:
            _fix_tensor(state, tensor, f"kept by --ignore {name}")
