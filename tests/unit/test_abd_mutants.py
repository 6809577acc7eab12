"""Tests the mutation run (`make mutation`) showed missing for the pure ABD steps and the ring
map: a strong read that meets the session's floor succeeds (with and without a write-back), and
ring maps with different entries are not equal."""

from __future__ import annotations

from spine.core.abd import Done, StrongRead, WriteQuorum
from spine.core.clock import Version
from spine.core.model import Record
from spine.core.ringmap import ACTIVE, Entry, RingMap

OWNERS = ("a", "b", "c")


def rec(hlc: int, node: str = "a") -> Record:
    return Record("ns", "k", Version(hlc, node), clock={node: hlc})


def test_a_read_as_new_as_the_sessions_floor_succeeds() -> None:
    m = StrongRead(OWNERS, 2, 2, floor=Version(5, "a"))
    m.start()
    assert m.on_answers({"a": rec(5), "b": rec(5)}, (OWNERS, 0)) == Done(rec(5))


def test_a_read_written_back_past_the_floor_succeeds() -> None:
    m = StrongRead(OWNERS, 2, 2, floor=Version(5, "a"))
    m.start()
    step = m.on_answers({"a": rec(1), "b": rec(6, "b")}, (OWNERS, 0))
    assert isinstance(step, WriteQuorum)
    done = m.on_acks(1)
    assert isinstance(done, Done) and done.record is not None
    assert done.record.version == Version(6, "b")


def entry(node: str, version: int) -> Entry:
    return Entry(node, ACTIVE, version, "z0", "127.0.0.1", 7000, 8000, 9000, False)


def test_ring_maps_with_different_entries_are_not_equal() -> None:
    one = RingMap().merge([entry("n1", 1)])
    assert one != RingMap().merge([entry("n2", 1)])
    assert one != RingMap().merge([entry("n1", 2)])
    assert one != RingMap()
    assert one == RingMap().merge([entry("n1", 1)])
