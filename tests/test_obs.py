"""OBS pruning with compensation and greedy forward selection (spa.criteria.obs), against closed forms."""
import numpy as np
import pytest

from spa.criteria.obs import (
    Layer,
    damped,
    greedy_gains,
    greedy_keep,
    inverse_hessian,
    least_squares,
    obs_costs,
    obs_prune,
    remove_channels,
)
from spa.errors import SpaError

SAMPLES = 500


def correlated(rng, n, samples=SAMPLES):
    """n correlated features (rows) x samples."""
    return (np.eye(n) + 0.6 * rng.normal(size=(n, n))) @ rng.normal(size=(n, samples))


def with_bias(x):
    return np.vstack([x, np.ones((1, x.shape[1]))])


def make_layer(x, weight, block, bias=False):
    """Channels own consecutive runs of `block` columns; with `bias` the last column is unowned."""
    channels = (x.shape[0] - bias) // block
    return Layer(weight.copy(), x @ x.T, [np.arange(c * block, (c + 1) * block) for c in range(channels)])


def error(w0, w1, x):
    return float(np.sum(((w0 - w1) @ x) ** 2))


def kept_columns(layer, removed):
    owned = np.concatenate(layer.blocks)
    free = np.setdiff1d(np.arange(layer.weight.shape[1]), owned)
    kept = [layer.blocks[c] for c in range(len(layer.blocks)) if c not in removed]
    return np.concatenate([free, *kept]).astype(int)


def assert_removed_zero(layer, removed):
    for c in removed:
        assert np.all(layer.weight[:, layer.blocks[c]] == 0.0)


# -- 1. least-squares oracle and order independence ------------------------------------------

@pytest.mark.parametrize("block", [1, 4])
@pytest.mark.parametrize("max_steps", [64, 2])
def test_prune_equals_least_squares(block, max_steps):
    rng = np.random.default_rng(block)
    x = with_bias(correlated(rng, 6 * block))
    w0 = rng.normal(size=(5, x.shape[0]))
    layer = make_layer(x, w0, block, bias=True)
    removed = obs_prune([layer], 4, damping=0.0, max_steps=max_steps)
    assert len(removed) == 4
    oracle = least_squares(w0, layer.hessian, kept_columns(layer, removed))
    np.testing.assert_allclose(layer.weight, oracle, rtol=1e-6, atol=1e-9)
    assert_removed_zero(layer, removed)
    assert not np.allclose(layer.weight[:, -1], w0[:, -1])  # the bias column compensated

    for order in (removed, removed[::-1], removed[1:] + removed[:1]):
        other = make_layer(x, w0, block, bias=True)
        remove_channels([other], order, damping=0.0)
        np.testing.assert_allclose(other.weight, oracle, rtol=1e-6, atol=1e-9)


def test_cost_is_half_the_error_increase():
    rng = np.random.default_rng(1)
    x = with_bias(correlated(rng, 8))
    w0 = rng.normal(size=(3, 9))
    costs = obs_costs([make_layer(x, w0, 1, bias=True)], damping=0.0)
    assert len(costs) == 8
    for c in range(8):
        layer = make_layer(x, w0, 1, bias=True)
        remove_channels([layer], [c], damping=0.0)
        assert costs[c] == pytest.approx(0.5 * error(w0, layer.weight, x), rel=1e-8)


# -- 2. compensation beats plain zeroing ------------------------------------------------------

def test_beats_zeroing():
    rng = np.random.default_rng(2)
    x = correlated(rng, 12)
    w0 = rng.normal(size=(6, 12))
    layer = make_layer(x, w0, 1)
    removed = obs_prune([layer], 6)
    zeroed = w0.copy()
    zeroed[:, removed] = 0
    smallest = np.argsort(np.linalg.norm(w0, axis=0))[:6]
    magnitude = w0.copy()
    magnitude[:, smallest] = 0
    ours = error(w0, layer.weight, x)
    assert ours < error(w0, zeroed, x)
    assert ours < error(w0, magnitude, x)


# -- 3-5. duplicate, dead and constant inputs -------------------------------------------------

def test_duplicate_channel_is_free():
    rng = np.random.default_rng(3)
    x = correlated(rng, 6)
    x[5] = x[2]
    w0 = rng.normal(size=(4, 6))
    h = x @ x.T
    ridge = 0.01 * np.mean(np.diag(h))  # moving W_j onto its copy costs only the ridge: <= ridge * |W_j|^2
    costs = obs_costs([make_layer(x, w0, 1)], damping=0.01)
    assert costs[2] <= ridge * np.sum(w0[:, 2] ** 2) and costs[5] <= ridge * np.sum(w0[:, 5] ** 2)
    costs = obs_costs([make_layer(x, w0, 1)], damping=1e-9)
    assert max(costs[[2, 5]]) < 1e-6 * np.delete(costs, [2, 5]).min()

    layer = make_layer(x, w0, 1)
    assert obs_prune([layer], 1, damping=1e-9) in ([2], [5])
    assert error(w0, layer.weight, x) < 1e-8 * np.sum((w0 @ x) ** 2)


def test_dead_channel():
    rng = np.random.default_rng(4)
    x = correlated(rng, 6)
    x[3] = 0.0
    w0 = rng.normal(size=(4, 6))
    costs = obs_costs([make_layer(x, w0, 1)])
    assert costs[3] == 0.0 and np.all(np.delete(costs, 3) > 0)
    layer = make_layer(x, w0, 1)
    assert obs_prune([layer], 1) == [3]
    assert obs_prune([layer], 3)  # keeps going from the pruned state
    other = make_layer(x, w0, 1)
    obs_prune([other], 4)
    assert np.all(np.isfinite(other.weight)) and np.all(np.isfinite(inverse_hessian(other.hessian)))
    assert_removed_zero(other, [3])
    assert greedy_gains([make_layer(x, w0, 1)])[3] == 0.0
    assert 3 in greedy_keep([make_layer(x, w0, 1)], 5)
    x[4] = 0.0  # a second dead input, kept while the first goes: its weights stay as they were
    layer = make_layer(x, w0, 1)
    assert obs_prune([layer], 1) == [3]
    np.testing.assert_array_equal(layer.weight[:, 4], w0[:, 4])


def test_constant_channel_absorbed_by_bias():
    rng = np.random.default_rng(5)
    x = with_bias(np.vstack([correlated(rng, 5), np.full((1, SAMPLES), 5.0)]))  # feature 5 = 5
    w0 = rng.normal(size=(3, 7))
    layer = make_layer(x, w0, 1, bias=True)  # 6 channels, column 6 is the bias
    costs = obs_costs([layer], damping=1e-9)
    assert costs[5] < 1e-6 * costs[:5].min()
    assert obs_prune([layer], 1, damping=1e-9) == [5]
    np.testing.assert_allclose(layer.weight[:, 6] - w0[:, 6], 5 * w0[:, 5], rtol=1e-5)
    np.testing.assert_allclose(layer.weight[:, :5], w0[:, :5], atol=1e-6)
    assert error(w0, layer.weight, x) < 1e-8 * np.sum((w0 @ x) ** 2)


# -- 6. several layers reading one group ------------------------------------------------------

def test_multiple_layers():
    rng = np.random.default_rng(6)
    x1, x2 = correlated(rng, 8), correlated(rng, 16)
    w1, w2 = rng.normal(size=(3, 8)), rng.normal(size=(5, 16))
    pair = lambda: [make_layer(x1, w1, 1), make_layer(x2, w2, 2)]  # noqa: E731
    a, b = pair()
    total = obs_costs([a, b])
    np.testing.assert_allclose(total, obs_costs([a]) + obs_costs([b]))
    one = pair()
    assert obs_prune(one, 1) == [int(np.argmin(total))]

    layers = pair()
    removed = obs_prune(layers, 3, damping=0.0)
    for layer, w0 in zip(layers, (w1, w2)):
        assert_removed_zero(layer, removed)
        oracle = least_squares(w0, layer.hessian, kept_columns(layer, removed))
        np.testing.assert_allclose(layer.weight, oracle, rtol=1e-6, atol=1e-9)


# -- 7. eligibility ---------------------------------------------------------------------------

def test_eligible_forbids_and_stops():
    rng = np.random.default_rng(7)
    x = correlated(rng, 8)
    w0 = rng.normal(size=(3, 8))
    w0[:, :3] *= 1e-3  # the forbidden channels are the cheapest
    allowed = lambda c, removed: c >= 3  # noqa: E731
    assert set(obs_prune([make_layer(x, w0, 1)], 4, allowed)) <= {3, 4, 5, 6, 7}
    assert obs_prune([make_layer(x, w0, 1)], 7, allowed) == [3, 4, 5, 6, 7]  # stops early


@pytest.mark.parametrize("max_steps", [64, 1])
def test_eligible_sees_growing_set(max_steps):
    rng = np.random.default_rng(8)
    x = correlated(rng, 8)
    layer = make_layer(x, rng.normal(size=(3, 8)), 1)
    calls = []

    def one_left_per_piece(c, removed):
        calls.append(set(removed))
        return sum(r // 4 == c // 4 for r in removed) < 3

    removed = obs_prune([layer], 7, one_left_per_piece, max_steps=max_steps)
    assert len(removed) == 6 and sum(r < 4 for r in removed) == 3
    assert_removed_zero(layer, removed)
    assert not any(np.all(layer.weight[:, [c for c in range(8) if c // 4 == p]] == 0) for p in (0, 1))
    assert any(len(seen) > 0 for seen in calls)


# -- 8. greedy forward selection --------------------------------------------------------------

def test_greedy_keep_drops_a_duplicate():
    rng = np.random.default_rng(9)
    x = correlated(rng, 6)
    x[5] = x[2]
    w0 = rng.normal(size=(4, 6))
    layer = make_layer(x, w0, 1)
    removed = greedy_keep([layer], 5)
    assert removed in ([2], [5])
    oracle = least_squares(w0, damped(layer.hessian), kept_columns(layer, removed))
    np.testing.assert_allclose(layer.weight, oracle, rtol=1e-10, atol=1e-12)
    assert error(w0, layer.weight, x) < 1e-3 * np.sum((w0 @ x) ** 2)


def test_greedy_keep_all():
    rng = np.random.default_rng(10)
    x = with_bias(correlated(rng, 12))
    w0 = rng.normal(size=(3, 13))
    layer = make_layer(x, w0, 4, bias=True)
    assert greedy_keep([layer], 3) == []
    np.testing.assert_allclose(layer.weight, w0, rtol=1e-8)
    assert greedy_keep([make_layer(x, w0, 4, bias=True)], 10) == []  # more than possible: keeps what it can


def test_greedy_keep_finds_the_explaining_pair():
    rng = np.random.default_rng(11)
    base = rng.normal(size=(2, SAMPLES))
    mixed = rng.normal(size=(6, 2)) @ base + 0.7 * rng.normal(size=(6, SAMPLES))
    x = with_bias(np.vstack([mixed[:2], base[:1], mixed[2:4], base[1:], mixed[4:]]))  # truth: 2, 5
    w0 = np.zeros((3, 9))
    w0[:, [2, 5, 8]] = rng.normal(size=(3, 3))
    layer = make_layer(x, w0, 1, bias=True)
    assert greedy_keep([layer], 2, damping=1e-9) == [0, 1, 3, 4, 6, 7]
    assert error(w0, layer.weight, x) < 1e-8 * np.sum((w0 @ x) ** 2)
    forbidden = make_layer(x, w0, 1, bias=True)
    removed = greedy_keep([forbidden], 2, lambda c, kept: c != 2)
    assert 2 in removed and len(removed) == 6


def test_greedy_gains():
    rng = np.random.default_rng(13)
    x = with_bias(correlated(rng, 8))
    x[6] = x[1]
    w0 = rng.normal(size=(3, 9))
    layer = make_layer(x, w0, 1, bias=True)
    gains = greedy_gains([layer], damping=1e-9)
    np.testing.assert_array_equal(layer.weight, w0)  # scoring only
    assert min(gains[1], gains[6]) < 1e-6 * np.delete(gains, [1, 6]).max()
    [last] = greedy_keep([make_layer(x, w0, 1, bias=True)], 7)  # the channel picked last
    costs = obs_costs([make_layer(x, w0, 1, bias=True)])
    gains = greedy_gains([make_layer(x, w0, 1, bias=True)])
    assert gains[last] == pytest.approx(costs[last], rel=1e-6)  # adding it to all others == removing it


def test_nothing_to_remove():
    rng = np.random.default_rng(14)
    x = correlated(rng, 4)
    w0 = rng.normal(size=(2, 4))
    layer = make_layer(x, w0, 1)
    assert obs_prune([layer], 0) == []
    np.testing.assert_array_equal(layer.weight, w0)


# -- 9. inverse_hessian safeguards ------------------------------------------------------------

def test_inverse_hessian_singular_and_zero():
    rng = np.random.default_rng(12)
    x = rng.normal(size=(6, 3))  # rank 3
    h = x @ x.T
    hinv = inverse_hessian(h)
    assert np.all(np.isfinite(hinv))
    np.testing.assert_allclose(hinv @ damped(h), np.eye(6), atol=1e-8)
    np.testing.assert_allclose(inverse_hessian(np.zeros((4, 4))), np.eye(4) / 1.01)


def test_inverse_hessian_retries_then_raises():
    assert np.all(np.isfinite(inverse_hessian(np.array([[1.0, 2.0], [2.0, 1.0]]))))
    with pytest.raises(SpaError, match="not positive definite"):
        inverse_hessian(np.array([[1.0, 1e3], [1e3, 1.0]]))
    with pytest.raises(ValueError):
        damped(np.eye(2), -1.0)


@pytest.mark.parametrize("damping", [0.01, 1e-6])
def test_low_rank_inverse_equals_the_full_one(damping):
    """Fewer rows than features (a wide layer on few samples): the Woodbury form is the
    same damped inverse, dead inputs included."""
    rng = np.random.default_rng(4)
    rows = rng.standard_normal((20, 60))
    rows[:, 7] = 0.0  # a dead input
    hessian = rows.T @ rows
    full = inverse_hessian(hessian, damping)
    np.testing.assert_allclose(inverse_hessian(hessian, damping, rows).dense(), full, rtol=1e-7,
                               atol=1e-9 * np.abs(full).max())


@pytest.mark.parametrize("block", [1, 3])
def test_obs_with_the_factored_low_rank_inverse_equals_the_dense_one(block):
    """obs_costs and obs_prune on the factored inverse (diag - FᵀF, never n x n) give the
    costs, the removed channels and the compensated weights of the same inverse made dense."""
    from spa.criteria.obs import LowRankInverse
    rng = np.random.default_rng(block)
    channels, out = 24, 5
    rows = rng.standard_normal((20, channels * block))
    rows[:, 4] = 0.0  # a dead input
    hessian = rows.T @ rows
    blocks = [np.arange(c * block, (c + 1) * block) for c in range(channels)]
    weight = rng.standard_normal((out, channels * block))
    factored = inverse_hessian(hessian, 0.01, rows)
    assert isinstance(factored, LowRankInverse)
    layers = [Layer(weight.copy(), hessian, blocks, inverse) for inverse in (factored, factored.dense())]
    np.testing.assert_allclose(obs_costs(layers[:1]), obs_costs(layers[1:]), rtol=1e-8)
    removed = [obs_prune([layer], 10, max_steps=4) for layer in layers]
    assert removed[0] == removed[1]
    np.testing.assert_allclose(layers[0].weight, layers[1].weight, rtol=1e-7, atol=1e-9)


def test_hessian_keeps_its_rows_only_while_they_are_few():
    from spa.calibrate.collect import Hessian
    accumulator = Hessian(lambda x: x.reshape(-1, x.shape[-1]))
    values = np.random.default_rng(5).standard_normal((8, 3, 40)).astype(np.float32)  # 24 rows of 40 features
    accumulator(values[:4])
    np.testing.assert_allclose(accumulator.rows.T @ accumulator.rows, accumulator.matrix, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(accumulator.diagonal, np.diag(accumulator.matrix), rtol=1e-12)
    accumulator(values[4:])  # 24 rows > 40 / 2: no longer low rank enough
    assert accumulator.rows is None
    every = values.reshape(-1, 40).astype(np.float64)
    np.testing.assert_allclose(accumulator.matrix, every.T @ every, rtol=1e-5, atol=1e-4)  # the kept rows count too
    np.testing.assert_allclose(accumulator.diagonal, np.diag(every.T @ every), rtol=1e-5)


def test_obs_from_the_diagonal_and_inverse_alone_equals_obs_from_the_hessian():
    """Where H is kept as rows, obs gets only its factored inverse and diagonal (H = None)."""
    rng = np.random.default_rng(6)
    rows = rng.standard_normal((10, 36))
    rows[:, 5] = 0.0  # a dead input: the diagonal says so
    hessian, blocks = rows.T @ rows, [np.arange(c * 3, (c + 1) * 3) for c in range(12)]
    weight = rng.standard_normal((4, 36))
    inverse = inverse_hessian(None, 0.01, rows)
    layers = [Layer(weight.copy(), hessian, blocks, inverse),
              Layer(weight.copy(), None, blocks, inverse, np.diag(hessian).copy())]
    np.testing.assert_allclose(obs_costs(layers[:1]), obs_costs(layers[1:]), rtol=1e-12)
    assert obs_prune(layers[:1], 5) == obs_prune(layers[1:], 5)
    np.testing.assert_array_equal(layers[0].weight, layers[1].weight)


@pytest.mark.parametrize("n", [1, 7, 1100])  # 1100: more than two blocks of rows mirrored
def test_inverse_in_place_equals_numpy(n):
    """LAPACK's Cholesky inverse in the matrix's own memory (potrf, potri, then the lower
    triangle mirrored): the inverse, symmetric, in C order, and None where Cholesky fails."""
    from spa.criteria.obs import _positive_definite_inverse
    rng = np.random.default_rng(n)
    rows = rng.normal(size=(n + 5, n))
    matrix = rows.T @ rows + np.eye(n)
    want = np.linalg.inv(matrix)
    got = _positive_definite_inverse(matrix.copy())
    assert got.flags["C_CONTIGUOUS"] and np.array_equal(got, got.T)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())
    assert _positive_definite_inverse(np.array([[1.0, 2.0], [2.0, 1.0]])) is None


@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_add_outer_updates_the_target_in_place_in_any_layout(layout):
    """W += s·L Rᵀ by BLAS on the target's own memory: a MatMul's weight seen as [out, in] is in
    Fortran order, a Conv's in C order; a strided view takes numpy's way."""
    from spa.criteria.obs import _add_outer
    rng = np.random.default_rng(7)
    base = rng.standard_normal((6, 10))
    target = {"C": base.copy(), "F": np.asfortranarray(base), "strided": base.copy()[:, ::2]}[layout]
    left, right = rng.standard_normal((6, 3)), rng.standard_normal((target.shape[1], 3))
    expected = target - 0.5 * left @ right.T
    memory = target.__array_interface__["data"][0]
    _add_outer(target, left, right, -0.5)
    np.testing.assert_allclose(target, expected, rtol=1e-12)
    assert target.__array_interface__["data"][0] == memory


@pytest.mark.parametrize("count", [2, 9])
def test_column_squares_of_few_or_most_columns(count):
    from spa.criteria.obs import _column_squares
    weight = np.asfortranarray(np.random.default_rng(8).standard_normal((5, 10)))
    columns = np.arange(count)[::-1]
    np.testing.assert_allclose(_column_squares(weight, columns), (weight[:, columns] ** 2).sum(axis=0), rtol=1e-12)
