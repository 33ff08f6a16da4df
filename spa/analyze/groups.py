"""Groups: channels coupled by the analysis, with the parameter slices each one owns."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from spa.analyze.context import AnalysisState
from spa.analyze.names import block_of, common_prefix, layer_name, name_separator, numbered, readers


@dataclass
class Member:
    """Slices of one initializer: channel i owns positions index[i] along `axis` (and,
    for grouped-conv columns, only rows within[i] along `within_axis`)."""
    initializer: str
    axis: int
    index: list[list[int]]
    within_axis: int | None = None
    within: list[list[int]] | None = None
    role: str = "weight"  # or "statistic" (running mean/var) or "divisor" (1 is inert, not 0)
    producer: bool = False  # its slices make the channels (conv filters, projection columns)
    rank: int = 1
    layer: str = ""  # the layer reading it, as a person calls it (spa.analyze.names)

    def to_json(self) -> dict:
        data = {"initializer": self.initializer, "axis": self.axis, "index": self.index}
        if self.layer:
            data["layer"] = self.layer
        if self.within is not None:
            data.update(within_axis=self.within_axis, within=self.within)
        data["role"] = self.role
        data["producer"] = self.producer
        if self.role == "divisor":
            data["neutral"] = 1.0
        return data


KINDS = ("channels", "heads", "mlp", "hidden")
LINEAR_OPS = {"MatMul", "Gemm", "Attention", "QAttention", "QLinearMatMul", "MatMulInteger", "QGemm", "DynamicQuantizeMatMul",
              "MatMulIntegerToFloat"}  # ops whose output channels are a linear layer's neurons


@dataclass
class Group:
    """Coupled channels. `kind`: "channels" (conv), "heads" (attention heads, each a block
    of projection columns), "mlp" (neurons of a linear layer) or "hidden" (a linear layer's
    outputs of several layers, read by a normalization: the residual stream of a transformer)."""
    id: int
    name: str  # the layer(s) making its channels, as a person calls them (spa.analyze.names)
    roots: list[int]  # channel i is the label class roots[i]
    ops: set[str] = field(default_factory=set)  # op types of the nodes making its channels
    makers: set[str] = field(default_factory=set)  # names of the nodes making its channels
    order: list[str] = field(default_factory=list)  # the same, in graph order
    kind: str = "channels"
    head_dim: int = 0  # for heads: positions per head where the attention splits them
    members: list[Member] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # why it is kept whole
    inexact_reasons: list[str] = field(default_factory=list)
    segments: list[list[int]] | None = None  # grouped conv: equal removal from each segment
    pieces: list[list[int]] = field(default_factory=list)  # each must keep a channel (Split outputs)
    shared: dict[str, int] = field(default_factory=dict)  # member initializer read by several nodes -> readers
    # nodes whose tensors carry its channels (keyed by first output) -> share of the node's
    # widest such axis one channel holds (1/size for a conv's channel, 1/heads for a head)
    touches: dict[str, float] = field(default_factory=dict)
    touch_ops: set[str] = field(default_factory=set)  # op types of those nodes
    node: str = ""  # the node whose output channels started the group, as the file names it (--ignore)
    layers: list[str] = field(default_factory=list)  # the layers making its channels, in graph order
    block: str = ""  # the block it is in (`spa inspect` heads its rows with it)

    @property
    def size(self) -> int:
        return len(self.roots)

    @property
    def width(self) -> int:
        """Positions one channel owns in the weights that make it, what the kernels see: 1 for
        a conv channel or a neuron, head_dim for a head (also in a fused q/k/v projection)."""
        if self.kind == "heads" and self.head_dim:
            return self.head_dim
        widths = [len(m.index[0]) for m in self.members if m.producer and m.index[0]]
        return min(widths, default=1)

    @property
    def query_heads(self) -> int:
        """For heads: the query heads one channel carries, 1 unless grouped-query attention
        shares a key/value head among several (read off the output projection's rows)."""
        if self.kind != "heads" or not self.head_dim:
            return 1
        return max([1] + [len(m.index[0]) // self.head_dim for m in self._consumers()])

    @property
    def units(self) -> int:
        """How much of the model's width one channel stands for, so that groups of every kind
        weigh alike when ranked together: a head is head_dim units, a key/value head with the
        query heads that share it query_heads * head_dim, any other channel its width."""
        return self.width * self.query_heads

    @property
    def prunable(self) -> bool:
        return not self.reasons

    @property
    def exact(self) -> bool:
        return not self.inexact_reasons

    def to_json(self) -> dict:
        data = {"id": self.id, "name": self.name, "node": self.node, "block": self.block, "kind": self.kind,
                "size": self.size,
                "description": self.describe(), "prunable": self.prunable,
                "reason": "; ".join(self.reasons) or None, "exact": self.exact,
                "inexact_reason": "; ".join(self.inexact_reasons) or None,
                "members": [m.to_json() for m in self.members]}
        if self.segments is not None:
            data["segments"] = self.segments
        if self.pieces:
            data["pieces"] = self.pieces
        if self.shared:
            data["shared"] = self.shared
        return data

    def describe(self, limit: int | None = None, named: bool = False) -> str:
        """What a person needs: how many of what, made by which layers and read by which (at
        most `limit` of each named), and which shared weight couples layers into it. `named`:
        shown after the group's name, which says what one layer making it is already."""
        if not self.shared:
            return self._what(limit, named)
        names = ", ".join(self._shared(name, count, limit) for name, count in sorted(self.shared.items()))
        return f"{self._what(limit, named)}; coupled through shared {names}"

    def _shared(self, name: str, count: int, limit: int | None) -> str:
        """A shared weight by its name, or where that is numbered by the layers reading it."""
        layers = next((m.layer for m in self.members if m.initializer == name and m.layer), "")
        if numbered(name) and layers:
            return f"weight of {_listed(layers.split(', '), limit)}"
        return f"'{name}' ({count} readers)"

    def _what(self, limit: int | None, named: bool) -> str:
        layers = self._producer_layers()
        if named and layers == [self.name] and self.kind != "heads":
            unit = {"channels": "channels", "mlp": "neurons", "hidden": "hidden units"}[self.kind]
            return f"{self.size} {unit}; read by {self._consumer_list(limit) or '-'}"
        producers = _listed(layers, limit)
        consumers = self._consumer_list(limit)
        if self.kind != "heads":
            unit = {"channels": "channels", "mlp": "neurons", "hidden": "hidden units"}[self.kind]
            return f"{self.size} {unit} made by {producers}; read by {consumers or '-'}"
        shared = f", each shared by {self.query_heads} query heads" if self.query_heads > 1 else ""
        return f"{self.size} heads x head_dim {self.head_dim}{shared}; projections {producers}; read by {consumers}"

    def _consumer_list(self, limit: int | None) -> str:
        return _listed(_unique(name for m in self._consumers()
                               for name in (m.layer.split(", ") if m.layer else [m.initializer])), limit)

    def _producer_layers(self) -> list[str]:
        return self.layers or _unique(m.layer or m.initializer for m in self.members if m.producer) \
            or sorted(self.makers)

    def _producer_names(self) -> list[str]:
        return sorted({m.initializer for m in self.members if m.producer}) or sorted(self.makers)

    def _consumers(self) -> list[Member]:
        """Members that are weights of the layers reading the channels (not making them)."""
        producers = set(self._producer_names())
        return [m for m in self.members if not m.producer and m.role == "weight" and m.rank > 1
                and m.initializer not in producers]


def _unique(names) -> list[str]:
    return list(dict.fromkeys(names))


def _listed(names: list[str], limit: int | None) -> str:
    """Layers in a module written once: `layer2.{0.conv2, 1.conv2}` (at most `limit` named)."""
    shown = names if limit is None or len(names) <= limit else names[:limit - 1]
    more = f" and {len(names) - len(shown)} more" if len(shown) < len(names) else ""
    prefix = common_prefix(names) if len(names) > 1 else ""
    if prefix and all(len(name) > len(prefix) + 1 and not numbered(name) for name in names):
        return prefix + name_separator(names[0], prefix) + "{" + ", ".join(n[len(prefix) + 1:] for n in shown) + more + "}"
    return ", ".join(shown) + more


def build_groups(state: AnalysisState) -> list[Group]:
    groups = _channel_groups(state)
    channel_of = {root: (group, i) for group in groups for i, root in enumerate(group.roots)}
    _add_members(state, channel_of)
    _add_grouped_columns(state, channel_of)
    _add_segments(state, channel_of)
    _add_pieces(state, channel_of)
    _add_flags(state, groups)
    _add_kinds(state, groups)
    _add_shared(state, groups)
    _add_touches(state, channel_of)
    _add_names(state, groups)
    return groups


def _add_names(state: AnalysisState, groups: list[Group]) -> None:
    """Names a person can use (spa.analyze.names): each member's reading layer, each group's
    making layers, the group's name and its block. A group made by several layers is named by
    the module they share, where that is more than the model itself (`layer2` for a ResNet
    stage's residual stream, `...attention.self` for a head's q, k and v projections), else by
    the first of them."""
    nodes = {node.name or node.outputs[0].name: node for node in state.graph.nodes if node.outputs}
    tensors = state.graph.tensors()
    for group in groups:
        for member in group.members:
            constant = tensors.get(member.initializer)
            found = readers(constant) if isinstance(constant, gs.Constant) else []
            member.layer = ", ".join(_unique(layer_name(node, member.initializer) for node in found))
        group.layers = _unique(layer_name(nodes[key]) for key in group.order if key in nodes) or sorted(group.makers)
    every = [layer for group in groups for layer in group.layers]
    root = common_prefix(every) if len(every) > 1 else ""
    for group in groups:
        prefix = common_prefix(group.layers) if len(group.layers) > 1 else ""
        blocks = _unique("" if numbered(layer) else block_of(layer, root) for layer in group.layers)
        named = len(prefix) > len(root) and not any(numbered(layer) for layer in group.layers) \
            and (len(blocks) == 1 or group.kind == "hidden")  # not a stream two blocks pass on, by their parent
        group.name = prefix if named else group.layers[0]
        group.block = blocks[0] if len(blocks) == 1 else block_of(group.name, root)


def _add_touches(state: AnalysisState, channel_of: dict) -> None:
    """Which nodes each group's channels flow through, and how much of each one channel is:
    what kernels its width is rounded for and how much latency a channel costs."""
    owner_group, _ = _owner_tables(state, channel_of)
    groups = {group.id: group for group, _ in channel_of.values()}
    for node in state.graph.nodes:
        if not node.outputs:
            continue
        shares: dict[int, float] = {}
        for tensor in list(node.inputs) + list(node.outputs):
            for labels in state.axes.get(tensor.name) or []:
                if labels is None or not len(labels):
                    continue
                owners = owner_group[state.space.roots(labels)]
                ids, counts = np.unique(owners[owners >= 0], return_counts=True)
                for gid, count in zip(ids.tolist(), counts.tolist()):
                    share = count / groups[gid].size / len(labels)
                    shares[gid] = max(shares.get(gid, 0.0), share)
        for gid, share in shares.items():
            groups[gid].touches[node.outputs[0].name] = share
            groups[gid].touch_ops.add(node.op)


def _add_shared(state: AnalysisState, groups: list[Group]) -> None:
    """Weights read by several nodes (a tied embedding, one layer used at every depth)."""
    readers: dict[str, int] = {}
    for node in state.graph.nodes:
        for name in {t.name for t in node.inputs if isinstance(t, gs.Constant)}:
            readers[name] = readers.get(name, 0) + 1
    for group in groups:
        for member in group.members:
            if readers.get(member.initializer, 0) > 1 and member.role == "weight" and member.rank > 1:
                group.shared[member.initializer] = readers[member.initializer]


def _add_kinds(state: AnalysisState, groups: list[Group]) -> None:
    head_dims: dict[int, int] = {}
    for label, positions in state.head_labels:
        root = state.space.find(label)
        head_dims[root] = min(positions, head_dims.get(root, positions))
    averaged = {int(root) for labels in state.averaged for root in state.space.roots(labels)}
    for group in groups:
        linear = bool(group.ops & LINEAR_OPS)
        dims = [head_dims[root] for root in group.roots if root in head_dims]
        normalized = not group.exact or any(root in averaged for root in group.roots)  # by a norm, exact or not
        if dims and linear:
            group.kind, group.head_dim = "heads", min(dims)
        elif linear and normalized and len(group.makers) > 1:  # several layers write it: a residual stream
            group.kind = "hidden"
        else:
            group.kind = "mlp" if linear else "channels"


def _channel_groups(state: AnalysisState) -> list[Group]:
    """Channels listed in one weighted op's output belong to one group; groups sharing a
    channel (residual adds) merge."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    spaces = [(state.space.roots(labels), name, op) for labels, name, op in state.channel_spaces]
    for roots, _, _ in spaces:
        first = find(int(roots[0]))
        for root in roots[1:].tolist():
            parent[find(root)] = first
    by_component: dict[int, Group] = {}
    seen: set[int] = set()
    for roots, name, op in spaces:
        for root in roots.tolist():
            component = find(root)
            if component not in by_component:
                by_component[component] = Group(id=len(by_component), name=name, roots=[], node=name)
            group = by_component[component]
            group.ops.add(op)
            if name not in group.makers:
                group.order.append(name)
            group.makers.add(name)
            if root not in seen:
                seen.add(root)
                group.roots.append(root)
    return list(by_component.values())


def _add_members(state: AnalysisState, channel_of: dict) -> None:
    """Every initializer axis position whose channel belongs to a group joins that
    group's member for the initializer and axis."""
    tensors = state.graph.tensors()
    owner_group, owner_channel = _owner_tables(state, channel_of)
    groups = {group.id: group for group, _ in channel_of.values()}
    for name, axes in state.axes.items():
        if not isinstance(tensors.get(name), gs.Constant):
            continue
        for axis, labels in enumerate(axes):
            if labels is None:
                continue
            roots = state.space.roots(labels)
            owners = owner_group[roots]
            for gid in np.unique(owners[owners >= 0]).tolist():
                positions = np.flatnonzero(owners == gid)
                member = _member(groups[gid], name, axis)
                for position, channel in zip(positions.tolist(), owner_channel[roots[positions]].tolist()):
                    member.index[channel].append(position)
                member.role = _role(state, name)
                member.producer = (name, axis) in state.producers
                member.rank = len(axes)


def _owner_tables(state: AnalysisState, channel_of: dict) -> tuple[np.ndarray, np.ndarray]:
    """For every label: its group id and channel index (-1 where it has none)."""
    owner_group = np.full(len(state.space.parent), -1, dtype=np.int64)
    owner_channel = np.full(len(state.space.parent), -1, dtype=np.int64)
    for root, (group, channel) in channel_of.items():
        owner_group[root], owner_channel[root] = group.id, channel
    return owner_group, owner_channel


def _role(state: AnalysisState, name: str) -> str:
    if name in state.statistics:
        return "statistic"
    return "divisor" if name in state.divisors else "weight"


def _member(group: Group, name: str, axis: int, within_axis: int | None = None) -> Member:
    for member in group.members:
        if (member.initializer, member.axis, member.within_axis) == (name, axis, within_axis):
            return member
    member = Member(name, axis, [[] for _ in group.roots], within_axis,
                    [[] for _ in group.roots] if within_axis is not None else None)
    group.members.append(member)
    return member


def _add_grouped_columns(state: AnalysisState, channel_of: dict) -> None:
    tensors = state.graph.tensors()
    for columns in state.grouped_columns:
        rows = tensors[columns.weight].shape[0] // columns.groups
        per_group = len(columns.input_labels) // columns.groups
        for position, root in enumerate(state.space.roots(columns.input_labels).tolist()):
            if root not in channel_of:
                continue
            group, channel = channel_of[root]
            member = _member(group, columns.weight, 1, within_axis=0)
            segment = position // per_group
            if member.index[channel]:
                group.reasons.append(f"a channel feeds two groups of grouped Conv weight '{columns.weight}'")
            member.index[channel].append(position % per_group)
            member.within[channel] = list(range(segment * rows, (segment + 1) * rows))


def _add_segments(state: AnalysisState, channel_of: dict) -> None:
    for labels, groups in state.partitions:
        roots = state.space.roots(labels).tolist()
        owners = {channel_of[r][0].id: channel_of[r][0] for r in roots if r in channel_of}
        if not owners:
            continue
        group = next(iter(owners.values()))
        if len(owners) > 1 or any(r not in channel_of for r in roots) or len(set(roots)) != len(roots) \
                or len(roots) != group.size:
            for owner in owners.values():
                owner.reasons.append("a grouped Conv's segments do not match this group one to one")
            continue
        per = len(roots) // groups
        segments = [sorted(channel_of[r][1] for r in roots[k * per:(k + 1) * per]) for k in range(groups)]
        if group.segments is None:
            group.segments = segments
        elif sorted(map(tuple, group.segments)) != sorted(map(tuple, segments)):
            group.reasons.append("grouped Convs split the group in different segments")


def _add_pieces(state: AnalysisState, channel_of: dict) -> None:
    """An axis holding only part of a group's channels (a Split output, a Slice) must not
    lose all of them: record that part as a piece of the group."""
    groups = {g.id: g for g, _ in channel_of.values()}
    for axes in state.axes.values():
        for labels in axes or []:
            if labels is None:
                continue
            by_group: dict[int, set[int]] = {}
            for root in set(state.space.roots(labels).tolist()):
                if root not in channel_of:
                    break  # a channel no group removes: the axis never empties
                group, channel = channel_of[root]
                by_group.setdefault(group.id, set()).add(channel)
            else:
                _add_piece(by_group, groups)


def _add_piece(by_group: dict[int, set[int]], groups: dict[int, Group]) -> None:
    if not by_group or any(len(c) == groups[gid].size for gid, c in by_group.items()):
        return
    gid = max(by_group, key=lambda g: len(by_group[g]))
    piece = sorted(by_group[gid])
    if piece not in groups[gid].pieces:
        groups[gid].pieces.append(piece)


def _add_flags(state: AnalysisState, groups: list[Group]) -> None:
    for group in groups:
        for root in group.roots:
            _add_unique(group.reasons, state.space.fixed.get(root))
            _add_unique(group.inexact_reasons, state.space.inexact.get(root))


def _add_unique(reasons: list[str], reason: str | None, limit: int = 3) -> None:
    if reason and reason not in reasons and len(reasons) < limit:
        reasons.append(reason)
