"""Unit tests for spine.core.routing: a key's owners, write set and coordinators, and how a batch
splits between this node and the owners it forwards to."""

from __future__ import annotations

from spine.core.ringmap import ACTIVE, JOINING, Entry, Placement, RingMap
from spine.core.routing import Route, catch_up_peers, coordinators, live, route, split_writes

SHAPE = {"shards": 16, "vnodes": 8, "n": 3}


def placement(states: dict[str, str], trailing: Placement | None = None) -> Placement:
    m = RingMap(Entry(n, s, 1) for n, s in states.items())
    return Placement(m, trailing=None if trailing is None else trailing.current, **SHAPE)


FOUR = {"a": ACTIVE, "b": ACTIVE, "c": ACTIVE, "d": ACTIVE}


def everyone(_node: str) -> bool:
    return True


def key_not_owned_by(p: Placement, node: str) -> str:
    for i in range(1000):
        if node not in p.owners(p.shard("ns", f"k{i}")):
            return f"k{i}"
    raise AssertionError("every key is owned by " + node)


def key_owned_by(p: Placement, node: str) -> str:
    for i in range(1000):
        if node in p.owners(p.shard("ns", f"k{i}")):
            return f"k{i}"
    raise AssertionError("no key is owned by " + node)


def test_an_owner_coordinates_its_own_keys() -> None:
    p = placement(FOUR)
    mid = key_owned_by(p, "a")
    rt = route(p, "ns", mid, "a", everyone)
    assert rt.coordinators == ("a",)
    assert not rt.forwards("a")
    assert rt.owners == p.owners(p.shard("ns", mid))


def test_a_non_owner_forwards_to_the_live_owners_in_preference_order() -> None:
    p = placement(FOUR)
    mid = key_not_owned_by(p, "a")
    owners = p.owners(p.shard("ns", mid))
    down = owners[0]
    rt = route(p, "ns", mid, "a", lambda n: n != down)
    assert rt.coordinators == owners[1:]
    assert rt.forwards("a")


def test_a_non_owner_with_no_live_owner_runs_the_request_itself() -> None:
    p = placement(FOUR)
    mid = key_not_owned_by(p, "a")
    rt = route(p, "ns", mid, "a", lambda n: n == "a")
    assert rt.coordinators == ()
    assert not rt.forwards("a")


def test_an_owner_coordinates_even_when_its_detector_thinks_it_down() -> None:
    assert coordinators(("a", "b"), "a", lambda _n: False) == ("a",)


def test_the_write_set_adds_pending_owners_with_one_extra_ack_each() -> None:
    p = placement({**FOUR, "e": JOINING})
    seen_pending = False
    for i in range(200):
        rt = route(p, "ns", f"k{i}", "a", everyone)
        pending = p.pending(rt.shard)
        assert rt.write_to == rt.owners + pending
        assert rt.extra == len(pending)
        seen_pending = seen_pending or bool(pending)
    assert seen_pending


def test_the_write_set_adds_trailing_owners_just_after_a_settle() -> None:
    old = placement({**FOUR, "e": JOINING})
    new = placement({**FOUR, "e": ACTIVE}, trailing=old)
    seen = False
    for i in range(200):
        rt = route(new, "ns", f"k{i}", "a", everyone)
        trailing = new.trailing_owners(rt.shard)
        assert rt.write_to == rt.owners + trailing
        assert rt.extra == len(trailing)
        seen = seen or bool(trailing)
    assert seen


def test_live_and_catch_up_peers_keep_order_and_skip_the_down_and_self() -> None:
    alive = {"a", "c", "d"}.__contains__
    assert live(("d", "b", "a", "c"), alive) == ["d", "a", "c"]
    assert catch_up_peers(("d", "b", "a", "c"), "a", alive) == ["d", "c"]


def r(*coords: str) -> Route:
    return Route(0, coords, coords, 0, coords)


def test_split_writes_groups_by_first_coordinator_and_keeps_op_order() -> None:
    routes = [r("b", "c"), r("a"), r("c"), r(), r("b")]
    plan = split_writes(routes, "a", forwarded=False)
    assert plan.local == (1, 3)
    assert plan.forward == {"b": (0, 4), "c": (2,)}


def test_a_forwarded_batch_runs_here_whatever_the_routes() -> None:
    routes = [r("b", "c"), r("a"), r("c")]
    plan = split_writes(routes, "a", forwarded=True)
    assert plan.local == (0, 1, 2)
    assert plan.forward == {}
