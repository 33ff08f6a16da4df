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


def _heads(gid: int, size: int, head_dim: int, query_heads: int = 1, fused: bool = False):
    """`size` attention channels: q/k/v projection columns (q's query_heads*head_dim wide,
    or one fused q|k|v weight) and the output projection's rows, query_heads*head_dim each."""
    from spa.analyze import Group, Member

    def blocks(name: str, axis: int, per: int, producer: bool) -> Member:
        return Member(name, axis, [list(range(c * per, (c + 1) * per)) for c in range(size)], producer=producer, rank=2)
    q_width = query_heads * head_dim
    producers = [blocks("qkv", 1, q_width + 2 * head_dim, True)] if fused else \
        [blocks("q", 1, q_width, True), blocks("k", 1, head_dim, True), blocks("v", 1, head_dim, True)]
    return Group(id=gid, name=f"attn{gid}", roots=list(range(size)), kind="heads", head_dim=head_dim,
                 members=[*producers, blocks("o", 0, q_width, False)])


@pytest.mark.parametrize("query_heads, fused, units", [(1, False, 8), (1, True, 8), (4, False, 32), (4, True, 32)])
def test_a_head_stands_for_its_query_heads_times_head_dim(query_heads, fused, units):
    group = _heads(0, 2, 8, query_heads, fused)
    assert group.width == 8  # what the kernels see: rounding keeps multiples of head_dim
    assert group.query_heads == query_heads and group.units == units


def test_global_ranking_weighs_a_shared_key_value_head_by_its_query_heads():
    """2 key/value heads of head_dim 8, each read by 4 query heads (32 units each), and 64
    cheaper channels: a quarter of the 128 units is 32 channels. Counting the head as
    head_dim (80 units) would take 20 channels."""
    import numpy as np

    from spa.select import Selection, removal_counts
    heads, channels = _heads(0, 2, 8, query_heads=4), _group(1, 64, 1)
    scores = {0: np.ones(2), 1: np.full(64, 0.5)}
    counts = removal_counts([heads, channels], scores, Selection(0.25, scope="global", round_to=1, max_ratio=1.0))
    assert counts == {0: 0, 1: 32}


def test_global_ranking_weighs_a_fused_qkv_head_by_head_dim():
    """4 heads of a fused q|k|v projection (24 columns each, 8 units) and 32 channels: half
    of the 64 units is 3 heads and 8 channels, not 3 heads alone (counting 24 per head)."""
    import numpy as np

    from spa.select import Selection, removal_counts
    heads, channels = _heads(0, 4, 8, fused=True), _group(1, 32, 1)
    scores = {0: np.ones(4), 1: np.ones(32)}
    counts = removal_counts([heads, channels], scores, Selection(0.5, scope="global", round_to=1, max_ratio=1.0))
    assert counts == {0: 3, 1: 8}


@pytest.mark.parametrize("round_to, min_keep, max_ratio, removals", [
    (1, 1, 1.0, [1, 2, 3, 4, 5, 6, 7, 8, 9]), (4, 1, 1.0, [2, 6]), (4, 1, 0.5, [2]), (1, 7, 1.0, [1, 2, 3]),
    (16, 1, 1.0, []),
])
def test_global_cuts_step_through_rounded_widths(round_to, min_keep, max_ratio, removals):
    """A group of 10 channels narrows to each allowed kept width in turn: a multiple of
    --round-to, at least --min-keep and 1 - --max-ratio of its channels, never zero."""
    import numpy as np

    from spa.select import Selection, ranked_cuts
    group = _group(0, 10, 1)
    cuts = ranked_cuts([group], {0: np.arange(10.0)}, Selection(0.5, "global", round_to, min_keep, max_ratio))
    assert [cut.removed for cut in cuts] == removals
    assert [cut.units for cut in cuts] == np.diff([0, *removals]).tolist()


def test_global_cuts_of_all_groups_in_score_order_and_each_group_in_its_own():
    """Cuts are ranked by the mean score of the channels they remove, lowest first; a
    group's cuts remove its lowest-scoring channels first, so they stay in order."""
    import numpy as np

    from spa.select import Selection, ranked_cuts
    groups = [_group(0, 8, 1), _group(1, 8, 1)]
    scores = {0: np.array([5.0, 1, 1, 1, 9, 9, 9, 9]), 1: np.array([2.0, 2, 2, 2, 3, 3, 3, 3])}
    cuts = ranked_cuts(groups, scores, Selection(0.5, "global", round_to=4, max_ratio=1.0))
    assert [(cut.gid, cut.removed) for cut in cuts] == [(0, 4), (1, 4)]  # group 0's first 4: 1, 1, 1, 5
    assert [cut.score for cut in cuts] == [2.0, 2.0]


@pytest.mark.parametrize("per_segment, segments, kept_steps", [
    (32, 2, 16),   # two groups of 32 (two NCHWc blocks each): a group keeps whole blocks
    (64, 4, 16),
    (8, 4, 4),     # RegNet-like groups of 8, under a block: only the total is rounded (16 / gcd(16, 4))
    (12, 4, 4),    # 48 channels in 4 groups of 12: 16 / gcd(16, 4) = 4 per group
])
def test_auto_rounding_keeps_a_grouped_convs_groups_in_whole_blocks(monkeypatch, per_segment, segments, kept_steps):
    """--round-to auto on a grouped conv's group: every segment keeps the same count, a
    multiple of the NCHWc block where the segments were whole blocks (onnxruntime's blocked
    grouped-conv kernel needs that), else what keeps the total a multiple of the block."""
    import numpy as np

    import spa.select as select
    from spa.select import ROUND_AUTO, Selection, removal_counts
    monkeypatch.setattr(select, "block_size", lambda: 16)
    size = per_segment * segments
    group = _group(0, size, 1)
    group.segments = [list(range(k * per_segment, (k + 1) * per_segment)) for k in range(segments)]
    group.touch_ops = {"Conv"}
    allowed = {size - removed for removed in select._allowed_removals(group, Selection(0.5, round_to=ROUND_AUTO))}
    assert allowed and all(kept % (kept_steps * segments) == 0 for kept in allowed)
    assert min(kept // segments for kept in allowed) == kept_steps
    removed = removal_counts([group], {0: np.arange(size, dtype=float)}, Selection(0.4, round_to=ROUND_AUTO))[0]
    assert (size - removed) // segments % kept_steps == 0


@pytest.mark.parametrize("segments", [None, [[0, 1, 2, 3], [4, 5, 6, 7]]])
def test_removal_rule_holds_each_segment_to_its_share(segments):
    """Removing 4 of 8 channels one by one: with two segments (a grouped conv), each gives
    2 and no more; with one, any 4 go and a fifth does not."""
    from spa.select import removal_rule
    group = _group(0, 8, 1)
    group.segments = segments
    eligible = removal_rule(group, 4)
    if segments is None:
        assert eligible(0, {4, 5, 6}) and not eligible(0, {4, 5, 6, 7})
    else:
        assert eligible(2, {0, 4, 5}) and not eligible(2, {0, 1, 4})
        assert eligible(6, {0, 1, 4})
