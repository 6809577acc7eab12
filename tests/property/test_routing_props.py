"""Property tests for spine.core.routing: every op of a batch runs exactly once, here or at a
live owner; the coordinator of a key is an owner whenever one is alive; the write set holds the
owners and needs one more acknowledgement per extra node."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from spine.core.ringmap import ACTIVE, JOINING, LEAVING, Entry, Placement, RingMap
from spine.core.routing import route, split_writes

NODES = ["a", "b", "c", "d", "e"]
states = st.fixed_dictionaries({n: st.sampled_from([ACTIVE, ACTIVE, JOINING, LEAVING])
                                for n in NODES})
alive_sets = st.sets(st.sampled_from(NODES))
keys = st.lists(st.text("abcdefgh", min_size=1, max_size=4), min_size=1, max_size=12)


def placement(s: dict[str, str]) -> Placement:
    return Placement(RingMap(Entry(n, st_, 1) for n, st_ in s.items()), shards=8, vnodes=4, n=3)


@settings(deadline=None, max_examples=200)
@given(states, alive_sets, st.sampled_from(NODES), keys, st.booleans())
def test_each_op_runs_once_here_or_at_a_live_owner(
    s: dict[str, str], alive: set[str], me: str, mids: list[str], forwarded: bool
) -> None:
    p = placement(s)
    is_alive = alive.__contains__
    routes = [route(p, "ns", m, me, is_alive) for m in mids]
    plan = split_writes(routes, me, forwarded=forwarded)
    placed = list(plan.local) + [i for ix in plan.forward.values() for i in ix]
    assert sorted(placed) == list(range(len(mids)))
    assert list(plan.local) == sorted(plan.local)
    for target, ix in plan.forward.items():
        assert not forwarded
        assert target != me and is_alive(target)
        assert all(target in routes[i].owners for i in ix)


@settings(deadline=None, max_examples=200)
@given(states, alive_sets, st.sampled_from(NODES), keys)
def test_routes_coordinate_at_an_owner_and_write_to_a_superset(
    s: dict[str, str], alive: set[str], me: str, mids: list[str]
) -> None:
    p = placement(s)
    for m in mids:
        rt = route(p, "ns", m, me, alive.__contains__)
        assert set(rt.coordinators) <= set(rt.owners)
        if me in rt.owners:
            assert rt.coordinators == (me,)
        else:
            assert rt.coordinators == tuple(o for o in rt.owners if o in alive)
        assert rt.write_to[: len(rt.owners)] == rt.owners
        assert len(rt.write_to) == len(rt.owners) + rt.extra
        assert len(set(rt.write_to)) == len(rt.write_to)
