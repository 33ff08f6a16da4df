"""Stage 4, select: how many channels each group loses, and which.

`removal_counts` turns a ratio into a count per group: `local` scope takes the ratio of
every group; `global` scope ranks cuts, each narrowing one group to its next allowed
(rounded) width by its lowest-scoring channels, by the mean normalized score of what they
remove, and makes them in order until `ratio` of all the groups' units is gone (a channel
weighs the units it stands for, `Group.units`: a head head_dim, a key/value head shared by
n query heads n*head_dim), never more than `max_ratio` of a group. `spa.targets` searches
the same cuts for MACs and parameter targets. `choose` then picks the lowest-scoring channels of a group;
criteria that pick as they compensate (obs, greedy) use `removal_rule`/`keep_rule`
instead, which enforce the same constraints: a grouped Conv's segments lose equally,
and every piece (a Split output) keeps a channel.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from spa.analyze import Group
from spa.errors import SpaError
from spa.latency import block_size

ROUND_AUTO = 0  # --round-to auto: each group rounded for the kernels its channels flow through
DEFAULT_ROUND_TO = ROUND_AUTO
CONV_OPS = {"Conv", "ConvTranspose", "QLinearConv", "ConvInteger"}
SCOPES = ("local", "global")


@dataclass
class Selection:
    ratio: float
    scope: str = "local"
    round_to: int = DEFAULT_ROUND_TO
    min_keep: int = 1
    max_ratio: float = 0.9  # global scope: no group loses more than this

    def check(self) -> None:
        check_ratio(self.ratio)
        if self.scope not in SCOPES:
            raise SpaError(f"unknown scope '{self.scope}' (choose from {', '.join(SCOPES)})")
        if self.round_to < 0 or self.min_keep < 1:
            raise SpaError("--round-to and --min-keep must be at least 1 (or --round-to auto)")
        if not 0 < self.max_ratio <= 1:
            raise SpaError(f"--max-ratio must be in (0, 1], got {self.max_ratio}")


def check_ratio(ratio: float) -> None:
    if not 0 <= ratio < 1:
        raise SpaError(f"ratio must be in [0, 1), got {ratio}")


def kept_count(size: int, ratio: float, round_to: int = 1, min_keep: int = 1) -> int:
    """Channels kept of `size`: size - floor(ratio*size), rounded to the nearest multiple
    of `round_to` (never zero, never above size), and at least `min_keep`."""
    return _rounded(size, size - math.floor(ratio * size + 1e-9), round_to, min_keep)


def _rounded(size: int, kept: int, round_to: int, min_keep: int) -> int:
    if round_to > 1 and kept < size:
        kept = min(size, max(round_to, round_to * math.floor(kept / round_to + 0.5)))
    return min(size, max(kept, min_keep, 1))


def removal_counts(groups: list[Group], scores: dict[int, np.ndarray], selection: Selection) -> dict[int, int]:
    """Per group id: how many channels to remove."""
    selection.check()
    if selection.scope == "local":
        return {g.id: _local_count(g, selection.ratio, selection) for g in groups}
    return _global_counts(groups, scores, selection)


def round_to_value(round_to: int | str) -> int:
    """An int from --round-to: "auto" is ROUND_AUTO."""
    if round_to == "auto":
        return ROUND_AUTO
    if isinstance(round_to, str) and not round_to.isdigit():
        raise SpaError(f"--round-to must be a whole number >= 1 or auto, got {round_to!r}")
    return int(round_to)


def round_to_name(round_to: int) -> str:
    return "auto" if round_to == ROUND_AUTO else str(round_to)


def kernel_round_to(group: Group) -> int:
    """--round-to auto for one group (tools/bench_widths.py measures why): channels a Conv
    reads or makes in multiples of onnxruntime's NCHWc block (16 with AVX-512, 8 with AVX2),
    since other widths leave its blocked kernels for a path 1.1-1.5x slower per MAC (dense)
    or 2.5-5x (depthwise); channels only Gemm/MatMul and elementwise ops see, any width
    (MatMul at odd widths runs within 3% of multiples of 16 per MAC)."""
    return block_size() if group.touch_ops & CONV_OPS else 1


def _unit(group: Group, round_to: int) -> int:
    if round_to == ROUND_AUTO:
        round_to = kernel_round_to(group)
    return round_to // math.gcd(round_to, group.width)  # a head of width 64 is 64 columns already


def _segment_unit(group: Group, round_to: int) -> int:
    """A grouped conv's group keeps the same number of channels in every segment, in steps of
    this: the kept total stays a multiple of the group's rounding unit, and with --round-to
    auto a segment that is a whole number of NCHWc blocks stays one (onnxruntime's blocked
    grouped-conv kernel needs per-group widths in multiples of the block; off it, a grouped
    conv runs 1.3-2.4x slower per MAC than at its base width, 1.0-1.4x on it:
    tools/bench_widths.py --ops grouped3x3)."""
    if round_to == ROUND_AUTO and group.touch_ops & CONV_OPS and len(group.segments[0]) % block_size() == 0:
        return block_size()
    unit = _unit(group, round_to)
    return unit // math.gcd(unit, len(group.segments))


def _local_count(group: Group, ratio: float, selection: Selection) -> int:
    round_to = _unit(group, selection.round_to)
    if group.segments is None:
        return group.size - kept_count(group.size, ratio, round_to, selection.min_keep)
    parts = len(group.segments)
    unit = _segment_unit(group, selection.round_to)  # kept per segment
    per_segment = len(group.segments[0])
    keep = kept_count(per_segment, ratio, unit, math.ceil(selection.min_keep / parts))
    return (per_segment - keep) * parts


@dataclass(frozen=True)
class Cut:
    """One step of global ranking: group `gid` narrows to its next allowed width."""
    gid: int
    removed: int  # channels the group has lost once this cut is made
    units: int  # units of width this cut removes (channels x the group's units per channel)
    score: float  # mean normalized score of the channels it removes (per unit saved, see ranked_cuts)


def ranked_cuts(groups: list[Group], scores: dict[int, np.ndarray], selection: Selection,
                savings: dict[int, float] | None = None) -> list[Cut]:
    """Every cut of every group, lowest mean score first. A group's cuts go from one allowed
    kept width to the next narrower one (rounded, above `min_keep` and `max_ratio`) and
    remove its lowest-scoring channels first, so they stay in order within the group.
    With `savings` (per group id: what one channel costs, e.g. in latency), cuts rank by
    score per unit saved instead: a cheap channel must score lower to go first."""
    weights = _relative(savings, groups) if savings is not None else {}
    per_group = [_cuts_of(g, scores[g.id], selection, weights.get(g.id, 1.0)) for g in groups]
    return list(heapq.merge(*per_group, key=lambda cut: cut.score))


def _relative(savings: dict[int, float], groups: list[Group]) -> dict[int, float]:
    """Savings over their mean (a group that saves nothing measurable weighs 1/1000 of it)."""
    positive = [savings[g.id] for g in groups if savings.get(g.id, 0.0) > 0]
    mean = float(np.mean(positive)) if positive else 1.0
    return {g.id: max(savings.get(g.id, 0.0) / mean, 1e-3) for g in groups}


def _cuts_of(group: Group, scores: np.ndarray, selection: Selection, weight: float = 1.0) -> list[Cut]:
    ascending = np.sort(np.asarray(scores, dtype=np.float64))
    cuts, done, floor = [], 0, -np.inf
    for removed in _allowed_removals(group, selection):
        floor = max(floor, float(ascending[done:removed].mean()))  # chunks of sorted scores never go down
        cuts.append(Cut(group.id, removed, (removed - done) * group.units, floor / weight))
        done = removed
    return cuts


def _allowed_removals(group: Group, selection: Selection) -> list[int]:
    """Channel counts the group may lose, ascending: the kept width is a multiple of its
    rounding unit (per segment for a grouped conv), at least `min_keep` and 1 - `max_ratio`."""
    parts = len(group.segments) if group.segments is not None else 1
    per_segment = group.size // parts
    unit = _segment_unit(group, selection.round_to) if group.segments is not None else _unit(group, selection.round_to)
    must_keep = max(selection.min_keep, math.ceil(group.size * (1 - selection.max_ratio) - 1e-9), 1)
    lowest = math.ceil(must_keep / parts)
    widest = (per_segment - 1) // unit * unit  # the widest rounded width below the full one
    return [(per_segment - kept) * parts for kept in range(widest, lowest - 1, -unit) if kept > 0]


def counts_after(groups: list[Group], cuts: list[Cut]) -> dict[int, int]:
    """Per group id: channels removed once `cuts` are made."""
    counts = {g.id: 0 for g in groups}
    for cut in cuts:
        counts[cut.gid] = max(counts[cut.gid], cut.removed)
    return counts


def total_units(groups: list[Group]) -> int:
    return sum(g.size * g.units for g in groups)


def _global_counts(groups: list[Group], scores: dict[int, np.ndarray], selection: Selection) -> dict[int, int]:
    """The ranked cuts, taken in order while each brings the removed units closer to `ratio`
    of all the groups' units."""
    goal = selection.ratio * total_units(groups)
    taken, removed_units = 0, 0
    for cut in (cuts := ranked_cuts(groups, scores, selection)):
        if removed_units + cut.units / 2 > goal:
            break
        taken += 1
        removed_units += cut.units
    return counts_after(groups, cuts[:taken])


def choose(group: Group, scores: np.ndarray, count: int) -> list[int]:
    """The `count` lowest-scoring channels the group's constraints allow."""
    if count <= 0:
        return []
    if group.segments is None:
        return _lowest(scores, list(range(group.size)), count, group.pieces)
    per = count // len(group.segments)
    per_segment = [_lowest(scores, segment, per, group.pieces) for segment in group.segments]
    balanced = min(len(removed) for removed in per_segment)  # pieces may forbid some: stay balanced
    return sorted(c for removed in per_segment for c in _lowest(scores, removed, balanced, []))


def _lowest(scores: np.ndarray, channels: list[int], count: int, pieces: list[list[int]]) -> list[int]:
    """The `count` lowest-scoring channels, skipping any whose removal would empty a piece."""
    return removable_in_order(sorted(channels, key=lambda c: (scores[c], c)), count, pieces)


def removable_in_order(candidates: list[int], count: int, pieces: list[list[int]]) -> list[int]:
    left = [len(piece) for piece in pieces]
    owners = _piece_owners(pieces)
    removed = []
    for channel in candidates:
        if len(removed) == count:
            break
        if all(left[p] > 1 for p in owners.get(channel, [])):
            removed.append(channel)
            for p in owners.get(channel, []):
                left[p] -= 1
    return sorted(removed)


def _piece_owners(pieces: list[list[int]]) -> dict[int, list[int]]:
    owners: dict[int, list[int]] = {}
    for p, piece in enumerate(pieces):
        for channel in piece:
            owners.setdefault(channel, []).append(p)
    return owners


def _segment_of(group: Group) -> dict[int, int]:
    return {c: s for s, segment in enumerate(group.segments or [list(range(group.size))]) for c in segment}


def removal_rule(group: Group, count: int) -> Callable[[int, set[int]], bool]:
    """For criteria removing channels one by one: may `channel` go, given `removed`?"""
    segment_of = _segment_of(group)
    quota = count // len(group.segments) if group.segments is not None else count
    owners = _piece_owners(group.pieces)

    def eligible(channel: int, removed: set[int]) -> bool:
        segment = segment_of[channel]
        taken = len(removed) if group.segments is None else sum(segment_of[c] == segment for c in removed)
        if taken >= quota:  # (one segment: every removed channel is in it, counted in O(1))
            return False
        return all(len(set(group.pieces[p]) - removed) > 1 for p in owners.get(channel, []))
    return eligible


def keep_rule(group: Group, count: int) -> Callable[[int, set[int]], bool]:
    """For criteria adding kept channels one by one: may `channel` be kept next, given
    `kept`? Leaves room for one channel of every piece not yet covered."""
    segment_of = _segment_of(group)
    parts = len(group.segments) if group.segments is not None else 1
    keep = group.size - count
    quota = keep // parts

    def eligible(channel: int, kept: set[int]) -> bool:
        segment = segment_of[channel]
        if sum(segment_of[c] == segment for c in kept) >= quota:
            return False
        uncovered = [piece for piece in group.pieces if not kept.intersection(piece)]
        return keep - len(kept) > len(uncovered) or any(channel in piece for piece in uncovered)
    return eligible
