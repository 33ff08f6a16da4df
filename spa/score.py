"""Stage 3, score: how important each channel of a group is (higher = keep).

Magnitude criteria sum, over the group's weight members, the norm of each channel's
slices: producer rows, consumer columns, biases and normalization scale/shift. Running
mean and variance (statistics) and constant divisors are not weights and are left out.
"""
from __future__ import annotations

import numpy as np

from spa.analyze import Analysis, Group, Member
from spa.errors import SpaError
from spa.load import read_values

CRITERIA = ("l1", "l2", "random")


def score_groups(analysis: Analysis, criterion: str, seed: int = 0) -> dict[int, np.ndarray]:
    """Per prunable group id: one score per channel."""
    if criterion not in CRITERIA:
        raise SpaError(f"unknown criterion '{criterion}' (choose from {', '.join(CRITERIA)})")
    rng = np.random.default_rng(seed)
    tensors = analysis.graph.tensors()
    scores = {}
    for group in analysis.groups:
        if criterion == "random":
            scores[group.id] = rng.random(group.size)
        else:
            scores[group.id] = magnitude(group, tensors, criterion)
    return scores


def magnitude(group: Group, tensors: dict, norm: str) -> np.ndarray:
    power = 1 if norm == "l1" else 2
    total = np.zeros(group.size)
    for member in group.members:
        if member.role != "weight":
            continue
        total += _member_powers(member, read_values(tensors[member.initializer]), power)
    return total if power == 1 else np.sqrt(total)


def _member_powers(member: Member, values: np.ndarray, power: int) -> np.ndarray:
    """Sum of |w|^power over each channel's slice of one member."""
    magnitudes = np.abs(values) if power == 1 else np.square(values)
    if member.within is None:
        moved = np.moveaxis(magnitudes, member.axis, 0).reshape(values.shape[member.axis], -1)
        per_position = moved.sum(axis=1, dtype=np.float64)
        channels = np.repeat(np.arange(len(member.index)), [len(index) for index in member.index])
        positions = np.fromiter((p for index in member.index for p in index), dtype=np.int64, count=len(channels))
        return np.bincount(channels, weights=per_position[positions], minlength=len(member.index))
    return np.array([_within_slice(magnitudes, member, i).sum(dtype=np.float64)
                     for i in range(len(member.index))])


def _within_slice(values: np.ndarray, member: Member, channel: int) -> np.ndarray:
    rows = np.take(values, member.within[channel], axis=member.within_axis)
    return np.take(rows, member.index[channel], axis=member.axis)
