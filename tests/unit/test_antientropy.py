"""Unit tests for spine.core.antientropy: leaf listings, repair plans, purge rules, pacing."""

from __future__ import annotations

import msgpack
import pytest

from spine.core.antientropy import (
    Held,
    PeerView,
    ShardDigest,
    TokenBucket,
    chunk_leaves,
    expired,
    listing_from_wire,
    listing_to_wire,
    next_shards,
    pack_version,
    purgeable,
    reconcile,
    unpack_version,
)
from spine.core.clock import Version, hlc_from_ms
from spine.core.merkle import ShardTree, diff_trees
from spine.core.messages import DECODERS, ShardFetch, ShardTreeQuery

DAY_MS = 24 * 3600 * 1000
GRACE = 7 * DAY_MS
NOW = 100 * DAY_MS


def v(ms: int, node: str = "n1", counter: int = 0) -> bytes:
    return pack_version(Version(hlc_from_ms(ms) + counter, node))


def keys(n: int, prefix: str = "k") -> list[bytes]:
    return [b"\x00\x07ns\x00" + f"{prefix}{i}".encode() for i in range(n)]


# ------------------------------------------------------------------ versions


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (Version(1, "n1"), Version(2, "n1")),
        (Version(5, "n2"), Version(5, "n3")),
        (Version(5, "n1"), Version(5, "n10")),
        (Version(5, "z"), Version(6, "a")),
        (Version(2**48, "a"), Version(2**48 + 1, "")),
    ],
)
def test_packed_versions_order_like_versions(a: Version, b: Version) -> None:
    assert a < b
    assert pack_version(a) < pack_version(b)
    assert unpack_version(pack_version(a)) == a


def test_unpack_refuses_a_short_blob() -> None:
    with pytest.raises(ValueError):
        unpack_version(b"\x00\x01")


# ------------------------------------------------------------------ the digest


def test_put_moves_forward_only_and_keeps_the_tree_in_step() -> None:
    d = ShardDigest()
    k = keys(1)[0]
    assert d.put(k, v(10), deleted=False)
    assert not d.put(k, v(5), deleted=True)  # older: ignored
    assert not d.put(k, v(10), deleted=False)  # same: ignored
    assert d.held(k) == Held(v(10), False)
    assert d.put(k, v(20), deleted=True)
    assert d.held(k) == Held(v(20), True)
    assert d.tombstones == {k}
    assert d.tree == ShardTree.build([(k, v(20))])


def test_drop_needs_the_exact_version() -> None:
    d = ShardDigest()
    k = keys(1)[0]
    d.put(k, v(20), deleted=True)
    assert not d.drop(k, v(10))
    assert d.held(k) is not None
    assert d.drop(k, v(20))
    assert d.held(k) is None and not d.tombstones and len(d) == 0
    assert d.tree.root() == 0
    assert not d.drop(k, v(20))


def test_out_of_order_updates_end_in_the_same_state() -> None:
    ks = keys(50)
    forward, backward = ShardDigest(), ShardDigest()
    updates = [(k, v(t), t % 3 == 0) for t in range(1, 4) for k in ks]
    for k, ver, dead in updates:
        forward.put(k, ver, dead)
    for k, ver, dead in reversed(updates):
        backward.put(k, ver, dead)
    assert forward.tree == backward.tree
    assert forward.versions == backward.versions
    assert forward.tombstones == backward.tombstones


def test_listing_holds_exactly_the_keys_of_the_asked_leaves() -> None:
    d = ShardDigest()
    ks = keys(300)
    for i, k in enumerate(ks):
        d.put(k, v(i + 1), deleted=i % 7 == 0)
    leaves = sorted({d.tree.leaf_of(k) for k in ks[:10]})
    listing = d.listing(leaves)
    assert set(listing) == {k for k in ks if d.tree.leaf_of(k) in leaves}
    assert set(ks[:10]) <= set(listing)
    assert all(listing[k] == d.held(k) for k in listing)
    assert sum(d.tree.leaf_count(leaf) for leaf in leaves) == len(listing)
    assert d.listing([]) == {}


def test_listing_wire_round_trip_through_msgpack() -> None:
    listing = {b"a": Held(v(1), False), b"b\x00": Held(v(2, "n2"), True)}
    wire = msgpack.unpackb(msgpack.packb(listing_to_wire(listing), use_bin_type=True), raw=False)
    assert listing_from_wire(wire) == listing


def test_tombstone_versions_are_the_purge_candidates() -> None:
    d = ShardDigest()
    a, b = keys(2)
    d.put(a, v(1), deleted=True)
    d.put(b, v(1), deleted=False)
    assert d.tombstone_versions() == {a: v(1)}


# ------------------------------------------------------------------ reconcile


def test_reconcile_pulls_newer_and_pushes_newer_or_missing() -> None:
    a, b, c, d, e = keys(5)
    local = {a: Held(v(10), False), b: Held(v(20), False), c: Held(v(5), False),
             e: Held(v(7), False)}
    remote = {a: Held(v(11), False), b: Held(v(19), False), d: Held(v(3), False),
              e: Held(v(7), False)}
    plan = reconcile(local, remote, NOW, GRACE)
    assert plan.pull == [a, d]
    assert plan.push == [b, c]


def test_reconcile_of_equal_listings_is_empty() -> None:
    listing = {k: Held(v(i + 1), i % 2 == 0) for i, k in enumerate(keys(20))}
    plan = reconcile(listing, dict(listing), NOW, GRACE)
    assert plan.pull == [] and plan.push == []


def test_ties_on_hlc_break_by_node_id() -> None:
    (k,) = keys(1)
    plan = reconcile({k: Held(v(10, "n1"), False)}, {k: Held(v(10, "n2"), False)}, NOW, GRACE)
    assert plan.pull == [k] and plan.push == []


def test_an_expired_tombstone_is_not_copied_to_a_replica_holding_nothing() -> None:
    (k,) = keys(1)
    old_tomb = Held(v(NOW - GRACE - 1), True)
    assert expired(old_tomb, NOW, GRACE)
    assert reconcile({k: old_tomb}, {}, NOW, GRACE).push == []
    assert reconcile({}, {k: old_tomb}, NOW, GRACE).pull == []


def test_an_expired_tombstone_still_replaces_an_older_live_version() -> None:
    (k,) = keys(1)
    old_live = Held(v(NOW - GRACE - 10), False)
    old_tomb = Held(v(NOW - GRACE - 1), True)
    assert reconcile({k: old_tomb}, {k: old_live}, NOW, GRACE).push == [k]
    assert reconcile({k: old_live}, {k: old_tomb}, NOW, GRACE).pull == [k]


def test_a_fresh_tombstone_is_copied_to_a_replica_holding_nothing() -> None:
    (k,) = keys(1)
    tomb = Held(v(NOW - GRACE + 1), True)
    assert not expired(tomb, NOW, GRACE)
    assert reconcile({k: tomb}, {}, NOW, GRACE).push == [k]
    assert not expired(Held(v(0), False), NOW, GRACE)  # live records never expire


def test_descent_listing_and_plan_make_two_digests_equal() -> None:
    ks = keys(400)
    a, b = ShardDigest(), ShardDigest()
    for i, k in enumerate(ks):
        a.put(k, v(i + 1), deleted=False)
        if i % 10:
            b.put(k, v(i + 1), deleted=False)  # b misses one key in ten
    for k in ks[:25]:
        b.put(k, v(10_000), deleted=True)  # b deleted 25 keys later
    b.put(b"\x00\x07ns\x00only-b", v(3), deleted=False)
    leaves = diff_trees(a.tree, b.tree)
    assert 0 < len(leaves) < a.tree.leaves
    la, lb = a.listing(leaves), b.listing(leaves)
    plan = reconcile(la, lb, NOW, GRACE)
    for k in plan.pull:
        a.put(k, lb[k].version, lb[k].deleted)
    for k in plan.push:
        b.put(k, la[k].version, la[k].deleted)
    assert a.tree.root() == b.tree.root()
    assert a.versions == b.versions and a.tombstones == b.tombstones
    assert len(plan.pull) == 26 and len(plan.push) == len([i for i in range(25, 400)
                                                           if i % 10 == 0])


# ------------------------------------------------------------------ purge


def _leaf(k: bytes) -> int:
    return ShardTree().leaf_of(k)


def test_purge_needs_every_peer_reached() -> None:
    (k,) = keys(1)
    cands = {k: v(1)}
    assert purgeable(cands, _leaf, [PeerView(True), PeerView(True)], NOW, GRACE) == [k]
    assert purgeable(cands, _leaf, [PeerView(True), None], NOW, GRACE) == []
    assert purgeable(cands, _leaf, [None], NOW, GRACE) == []


def test_purge_waits_for_the_grace() -> None:
    (k,) = keys(1)
    fresh = {k: v(NOW - GRACE + 1)}
    assert purgeable(fresh, _leaf, [PeerView(True)], NOW, GRACE) == []
    assert purgeable(fresh, _leaf, [PeerView(True)], NOW + 1, GRACE) == [k]


def test_purge_confirmations_from_a_differing_peer() -> None:
    a, b, c, d, e = keys(5)
    la, lb, lc, ld, le = (_leaf(x) for x in (a, b, c, d, e))
    assert len({la, lb, lc, ld, le}) == 5
    tomb = v(1)
    cands = {x: tomb for x in (a, b, c, d, e)}
    view = PeerView(
        equal=False,
        differing=frozenset({la, lb, lc, ld}),
        exchanged=frozenset({la, lb, lc}),  # d's leaf differs but was not compared this round
        listed={a: Held(tomb, True), c: Held(v(0), False)},  # b absent, c older and live
    )
    got = purgeable(cands, _leaf, [view], NOW, GRACE)
    assert a in got  # the peer lists the very same tombstone
    assert b in got  # the peer holds nothing for the key
    assert c not in got  # the peer still holds live data the tombstone deletes
    assert d not in got  # not compared: unknown
    assert e in got  # its leaf was identical on both sides
    assert purgeable(cands, _leaf, [view, PeerView(True)], NOW, GRACE) == got
    assert purgeable(cands, _leaf, [view, None], NOW, GRACE) == []


def test_a_descent_that_named_no_leaf_confirms_nothing() -> None:
    (k,) = keys(1)
    assert purgeable({k: v(1)}, _leaf, [PeerView(False, None)], NOW, GRACE) == []


def test_a_newer_version_on_the_peer_blocks_the_purge() -> None:
    (k,) = keys(1)
    leaf = frozenset({_leaf(k)})
    view = PeerView(False, leaf, leaf, {k: Held(v(2), False)})
    assert purgeable({k: v(1)}, _leaf, [view], NOW, GRACE) == []


# ------------------------------------------------------------------ pacing and picking


def test_token_bucket_allows_a_burst_then_paces() -> None:
    b = TokenBucket(rate=100, burst=100, now=0.0)
    assert b.take(100, 0.0) == 0.0
    assert b.take(50, 0.0) == pytest.approx(0.5)
    assert b.take(0, 0.5) == 0.0  # the debt is paid back by then
    assert b.take(10, 10.0) == 0.0  # refills, but never past the burst
    assert b.tokens == pytest.approx(90)
    assert b.take(1000, 10.0) == pytest.approx(9.1)


def test_token_bucket_refuses_a_bad_rate() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 1, 0.0)


def test_next_shards_is_round_robin() -> None:
    held = [3, 5, 8, 13]
    picked, cur = next_shards(held, 0, 3)
    assert picked == [3, 5, 8] and cur == 3
    picked, cur = next_shards(held, cur, 3)
    assert picked == [13, 3, 5] and cur == 2
    assert next_shards(held, 1, 10) == ([5, 8, 13, 3], 1)
    assert next_shards([], 7, 3) == ([], 0)


def test_chunk_leaves_bounds_keys_and_leaves() -> None:
    counts = {1: 5, 2: 5, 3: 20, 4: 1, 5: 1, 6: 1}
    assert chunk_leaves([1, 2, 3, 4, 5, 6], counts, 10, 100) == [[1, 2], [3], [4, 5, 6]]
    assert chunk_leaves([4, 5, 6, 7], counts, 10, 2) == [[4, 5], [6, 7]]
    assert chunk_leaves([], counts, 10, 2) == []


# ------------------------------------------------------------------ messages


def test_shard_messages_round_trip_through_msgpack() -> None:
    for msg in (
        ShardTreeQuery(16, 3, [(7, 0, []), (9, 1, [0, 15])]),
        ShardFetch(7, [1, 4095], [[b"k\x00", v(1), True]], 512),
    ):
        wire = msgpack.unpackb(msgpack.packb(msg.to_wire(), use_bin_type=True), raw=False)
        assert DECODERS[msg.TAG](wire) == msg
