"""Unit tests for spine.core.clock: the HLC, versions and version vectors (DESIGN §3)."""

from __future__ import annotations

import itertools

import pytest

from spine.core.clock import (
    HLC,
    ZERO,
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
T0 = 1_700_000_000_000  # a realistic wall time in ms


class FakeWall:
    """A wall clock the test moves by hand (forwards or backwards)."""

    def __init__(self, ms: int = T0) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def make(ms: int = T0, last: int = 0) -> tuple[HLC, FakeWall]:
    wall = FakeWall(ms)
    return HLC(wall, MAX_OFFSET, last=last), wall


# --- HLC packing --------------------------------------------------------------------------------


def test_hlc_packing_round_trips_and_orders_by_wall_time_first() -> None:
    assert hlc_ms(hlc_from_ms(T0)) == T0
    assert hlc_ms(hlc_from_ms(T0) + 0xFFFF) == T0  # the counter never leaks into the ms
    assert hlc_ms(hlc_from_ms(T0) + 0x10000) == T0 + 1  # ...until it carries
    assert hlc_from_ms(T0) + 0xFFFF < hlc_from_ms(T0 + 1)


# --- now() --------------------------------------------------------------------------------------


def test_now_starts_at_the_wall_clock() -> None:
    clock, _ = make()
    assert clock.now() == hlc_from_ms(T0)
    assert clock.last == hlc_from_ms(T0)


def test_now_is_strictly_increasing_while_the_wall_clock_stands_still() -> None:
    clock, _ = make()
    seen = [clock.now() for _ in range(100)]
    assert all(b > a for a, b in itertools.pairwise(seen))
    assert all(hlc_ms(t) == T0 for t in seen)  # only the logical counter moved
    assert seen[-1] - seen[0] == 99


def test_now_follows_the_wall_clock_when_it_moves_ahead() -> None:
    clock, wall = make()
    clock.now()
    clock.now()
    wall.ms += 10
    assert clock.now() == hlc_from_ms(T0 + 10)  # counter resets with a newer ms


def test_wall_clock_going_backwards_never_moves_the_hlc_backwards() -> None:
    clock, wall = make()
    before = clock.now()
    wall.ms -= 60_000  # NTP steps the clock back a minute
    after = [clock.now() for _ in range(5)]
    assert after[0] > before
    assert all(b > a for a, b in itertools.pairwise(after))
    assert hlc_ms(after[-1]) == T0  # logical time holds at the old high-water mark


def test_counter_overflow_carries_into_the_milliseconds() -> None:
    clock, _ = make(last=hlc_from_ms(T0) + 0xFFFF)
    t = clock.now()
    assert t == hlc_from_ms(T0 + 1)
    assert hlc_ms(t) == T0 + 1


def test_a_restored_high_water_mark_is_respected_after_restart() -> None:
    persisted = hlc_from_ms(T0 + 5_000) + 7
    clock, _ = make(ms=T0, last=persisted)  # the wall clock is behind what we issued before
    assert clock.last == persisted
    assert clock.now() == persisted + 1


# --- observe() / check() ------------------------------------------------------------------------


def test_observe_returns_a_timestamp_larger_than_the_remote_and_every_local_one() -> None:
    clock, _ = make()
    local = clock.now()
    remote = hlc_from_ms(T0 + 200) + 42  # ahead, but within max_offset
    got = clock.observe(remote)
    assert got > remote
    assert got > local
    assert got == remote + 1
    assert clock.now() > got


def test_observe_of_an_older_remote_still_advances_the_clock() -> None:
    clock, _ = make()
    local = clock.now()
    got = clock.observe(hlc_from_ms(T0 - 10_000))
    assert got == local + 1


def test_observe_uses_the_wall_clock_when_it_is_ahead_of_both() -> None:
    clock, wall = make()
    clock.now()
    wall.ms += 100
    assert clock.observe(hlc_from_ms(T0 + 50)) == hlc_from_ms(T0 + 100)


def test_remote_exactly_max_offset_ahead_is_accepted() -> None:
    clock, _ = make()
    remote = hlc_from_ms(T0 + MAX_OFFSET) + 0xFFFF
    assert clock.observe(remote) > remote
    assert clock.rejected == 0


def test_remote_more_than_max_offset_ahead_is_refused_and_counted() -> None:
    clock, _ = make()
    before = clock.now()
    remote = hlc_from_ms(T0 + MAX_OFFSET + 1)
    with pytest.raises(ClockSkew) as info:
        clock.observe(remote)
    assert clock.rejected == 1
    assert clock.last == before  # a refused message does not drag our time forward
    assert info.value.details["ahead_ms"] == MAX_OFFSET + 1
    assert info.value.retriable
    with pytest.raises(ClockSkew):
        clock.observe(hlc_from_ms(T0 + 3_600_000))  # an hour ahead
    assert clock.rejected == 2
    assert clock.now() == before + 1


def test_check_refuses_without_touching_the_clock() -> None:
    clock, _ = make()
    clock.check(hlc_from_ms(T0 + MAX_OFFSET))  # fine: no exception, nothing issued
    assert clock.last == 0
    with pytest.raises(ClockSkew):
        clock.check(hlc_from_ms(T0 + MAX_OFFSET + 1))
    assert clock.rejected == 1
    assert clock.last == 0


def test_skew_is_measured_against_the_current_wall_clock() -> None:
    clock, wall = make()
    remote = hlc_from_ms(T0 + 2 * MAX_OFFSET)
    with pytest.raises(ClockSkew):
        clock.observe(remote)
    wall.ms += MAX_OFFSET  # our wall clock caught up: the same message is now acceptable
    assert clock.observe(remote) > remote
    assert clock.rejected == 1


# --- Version ------------------------------------------------------------------------------------


def test_versions_order_by_hlc_then_node() -> None:
    assert Version(1, "z") < Version(2, "a")
    assert Version(2, "a") < Version(2, "b")
    assert Version(2, "b") == Version(2, "b")
    assert max(Version(5, "n1"), Version(5, "n2"), Version(4, "n9")) == Version(5, "n2")
    assert min(ZERO, Version(0, "a"), Version(1, "")) == ZERO


def test_version_encoding_is_fixed_width_hex_then_node() -> None:
    v = Version(hlc_from_ms(T0) + 3, "n1")
    text = v.encode()
    assert text == f"{hlc_from_ms(T0) + 3:016x}.n1"
    assert len(text.partition(".")[0]) == 16
    assert Version.decode(text) == v


def test_version_decode_keeps_dots_in_the_node_id() -> None:
    v = Version(255, "node.eu-west.1")
    assert Version.decode(v.encode()) == v


def test_encoded_versions_sort_like_versions() -> None:
    vs = [Version(1, "b"), Version(0x10, "a"), Version(2, "a"), Version(2, "a.x"), Version(2, "")]
    assert sorted(vs, key=Version.encode) == sorted(vs)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "n1",
        "0000000000000001",  # no node part
        "0000000000000001.",  # empty node
        "1.n1",  # not fixed width
        "00000000000000001.n1",  # 17 hex digits
        "000000000000000g.n1",  # not hex
        ".n1",
    ],
)
def test_version_decode_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError):
        Version.decode(text)


@pytest.mark.parametrize(
    "text",
    [
        "0x000000000000ff.n1",  # int(x, 16) alone would accept all of these
        "+00000000000000f.n1",
        "0000_000000000ff.n1",
        " 00000000000000f.n1",
        "00000000000000FF.n1",  # encode() writes lowercase only
    ],
)
def test_version_decode_refuses_non_canonical_hex(text: str) -> None:
    with pytest.raises(ValueError):
        Version.decode(text)


# --- version vectors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ({}, {}, Ordering.EQUAL),
        ({"n1": 1}, {"n1": 1}, Ordering.EQUAL),
        ({"n1": 0}, {}, Ordering.EQUAL),  # a zero entry is the same as a missing one
        ({"n1": 1, "n2": 3}, {"n2": 3, "n1": 1}, Ordering.EQUAL),
        ({"n1": 1}, {"n1": 2}, Ordering.BEFORE),
        ({}, {"n1": 1}, Ordering.BEFORE),
        ({"n1": 1}, {"n1": 1, "n2": 1}, Ordering.BEFORE),
        ({"n1": 2}, {"n1": 1}, Ordering.AFTER),
        ({"n1": 1, "n2": 1}, {"n1": 1}, Ordering.AFTER),
        ({"n1": 1}, {}, Ordering.AFTER),
        ({"n1": 1}, {"n2": 1}, Ordering.CONCURRENT),
        ({"n1": 2, "n2": 1}, {"n1": 1, "n2": 2}, Ordering.CONCURRENT),
        ({"n1": 5, "n2": 5, "n3": 1}, {"n1": 5, "n2": 5, "n4": 1}, Ordering.CONCURRENT),
    ],
)
def test_vv_compare_table(
    a: dict[str, int], b: dict[str, int], expected: Ordering
) -> None:
    assert vv_compare(a, b) is expected
    mirror = {
        Ordering.BEFORE: Ordering.AFTER,
        Ordering.AFTER: Ordering.BEFORE,
        Ordering.EQUAL: Ordering.EQUAL,
        Ordering.CONCURRENT: Ordering.CONCURRENT,
    }
    assert vv_compare(b, a) is mirror[expected]


def test_vv_merge_is_the_pointwise_maximum_and_copies() -> None:
    a = {"n1": 3, "n2": 1}
    b = {"n2": 4, "n3": 2}
    merged = vv_merge(a, b)
    assert merged == {"n1": 3, "n2": 4, "n3": 2}
    assert a == {"n1": 3, "n2": 1}  # inputs untouched
    assert b == {"n2": 4, "n3": 2}
    merged["n1"] = 99
    assert a["n1"] == 3
    assert vv_compare(vv_merge(a, b), a) is Ordering.AFTER
    assert vv_compare(vv_merge(a, b), b) is Ordering.AFTER
    assert vv_merge(a, {}) == a


def test_vv_increment_advances_one_entry_on_a_copy() -> None:
    a = {"n1": 3}
    assert vv_increment(a, "n1") == {"n1": 4}
    assert vv_increment(a, "n2") == {"n1": 3, "n2": 1}
    assert a == {"n1": 3}
    assert vv_increment({}, "n1") == {"n1": 1}
    assert vv_compare(vv_increment(a, "n2"), a) is Ordering.AFTER
    # Two coordinators incrementing the same parent produce concurrent children.
    assert vv_compare(vv_increment(a, "n1"), vv_increment(a, "n2")) is Ordering.CONCURRENT
