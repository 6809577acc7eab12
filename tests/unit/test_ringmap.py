"""spine.core.ringmap: the ring map's merge is a join-semilattice, placement of a ring change
(current/next rings, pending owners, write sets, moves, holds) and the claimant.
"""

from __future__ import annotations

from functools import reduce
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spine.core.ringmap import (
    ACTIVE,
    JOINING,
    LEAVING,
    LEFT,
    STATES,
    Entry,
    Placement,
    RingMap,
    claimant,
    genesis,
)

NODES = ["n1", "n2", "n3", "n4", "n5"]
# A small version range, so ties on the version (broken by the state's rank) are common.
versions = st.integers(0, 6)


def _entry(node: str, state: str, version: int, removed: bool = False) -> Entry:
    # Address fields are a function of the node, as they are in a cluster whose nodes agree on
    # their configuration (see the xfail test below for what happens when they do not).
    i = NODES.index(node)
    return Entry(node, state, version, f"z{i % 2}", f"10.0.0.{i}", 7000 + i, 8000 + i, 9000 + i,
                 removed)


entries = st.builds(_entry, st.sampled_from(NODES), st.sampled_from(STATES), versions,
                    st.booleans())
entry_lists = st.lists(entries, max_size=8)


def ringmap(es: list[Entry]) -> RingMap:
    return RingMap().merge(es)


# ----------------------------------------------------------------------------- the lattice


@settings(max_examples=300, deadline=None)
@given(entry_lists, entry_lists)
def test_merge_is_commutative(a: list[Entry], b: list[Entry]) -> None:
    x, y = ringmap(a), ringmap(b)
    assert x.merge(y.entries.values()) == y.merge(x.entries.values())
    assert x.merge(y.entries.values()).digest() == y.merge(x.entries.values()).digest()


@settings(max_examples=300, deadline=None)
@given(entry_lists, entry_lists, entry_lists)
def test_merge_is_associative(a: list[Entry], b: list[Entry], c: list[Entry]) -> None:
    x, y, z = ringmap(a), ringmap(b), ringmap(c)
    left = x.merge(y.entries.values()).merge(z.entries.values())
    right = x.merge(y.merge(z.entries.values()).entries.values())
    assert left == right


@settings(max_examples=300, deadline=None)
@given(entry_lists, entry_lists)
def test_merge_is_idempotent_and_an_upper_bound(a: list[Entry], b: list[Entry]) -> None:
    x, y = ringmap(a), ringmap(b)
    assert x.merge(x.entries.values()) is x  # nothing newer: the very same map
    j = x.merge(y.entries.values())
    assert j.merge(y.entries.values()) == j
    assert j.merge(x.entries.values()) == j
    for node, e in j.entries.items():  # every entry of the join is the max of the inputs
        for side in (x, y):
            mine = side.get(node)
            assert mine is None or mine == e or e.newer_than(mine)


@settings(max_examples=200, deadline=None)
@given(st.lists(entry_lists, min_size=1, max_size=5), st.randoms(use_true_random=False))
def test_any_gossip_order_converges(maps: list[list[Entry]], rnd: Any) -> None:
    want = reduce(lambda m, es: m.merge(es), maps, RingMap())
    order = list(maps)
    rnd.shuffle(order)
    got = reduce(lambda m, es: m.merge(reversed(es)), order, RingMap())
    assert got == want and got.digest() == want.digest()


def test_merge_is_commutative_when_genesis_configs_differ() -> None:
    a = genesis([{"id": "n1"}, {"id": "n2", "zone": "z1", "host": "10.0.0.2"}])
    b = genesis([{"id": "n1"}, {"id": "n2", "zone": "z2", "host": "node2.local"}])
    assert a.merge(b.entries.values()).digest() == b.merge(a.entries.values()).digest()


@settings(max_examples=200, deadline=None)
@given(entry_lists.filter(bool), st.data())
def test_with_state_always_wins_over_the_old_entry(es: list[Entry], data: st.DataObject) -> None:
    m = ringmap(es)
    node = data.draw(st.sampled_from(sorted(m.entries)))
    state = data.draw(st.sampled_from(STATES))
    version = data.draw(st.integers(0, 10))  # often older than the entry: must still win
    old = m.entries[node]
    new = m.with_state(node, state, version)
    e = new.entries[node]
    assert e.state == state and e.newer_than(old)
    assert e.version == max(version, old.version + 1)
    assert (e.zone, e.host, e.port) == (old.zone, old.host, old.port)
    assert {n: x for n, x in new.entries.items() if n != node} == {
        n: x for n, x in m.entries.items() if n != node}
    assert m.merge([e]) == new  # and it wins again wherever it is gossiped to


def test_settled_moves_joining_to_active_and_leaving_to_left() -> None:
    m = genesis([{"id": "n1"}, {"id": "n2"}, {"id": "n3"}])
    m = m.merge([Entry("n4", JOINING, 5)]).with_state("n2", LEAVING, 7)
    m = m.merge([Entry("n5", LEFT, 3)])
    assert m.changing
    s = m.settled(6)
    assert not s.changing
    assert {n: e.state for n, e in s.entries.items()} == {
        "n1": ACTIVE, "n2": LEFT, "n3": ACTIVE, "n4": ACTIVE, "n5": LEFT}
    assert s.entries["n4"].version == 6  # the version asked for where it is newer
    assert s.entries["n2"].version == 8  # else one past the entry's own
    assert s.entries["n1"] is m.entries["n1"] and s.entries["n5"] is m.entries["n5"]
    assert m.merge(s.entries.values()) == s  # the settled map wins everywhere
    assert s.settled(99) is s  # nothing to settle: the same map


def test_genesis_makes_every_configured_node_active_at_version_zero() -> None:
    m = genesis([{"id": "n1", "zone": "a", "host": "h1", "port": 1, "rpc_port": 2,
                  "gossip_port": 3}, {"id": 2}])
    assert m.entries["n1"] == Entry("n1", ACTIVE, 0, "a", "h1", 1, 2, 3)
    assert m.entries["2"] == Entry("2", ACTIVE, 0)
    assert not m.changing
    assert RingMap.from_wire(m.to_wire()) == m
    assert m.digest() == RingMap.from_wire(m.to_wire()).digest()
    assert m.with_state("n1", LEAVING, 0).entries["n1"].version == 1  # any change outranks it


# ----------------------------------------------------------------------------- placement

SHAPE = {"shards": 256, "vnodes": 128, "n": 3}


def three() -> RingMap:
    return genesis([{"id": "n1"}, {"id": "n2"}, {"id": "n3"}])


def test_three_active_nodes_have_no_pending_and_no_extra_acks() -> None:
    p = Placement(three(), **SHAPE)
    assert p.next is p.current and p.moves() == []
    for s in range(256):
        assert p.pending(s) == ()
        assert sorted(p.owners(s)) == ["n1", "n2", "n3"]
        assert p.write_set(s) == (p.owners(s), 0)
        assert p.future_owners(s) == p.owners(s)


def test_a_joining_fourth_node_is_the_only_pending_owner_and_moves_a_quarter() -> None:
    p = Placement(three().merge([Entry("n4", JOINING, 5)]), **SHAPE)
    moved = 0
    for s in range(256):
        assert sorted(p.owners(s)) == ["n1", "n2", "n3"]  # the joiner serves no reads yet
        assert p.pending(s) in ((), ("n4",))
        nxt = p.future_owners(s)
        assert len(nxt) == len(set(nxt)) == 3
        assert set(nxt) - set(p.owners(s)) == set(p.pending(s))
        targets, extra = p.write_set(s)
        assert targets == p.owners(s) + p.pending(s) and extra == len(p.pending(s))
        assert p.holds("n4", s) == bool(p.pending(s))
        moved += len(p.pending(s))
    ideal = 3 * 256 / 4
    assert 0.8 * ideal <= moved <= 1.3 * ideal, f"{moved} slots moved, ideal {ideal}"
    mv = p.moves()
    assert len(mv) == moved and all(m.target == "n4" for m in mv)
    assert [m.shard for m in mv] == sorted(m.shard for m in mv)
    assert all(set(m.sources) == set(p.owners(m.shard)) for m in mv)


def test_a_leaving_node_is_never_pending_and_is_the_first_source() -> None:
    m = genesis([{"id": f"n{i}"} for i in range(1, 5)]).with_state("n2", LEAVING, 9)
    p = Placement(m, **SHAPE)
    assert "n2" in p.current.members and "n2" not in p.next.members
    moves = {(mv.shard, mv.target): mv for mv in p.moves()}
    had = 0
    for s in range(256):
        assert "n2" not in p.pending(s) and "n2" not in p.future_owners(s)
        assert len(p.future_owners(s)) == 3
        if "n2" in p.owners(s):
            had += 1
            assert len(p.pending(s)) == 1  # exactly one new owner replaces it
            (target,) = p.pending(s)
            assert moves[(s, target)].sources[0] == "n2"
            assert set(moves[(s, target)].sources) == set(p.owners(s))
            assert p.holds("n2", s)  # it keeps serving its shards until the settle
        else:
            assert p.pending(s) == ()
            assert not p.holds("n2", s)
    assert had == len(moves) > 0
    after = Placement(m.settled(10), **SHAPE)
    for s in range(256):
        assert after.owners(s) == p.future_owners(s)
        assert not after.holds("n2", s)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(NODES), st.sampled_from(STATES), min_size=1),
       st.integers(1, 3))
def test_a_write_set_holds_a_quorum_of_both_rings(states: dict[str, str], n: int) -> None:
    # The argument of `W + pending`: a write goes to the N current owners and the P pending
    # ones and needs W + P acks, so at most N - W of them miss it. That leaves a quorum of the
    # next ring only if every next owner is written to.
    m = RingMap(Entry(node, st_, 1) for node, st_ in states.items())
    p = Placement(m, shards=32, vnodes=16, n=n)
    for s in range(32):
        targets, extra = p.write_set(s)
        assert len(targets) == len(set(targets)) == len(p.owners(s)) + extra
        assert set(p.owners(s)) <= set(targets)
        assert set(p.future_owners(s)) <= set(targets)
        assert set(p.pending(s)) == set(p.future_owners(s)) - set(p.owners(s))
        for node in states:
            assert p.holds(node, s) == (node in targets)
        assert all(states[o] in (ACTIVE, LEAVING) for o in p.owners(s))
        assert all(states[o] in (ACTIVE, JOINING) for o in p.future_owners(s))


def test_claimant_is_the_smallest_live_active_id() -> None:
    m = genesis([{"id": "n3"}, {"id": "n1"}, {"id": "n2"}]).merge([Entry("n0", JOINING, 1)])
    assert claimant(m, ["n0", "n1", "n2", "n3"]) == "n1"  # joining nodes do not claim
    assert claimant(m, ["n2", "n3"]) == "n2"
    assert claimant(m, ["n2", "n3", "n9"]) == "n2"  # not in the map: ignored
    assert claimant(m.with_state("n1", LEAVING, 5), ["n1", "n2", "n3"]) == "n2"
    assert claimant(m, ["n0"]) is None
    assert claimant(RingMap(), ["n1"]) is None


# ----------------------------------------------------------------------------- wire form

GOOD = ["n1", ACTIVE, 5, "z", "h", 1, 2, 3]


@pytest.mark.parametrize("wire", [
    None,
    "n1",
    {"node": "n1"},
    GOOD[:7],
    [*GOOD, 0],
    ["n1", "gone", 5, "z", "h", 1, 2, 3],
    ["n1", ACTIVE, "five", "z", "h", 1, 2, 3],
    ["n1", ACTIVE, 5, "z", "h", "port", 2, 3],
])
def test_entry_from_wire_rejects_malformed_input(wire: Any) -> None:
    with pytest.raises(ValueError):
        Entry.from_wire(wire)


def test_entry_from_wire_rejects_a_null_version_with_value_error() -> None:
    with pytest.raises(ValueError):
        Entry.from_wire(["n1", ACTIVE, None, "z", "h", 1, 2, 3])


@given(st.lists(entries, max_size=5))
def test_wire_round_trip(es: list[Entry]) -> None:
    m = ringmap(es)
    assert RingMap.from_wire(m.to_wire()) == m
    for e in es:
        assert Entry.from_wire(e.to_wire()) == e


def test_an_entry_stored_before_the_removed_mark_reads_as_not_removed() -> None:
    old = Entry.from_wire(GOOD)
    assert old.removed is False and len(old.to_wire()) == 9
    assert Entry.from_wire([*GOOD, True]).removed is True
    with pytest.raises(ValueError):
        Entry.from_wire([*GOOD, "yes"])


def test_with_state_sets_keeps_and_clears_the_removed_mark() -> None:
    m = genesis([{"id": n} for n in ("n1", "n2", "n3", "n4")])
    removed = m.with_state("n4", LEAVING, 10, removed=True)
    assert removed.removed("n4") and not removed.removed("n1") and not removed.removed("n9")
    left = removed.settled(20)
    assert left.state("n4") == LEFT and left.removed("n4")  # the mark outlives the settle
    back = left.with_state("n4", JOINING, 30, removed=False)
    assert not back.removed("n4")
    # Marking a node already leaving is a change of its own, which every map adopts.
    leaving = m.with_state("n4", LEAVING, 10)
    marked = leaving.with_state("n4", LEAVING, 11, removed=True)
    assert leaving.merge(marked.entries.values()).removed("n4")


def test_a_removed_node_is_never_a_trailing_owner() -> None:
    shape = {"shards": 64, "vnodes": 32, "n": 3}
    before = genesis([{"id": n} for n in ("n1", "n2", "n3", "n4")])
    for mark, trails in ((False, True), (True, False)):
        changing = before.with_state("n4", LEAVING, 10, removed=mark)
        old = Placement(changing, **shape)
        new = Placement(changing.settled(20), trailing=old.current, **shape)
        trailing = {t for s in range(shape["shards"]) for t in new.trailing_owners(s)}
        assert (trailing == {"n4"}) is trails and (not trailing) is not trails
        for s in range(shape["shards"]):
            targets, extra = new.write_set(s)
            assert ("n4" in targets) is (trails and "n4" in old.owners(s))
            assert extra == len(new.trailing_owners(s))
