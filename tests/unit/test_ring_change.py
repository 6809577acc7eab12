"""Unit tests for spine.core.ring_change: the claimant's turns of a ring change, fed by hand."""

from __future__ import annotations

from spine.core.ring_change import (
    AskFinish,
    AskStatus,
    CheckAgreement,
    Claimant,
    Settle,
    Status,
    Wait,
    agrees,
    must_agree,
    pending_owners,
)
from spine.core.ringmap import ACTIVE, JOINING, LEAVING, Entry, RingMap

DELAY = 2.0


def ringmap(**states: str) -> RingMap:
    return RingMap(Entry(n, s, 1) for n, s in states.items())


JOIN = ringmap(a=ACTIVE, b=ACTIVE, c=ACTIVE, d=JOINING)
PEERS = ("b", "c", "d")


def everyone(_n: str) -> bool:
    return True


def agreed_claimant(now: float = 0.0) -> Claimant:
    """A claimant of JOIN that has seen every member agree for the settle delay and sent the
    barrier 77 to d."""
    c = Claimant("a", DELAY)
    assert isinstance(c.begin(JOIN, ["d"], PEERS, everyone, now), CheckAgreement)
    assert c.on_agreement(True, everyone) == Wait("settle delay")
    c.begin(JOIN, ["d"], PEERS, everyone, now + DELAY)
    assert c.on_agreement(True, everyone) == AskFinish(("d",), JOIN.digest())
    c.on_finish(77)
    return c


def test_no_change_no_work_and_the_state_resets() -> None:
    c = agreed_claimant()
    assert c.begin(ringmap(a=ACTIVE, b=ACTIVE), [], ("b",), everyone, 9.0) == Wait("no change")
    assert c.digest == ""


def test_only_the_smallest_live_active_node_claims() -> None:
    c = Claimant("b", DELAY)
    assert c.begin(JOIN, ["d"], ("a", "c", "d"), everyone, 0.0) == Wait("not the claimant")
    step = c.begin(JOIN, ["d"], ("a", "c", "d"), lambda n: n != "a", 0.0)
    assert step == CheckAgreement(JOIN.digest(), ("a", "c", "d"))


def test_agreement_is_asked_of_every_member_but_the_removed_ones() -> None:
    m = RingMap([Entry("a", ACTIVE, 1), Entry("b", ACTIVE, 1), Entry("c", LEAVING, 1, removed=True),
                 Entry("d", JOINING, 1)])
    c = Claimant("a", DELAY)
    # b is thought down: it must still agree (it may only be cut off); c was removed: excused.
    step = c.begin(m, ["d"], ("b", "c", "d"), lambda n: n != "b", 0.0)
    assert step == CheckAgreement(m.digest(), ("b", "d"))
    assert must_agree(m, ("b", "c", "d")) == ("b", "d")


def test_agrees_needs_an_answer_and_both_maps_at_the_change() -> None:
    other = ringmap(a=ACTIVE, b=ACTIVE, c=ACTIVE)
    assert agrees(JOIN.digest(), JOIN, JOIN)
    assert not agrees(JOIN.digest(), None, JOIN)
    assert not agrees(JOIN.digest(), other, JOIN)
    assert not agrees(JOIN.digest(), JOIN, other)


def test_a_disagreement_restarts_the_settle_delay() -> None:
    c = Claimant("a", DELAY)
    c.begin(JOIN, ["d"], PEERS, everyone, 0.0)
    c.on_agreement(True, everyone)
    c.begin(JOIN, ["d"], PEERS, everyone, 1.0)
    assert c.on_agreement(False, everyone) == Wait("members disagree")
    c.begin(JOIN, ["d"], PEERS, everyone, 2.5)
    assert c.on_agreement(True, everyone) == Wait("settle delay")  # agreed again at 2.5
    c.begin(JOIN, ["d"], PEERS, everyone, 4.5)
    assert isinstance(c.on_agreement(True, everyone), AskFinish)


def test_the_barrier_waits_for_a_pending_owner_that_is_down() -> None:
    c = Claimant("a", DELAY)
    c.begin(JOIN, ["d"], PEERS, everyone, 0.0)
    c.on_agreement(True, everyone)
    c.begin(JOIN, ["d"], PEERS, everyone, DELAY)
    assert c.on_agreement(True, lambda n: n != "d") == Wait("a pending owner is down")
    assert c.barrier == 0


def test_a_refused_barrier_is_asked_again_next_turn() -> None:
    c = Claimant("a", DELAY)
    c.begin(JOIN, ["d"], PEERS, everyone, 0.0)
    c.on_agreement(True, everyone)
    c.begin(JOIN, ["d"], PEERS, everyone, DELAY)
    c.on_agreement(True, everyone)
    c.on_finish(None)
    assert c.barrier == 0
    assert isinstance(c.begin(JOIN, ["d"], PEERS, everyone, DELAY + 1), CheckAgreement)


def test_after_the_barrier_the_claimant_polls_and_settles_when_all_are_done() -> None:
    c = agreed_claimant()
    digest = JOIN.digest()
    assert c.begin(JOIN, ["d", "d"], PEERS, everyone, 5.0) == AskStatus(("d",), digest)
    assert c.on_status(None) == Wait("a pending owner did not answer")
    c.begin(JOIN, ["d"], PEERS, everyone, 6.0)
    assert c.on_status([Status(digest, 76)]) == Wait("pending owners finishing")
    c.begin(JOIN, ["d"], PEERS, everyone, 7.0)
    assert c.on_status([Status(digest, 77)]) == Settle(digest)


def test_a_pending_owner_on_another_map_restarts_the_barrier() -> None:
    c = agreed_claimant()
    c.begin(JOIN, ["d"], PEERS, everyone, 5.0)
    assert c.on_status([Status("other", 99)]) == Wait("a pending owner holds another map")
    assert c.barrier == 0
    assert isinstance(c.begin(JOIN, ["d"], PEERS, everyone, 6.0), CheckAgreement)


def test_a_newer_change_starts_over() -> None:
    c = agreed_claimant()
    newer = JOIN.merge([Entry("e", JOINING, 2)])
    step = c.begin(newer, ["d", "e"], ("b", "c", "d", "e"), everyone, 5.0)
    assert step == CheckAgreement(newer.digest(), ("b", "c", "d", "e"))
    assert c.barrier == 0 and c.agreed_at is None


def test_a_change_that_moves_no_shard_settles_too() -> None:
    """With no pending owner the barrier goes to nobody and holds at once (the old loop took the
    empty list of replies for a failure and never settled such a change)."""
    c = Claimant("a", DELAY)
    c.begin(JOIN, [], PEERS, everyone, 0.0)
    c.on_agreement(True, everyone)
    c.begin(JOIN, [], PEERS, everyone, DELAY)
    assert c.on_agreement(True, everyone) == AskFinish((), JOIN.digest())
    c.on_finish(5)
    assert c.begin(JOIN, [], PEERS, everyone, DELAY + 1) == AskStatus((), JOIN.digest())
    assert c.on_status([]) == Settle(JOIN.digest())


def test_pending_owners_are_distinct_and_sorted() -> None:
    assert pending_owners(["d", "b", "d"]) == ("b", "d")
