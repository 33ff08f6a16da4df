"""Channel labels: the union-find every rule writes into."""
from __future__ import annotations

import numpy as np
import pytest

from spa.analyze.labels import LabelSpace


def test_new_labels_are_distinct_and_unify_joins_positions():
    space = LabelSpace()
    a, b = space.new(3), space.new(3)
    assert len(set(space.roots(np.concatenate([a, b])).tolist())) == 6
    space.unify(a, b)
    assert space.roots(a).tolist() == space.roots(b).tolist()
    assert len(set(space.roots(a).tolist())) == 3  # position i with position i only


def test_flags_travel_with_unions_whichever_side_had_them():
    space = LabelSpace()
    a, b, c = space.new(2), space.new(2), space.new(2)
    space.fix(b[:1], "kept")
    space.mark_inexact(c[1:], "normalized")
    space.unify(a, b)
    space.unify(c, a)
    assert space.fixed_reason(int(a[0])) == "kept" and space.fixed_reason(int(c[0])) == "kept"
    assert space.fixed_reason(int(a[1])) is None
    assert space.inexact_reason(int(b[1])) == "normalized"


def test_merge_all_makes_one_channel():
    space = LabelSpace()
    head = space.new(4)
    root = space.merge_all(head)
    assert set(space.roots(head).tolist()) == {root}


def test_frozen_roots_agree_with_find_and_thaw_on_union():
    space = LabelSpace()
    a, b = space.new(5), space.new(5)
    space.unify(a[:2], b[:2])
    space.freeze()
    assert space.roots(b).tolist() == [space.find(int(x)) for x in b]
    space.unify(a[2:3], b[2:3])  # a union after freezing must not leave stale roots
    assert space.roots(b)[2] == space.roots(a)[2]


def test_unify_refuses_axes_of_different_sizes():
    space = LabelSpace()
    with pytest.raises(ValueError):
        space.unify(space.new(2), space.new(3))
