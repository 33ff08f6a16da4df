"""Criteria that read weights only: random, l1, l2 (the default), l2-balanced and bn-scale."""
from __future__ import annotations

import numpy as np

from spa.analyze import Group, Member
from spa.criteria.base import Criterion, WeightView, register
from spa.io.load import read_values


@register
class Random(Criterion):
    name = "random"

    def weight_scores(self, weights: WeightView, group: Group) -> tuple[list[np.ndarray], str | None]:
        return [weights.rng.random(group.size)], None


@register
class L1(Criterion):
    name = "l1"
    power = 1

    def weight_scores(self, weights: WeightView, group: Group) -> tuple[list[np.ndarray], str | None]:
        return [member_powers(m, read_values(weights.tensors[m.initializer]), self.power)
                for m in group.members if m.role == "weight"], None


@register
class L2(L1):
    name = "l2"
    power = 2


@register
class L2Balanced(Criterion):
    """l2 with every weight member weighed alike: each member's per-channel sums of w² are
    divided by their mean over the group's channels before they are added, so a layer (a
    wide consumer, a BatchNorm shift) does not outvote the others by its scale alone."""
    name = "l2-balanced"

    def weight_scores(self, weights: WeightView, group: Group) -> tuple[list[np.ndarray], str | None]:
        energies = [member_powers(m, read_values(weights.tensors[m.initializer]), 2)
                    for m in group.members if m.role == "weight"]
        return [e / e.mean() if e.mean() > 0 else e for e in energies], None


@register
class BnScale(Criterion):
    name = "bn-scale"

    def weight_scores(self, weights: WeightView, group: Group) -> tuple[list[np.ndarray], str | None]:
        scales = [m for m in group.members if any(n.op == "BatchNormalization" and n.inputs[1].name == m.initializer
                                                  for n in weights.readers.get(m.initializer, []))]
        if not scales:
            return [], "no BatchNormalization scale in this group"
        return [member_powers(m, read_values(weights.tensors[m.initializer]), 1) for m in scales], None


def member_powers(member: Member, values: np.ndarray, power: int) -> np.ndarray:
    """Sum of |w|^power over each channel's slice of one member."""
    # in float64: squares of float32 denormals (dead channels of trained models) are not 0
    magnitudes = np.abs(values, dtype=np.float64) if power == 1 else np.square(values, dtype=np.float64)
    if member.within is None:
        per_position = magnitudes.sum(axis=tuple(a for a in range(values.ndim) if a != member.axis))
        channels = np.repeat(np.arange(len(member.index)), [len(index) for index in member.index])
        positions = np.fromiter((p for index in member.index for p in index), dtype=np.int64, count=len(channels))
        return np.bincount(channels, weights=per_position[positions], minlength=len(member.index))
    return np.array([_within_slice(magnitudes, member, i).sum(dtype=np.float64)
                     for i in range(len(member.index))])


def _within_slice(values: np.ndarray, member: Member, channel: int) -> np.ndarray:
    rows = np.take(values, member.within[channel], axis=member.within_axis)
    return np.take(rows, member.index[channel], axis=member.axis)
