"""Writes just after a settle: the previous owners trail, so either ring's quorum holds a write."""

from __future__ import annotations

import pytest

from spine.core.ringmap import ACTIVE, JOINING, LEAVING, Entry, Placement, RingMap

SHAPE = {"shards": 64, "vnodes": 32, "n": 3}
W = 2


def _map(states: dict[str, str]) -> RingMap:
    return RingMap(Entry(n, s, 1) for n, s in states.items())


@pytest.mark.parametrize("before, after", [
    ({"a": ACTIVE, "b": ACTIVE, "c": ACTIVE, "d": JOINING},
     {"a": ACTIVE, "b": ACTIVE, "c": ACTIVE, "d": ACTIVE}),
    ({"a": ACTIVE, "b": ACTIVE, "c": ACTIVE, "d": LEAVING},
     {"a": ACTIVE, "b": ACTIVE, "c": ACTIVE}),
])
def test_a_write_acknowledged_after_a_settle_is_on_a_quorum_of_both_rings(
    before: dict[str, str], after: dict[str, str]
) -> None:
    old = Placement(_map(before), **SHAPE)
    new = Placement(_map(after), trailing=old.current, **SHAPE)
    moved = 0
    for s in range(SHAPE["shards"]):
        targets, extra = new.write_set(s)
        assert len(set(targets)) == len(targets)
        assert set(old.owners(s)) <= set(targets) and set(new.owners(s)) <= set(targets)
        # W + extra acknowledgements out of len(targets): at most N - W of the targets missed
        # the write, so each ring's N owners hold it on at least W.
        missed = len(targets) - (W + extra)
        assert missed <= SHAPE["n"] - W
        moved += bool(new.trailing_owners(s))
    assert moved > 0  # the change moved something, so the trailing owners were exercised


def test_without_trailing_the_write_set_is_the_owners() -> None:
    p = Placement(_map({"a": ACTIVE, "b": ACTIVE, "c": ACTIVE, "d": ACTIVE}), **SHAPE)
    for s in range(SHAPE["shards"]):
        assert p.write_set(s) == (p.owners(s), 0)
        assert p.trailing_owners(s) == ()
