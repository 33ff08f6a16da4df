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
        axis = self.axis % values.ndim
        others = tuple(k for k in range(values.ndim) if k != axis)  # reduced in place: no moved copy
        wide = values.astype(np.float64)
        self.count += values.size // max(values.shape[axis], 1)
        self.total = self.total + wide.sum(axis=others)
        self.squares = self.squares + np.square(wide, out=wide).sum(axis=others)
        self.absolute = self.absolute + np.sqrt(wide, out=wide).sum(axis=others)

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


PENDING_BYTES = 32 << 20  # feature rows gathered before one product (a batch of 1 gives few rows)


class Hessian:
    """H = Σ f fᵀ over the feature rows `features(x)` of every batch. Rows are gathered up
    to PENDING_BYTES, then multiplied in float32 (BLAS speed) and added to a float64 sum:
    a model with a static batch of 1 then does not pay one n x n float64 pass per sample.
    Each product's rows are scaled by a power of two before it and back after, so values
    far from 1 (1e30) neither overflow nor lose precision in float32.

    While there are at most half as many rows as features (a wide layer late in a CNN, or
    few samples), the rows themselves are kept instead (`rows`): H then has low rank, and its
    damped inverse costs far less through them (spa.criteria.obs.inverse_hessian), which
    needs only H's diagonal. The n x n matrix is then formed only where `matrix` is asked for.

    A layer with `gram` (a unit-stride Conv: spa.calibrate.shifted) gives (XᵀX, rows) for
    batches without forming their rows, and `shape` the (rows, n) they would have. Its
    batches wait, up to PENDING_BYTES of them, and become rows only where H has low rank."""

    def __init__(self, features: Callable[[np.ndarray], np.ndarray],
                 gram: Callable[[np.ndarray], tuple[np.ndarray, int]] | None = None,
                 shape: Callable[[tuple[int, ...]], tuple[int, int]] | None = None) -> None:
        self.features = features
        self.gram, self.shape = gram, shape
        self.width = 0  # n, once known
        self._waiting: list[np.ndarray] = []  # batches for `gram`
        self.count = 0
        self.derived: dict = {}  # what criteria compute from the matrix (its inverse), to compute it once
        self._sum: np.ndarray | None = None
        self._pending: list[np.ndarray] = []
        self._pending_max = 0.0  # largest |value| in the pending rows
        self._kept: list[np.ndarray] | None = []  # the rows while H has low rank (None past it)
        self._of_rows: np.ndarray | None = None  # H formed from the kept rows, once asked for

    @property
    def matrix(self) -> np.ndarray | None:
        self._flush()
        if self._kept is None:
            return self._sum
        if self._of_rows is None and self._kept:
            self._of_rows = _gram(self.rows)
        return self._of_rows

    @property
    def rows(self) -> np.ndarray | None:
        """X with H = XᵀX (float64), while it has at most half as many rows as columns."""
        self._flush()
        if self._kept and len(self._kept) > 1:
            self._kept = [np.concatenate(self._kept)]  # once: later reads share it
        return self._kept[0] if self._kept else None

    @property
    def diagonal(self) -> np.ndarray | None:
        """The diagonal of H, without forming H where it is kept as rows."""
        self._flush()
        if self._kept is None:
            return None if self._sum is None else np.diag(self._sum).copy()
        return gram_diagonal(rows) if (rows := self.rows) is not None else None

    def __call__(self, values: np.ndarray) -> None:
        self._of_rows = None
        if self.gram is not None:
            if self._waiting and self._waiting[0].shape[1:] != values.shape[1:]:
                self._flush()  # (batches of another size: one product cannot take both)
            rows, self.width = self.shape(values.shape)
            self.count += rows
            self._waiting.append(values)
            if 2 * self.count > self.width and sum(v.nbytes for v in self._waiting) >= PENDING_BYTES:
                self._flush()
            return
        for chunk in np.array_split(values, max(1, values.shape[0] // 8)):  # bound im2col memory
            rows = self.features(chunk).astype(np.float32, copy=False)
            self._pending.append(rows.copy() if np.shares_memory(rows, chunk) else rows)  # scaled in place later
            self._pending_max = max(self._pending_max, float(rows.max(initial=0.0)), -float(rows.min(initial=0.0)))
            self.count += len(rows)
            if sum(r.nbytes for r in self._pending) >= PENDING_BYTES:
                self._flush()

    def _flush(self) -> None:
        self._flush_rows()
        if not self._waiting:
            return
        batches, self._waiting = self._waiting, []
        if self._kept is not None and 2 * self.count <= self.width:  # low rank still: rows only
            self._kept.extend(self.features(batch).astype(np.float64) for batch in batches)
            return
        product, _ = self.gram(np.concatenate(batches) if len(batches) > 1 else batches[0])
        self._leave_low_rank()
        self._sum = product if self._sum is None else np.add(self._sum, product, out=self._sum)

    def _leave_low_rank(self) -> None:
        """Past low rank: the rows kept so far join the sum."""
        if self._kept:
            self._sum = _gram(np.concatenate(self._kept))
        self._kept = self._of_rows = None

    def _flush_rows(self) -> None:
        if not self._pending:
            return
        pieces, self._pending = self._pending, []
        scale = 2.0 ** np.floor(np.log2(max(self._pending_max, 1e-30)))
        self._pending_max = 0.0
        if self._kept is not None and 2 * self.count <= pieces[0].shape[1]:  # low rank still: rows only
            self._kept.extend(rows.astype(np.float64) for rows in pieces)
            return
        from scipy.linalg import blas  # here: scipy.linalg takes 0.1 s to import, which only data criteria need
        self._leave_low_rank()
        product = None
        for rows in pieces:
            rows *= np.float32(1 / scale)  # a power of two: exact
            # XᵀX by BLAS's symmetric rank-k update: half a matrix product's work, added in
            # place (the Fortran-order n x n sum gets only its upper triangle, its lower in C order)
            product = blas.ssyrk(1.0, rows.T, beta=1.0, c=product, overwrite_c=1) if product is not None \
                else blas.ssyrk(1.0, rows.T)
        del pieces, rows
        product = product.T  # C order, lower triangle filled
        mirror_lower(product)
        if self._sum is None:
            self._sum = np.zeros(product.shape)
        if 1e-30 < scale ** 2 < 1e30:  # entries are at most the row count: float32 holds them times scale²
            product *= np.float32(scale ** 2)  # a power of two: exact
            self._sum += product  # cast while adding: no float64 copy of an n x n matrix
        else:
            self._sum += product.astype(np.float64) * scale ** 2


def gram_diagonal(rows: np.ndarray) -> np.ndarray:
    """diag(XᵀX): each column's sum of squares, without forming XᵀX (or copying X)."""
    return np.einsum("ij,ij->j", rows, rows)


def _gram(rows: np.ndarray) -> np.ndarray:
    """XᵀX of float64 rows, by BLAS's symmetric rank-k update (C order, both triangles)."""
    from scipy.linalg import blas
    product = blas.dsyrk(1.0, rows.T).T  # C order, lower triangle filled
    mirror_lower(product)
    return product


MIRROR_ROWS = 512  # rows copied at a time: no n x n index arrays or temporaries


def mirror_lower(matrix: np.ndarray) -> None:
    """Copy the lower triangle of a square matrix onto its upper one, in place."""
    n = len(matrix)
    for start in range(0, n, MIRROR_ROWS):
        stop = min(start + MIRROR_ROWS, n)
        block = matrix[start:stop, start:stop]
        block[...] = np.tril(block) + np.tril(block, -1).T
        matrix[start:stop, stop:] = matrix[stop:, start:stop].T
