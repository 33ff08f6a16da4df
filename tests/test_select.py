"""How many channels a group keeps."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

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


def _group(gid: int, size: int, width: int):
    """A group of `size` channels, each owning `width` rows of its producer weight."""
    from spa.analyze import Group, Member
    member = Member(f"w{gid}", 0, [list(range(c * width, (c + 1) * width)) for c in range(size)], producer=True)
    return Group(id=gid, name=f"g{gid}", roots=list(range(size)), members=[member])


def test_global_ranking_weighs_channels_by_width():
    """Global scope removes `ratio` of the total width: a head of 16 columns counts as 16.
    4 heads x 16 and 64 channels x 1, all scoring alike (the heads' group first on a tie):
    half the width (64) is 3 heads (a group keeps one) and 16 channels; counting channels
    instead of columns would take 3 heads and 61 channels."""
    import numpy as np

    from spa.select import Selection, removal_counts
    heads, channels = _group(0, 4, 16), _group(1, 64, 1)
    scores = {0: np.ones(4), 1: np.ones(64)}
    counts = removal_counts([heads, channels], scores, Selection(0.5, scope="global", round_to=1, max_ratio=1.0))
    assert counts == {0: 3, 1: 16}
