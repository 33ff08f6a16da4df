"""Groups: channels coupled by the analysis, with the parameter slices each one owns."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from spa.analyze.context import AnalysisState


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

    def to_json(self) -> dict:
        data = {"initializer": self.initializer, "axis": self.axis, "index": self.index}
        if self.within is not None:
            data.update(within_axis=self.within_axis, within=self.within)
        data["role"] = self.role
        if self.role == "divisor":
            data["neutral"] = 1.0
        return data


@dataclass
class Group:
    id: int
    name: str  # the node whose output channels started the group
    roots: list[int]  # channel i is the label class roots[i]
    members: list[Member] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)  # why it is kept whole
    inexact_reasons: list[str] = field(default_factory=list)
    segments: list[list[int]] | None = None  # grouped conv: equal removal from each segment
    pieces: list[list[int]] = field(default_factory=list)  # each must keep a channel (Split outputs)

    @property
    def size(self) -> int:
        return len(self.roots)

    @property
    def prunable(self) -> bool:
        return not self.reasons

    @property
    def exact(self) -> bool:
        return not self.inexact_reasons

    def to_json(self) -> dict:
        data = {"id": self.id, "name": self.name, "size": self.size, "prunable": self.prunable,
                "reason": "; ".join(self.reasons) or None, "exact": self.exact,
                "inexact_reason": "; ".join(self.inexact_reasons) or None,
                "members": [m.to_json() for m in self.members]}
        if self.segments is not None:
            data["segments"] = self.segments
        if self.pieces:
            data["pieces"] = self.pieces
        return data


def build_groups(state: AnalysisState) -> list[Group]:
    groups = _channel_groups(state)
    channel_of = {root: (group, i) for group in groups for i, root in enumerate(group.roots)}
    _add_members(state, channel_of)
    _add_grouped_columns(state, channel_of)
    _add_segments(state, channel_of)
    _add_pieces(state, channel_of)
    _add_flags(state, groups)
    return groups


def _channel_groups(state: AnalysisState) -> list[Group]:
    """Channels listed in one weighted op's output belong to one group; groups sharing a
    channel (residual adds) merge."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    spaces = [(state.space.roots(labels), name) for labels, name in state.channel_spaces]
    for roots, _ in spaces:
        first = find(int(roots[0]))
        for root in roots[1:].tolist():
            parent[find(root)] = first
    by_component: dict[int, Group] = {}
    for roots, name in spaces:
        for root in roots.tolist():
            component = find(root)
            if component not in by_component:
                by_component[component] = Group(id=len(by_component), name=name, roots=[])
            group = by_component[component]
            if root not in group.roots:
                group.roots.append(root)
    return list(by_component.values())


def _add_members(state: AnalysisState, channel_of: dict) -> None:
    tensors = state.graph.tensors()
    for name, axes in state.axes.items():
        if not isinstance(tensors.get(name), gs.Constant):
            continue
        for axis, labels in enumerate(axes):
            if labels is None:
                continue
            for position, root in enumerate(state.space.roots(labels).tolist()):
                if root in channel_of:
                    group, channel = channel_of[root]
                    member = _member(group, name, axis)
                    member.index[channel].append(position)
                    member.role = _role(state, name)


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
                _add_piece(by_group, channel_of)


def _add_piece(by_group: dict[int, set[int]], channel_of: dict) -> None:
    groups = {g.id: g for g, _ in channel_of.values()}
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
