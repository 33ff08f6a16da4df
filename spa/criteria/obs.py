"""Optimal-Brain-Surgeon structured pruning with weight compensation, and forward selection.

A layer computes y = W x with W of shape [out, n]; calibration inputs X (n x samples) give
the Hessian H = X X^T of the output error E(W') = ||W X - W' X||^2 = tr((W - W') H (W - W')^T).
Channel c owns the columns q = blocks[c]. Deleting it (W'_q = 0) while letting every other
column compensate optimally raises E by

    tr(W_q (Hinv_qq)^-1 W_q^T),    Hinv = H^-1,

and the optimal compensation, followed by the update of Hinv to the inverse of the Hessian
of the remaining columns, is

    W    <- W    - W_q      (Hinv_qq)^-1 Hinv_{q,:}      (then W_{:,q} = 0 exactly)
    Hinv <- Hinv - Hinv_{:,q} (Hinv_qq)^-1 Hinv_{q,:}.

These block-elimination steps compose exactly, so any sequence of removals ends at the
closed-form least-squares refit of the kept columns S, W'_S = W H_{:,S} H_SS^-1, whatever
the order (`remove_channels` applies them to a given set; `obs_prune` picks the cheapest channel
each time). `obs_costs` reports half the error increase (the usual OBS convention). A group
of channels read by several layers is handled by summing costs over layers and removing
the same channel from each. Columns outside every block (e.g. a constant-1 column that
represents a bias) are never removed but do take part in compensation.

`greedy_keep` is the constructive counterpart: forward selection of the channels to keep.
It runs the same elimination on H itself, maintaining the residual covariance
R = H - H_{:,S} H_SS^-1 H_{S,:} and A = W H - (W H)_{:,S} H_SS^-1 H_{S,:}; adding block q to
S lowers the error by tr(A_{:,q} (R_qq)^-1 A_{:,q}^T). `greedy_gains` turns the gains of a full
forward pass into per-channel scores; `greedy_keep` stops at `keep` channels and refits.

Safeguards (`damped`):
* Dead inputs, columns whose diagonal of H is 0 (never nonzero on the calibration data), get
  diagonal 1 so H is invertible; their rows and columns of H stay 0, so they are decoupled from
  the others and their weights never leak into compensation. As their weights cannot change
  the output on the data, costs and gains ignore them (cost 0). Kept ones are left unchanged.
* Ridge damping: damping * mean(diag H) (after the fix above) is added to the diagonal, as
  GPTQ/SparseGPT do. It makes a rank-deficient H (duplicate or collinear inputs, fewer samples
  than inputs) well conditioned and keeps compensation moderate; `inverse_hessian` retries
  with 10x the damping while Cholesky still fails. damping=0 gives the exact least-squares solution but
  needs a full-rank H. `greedy_keep` adds a further tiny ridge to R_qq so a channel that
  duplicates a kept one has ~0 gain instead of a singular solve.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from spa.calibrate.collect import gram_diagonal, mirror_lower
from spa.errors import SpaError

DEFAULT_DAMPING = 0.01
RETRIES = 4        # Cholesky attempts after the first, each with 10x the damping
RIDGE = 1e-9       # greedy_keep's guard on R_qq, relative to mean(diag H)


@dataclass
class Layer:
    weight: np.ndarray        # [out, n] float64, updated in place by pruning
    hessian: np.ndarray | None  # [n, n] float64, raw X X^T (damping is applied by the functions)
    blocks: list[np.ndarray]  # per channel: the column indices it owns
    inverse: Inverse | None = None  # inverse_hessian(hessian, damping), if already computed (read only)
    diagonal: np.ndarray | None = None  # diag(H): with `inverse`, all OBS needs (hessian may then be None)

    def inverse_hessian(self, damping: float) -> Inverse:
        return self.inverse if self.inverse is not None else inverse_hessian(self.hessian, damping)

    def dead(self) -> np.ndarray:
        """Inputs that are 0 on every calibration row."""
        return self.diagonal <= 0 if self.diagonal is not None else _dead(self.hessian)


def damped(hessian: np.ndarray, damping: float = DEFAULT_DAMPING) -> np.ndarray:
    """Copy of H with dead inputs given diagonal 1, plus damping * mean(diag) on the diagonal."""
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    h = np.add(hessian, hessian.T, dtype=np.float64)
    h *= 0.5
    diag = np.diag(h).copy()
    diag[_dead(hessian)] = 1.0
    np.fill_diagonal(h, diag + (damping * diag.mean() if diag.size else 0.0))
    return h


def inverse_hessian(hessian: np.ndarray | None, damping: float = DEFAULT_DAMPING,
                    rows: np.ndarray | None = None) -> Inverse:
    """Inverse of damped(H) via Cholesky, raising the damping tenfold while Cholesky fails.
    Given the rows X of H = XᵀX, fewer than the columns, by the Woodbury identity instead,
    kept factored (LowRankInverse); H itself is then not needed (None)."""
    if rows is not None and damping > 0:
        return _low_rank_inverse(rows, damping)
    tried = []
    for _ in range(RETRIES + 1):
        inverse = _positive_definite_inverse(damped(hessian, damping))
        if inverse is not None:
            return inverse
        tried.append(damping)
        damping = max(damping * 10, 1e-6)
    raise SpaError(
        f"Hessian is not positive definite even with damping {', '.join(f'{d:g}' for d in tried)}; "
        "check the calibration statistics for NaN/inf or a non-PSD matrix")


def _positive_definite_inverse(matrix: np.ndarray) -> np.ndarray | None:
    """The inverse of a symmetric float64 matrix, computed in its own memory by LAPACK's
    Cholesky factorization (potrf) and inverse from it (potri); None where it is not
    positive definite. n x n matrices are the peak memory of pruning a wide layer: numpy's
    cholesky and inv would each add two more, and inv would run a full LU on the factor."""
    from scipy.linalg import lapack  # here: scipy.linalg takes 0.1 s to import, which only data criteria need
    factor, info = lapack.dpotrf(matrix.T, lower=True, clean=False, overwrite_a=True)  # .T: Fortran order, same values
    if info != 0:
        return None
    inverse, info = lapack.dpotri(factor, lower=True, overwrite_c=True)
    if info != 0:
        return None
    mirror_lower(inverse)
    return inverse.T  # C order again (symmetric)


def _low_rank_inverse(rows: np.ndarray, damping: float) -> LowRankInverse:
    """damped(H)⁻¹ for H = XᵀX with X [r, n], r < n: damped(H) = E + XᵀX with E diagonal
    (damping, and 1 for dead inputs), so its inverse is E⁻¹ - Yᵀ(I + X Yᵀ)⁻¹Y with
    Y = X E⁻¹: an r x r Cholesky and an r x n factor, never an n x n matrix."""
    diag = gram_diagonal(rows)  # diag(H)
    dead = diag <= 0
    diag[dead] = 1.0
    extra = dead + damping * diag.mean()  # E: what damped() adds to the diagonal of H
    scaled = rows / extra  # Y
    lower = np.linalg.cholesky(np.eye(len(rows)) + scaled @ rows.T)
    factor = np.linalg.solve(lower, scaled)  # L⁻¹Y: Yᵀ(LLᵀ)⁻¹Y = factorᵀ factor
    return LowRankInverse(1 / extra, factor)


@dataclass
class LowRankInverse:
    """An inverse Hessian as diag(diagonal) - factorᵀ factor (factor [r, n], r < n): what
    `_low_rank_inverse` gives, kept in r·n numbers instead of n x n (a 8192-wide layer on
    1024 samples: 64 MiB instead of 512)."""
    diagonal: np.ndarray  # [n]
    factor: np.ndarray  # [r, n]

    def __len__(self) -> int:
        return len(self.diagonal)

    def blocks(self, index: np.ndarray) -> np.ndarray:
        """The [m, k, k] diagonal blocks at the rows and columns of each row of `index` [m, k]."""
        part = self.factor.T[index]  # [m, k, r]
        out = -(part @ part.transpose(0, 2, 1))
        out += self.diagonal[index][:, :, None] * np.eye(index.shape[1])
        return out

    def dense(self) -> np.ndarray:
        out = -(self.factor.T @ self.factor)
        out[np.diag_indices_from(out)] += self.diagonal
        return out


Inverse = np.ndarray | LowRankInverse


def _diagonal_blocks(inverse: Inverse, index: np.ndarray) -> np.ndarray:
    """[m, k, k]: the blocks of `inverse` at the rows and columns of each row of `index`."""
    if isinstance(inverse, LowRankInverse):
        return inverse.blocks(index)
    return inverse[index[:, :, None], index[:, None, :]]


def obs_costs(layers: list[Layer], damping: float = DEFAULT_DAMPING) -> np.ndarray:
    """Per channel: summed over layers, 0.5 * the output-error increase of removing it alone."""
    channels = list(range(_channel_count(layers)))
    hinvs = [layer.inverse_hessian(damping) for layer in layers]
    return _costs(layers, hinvs, channels)


def obs_prune(layers: list[Layer], count: int,
              eligible: Callable[[int, set[int]], bool] | None = None,
              damping: float = DEFAULT_DAMPING, max_steps: int = 64) -> list[int]:
    """Backward elimination of `count` channels with compensation; returns the sorted removed ones.

    Each step removes the ceil(count / max_steps) cheapest channels that `eligible(c, removed)`
    allows (checked one by one against the growing removed set), then recomputes costs; stops
    early when no channel is eligible. Weights are updated in place, removed columns exactly 0.
    """
    total = _channel_count(layers)
    inverses = [_Eliminated(layer.inverse_hessian(damping), layer.blocks, count) for layer in layers]
    per_step = math.ceil(count / max(max_steps, 1)) if count > 0 else 0
    # dead inputs are decoupled from the rest in H⁻¹, so their weights take no part in any
    # update of the others: held at 0 meanwhile, costs read the weight as the data sees it
    dead = [layer.dead() for layer in layers]
    held = [layer.weight[:, mask].copy() for layer, mask in zip(layers, dead)]
    for layer, mask in zip(layers, dead):
        layer.weight[:, mask] = 0.0
    removed: set[int] = set()
    while len(removed) < min(count, total):
        candidates = [c for c in range(total) if c not in removed]
        costs = 0.5 * sum(inverse.costs(layer.weight, candidates) for layer, inverse in zip(layers, inverses))
        picked = _pick(candidates, costs, min(per_step, count - len(removed)), removed, eligible)
        if not picked:
            break
        for layer, inverse in zip(layers, inverses):
            inverse.eliminate(layer.weight, _columns(layer.blocks, picked))
        removed.update(picked)
    for layer, mask, values in zip(layers, dead, held):
        layer.weight[:, mask] = values
        layer.weight[:, _columns(layer.blocks, sorted(removed))] = 0.0
    return sorted(removed)


class _Eliminated:
    """H⁻¹ while blocks of columns are removed. Each removal of columns q is the Schur
    complement H⁻¹ -= H⁻¹_{:,q} (H⁻¹_qq)⁻¹ H⁻¹_{q,:}; `_DenseColumns` (a full inverse) or
    `_LowRankColumns` (a factored one) keep that in a form where a step costs far less than
    rewriting the n x n matrix, and give H⁻¹_{:,q} now (`now`, then `remove`). The
    diagonal blocks of the channels, all that the costs read, are kept up to date here."""

    def __init__(self, inverse: Inverse, blocks: list[np.ndarray], count: int) -> None:
        if isinstance(inverse, LowRankInverse):
            self.columns: _DenseColumns | _LowRankColumns = _LowRankColumns(inverse)
        else:
            widest = sorted((len(b) for b in blocks), reverse=True)[:count]
            self.columns = _DenseColumns(inverse, sum(widest))
        self.total = len(blocks)
        self.by_size: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for size in {len(b) for b in blocks} - {0}:
            channels = np.array([c for c, b in enumerate(blocks) if len(b) == size], dtype=np.intp)
            index = np.array([np.asarray(blocks[c], dtype=np.intp) for c in channels])  # [m, k]
            self.by_size[size] = (channels, index, _diagonal_blocks(inverse, index))  # [m, k, k]

    def costs(self, weight: np.ndarray, channels: list[int]) -> np.ndarray:
        """tr(W_q (H⁻¹_qq)⁻¹ W_qᵀ) per channel."""
        out = np.zeros(len(channels))
        where = np.full(self.total, -1, dtype=np.intp)  # channel -> its place in `channels`
        where[channels] = np.arange(len(channels))
        for members, index, diagonal in self.by_size.values():
            rows = np.flatnonzero(where[members] >= 0)
            if rows.size:
                out[where[members[rows]]] = _traces(weight, index[rows], diagonal[rows])
        return out

    def eliminate(self, weight: np.ndarray, q: np.ndarray) -> None:
        """Remove columns q: W -= W_q (H⁻¹_qq)⁻¹ H⁻¹_{q,:}, H⁻¹ -= H⁻¹_{:,q} (H⁻¹_qq)⁻¹ H⁻¹_{q,:}."""
        if not q.size:
            return
        column = self.columns.now(q)  # H⁻¹_{:,q}
        block = (column[q] + column[q].T) / 2
        values, vectors = np.linalg.eigh(block)
        root = vectors / np.sqrt(np.maximum(values, 1e-12 * max(float(values.max()), 1e-300)))  # (H⁻¹_qq)⁻¹ = root rootᵀ
        added = column @ root
        _add_outer(weight, weight[:, q] @ root, added, -1.0)
        weight[:, q] = 0.0
        self.columns.remove(added, root)
        for _, index, diagonal in self.by_size.values():
            part = added[index]  # [m, k, |q|]
            diagonal -= part @ part.transpose(0, 2, 1)


class _DenseColumns:
    """H⁻¹ as H⁻¹₀ - Z Zᵀ: a removal appends its columns `added` to Z instead of rewriting the
    n x n matrix, so a step costs O(n·|removed|), not O(n²). Z never has more columns than
    `width`, the widest blocks that can be removed."""

    def __init__(self, start: np.ndarray, width: int) -> None:
        self.start = start
        self.storage = np.empty((len(start), width))
        self.used = 0  # columns of storage holding Z

    def now(self, q: np.ndarray) -> np.ndarray:
        factor = self.storage[:, :self.used]
        return self.start[q].T - factor @ factor[q].T  # rows of the symmetric start: contiguous reads

    def remove(self, added: np.ndarray, root: np.ndarray) -> None:
        self.storage[:, self.used:self.used + added.shape[1]] = added
        self.used += added.shape[1]


class _LowRankColumns:
    """A low-rank inverse diag(d) - FᵀF (F [r, n]) stays of that form as columns go: on the
    columns not removed yet, H⁻¹ = diag(d) - Fᵀ P F with P r x r (P₀ = I). Removing q adds
    (P F_q root)(P F_q root)ᵀ to P (Woodbury on the r x r core), so a step costs O(n·r), and
    nothing n-sized grows with the removals. Rows and columns of removed columns, which the
    exact Schur complement makes 0, are not tracked: nothing reads them again."""

    def __init__(self, start: LowRankInverse) -> None:
        self.start = start
        self.core = np.eye(len(start.factor))  # P
        self.last = np.zeros((len(start.factor), 0))  # P F_q of the latest `now`

    def now(self, q: np.ndarray) -> np.ndarray:
        self.last = self.core @ self.start.factor[:, q]
        column = -(self.start.factor.T @ self.last)
        column[q, np.arange(len(q))] += self.start.diagonal[q]
        return column

    def remove(self, added: np.ndarray, root: np.ndarray) -> None:
        reduced = self.last @ root
        _add_outer(self.core, reduced, reduced, 1.0)


def remove_channels(layers: list[Layer], channels: Iterable[int], damping: float = DEFAULT_DAMPING) -> None:
    """Remove the given channels one at a time, in order, with OBS compensation (in place).

    The result does not depend on the order: it is the least-squares refit of the kept columns
    under damped(H) (see module docstring); use it to compensate a set chosen by another rule.
    """
    hinvs = [inverse_hessian(layer.hessian, damping) for layer in layers]
    for channel in channels:
        for layer, hinv in zip(layers, hinvs):
            _eliminate(layer.weight, hinv, _columns(layer.blocks, [channel]))


def greedy_keep(layers: list[Layer], keep: int,
                eligible_keep: Callable[[int, set[int]], bool] | None = None,
                damping: float = DEFAULT_DAMPING) -> list[int]:
    """Forward selection of `keep` channels, then least-squares refit; returns the sorted REMOVED ones.

    Each step keeps the eligible channel (`eligible_keep(c, kept)`) whose addition most reduces
    the summed output error of the refit; stops early when none is eligible. Columns outside every
    block are always kept. Weights become least_squares(W, damped(H), kept columns) in place.
    """
    total = _channel_count(layers)
    hessians = [damped(layer.hessian, damping) for layer in layers]
    kept = set(_forward(layers, hessians, keep, eligible_keep))
    for layer, h in zip(layers, hessians):
        columns = np.concatenate([_free_columns(layer), _columns(layer.blocks, sorted(kept))])
        layer.weight[...] = least_squares(layer.weight, h, columns)
    return sorted(set(range(total)) - kept)


def greedy_gains(layers: list[Layer], damping: float = DEFAULT_DAMPING) -> np.ndarray:
    """Per channel (higher = keep): 0.5 * the error reduction it brought when forward selection
    over all channels added it. Weights are not changed.

    A channel that duplicates an earlier pick scores ~0; the last pick's gain equals its obs_costs.
    """
    gains = np.zeros(_channel_count(layers))
    hessians = [damped(layer.hessian, damping) for layer in layers]
    for channel, gain in _forward(layers, hessians, len(gains)).items():
        gains[channel] = 0.5 * gain
    return gains


def least_squares(weight: np.ndarray, hessian: np.ndarray, kept_columns: np.ndarray) -> np.ndarray:
    """W' with W'_S = W H_{:,S} H_SS^-1 and 0 elsewhere: minimises ||W X - W'_S X_S||^2 for H = X X^T.

    H is used as given (pass damped(H) for the damped solution).
    """
    s = np.asarray(kept_columns, dtype=np.intp)
    out = np.zeros(weight.shape, dtype=np.float64)
    if s.size:
        out[:, s] = np.linalg.solve(hessian[np.ix_(s, s)], (weight @ hessian[:, s]).T).T
    return out


# -- helpers ----------------------------------------------------------------------------------

def _forward(layers: list[Layer], hessians: list[np.ndarray], keep: int,
             eligible: Callable[[int, set[int]], bool] | None = None) -> dict[int, float]:
    """Forward selection on damped Hessians: {kept channel: its error reduction}, in pick order.

    Per layer R starts as H and A as W H (dead columns of W count as 0), both already reduced
    by the always-kept free columns; a tiny ridge on R_qq keeps duplicates from being singular.
    """
    state = []
    for layer, h in zip(layers, hessians):
        ridge = RIDGE * float(np.mean(np.diag(h))) if len(h) else 0.0
        residual, cross = h.copy(), _live_weight(layer) @ h
        _eliminate(cross, residual, _free_columns(layer), ridge)
        state.append((layer.blocks, cross, residual, ridge))
    total = _channel_count(layers)
    kept: dict[int, float] = {}
    while len(kept) < min(keep, total):
        candidates = [c for c in range(total) if c not in kept]
        gains = sum(_quad(a, r, blocks, candidates, ridge) for blocks, a, r, ridge in state)
        picked = _pick(candidates, -gains, 1, set(kept), eligible)
        if not picked:
            break
        kept[picked[0]] = float(gains[candidates.index(picked[0])])
        for blocks, a, r, ridge in state:
            _eliminate(a, r, _columns(blocks, picked), ridge)
    return kept


def _eliminate(weight: np.ndarray, mat: np.ndarray, q: np.ndarray, ridge: float = 0.0) -> None:
    """In place: W -= W_q M_qq^-1 M_{q,:}, M -= M_{:,q} M_qq^-1 M_{q,:}, then zero q.

    With M = Hinv this is the OBS removal; with M = R (and W = A) it is greedy_keep's update.
    """
    if not q.size:
        return
    coef = np.linalg.solve(mat[np.ix_(q, q)] + ridge * np.eye(q.size), mat[q])
    weight -= weight[:, q] @ coef
    mat -= mat[:, q] @ coef
    weight[:, q] = 0.0
    mat[q, :] = 0.0
    mat[:, q] = 0.0


def _quad(weight: np.ndarray, mat: np.ndarray, blocks: list[np.ndarray], channels: list[int],
          ridge: float = 0.0) -> np.ndarray:
    """tr(W_q (M_qq + ridge I)^-1 W_q^T) per channel, batched over blocks of equal size."""
    out = np.zeros(len(channels))
    by_size = defaultdict(list)
    for i, c in enumerate(channels):
        by_size[len(blocks[c])].append(i)
    for size, rows in by_size.items():
        if size == 0:
            continue
        idx = np.array([np.asarray(blocks[channels[i]], dtype=np.intp) for i in rows])  # [m, k]
        out[rows] = _traces(weight, idx, _diagonal_blocks(mat, idx) + ridge * np.eye(size))
    return out


def _traces(weight: np.ndarray, index: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """tr(W_q B⁻¹ W_qᵀ) for each row q of `index` [m, k] and its block B of `blocks` [m, k, k]."""
    if index.shape[1] == 1:  # one column per channel (a 1x1 conv, a Gemm): W_qᵀW_q / B
        return _column_squares(weight, index[:, 0]) / blocks[:, 0, 0]
    w_q = np.take(weight, index, axis=1).transpose(1, 2, 0)  # [m, k, out]; take: faster than weight[:, idx]
    gram = w_q @ w_q.transpose(0, 2, 1)
    return np.trace(np.linalg.solve(blocks, gram), axis1=1, axis2=2)


def _column_squares(weight: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Σ_o W[o, c]² for each c of `columns`: from every column where they are most of them
    (no copy of a wide weight), else from a copy of those alone."""
    if 2 * len(columns) < weight.shape[1]:
        return np.square(np.take(weight, columns, axis=1)).sum(axis=0)
    return gram_diagonal(weight)[columns]


def _costs(layers: list[Layer], hinvs: list[np.ndarray], channels: list[int]) -> np.ndarray:
    return 0.5 * sum(_quad(_live_weight(layer), hinv, layer.blocks, channels)
                     for layer, hinv in zip(layers, hinvs))


def _pick(candidates: list[int], scores: np.ndarray, limit: int, chosen: set[int],
          eligible: Callable[[int, set[int]], bool] | None) -> list[int]:
    """Up to `limit` lowest-score candidates, each eligible given `chosen` plus those picked before."""
    picked: list[int] = []
    for i in np.argsort(scores, kind="stable"):
        if len(picked) == limit:
            break
        c = candidates[i]
        if eligible is None or eligible(c, chosen | set(picked)):
            picked.append(c)
    return picked


def _add_outer(target: np.ndarray, left: np.ndarray, right: np.ndarray, scale: float) -> None:
    """target += scale * left @ rightᵀ, in place by BLAS where target is float64 in C or
    Fortran order (a MatMul's [in, out] weight seen as [out, in] is the latter): numpy would
    first make the product, a temporary as large as target."""
    if target.dtype != np.float64 or not (target.flags.c_contiguous or target.flags.f_contiguous):
        target += scale * (left @ right.T)
        return
    from scipy.linalg import blas  # here: scipy.linalg takes 0.1 s to import, which only data criteria need
    if target.flags.f_contiguous:
        result = blas.dgemm(scale, left, right, beta=1.0, c=target, overwrite_c=1, trans_b=1)
        if not np.shares_memory(result, target):  # BLAS worked on a copy
            target[...] = result
        return
    # targetᵀ (Fortran order: the same memory) += scale * right @ leftᵀ
    result = blas.dgemm(scale, right, left, beta=1.0, c=target.T, overwrite_c=1, trans_b=1)
    if not np.shares_memory(result, target):
        target[...] = result.T


def _dead(hessian: np.ndarray) -> np.ndarray:
    return np.diag(hessian) <= 0


def _live_weight(layer: Layer) -> np.ndarray:
    """The weight as seen by the data: columns of dead inputs cannot matter, so they count as 0."""
    dead = layer.dead()
    if not dead.any():
        return layer.weight
    weight = layer.weight.copy()
    weight[:, dead] = 0.0
    return weight


def _columns(blocks: list[np.ndarray], channels: Iterable[int]) -> np.ndarray:
    parts = [np.asarray(blocks[c], dtype=np.intp) for c in channels]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.intp)


def _free_columns(layer: Layer) -> np.ndarray:
    """Columns outside every block (e.g. a bias column): never removed."""
    owned = _columns(layer.blocks, range(len(layer.blocks)))
    return np.setdiff1d(np.arange(layer.weight.shape[1]), owned).astype(np.intp)


def _channel_count(layers: list[Layer]) -> int:
    counts = {len(layer.blocks) for layer in layers}
    if len(counts) != 1:
        raise ValueError(f"layers must have the same number of channels, got {sorted(counts)}")
    return counts.pop()
