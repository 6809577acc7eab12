"""Unit tests for the per-level tallies of spine.core.quorum: how many answers a read waits for,
and whether a read or a write reached enough replicas."""

from __future__ import annotations

import pytest

from spine.core.clock import Version
from spine.core.consistency import Level
from spine.core.errors import QuorumUnavailable, SessionUnavailable
from spine.core.model import Record
from spine.core.quorum import one_is_enough, tally_read, write_shortfall
from spine.core.session import SessionToken


def rec(hlc: int) -> Record:
    return Record("ns", "k", Version(hlc, "n1"), clock={"n1": hlc})


def overflowed_token() -> SessionToken:
    tok = SessionToken(max_keys=1)
    tok.observe("ns/other", Version(1, "n1"))
    tok.observe("ns/another", Version(2, "n1"))
    assert tok.overflowed
    return tok


def test_an_eventual_read_needs_one_answer_with_or_without_a_token() -> None:
    assert one_is_enough(Level.EVENTUAL, None, "ns/k")
    assert one_is_enough(Level.EVENTUAL, overflowed_token(), "ns/k")


def test_a_session_read_without_a_token_asks_a_quorum() -> None:
    assert not one_is_enough(Level.SESSION, None, "ns/k")


def test_a_session_read_with_a_token_that_never_overflowed_needs_one_answer() -> None:
    assert one_is_enough(Level.SESSION, SessionToken(), "ns/k")


def test_an_overflowed_token_asks_a_quorum_for_a_key_it_may_have_forgotten() -> None:
    tok = overflowed_token()
    assert not one_is_enough(Level.SESSION, tok, "ns/k")
    kept = next(iter(tok.entries))
    assert one_is_enough(Level.SESSION, tok, kept)


def test_a_strong_read_never_stops_at_one_answer() -> None:
    assert not one_is_enough(Level.STRONG, SessionToken(), "ns/k")


def test_tally_read_takes_the_newest_of_enough_answers() -> None:
    t = tally_read({"a": rec(1), "b": rec(3), "c": None}, 2, Version(2, "n1"))
    assert t.error is None
    assert t.outcome.newest == rec(3)


def test_tally_read_fails_a_quorum_short_before_looking_at_the_floor() -> None:
    t = tally_read({"a": rec(1)}, 2, Version(5, "n1"))
    assert isinstance(t.error, QuorumUnavailable)
    assert str(t.error) == "1 of 2 replicas answered"
    assert t.error.details == {"reached": 1, "needed": 2}


def test_tally_read_fails_when_no_answer_is_as_new_as_the_floor() -> None:
    t = tally_read({"a": rec(1), "b": None}, 1, Version(2, "n1"))
    assert isinstance(t.error, SessionUnavailable)
    assert t.error.details == {"reached": 2}


def test_tally_read_of_a_key_nobody_has_is_none_without_a_floor() -> None:
    t = tally_read({"a": None, "b": None}, 2, None)
    assert t.error is None and t.outcome.newest is None


@pytest.mark.parametrize("acks, need, ok", [(2, 2, True), (3, 2, True), (1, 2, False),
                                            (0, 1, False), (3, 4, False)])
def test_write_shortfall(acks: int, need: int, ok: bool) -> None:
    short = write_shortfall(acks, need)
    assert (short is None) is ok
    if short is not None:
        assert str(short) == f"{acks} of {need} replicas acknowledged; the write may still land"
        assert short.details == {"reached": acks, "needed": need}
