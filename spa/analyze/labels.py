"""Channel labels: a union-find over positions along tensor axes.

Every static axis that can carry channels holds an array of integer labels, one per
position. Two positions with labels in the same class are the same channel: they are
removed together. A class may be *fixed* (it must be kept, with a reason) or *inexact*
(removing it is valid but changes the outputs of the remaining channels, e.g. LayerNorm
statistics). Flags travel with unions.
"""
from __future__ import annotations

import numpy as np

Labels = np.ndarray  # 1-D int64 array, one label per position along an axis


class LabelSpace:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.fixed: dict[int, str] = {}
        self.inexact: dict[int, str] = {}
        self._root_table: np.ndarray | None = None  # every label's root, once unions are done

    def new(self, count: int) -> Labels:
        self._root_table = None
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        return np.arange(start, start + count, dtype=np.int64)

    def find(self, label: int) -> int:
        parent = self.parent
        while parent[label] != label:
            parent[label] = parent[parent[label]]
            label = parent[label]
        return label

    def roots(self, labels: Labels) -> np.ndarray:
        if self._root_table is not None:
            return self._root_table[labels]
        return np.fromiter((self.find(int(x)) for x in labels), dtype=np.int64, count=len(labels))

    def freeze(self) -> None:
        """Tabulate every root, making `roots` a lookup until the next union."""
        self._root_table = np.fromiter((self.find(x) for x in range(len(self.parent))),
                                       dtype=np.int64, count=len(self.parent))

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        self._root_table = None
        if ra > rb:  # keep the older label as root: stable, readable ids
            ra, rb = rb, ra
        self.parent[rb] = ra
        for flags in (self.fixed, self.inexact):
            if rb in flags:
                flags.setdefault(ra, flags.pop(rb))
        return ra

    def unify(self, a: Labels, b: Labels) -> None:
        """Position i of `a` and position i of `b` are the same channel."""
        if len(a) != len(b):
            raise ValueError(f"cannot unify axes of sizes {len(a)} and {len(b)}")
        for x, y in zip(a.tolist(), b.tolist()):
            if x != y:
                self.union(x, y)

    def merge_all(self, labels: Labels) -> int:
        """Make every position in `labels` one channel; returns its root."""
        first = int(labels[0])
        for x in labels[1:].tolist():
            self.union(first, x)
        return self.find(first)

    def fix(self, labels: Labels, reason: str) -> None:
        for x in labels.tolist():
            self.fixed.setdefault(self.find(x), reason)

    def mark_inexact(self, labels: Labels, reason: str) -> None:
        for x in labels.tolist():
            self.inexact.setdefault(self.find(x), reason)

    def fixed_reason(self, label: int) -> str | None:
        return self.fixed.get(self.find(label))

    def inexact_reason(self, label: int) -> str | None:
        return self.inexact.get(self.find(label))
