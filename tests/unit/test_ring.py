"""Unit tests for spine.core.ring: shards, tokens and preference lists (DESIGN §2)."""

from __future__ import annotations

import itertools

import pytest

from spine.core import validation
from spine.core.errors import InvalidInput
from spine.core.ring import Ring, hash64, shard_of

Q, VNODES, N = 256, 128, 3


def fake_hash(data: bytes) -> int:
    """Owners as arithmetic (groupcache's consistenthash test does the same).

    Token i of node "100" sits at 100 + i, shard s's point is s, and a key "ns/<int>" hashes to
    the int.
    """
    text = data.decode()
    if text.startswith("shard#"):
        return int(text[len("shard#"):])
    if "#" in text:
        node, i = text.split("#")
        return int(node) + int(i)
    return int(text.partition("/")[2])


def fake_ring(*nodes: str, n: int = 2, vnodes: int = 1, shards: int = 400) -> Ring:
    return Ring({m: "" for m in nodes}, shards=shards, vnodes=vnodes, n=n, h=fake_hash)


def placements(ring: Ring) -> list[set[str]]:
    return [set(ring.preference_list(s)) for s in range(ring.shards)]


# --- injected hash: owners read as arithmetic ---------------------------------------------------


@pytest.mark.parametrize(
    ("shard", "expected"),
    [
        (0, ("100", "200")),
        (50, ("100", "200")),
        (100, ("100", "200")),  # a point equal to a token belongs to that token
        (101, ("200", "300")),
        (200, ("200", "300")),
        (250, ("300", "100")),
        (300, ("300", "100")),
        (301, ("100", "200")),  # past the last token: wraps around to the first
        (399, ("100", "200")),
    ],
)
def test_fake_hash_owners_are_the_next_tokens_clockwise(
    shard: int, expected: tuple[str, ...]
) -> None:
    assert fake_ring("100", "200", "300").preference_list(shard) == expected


def test_fake_hash_key_to_shard_is_modulo_q() -> None:
    ring = fake_ring("100", "200", "300")
    assert ring.shard("ns", "250") == 250
    assert ring.shard("ns", "650") == 250
    assert ring.preference_list(ring.shard("ns", "650")) == ("300", "100")


def test_fake_hash_adding_a_node_takes_over_only_its_arc() -> None:
    before = fake_ring("100", "200", "300")
    after = fake_ring("100", "200", "300", "250")
    assert after.preference_list(220) == ("250", "300")
    assert after.preference_list(150) == ("200", "250")
    assert after.preference_list(50) == before.preference_list(50) == ("100", "200")
    assert after.preference_list(280) == before.preference_list(280) == ("300", "100")


def test_fake_hash_vnodes_and_walk_order() -> None:
    ring = fake_ring("100", "200", "300", vnodes=3)  # tokens 100-102, 200-202, 300-302
    assert ring.preference_list(101) == ("100", "200")
    assert ring.preference_list(102) == ("100", "200")
    assert ring.preference_list(103) == ("200", "300")
    assert ring.walk_order(250) == ["300", "100", "200"]
    assert ring.shards_of("100") == [s for s in range(400) if s <= 102 or s > 202]


# --- the real hash ------------------------------------------------------------------------------


def test_hash64_is_pinned_xxh3() -> None:
    # Placement must never change across versions or processes: pin values computed once.
    assert hash64(b"ns/id-1") == 0x3AD00D29A2E6C073
    assert 0 <= hash64(b"") < 2**64


def test_shard_of_is_pinned_and_in_range() -> None:
    assert shard_of("ns", "id-1", 256) == 115
    assert shard_of("default", "hello", 256) == 40
    for i in range(500):
        assert 0 <= shard_of("ns", f"k{i}", 7) < 7


def test_shard_of_hashes_namespace_slash_id() -> None:
    # By design the shard is hash64(namespace + "/" + id), so ("a", "b/c") and ("a/b", "c")
    # share a shard. They can never both be real keys: "/" is in neither the namespace nor the
    # id alphabet, so validation rejects both before placement.
    assert shard_of("a", "b/c", Q) == shard_of("a/b", "c", Q)
    assert shard_of("a", "b/c", Q) == hash64(b"a/b/c") % Q
    with pytest.raises(InvalidInput):
        validation.namespace("a/b")
    with pytest.raises(InvalidInput):
        validation.memory_id("b/c")


def test_ring_shard_agrees_with_shard_of_and_ignores_membership() -> None:
    small = Ring({"n1": ""}, shards=Q, vnodes=8, n=N)
    large = Ring({f"n{i}": "" for i in range(6)}, shards=Q, vnodes=8, n=N)
    for i in range(100):
        assert small.shard("ns", f"k{i}") == large.shard("ns", f"k{i}") == shard_of(
            "ns", f"k{i}", Q
        )


# --- preference lists ---------------------------------------------------------------------------


@pytest.mark.parametrize("members", [1, 2, 3, 4, 5, 7])
def test_every_preference_list_holds_min_n_members_distinct_nodes(members: int) -> None:
    nodes = {f"n{i}": "" for i in range(members)}
    ring = Ring(nodes, shards=Q, vnodes=32, n=N)
    for s in range(Q):
        pref = ring.preference_list(s)
        assert len(pref) == min(N, members)
        assert len(set(pref)) == len(pref)
        assert set(pref) <= set(nodes)
        assert ring.walk_order(s)[: len(pref)] == list(pref)  # without zones: ring order
        assert sorted(ring.walk_order(s)) == sorted(nodes)


def test_empty_ring_has_empty_preference_lists() -> None:
    ring = Ring({}, shards=8, vnodes=4, n=N)
    assert all(ring.preference_list(s) == () for s in range(8))
    assert ring.walk_order(0) == []


def test_shards_of_matches_the_preference_lists() -> None:
    ring = Ring({f"n{i}": "" for i in range(5)}, shards=Q, vnodes=VNODES, n=N)
    total = 0
    for node in ring.members:
        owned = ring.shards_of(node)
        assert owned == [s for s in range(Q) if node in ring.preference_list(s)]
        total += len(owned)
    assert total == N * Q


def test_load_is_roughly_balanced() -> None:
    ring = Ring({f"n{i}": "" for i in range(4)}, shards=Q, vnodes=VNODES, n=N)
    fair = N * Q / 4
    for node in ring.members:
        assert 0.75 * fair <= len(ring.shards_of(node)) <= 1.25 * fair


def test_zones_spread_replicas_over_distinct_zones_when_there_are_enough() -> None:
    members = {f"{z}-{i}": z for z in ("za", "zb", "zc", "zd") for i in range(2)}
    ring = Ring(members, shards=Q, vnodes=32, n=N)
    for s in range(Q):
        pref = ring.preference_list(s)
        assert len(set(pref)) == N
        assert len({members[m] for m in pref}) == N


def test_two_zones_and_n3_use_both_zones() -> None:
    members = {"a1": "za", "a2": "za", "a3": "za", "b1": "zb", "b2": "zb"}
    ring = Ring(members, shards=Q, vnodes=32, n=N)
    for s in range(Q):
        pref = ring.preference_list(s)
        assert len(set(pref)) == N
        assert {members[m] for m in pref} == {"za", "zb"}


def test_zone_first_pick_keeps_ring_order_within_the_choice() -> None:
    members = {"a1": "za", "a2": "za", "b1": "zb", "c1": "zc"}
    ring = Ring(members, shards=Q, vnodes=16, n=2)
    for s in range(Q):
        order = ring.walk_order(s)
        pref = ring.preference_list(s)
        # The first node clockwise always leads; the second is the next node of another zone.
        assert pref[0] == order[0]
        assert pref[1] == next(m for m in order if members[m] != members[order[0]])


def test_ring_is_independent_of_member_insertion_order() -> None:
    members = [("n1", "za"), ("n2", "zb"), ("n3", "za"), ("n4", "zc")]
    rings = [
        Ring(dict(perm), shards=64, vnodes=16, n=N) for perm in itertools.permutations(members)
    ]
    first = rings[0]
    for ring in rings[1:]:
        for s in range(64):
            assert ring.preference_list(s) == first.preference_list(s)
            assert ring.walk_order(s) == first.walk_order(s)


def test_two_rings_built_from_the_same_members_agree() -> None:
    a = Ring({"n1": "", "n2": "", "n3": ""}, shards=Q, vnodes=VNODES, n=N)
    b = Ring({"n3": "", "n1": "", "n2": ""}, shards=Q, vnodes=VNODES, n=N)
    assert [a.preference_list(s) for s in range(Q)] == [b.preference_list(s) for s in range(Q)]


# --- membership changes -------------------------------------------------------------------------


def test_adding_a_fourth_node_moves_about_a_quarter_and_only_to_it() -> None:
    old = Ring({"n1": "", "n2": "", "n3": ""}, shards=Q, vnodes=VNODES, n=N)
    new = Ring({"n1": "", "n2": "", "n3": "", "n4": ""}, shards=Q, vnodes=VNODES, n=N)
    moved = 0
    for before, after in zip(placements(old), placements(new), strict=True):
        gained = after - before
        assert gained <= {"n4"}  # nothing shuffles among the old nodes
        assert len(before - after) == len(gained)
        moved += len(gained)
    fraction = moved / (N * Q)
    assert 0.20 <= fraction <= 0.30


def test_removing_a_node_moves_only_its_placements() -> None:
    old = Ring({f"n{i}": "" for i in range(1, 6)}, shards=Q, vnodes=VNODES, n=N)
    new = Ring({f"n{i}": "" for i in range(1, 6) if i != 3}, shards=Q, vnodes=VNODES, n=N)
    changed = 0
    for before, after in zip(placements(old), placements(new), strict=True):
        assert before - after <= {"n3"}
        if "n3" in before:
            changed += 1
            assert len(after - before) == 1  # its replica went to exactly one other node
        else:
            assert after == before
    assert changed == len(old.shards_of("n3"))


def test_covering_set_holds_every_live_shard_and_prefers_the_coordinator() -> None:
    from spine.core.ring import covering_set

    r = Ring({f"n{i}": "" for i in range(1, 6)}, shards=64, vnodes=16, n=2)
    live = ["n1", "n2", "n3", "n4", "n5"]
    cover = covering_set(r, live, "n3")
    assert cover[0] == "n3"
    held = set().union(*(r.shards_of(n) for n in cover))
    assert held == set(range(64))
    assert len(cover) < len(live)
    # With N replicas on N nodes the coordinator alone is enough.
    r3 = Ring({"a": "", "b": "", "c": ""}, shards=32, vnodes=8, n=3)
    assert covering_set(r3, ["a", "b", "c"], "b") == ["b"]
    # Shards with no live replica cannot be covered and are left out, not waited for.
    dead = {"n1", "n2"}
    cover = covering_set(r, [n for n in live if n not in dead], None)
    coverable = {s for s in range(64) if set(r.preference_list(s)) - dead}
    assert set().union(*(r.shards_of(n) for n in cover)) >= coverable
    assert not dead.intersection(cover)
