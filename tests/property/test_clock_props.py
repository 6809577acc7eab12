"""Property tests for spine.core.clock: HLC monotonicity under message exchange, version codecs,
version-vector algebra."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spine.core.clock import (
    HLC,
    Ordering,
    Version,
    hlc_from_ms,
    hlc_ms,
    vv_compare,
    vv_increment,
    vv_merge,
)
from spine.core.errors import ClockSkew

MAX_OFFSET = 500
T0 = 1_700_000_000_000


@dataclass
class SkewedWall:
    """A node's wall clock: shared true time plus this node's fixed skew."""

    true_time: list[int]
    skew: int

    def __call__(self) -> int:
        return self.true_time[0] + self.skew


# One step of the simulation: advance true time, a local event (send) on node i, or delivery of
# the k-th in-flight message (mod the number in flight), possibly out of order.
steps = st.lists(
    st.one_of(
        st.tuples(st.just("tick"), st.integers(0, 50)),
        st.tuples(st.just("send"), st.integers(0, 2), st.integers(0, 2)),
        st.tuples(st.just("recv"), st.integers(0, 1_000)),
    ),
    max_size=200,
)
# Skews within ±max_offset/2, so any two wall clocks differ by at most max_offset.
skews = st.lists(st.integers(-MAX_OFFSET // 2, MAX_OFFSET // 2), min_size=3, max_size=3)


@settings(max_examples=150, deadline=None)
@given(skews, steps)
def test_three_nodes_exchanging_messages_keep_hlc_causal_and_monotonic(
    skew: list[int], plan: list[tuple[int | str, ...]]
) -> None:
    true_time = [T0]
    walls = [SkewedWall(true_time, s) for s in skew]
    clocks = [HLC(w, MAX_OFFSET) for w in walls]
    issued: list[list[int]] = [[], [], []]
    in_flight: list[tuple[int, int]] = []  # (destination, timestamp)
    for step in plan:
        if step[0] == "tick":
            true_time[0] += int(step[1])
        elif step[0] == "send":
            src, dst = int(step[1]), int(step[2])
            ts = clocks[src].now()
            issued[src].append(ts)
            assert ts >= hlc_from_ms(walls[src]())  # never behind its own wall clock
            in_flight.append((dst, ts))
        elif in_flight:
            dst, ts = in_flight.pop(int(step[1]) % len(in_flight))
            got = clocks[dst].observe(ts)  # must not raise: skews are within max_offset
            issued[dst].append(got)
            assert got > ts
    for seq in issued:
        assert all(b > a for a, b in itertools.pairwise(seq))
    assert all(c.rejected == 0 for c in clocks)


# Operations on one clock, with a wall clock that may jump either way and remotes at any offset.
ops = st.lists(
    st.one_of(
        st.tuples(st.just("wall"), st.integers(-10_000, 10_000)),
        st.tuples(st.just("now"), st.just(0)),
        st.tuples(st.just("observe"), st.integers(-10_000, 2 * MAX_OFFSET), st.integers(0, 0xFFFF)),
    ),
    max_size=100,
)


@settings(deadline=None)
@given(ops)
def test_one_hlc_is_strictly_increasing_and_refuses_only_far_ahead_remotes(
    plan: list[tuple[str, int] | tuple[str, int, int]]
) -> None:
    true_time = [T0]
    wall = SkewedWall(true_time, 0)
    clock = HLC(wall, MAX_OFFSET)
    prev = clock.last
    refused = 0
    for op in plan:
        if op[0] == "wall":
            true_time[0] += op[1]
            continue
        if op[0] == "now":
            got = clock.now()
        else:
            offset, counter = op[1], op[2]  # type: ignore[misc]
            remote = hlc_from_ms(wall() + offset) + counter
            if offset > MAX_OFFSET:
                with pytest.raises(ClockSkew):
                    clock.observe(remote)
                refused += 1
                assert clock.last == prev
                continue
            got = clock.observe(remote)
            assert got > remote
        assert got > prev
        assert got == clock.last
        prev = got
    assert clock.rejected == refused


versions = st.builds(
    Version,
    st.integers(0, 2**64 - 1),
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12),
)


@settings(deadline=None)
@given(versions)
def test_version_encoding_round_trips(v: Version) -> None:
    assert Version.decode(v.encode()) == v


@settings(deadline=None)
@given(versions, versions)
def test_encoded_versions_compare_like_hlc_node_tuples(a: Version, b: Version) -> None:
    ea, eb = a.encode(), b.encode()
    assert (ea < eb) == ((a.hlc, a.node) < (b.hlc, b.node))
    assert (ea == eb) == ((a.hlc, a.node) == (b.hlc, b.node))
    assert (a < b) == ((a.hlc, a.node) < (b.hlc, b.node))


@settings(deadline=None)
@given(st.integers(0, 2**48 - 1), st.integers(0, 0xFFFF))
def test_hlc_packing_round_trips(ms: int, counter: int) -> None:
    t = hlc_from_ms(ms) + counter
    assert hlc_ms(t) == ms
    assert t - hlc_from_ms(hlc_ms(t)) == counter


clocks = st.dictionaries(st.sampled_from(["n1", "n2", "n3", "n4"]), st.integers(1, 5), max_size=4)
MIRROR = {
    Ordering.BEFORE: Ordering.AFTER,
    Ordering.AFTER: Ordering.BEFORE,
    Ordering.EQUAL: Ordering.EQUAL,
    Ordering.CONCURRENT: Ordering.CONCURRENT,
}


@settings(deadline=None)
@given(clocks, clocks)
def test_vv_compare_is_antisymmetric_and_matches_pointwise_order(
    a: dict[str, int], b: dict[str, int]
) -> None:
    got = vv_compare(a, b)
    assert vv_compare(b, a) is MIRROR[got]
    nodes = a.keys() | b.keys()
    le = all(a.get(n, 0) <= b.get(n, 0) for n in nodes)
    ge = all(a.get(n, 0) >= b.get(n, 0) for n in nodes)
    expected = {
        (True, True): Ordering.EQUAL,
        (True, False): Ordering.BEFORE,
        (False, True): Ordering.AFTER,
        (False, False): Ordering.CONCURRENT,
    }[(le, ge)]
    assert got is expected


@settings(deadline=None)
@given(clocks, clocks, clocks)
def test_vv_merge_is_a_join(a: dict[str, int], b: dict[str, int], c: dict[str, int]) -> None:
    assert vv_merge(a, b) == vv_merge(b, a)
    assert vv_merge(vv_merge(a, b), c) == vv_merge(a, vv_merge(b, c))
    assert vv_merge(a, a) == a
    m = vv_merge(a, b)
    assert vv_compare(m, a) in (Ordering.AFTER, Ordering.EQUAL)
    assert vv_compare(m, b) in (Ordering.AFTER, Ordering.EQUAL)


@settings(deadline=None)
@given(clocks, st.sampled_from(["n1", "n2", "n5"]))
def test_vv_increment_is_strictly_after(a: dict[str, int], node: str) -> None:
    assert vv_compare(vv_increment(a, node), a) is Ordering.AFTER
    assert sum(vv_increment(a, node).values()) == sum(a.values()) + 1
