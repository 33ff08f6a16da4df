"""How many channels a group keeps."""
import pytest
from hypothesis import given, strategies as st

from spa.select import kept_count


@pytest.mark.parametrize("size, ratio, round_to, min_keep, kept", [
    (10, 0.4, 1, 1, 6), (64, 0.4, 1, 1, 39), (64, 0.4, 16, 1, 32), (64, 0.3, 16, 1, 48),
    (16, 0.4, 16, 1, 16), (8, 0.4, 16, 1, 8), (100, 0.29, 1, 1, 71), (10, 0.9, 1, 4, 4),
    (5, 0.0, 1, 1, 5), (1, 0.99, 1, 1, 1), (40, 0.4, 16, 1, 32),
])
def test_kept_count(size, ratio, round_to, min_keep, kept):
    assert kept_count(size, ratio, round_to, min_keep) == kept


@given(st.integers(1, 512), st.floats(0, 0.999), st.sampled_from([1, 2, 4, 8, 16]), st.integers(1, 8))
def test_kept_count_bounds(size, ratio, round_to, min_keep):
    kept = kept_count(size, ratio, round_to, min_keep)
    assert 1 <= kept <= size
    assert kept >= min(min_keep, size)
    if round_to == 1 and min_keep == 1:
        assert kept == size - int(ratio * size + 1e-9)
