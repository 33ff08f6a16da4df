"""Stage 4, select: which channels of each group to remove."""
from __future__ import annotations

import math

import numpy as np

from spa.analyze import DEFAULT_TARGETS, Analysis, Group
from spa.errors import SpaError

DEFAULT_ROUND_TO = 16  # tools/bench_widths.py: only multiples of 16 track MACs on AVX-512


def kept_count(size: int, ratio: float, round_to: int = 1, min_keep: int = 1) -> int:
    """Channels kept of `size`: size - floor(ratio*size), rounded to the nearest multiple
    of `round_to` (never zero, never above size), and at least `min_keep`."""
    kept = size - math.floor(ratio * size + 1e-9)
    if round_to > 1 and kept < size:
        kept = min(size, max(round_to, round_to * math.floor(kept / round_to + 0.5)))
    return min(size, max(kept, min_keep, 1))


def select_channels(analysis: Analysis, scores: dict[int, np.ndarray], ratio: float,
                    round_to: int = 1, min_keep: int = 1, include_inexact: bool = False,
                    targets: tuple[str, ...] = DEFAULT_TARGETS) -> dict[int, list[int]]:
    """Per group id, the channel indices to remove (lowest scores first)."""
    check_ratio(ratio)
    removed = {}
    for group in analysis.prunable_groups(include_inexact, targets):
        removed[group.id] = _remove_from_group(group, scores[group.id], ratio, round_to, min_keep)
    return removed


def check_ratio(ratio: float) -> None:
    if not 0 <= ratio < 1:
        raise SpaError(f"ratio must be in [0, 1), got {ratio}")


def _remove_from_group(group: Group, scores: np.ndarray, ratio: float, round_to: int,
                       min_keep: int) -> list[int]:
    round_to //= math.gcd(round_to, group.width)  # a head of width 64 is 64 columns already
    if group.segments is None:
        keep = kept_count(group.size, ratio, round_to, min_keep)
        return _lowest(scores, list(range(group.size)), group.size - keep, group.pieces)
    parts = len(group.segments)
    unit = round_to // math.gcd(round_to, parts)  # kept per segment, so the total is a multiple
    keep = kept_count(len(group.segments[0]), ratio, unit, math.ceil(min_keep / parts))
    per_segment = [_lowest(scores, segment, len(segment) - keep, group.pieces) for segment in group.segments]
    count = min(len(removed) for removed in per_segment)  # pieces may forbid some: stay balanced
    return sorted(c for removed in per_segment for c in _lowest(scores, removed, count, []))


def _lowest(scores: np.ndarray, channels: list[int], count: int, pieces: list[list[int]]) -> list[int]:
    """The `count` lowest-scoring channels, skipping any whose removal would empty a piece."""
    return removable_in_order(sorted(channels, key=lambda c: (scores[c], c)), count, pieces)


def removable_in_order(candidates: list[int], count: int, pieces: list[list[int]]) -> list[int]:
    left = [len(piece) for piece in pieces]
    owners: dict[int, list[int]] = {}
    for p, piece in enumerate(pieces):
        for channel in piece:
            owners.setdefault(channel, []).append(p)
    removed = []
    for channel in candidates:
        if len(removed) == count:
            break
        if all(left[p] > 1 for p in owners.get(channel, [])):
            removed.append(channel)
            for p in owners.get(channel, []):
                left[p] -= 1
    return sorted(removed)
