"""Unit tests for spine.core.quorum: who wins a read, who is stale, whether a floor is met."""

from __future__ import annotations

from spine.core.clock import Version
from spine.core.model import Record
from spine.core.quorum import meets_floor, resolve


def rec(hlc: int, node: str = "n1", clock: dict[str, int] | None = None, **kw: object) -> Record:
    return Record("ns", "k", Version(hlc, node), clock=clock or {node: hlc}, **kw)  # type: ignore[arg-type]


def test_resolve_picks_the_newest_and_lists_holders_and_stale() -> None:
    old, new = rec(1, content="old"), rec(2, node="n2", content="new")
    out = resolve({"a": old, "b": new, "c": new, "d": old})
    assert out.newest is not None
    assert out.newest.content == "new"
    assert out.newest.version == Version(2, "n2")
    assert out.holders == ("b", "c")
    assert out.stale == ("a", "d")


def test_resolve_joins_the_clocks_of_every_answer() -> None:
    out = resolve({"a": rec(1, clock={"n1": 1, "n3": 4}), "b": rec(2, node="n2", clock={"n2": 1})})
    assert out.newest is not None
    assert dict(out.newest.clock) == {"n1": 1, "n2": 1, "n3": 4}


def test_missing_answers_are_stale_when_any_replica_has_the_key() -> None:
    r = rec(5)
    out = resolve({"a": None, "b": r, "c": None})
    assert out.newest == r
    assert out.holders == ("b",)
    assert out.stale == ("a", "c")


def test_a_tombstone_is_a_version_like_any_other() -> None:
    live, tomb = rec(1, content="x"), rec(2, deleted=True)
    out = resolve({"a": live, "b": tomb, "c": None})
    assert out.newest is not None
    assert out.newest.deleted
    assert out.holders == ("b",)
    assert out.stale == ("a", "c")


def test_nothing_anywhere_has_no_newest_and_no_stale() -> None:
    out = resolve({"a": None, "b": None})
    assert out.newest is None
    assert out.stale == ()
    assert out.holders == ("a", "b")


def test_no_answers() -> None:
    out = resolve({})
    assert out.newest is None
    assert out.stale == out.holders == ()


def test_holders_and_stale_partition_the_answers() -> None:
    answers = {"a": rec(3), "b": None, "c": rec(3), "d": rec(1), "e": rec(3, node="n0")}
    out = resolve(answers)
    assert set(out.holders) | set(out.stale) == set(answers)
    assert not set(out.holders) & set(out.stale)
    assert out.holders == ("a", "c")


def test_meets_floor() -> None:
    assert meets_floor(None, None)  # no session floor: anything goes
    assert meets_floor(rec(1), None)
    assert not meets_floor(None, Version(1, "n1"))  # we know it exists: absence is too old
    assert meets_floor(rec(5), Version(5, "n1"))  # equal is enough
    assert meets_floor(rec(6), Version(5, "n9"))
    assert meets_floor(rec(5, node="n2"), Version(5, "n1"))
    assert not meets_floor(rec(5, node="n1"), Version(5, "n2"))
    assert not meets_floor(rec(4), Version(5, "n1"))
    assert meets_floor(rec(7, deleted=True), Version(5, "n1"))  # a newer tombstone counts
