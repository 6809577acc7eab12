"""spine.core.paxos: the acceptor's transitions, the proposer's reading of promises, and (a
property) single-decree safety under any interleaving, loss and duplication of messages."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spine.core.clock import ZERO, Version
from spine.core.model import Record
from spine.core.paxos import (
    AcceptorState,
    Current,
    Promise,
    Rejected,
    Repropose,
    ballot_from_wire,
    count_accepts,
    on_accept,
    on_commit,
    on_prepare,
    quorum_size,
    read_promises,
    round_leader,
)


def rec(content: str, hlc: int, node: str = "n1", clock: dict[str, int] | None = None) -> Record:
    return Record("ns", "k", Version(hlc, node), clock or {node: hlc}, content)


B1, B2, B3 = Version(10, "a"), Version(20, "b"), Version(30, "a")


# --------------------------------------------------------------------------- acceptor


def test_prepare_promises_only_a_higher_ballot() -> None:
    st0 = AcceptorState()
    st1, ok = on_prepare(st0, B2)
    assert ok and st1 is not None and st1.promised == B2
    assert on_prepare(st1, B1) == (None, False)
    assert on_prepare(st1, B2) == (None, False)  # the same ballot twice: a duplicate
    assert on_prepare(st1, B1, any_ballot=True) == (None, True)  # the tooth


def test_accept_takes_the_promised_ballot_or_higher_and_nothing_lower() -> None:
    st1, _ = on_prepare(AcceptorState(), B2)
    assert st1 is not None
    r = rec("v", 21)
    st2, ok = on_accept(st1, B2, r)
    assert ok and st2 is not None and st2.accepted == B2 and st2.accepted_record == r
    assert on_accept(st2, B1, rec("old", 11)) == (None, False)
    st3, ok = on_accept(st2, B3, rec("w", 31))  # a higher ballot never prepared here: fine
    assert ok and st3 is not None and st3.promised == B3


def test_commit_only_moves_forward() -> None:
    st = AcceptorState(committed=B2)
    assert on_commit(st, B1) is None
    assert on_commit(st, B2) is None
    new = on_commit(st, B3)
    assert new is not None and new.committed == B3


def test_state_wire_round_trip() -> None:
    st = AcceptorState(B3, B2, rec("v", 21), B1)
    assert AcceptorState.from_wire(st.to_wire()) == st
    p = Promise(True, B3, B2, rec("v", 21), B1, rec("w", 22))
    assert Promise.from_wire(p.to_wire()) == p


# --------------------------------------------------------------------------- proposer


def promise(ok: bool = True, *, promised: Version = B3, accepted: Version = ZERO,
            acc: Record | None = None, committed: Version = ZERO,
            stored: Record | None = None) -> Promise:
    return Promise(ok, promised, accepted, acc, committed, stored)


def test_too_few_promises_is_rejected_with_the_highest_ballot_seen() -> None:
    step = read_promises({"a": promise(), "b": promise(False, promised=Version(99, "z")),
                          "c": promise(False)}, 2)
    assert isinstance(step, Rejected) and step.highest == Version(99, "z")


def test_an_accepted_but_uncommitted_change_is_reproposed_first() -> None:
    r = rec("interrupted", 25)
    step = read_promises({"a": promise(accepted=B2, acc=r, committed=B1),
                          "b": promise(committed=B1)}, 2)
    assert isinstance(step, Repropose) and step.record == r and step.ballot == B2


def test_current_is_the_merge_of_the_quorums_records_and_the_last_commit() -> None:
    old, new = rec("old", 5), rec("new", 25, "n2")
    # b committed B2 (its ballots say so) but its store answered before the merge: the
    # committed record still counts; a, which never saw the commit, is the laggard.
    step = read_promises({
        "a": promise(committed=B1, stored=old),
        "b": promise(accepted=B2, acc=new, committed=B2, stored=old),
    }, 2)
    assert isinstance(step, Current)
    assert step.record is not None
    assert (step.record.version, step.record.content) == (new.version, "new")
    assert step.clock == {"n1": 5, "n2": 25}
    assert step.laggards == ("a",) and step.repair == new and step.repair_ballot == B2


def test_no_repair_when_every_promiser_has_the_last_commit() -> None:
    r = rec("v", 25)
    step = read_promises({n: promise(accepted=B2, acc=r, committed=B2, stored=r)
                          for n in "ab"}, 2)
    assert isinstance(step, Current) and step.repair is None and step.laggards == ()


def test_quorum_size_counts_pending_owners_once_each() -> None:
    assert quorum_size(3, 0) == 2
    assert quorum_size(3, 1) == 3
    assert quorum_size(5, 0) == 3
    assert quorum_size(1, 0) == 1


def test_count_accepts() -> None:
    assert count_accepts({"a": (True, B2), "b": (True, B2)}, 2) is None
    bad = count_accepts({"a": (True, B2), "b": (False, B3)}, 2)
    assert isinstance(bad, Rejected) and bad.granted == 1 and bad.highest == B3


# --------------------------------------------------------------------------- safety


@st.composite
def schedules(draw: st.DrawFn) -> list[tuple[int, int, bool]]:
    """Steps (proposer, messages, lost?) of 3 proposers on 3 acceptors: proposer p sends its
    next `messages` messages, each to the acceptor after the one it sent to last."""
    return draw(st.lists(st.tuples(st.integers(0, 2), st.integers(1, 3), st.booleans()),
                         min_size=2, max_size=30))


@settings(max_examples=1000, deadline=None)
@given(schedules())
def test_no_two_proposers_ever_see_different_values_chosen(
    steps: list[tuple[int, int, bool]],
) -> None:
    """Single-decree safety through the real transitions: three proposers each try to settle
    the key from the empty state with its own value, their messages interleaved in any order
    or lost (a message sent again is a duplicate); whatever each sees chosen (a quorum accepted
    its ballot), they agree - a later proposer that finds the first choice re-proposes it
    rather than its own."""
    acceptors = [AcceptorState() for _ in range(3)]
    need = 2
    ballots = [Version(100 + i, f"p{i}") for i in range(3)]
    cursor = [0, 0, 0]
    promises: list[dict[int, Promise]] = [{} for _ in range(3)]
    proposal: list[Record | None] = [None] * 3
    accepts: list[set[int]] = [set() for _ in range(3)]
    chosen: list[Record] = []
    for p, count, lost in steps:
        for _ in range(count):
            a = cursor[p] % 3
            cursor[p] += 1
            if lost:
                continue
            prop = proposal[p]
            if prop is None:  # phase 1: prepare
                new, ok = on_prepare(acceptors[a], ballots[p])
                acceptors[a] = new or acceptors[a]
                s = acceptors[a]
                promises[p][a] = Promise(ok, s.promised, s.accepted, s.accepted_record,
                                         s.committed, None)
                step = read_promises({str(k): v for k, v in promises[p].items()}, need)
                if isinstance(step, Repropose):
                    proposal[p] = step.record
                elif isinstance(step, Current):
                    proposal[p] = rec(f"value-of-p{p}", 200 + p, f"p{p}")
            else:  # phase 2: accept
                new, ok = on_accept(acceptors[a], ballots[p], prop)
                acceptors[a] = new or acceptors[a]
                if ok:
                    accepts[p].add(a)
                if len(accepts[p]) >= need and prop not in chosen:
                    chosen.append(prop)
    assert len({r.content for r in chosen}) <= 1, chosen


def test_the_tooth_accepts_what_a_later_promise_forbids() -> None:
    """With stale ballots accepted, a proposer overtaken by a higher prepare still gets its
    value accepted by a quorum (the safe acceptors refuse it)."""
    a = [on_prepare(AcceptorState(), Version(2, "p2"))[0] or AcceptorState() for _ in range(3)]
    v1 = rec("one", 10)
    ok_stale = [on_accept(a[i], Version(1, "p1"), v1, any_ballot=True)[1] for i in range(2)]
    ok_safe = [on_accept(a[i], Version(1, "p1"), v1)[1] for i in range(2)]
    assert all(ok_stale) and not any(ok_safe)


# --------------------------------------------------------------------------- hostile wire forms


@pytest.mark.parametrize("bad", [
    None, [], [1], [1, "n", 3], ["1", "n"], [1, 2], [-1, "n"], [2**64, "n"], [1, "n" * 257],
    (1, "n"),
])
def test_a_malformed_ballot_is_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        ballot_from_wire(bad)


def test_the_largest_ballot_the_wire_allows_reads_back() -> None:
    assert ballot_from_wire([2**64 - 1, "n" * 256]) == Version(2**64 - 1, "n" * 256)
    assert ballot_from_wire([0, ""]) == ZERO


@pytest.mark.parametrize("bad", [
    None, [], [True] * 5, [True] * 7, ["yes", [1, "a"], [0, ""], None, [0, ""], None],
    [1, [1, "a"], [0, ""], None, [0, ""], None], [True, [1, "a"], "x", None, [0, ""], None],
])
def test_a_malformed_promise_is_refused(bad: object) -> None:
    with pytest.raises((ValueError, TypeError, IndexError)):
        Promise.from_wire(bad)


def test_no_answers_at_all_is_a_rejection_at_ballot_zero() -> None:
    step = read_promises({}, 2)
    assert isinstance(step, Rejected) and (step.granted, step.highest) == (0, ZERO)
    none = count_accepts({}, 2)
    assert isinstance(none, Rejected) and (none.granted, none.highest) == (0, ZERO)


def test_an_accepted_value_without_a_commit_never_stands_for_the_committed_one() -> None:
    """Only the record accepted under the committed ballot joins the current value; one merely
    accepted (not chosen) under an older ballot must not."""
    stale = rec("accepted, never chosen", 99, "z")
    step = read_promises({"a": promise(accepted=B1, acc=stale, committed=B2, stored=rec("v", 5)),
                          "b": promise(committed=B2, stored=rec("v", 5))}, 2)
    assert isinstance(step, Current)
    assert step.record is not None and step.record.content == "v"


# --------------------------------------------------------------------------- where a round runs


def test_a_conditional_write_goes_to_the_live_replica_that_led_the_last_round() -> None:
    """The node named by the last promised ballot, if it is another live replica of the key."""
    owners = ("n1", "n2", "n3")
    up = {"n1", "n2", "n3"}.__contains__
    led_by_n2 = AcceptorState(promised=Version(50, "n2"), accepted=B1, committed=B1)
    assert round_leader(led_by_n2, "n1", owners, up) == "n2"
    assert round_leader(led_by_n2, "n2", owners, up) is None  # it is this node
    assert round_leader(led_by_n2, "n1", owners, {"n1", "n3"}.__contains__) is None  # down
    assert round_leader(led_by_n2, "n1", ("n1", "n3", "n4"), up) is None  # no longer a replica
    assert round_leader(AcceptorState(), "n1", owners, up) is None  # no round yet
    after_restart = AcceptorState(promised=Version(2**40, ""))  # the promise floor: nobody's
    assert round_leader(after_restart, "n1", owners, up) is None
