"""Per-layer statistics of calibration activations: each batch's values go to the
accumulators and are dropped, so memory holds statistics only (spa.calibrate.frontier
runs the graph and feeds them)."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np


class Moments:
    """Per position of one axis: mean, variance and mean absolute value."""

    def __init__(self, axis: int) -> None:
        self.axis = axis
        self.count = 0
        self.total = self.squares = self.absolute = 0.0

    def __call__(self, values: np.ndarray) -> None:
        moved = np.moveaxis(values, self.axis, -1)
        rows = moved.reshape(-1, moved.shape[-1]).astype(np.float64)
        self.count += len(rows)
        self.total = self.total + rows.sum(axis=0)
        self.squares = self.squares + np.square(rows).sum(axis=0)
        self.absolute = self.absolute + np.abs(rows).sum(axis=0)

    @property
    def mean(self) -> np.ndarray:
        return self.total / max(self.count, 1)

    @property
    def variance(self) -> np.ndarray:
        return np.maximum(self.squares / max(self.count, 1) - np.square(self.mean), 0.0)

    @property
    def root_mean_square(self) -> np.ndarray:
        return np.sqrt(self.squares / max(self.count, 1))

    @property
    def mean_abs(self) -> np.ndarray:
        return self.absolute / max(self.count, 1)


class Hessian:
    """H = Σ f fᵀ over the feature rows `features(x)` of every batch: each chunk's product
    in float32 (fast, a few thousand rows), the running sum in float64. Each chunk is scaled
    by a power of two before the product and back after, so values far from 1 (1e30) neither
    overflow nor lose precision in float32.

    While there are at most half as many rows as features (a wide layer late in a CNN, or
    few samples), the rows themselves are kept too (`rows`): H then has low rank, and its
    damped inverse costs far less through them (spa.criteria.obs.inverse_hessian)."""

    def __init__(self, features: Callable[[np.ndarray], np.ndarray]) -> None:
        self.features = features
        self.matrix: np.ndarray | None = None
        self.count = 0
        self.kept_rows: list[np.ndarray] | None = []
        self.derived: dict = {}  # what criteria compute from the matrix (its inverse), to compute it once

    @property
    def rows(self) -> np.ndarray | None:
        """X with H = XᵀX (float64), while it has at most half as many rows as columns."""
        return np.concatenate(self.kept_rows) if self.kept_rows else None

    def __call__(self, values: np.ndarray) -> None:
        for chunk in np.array_split(values, max(1, values.shape[0] // 8)):  # bound im2col memory
            rows = self.features(chunk).astype(np.float32, copy=False)
            scale = 2.0 ** np.floor(np.log2(max(float(np.max(np.abs(rows), initial=0.0)), 1e-30)))
            rows = rows * np.float32(1 / scale)  # a power of two: exact (and a copy: `values` stays as it was)
            self.count += len(rows)
            self._keep(rows, scale)
            product = (rows.T @ rows).astype(np.float64)
            del rows
            product *= scale ** 2
            if self.matrix is None:
                self.matrix = product
            else:
                self.matrix += product

    def _keep(self, rows: np.ndarray, scale: float) -> None:
        if self.kept_rows is not None and 2 * self.count <= rows.shape[1]:
            self.kept_rows.append(rows.astype(np.float64) * scale)
        else:
            self.kept_rows = None
