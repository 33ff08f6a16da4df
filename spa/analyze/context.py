"""The state a dependency analysis builds, and the view of it each op rule works through."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from spa.analyze.labels import LabelSpace, Labels

AxisLabels = list[Labels | None]  # per axis: labels, or None for an axis that never changes size


@dataclass
class GroupedColumns:
    """Input channels of a grouped Conv (1 < C_in/groups): input channel c is column
    c mod (C_in/groups) of the weight, in the rows of segment c // (C_in/groups) only."""
    weight: str
    input_labels: Labels
    groups: int


@dataclass
class HeadCount:
    """A node attribute holding how many heads an axis carries (a fused attention's
    `num_heads`): the rewrite sets it to the kept positions of `labels` over `head_dim`."""
    node: gs.Node
    attribute: str
    labels: Labels
    head_dim: int


@dataclass
class AnalysisState:
    graph: gs.Graph | None  # None once a prune has exported it (spa.pipeline releases its weights)
    opset: int
    shape_values: dict = field(default_factory=dict)  # tensor name -> traced shape elements
    space: LabelSpace = field(default_factory=LabelSpace)
    axes: dict[str, AxisLabels] = field(default_factory=dict)
    channel_spaces: list[tuple[Labels, str, str]] = field(default_factory=list)  # (outputs, node, op)
    producers: set[tuple[str, int]] = field(default_factory=set)  # (initializer, axis) making outputs
    head_labels: list[tuple[int, int]] = field(default_factory=list)  # (label, head_dim) per head a Reshape split
    head_counts: list[HeadCount] = field(default_factory=list)  # attributes counting heads, for the rewrite
    partitions: list[tuple[Labels, int]] = field(default_factory=list)  # balanced-removal segments
    grouped_columns: list[GroupedColumns] = field(default_factory=list)
    statistics: set[str] = field(default_factory=set)  # running mean/var: not scored by magnitude
    divisors: set[str] = field(default_factory=set)  # constants divided by: 1, not 0, is inert
    unsupported: dict[str, int] = field(default_factory=dict)  # op types without a rule -> nodes
    offset: dict[str, str] = field(default_factory=dict)  # tensor -> why removed channels are not 0 there (zeros.py)
    averaged: list[Labels] = field(default_factory=list)  # axes an exact ReduceMean averages over (a norm's statistic)

    def labels_of(self, tensor: gs.Tensor) -> AxisLabels | None:
        """Per-axis labels; initializers get fresh labels on first use; None if rank unknown."""
        if tensor.name in self.axes:
            return self.axes[tensor.name]
        if isinstance(tensor, gs.Constant):
            axes: AxisLabels = [self.space.new(n) for n in tensor.shape]
            self.axes[tensor.name] = axes
            return axes
        return None


class NodeContext:
    """What an op rule sees: the node's inputs' labels, constants and shapes. Every input
    axis a rule reads through `axis`/`axes` is its responsibility; the engine fixes the
    ones it never read."""

    def __init__(self, state: AnalysisState, node: gs.Node) -> None:
        self.state = state
        self.node = node
        self.space = state.space
        self.read: set[tuple[int, int]] = set()
        self.outputs_set: set[int] = set()
        self.indices: list[int] = list(range(len(node.inputs)))  # input i of this view -> node input

    def view(self, indices: list[int]) -> "NodeContext":
        """The node seen as the op its inputs `indices` make (a QLinearConv as a Conv of its
        data, weight and bias): input i of the view is node input indices[i]; reads and
        outputs are recorded on the node."""
        view = NodeContext.__new__(NodeContext)
        view.__dict__.update(self.__dict__)
        view.indices = list(indices)
        return view

    @property
    def input_count(self) -> int:
        return len(self.indices)

    # --- inputs -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.node.name or self.node.outputs[0].name

    def where(self) -> str:
        domain = self.node.domain or ""
        op = self.node.op if domain in ("", "ai.onnx") else f"{domain}:{self.node.op}"
        return f"{op} '{self.name}'"

    def attr(self, name: str, default=None):
        return self.node.attrs.get(name, default)

    def has_input(self, index: int) -> bool:
        return index < len(self.indices) and self.indices[index] < len(self.node.inputs) \
            and bool(self.tensor(index).name)

    def tensor(self, index: int) -> gs.Tensor:
        return self.node.inputs[self.indices[index]]

    def const(self, index: int) -> np.ndarray | None:
        if not self.has_input(index):
            return None
        tensor = self.tensor(index)
        return np.asarray(tensor.values) if isinstance(tensor, gs.Constant) else None

    def is_const(self, index: int) -> bool:
        return self.has_input(index) and isinstance(self.tensor(index), gs.Constant)

    def shape(self, index: int) -> list | None:
        return _shape(self.tensor(index)) if self.has_input(index) else None

    def out_shape(self, index: int = 0) -> list | None:
        return _shape(self.node.outputs[index])

    def rank(self, index: int) -> int | None:
        labels = self.state.labels_of(self.tensor(index))
        if labels is not None:
            return len(labels)
        shape = self.shape(index)
        return None if shape is None else len(shape)

    def axes(self, index: int) -> AxisLabels | None:
        """All axes of input `index`; the rule takes responsibility for each of them."""
        labels = self.state.labels_of(self.tensor(index))
        if labels is None:
            return None
        self.read.update((self.indices[index], k) for k in range(len(labels)))
        return list(labels)

    def axis(self, index: int, k: int) -> Labels | None:
        labels = self.state.labels_of(self.tensor(index))
        if labels is None:
            return None
        k = k % len(labels)
        self.read.add((self.indices[index], k))
        return labels[k]

    # --- outputs ------------------------------------------------------------------------
    def set_output(self, index: int, axes: AxisLabels) -> None:
        self.state.axes[self.node.outputs[index].name] = None if axes is None else list(axes)
        self.outputs_set.add(index)

    # --- relations ----------------------------------------------------------------------
    def unify(self, a: Labels | None, b: Labels | None) -> Labels | None:
        """Same channels at the same positions. A None side means the other cannot change."""
        if a is None and b is None:
            return None
        if a is None or b is None:
            self.fix(a if b is None else b, f"{self.where()} meets an axis that cannot change")
            return None
        if len(a) != len(b):
            self.fix(a, f"{self.where()}: axis sizes {len(a)} and {len(b)} disagree")
            self.fix(b, f"{self.where()}: axis sizes {len(a)} and {len(b)} disagree")
            return None
        self.space.unify(a, b)
        return a

    def fix(self, labels: Labels | None, reason: str) -> None:
        if labels is not None:
            self.space.fix(labels, reason)

    def fix_all(self, axes: AxisLabels | None, reason: str) -> None:
        for labels in axes or []:
            self.fix(labels, reason)

    def inexact(self, labels: Labels | None, reason: str) -> None:
        if labels is not None:
            self.space.mark_inexact(labels, reason)

    def new_space(self, labels: Labels | None, weight: int) -> None:
        """`labels` are the output channels of a weighted op, read from axis `labels` of
        input `weight`: one prunable group."""
        if labels is not None:
            self.state.channel_spaces.append((labels, self.name, self.node.op))
            self.state.producers.add((self.weight_source(weight).name, self._axis_of(weight, labels)))

    def weight_source(self, index: int) -> gs.Tensor:
        """The constant behind input `index`: through DequantizeLinear (a quantized weight),
        Cast and Identity, whose axes are the constant's."""
        tensor = self.tensor(index)
        while not isinstance(tensor, gs.Constant) and tensor.inputs \
                and tensor.inputs[0].op in ("DequantizeLinear", "Cast", "Identity") and tensor.inputs[0].inputs:
            tensor = tensor.inputs[0].inputs[0]
        return tensor if isinstance(tensor, gs.Constant) else self.tensor(index)

    def _axis_of(self, index: int, labels: Labels) -> int:
        axes = self.state.labels_of(self.tensor(index)) or []
        return next(k for k, candidate in enumerate(axes) if candidate is labels)

    def split_heads(self, labels: Labels | None, heads: int) -> int | None:
        """A flat axis of `heads` equal blocks (a fused attention's hidden axis): each block is
        one channel, a head. Returns head_dim, or None (and the axis fixed) when it does not divide."""
        if labels is None:
            return None
        if heads < 1 or len(labels) % heads:
            self.fix(labels, f"{self.where()}: {len(labels)} positions are not {heads} heads")
            return None
        head_dim = len(labels) // heads
        for block in labels.reshape(heads, head_dim):
            self.state.head_labels.append((self.space.merge_all(block), head_dim))
        return head_dim

    def count_heads(self, attribute: str, labels: Labels, head_dim: int) -> None:
        """The rewrite must set `attribute` to the heads left on `labels`."""
        self.state.head_counts.append(HeadCount(self.node, attribute, labels, head_dim))

    def fresh_fixed(self, count: int, reason: str) -> Labels:
        labels = self.space.new(count)
        self.space.fix(labels, reason)
        return labels


def _shape(tensor: gs.Tensor) -> list | None:
    shape = tensor.shape
    return None if shape is None else list(shape)


def static_dim(dim) -> int | None:
    return int(dim) if isinstance(dim, (int, np.integer)) and dim >= 0 else None


class RewriteContext:
    """What a rewrite hook sees: the analysis state, which channels survive, and fresh names."""

    def __init__(self, state: AnalysisState, removed_roots: set[int]) -> None:
        self.state = state
        self.removed = removed_roots
        self._taken = set(state.graph.tensors()) | {node.name for node in state.graph.nodes}
        self._counter = itertools.count()

    def positions(self, labels: Labels) -> np.ndarray:
        """The positions of an axis with these labels that survive."""
        roots = self.state.space.roots(labels)
        return np.flatnonzero([r not in self.removed for r in roots.tolist()])

    def size(self, labels: Labels | None, old: int | None = None):
        """The axis's size after the removal (`old` for an axis without channels)."""
        return old if labels is None else len(self.positions(labels))

    def new_name(self, base: str) -> str:
        """A tensor or node name that collides with nothing in the graph."""
        while True:
            name = f"{base}_spa{next(self._counter)}"
            if name not in self._taken:
                self._taken.add(name)
                return name
