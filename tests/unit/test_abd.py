"""Unit tests for spine.core.abd: the steps of strong reads and writes, fed replies by hand."""

from __future__ import annotations

import pytest

from spine.core.abd import Done, Failed, ReadQuorum, StrongRead, WriteQuorum
from spine.core.clock import Version
from spine.core.errors import QuorumUnavailable, SessionUnavailable
from spine.core.model import Record


def rec(hlc: int, node: str = "a", clock: dict[str, int] | None = None,
        deleted: bool = False) -> Record:
    return Record("ns", "k", Version(hlc, node), clock=clock or {node: hlc}, deleted=deleted)


OWNERS = ("a", "b", "c")


# ------------------------------------------------------------------ reads


def test_a_read_starts_by_asking_the_live_owners_for_r_answers() -> None:
    assert StrongRead(("a", "c"), 2, 2).start() == ReadQuorum(("a", "c"), 2)


def test_a_read_held_by_a_quorum_already_ends_without_writing_back() -> None:
    m = StrongRead(OWNERS, 2, 2)
    m.start()
    step = m.on_answers({"a": rec(2), "b": rec(2)}, (OWNERS, 0))
    assert step == Done(rec(2))
    assert m.repaired == 0


def test_a_read_writes_the_newest_back_to_the_replicas_that_lack_it() -> None:
    m = StrongRead(OWNERS, 2, 2)
    m.start()
    newer = rec(2, "b", {"a": 1, "b": 2})
    step = m.on_answers({"a": rec(1), "b": newer}, (OWNERS, 0))
    assert step == WriteQuorum(newer, ("a", "c"), 1)
    assert m.on_acks(1) == Done(newer)
    assert m.repaired == 1


def test_while_the_ring_changes_the_write_back_reaches_pending_owners_too() -> None:
    m = StrongRead(OWNERS, 2, 2)
    m.start()
    step = m.on_answers({"a": rec(2), "b": rec(2)}, ((*OWNERS, "d"), 1))
    assert step == WriteQuorum(rec(2), ("c", "d"), 1)  # 2 hold it; 3 must


def test_a_read_of_a_key_nobody_has_returns_none_without_writing() -> None:
    m = StrongRead(OWNERS, 2, 2)
    m.start()
    assert m.on_answers({"a": None, "b": None}, (OWNERS, 0)) == Done(None)


def test_a_read_short_of_answers_fails_and_counts_a_read_failure() -> None:
    m = StrongRead(OWNERS, 2, 2)
    m.start()
    step = m.on_answers({"a": rec(1)}, (OWNERS, 0))
    assert isinstance(step, Failed)
    assert isinstance(step.error, QuorumUnavailable)
    assert str(step.error) == "1 of 2 replicas answered"
    assert step.error.details == {"reached": 1, "needed": 2}
    assert step.metric == ("read", "strong")


def test_a_write_back_short_of_a_quorum_fails_and_repairs_nothing() -> None:
    m = StrongRead(OWNERS, 2, 2)
    m.start()
    m.on_answers({"a": rec(1), "b": rec(2, "b")}, (OWNERS, 0))
    step = m.on_acks(0)
    assert isinstance(step, Failed)
    assert str(step.error) == "could not write the value back to a quorum"
    assert step.error.details == {"reached": 1, "needed": 2}
    assert step.metric == ("write_back", "strong")
    assert m.repaired == 0


def test_a_read_older_than_the_sessions_floor_fails_as_session_unavailable() -> None:
    m = StrongRead(OWNERS, 2, 2, floor=Version(5, "a"))
    m.start()
    step = m.on_answers({"a": rec(2), "b": rec(2)}, (OWNERS, 0))
    assert isinstance(step, Failed)
    assert isinstance(step.error, SessionUnavailable)
    assert step.metric is None


def test_the_floor_is_checked_after_the_write_back() -> None:
    m = StrongRead(OWNERS, 2, 2, floor=Version(5, "a"))
    m.start()
    m.on_answers({"a": rec(1), "b": rec(2, "b")}, (OWNERS, 0))
    step = m.on_acks(1)
    assert isinstance(step, Failed) and isinstance(step.error, SessionUnavailable)
    assert m.repaired == 1  # the write-back happened: counted as repairs


def test_steps_out_of_order_are_refused() -> None:
    m = StrongRead(OWNERS, 2, 2)
    with pytest.raises(RuntimeError):
        m.on_answers({}, (OWNERS, 0))
    m.start()
    with pytest.raises(RuntimeError):
        m.start()
    m.on_answers({"a": rec(1), "b": rec(1)}, (OWNERS, 0))
    with pytest.raises(RuntimeError):
        m.on_acks(1)


