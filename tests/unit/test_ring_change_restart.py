"""A pending owner that restarts after accepting the barrier forgets it (its copy state lives in
memory): the claimant must ask again, or the ring change never settles. Found by the
whole-cluster simulator (tests/sim, seed 25: remove of n4, n2 crashing after it reported the
barrier done and restarting; 22 moves still pending 40 s later)."""

from __future__ import annotations

from spine.core.ring_change import AskStatus, CheckAgreement, Claimant, Settle, Status, Wait
from spine.core.ringmap import ACTIVE, JOINING, Entry, RingMap


def _changing_map() -> RingMap:
    return RingMap([Entry("a", ACTIVE, 1), Entry("b", ACTIVE, 1), Entry("c", JOINING, 2)])


def _at_barrier(c: Claimant, m: RingMap) -> str:
    step = c.begin(m, ["c"], ["b", "c"], lambda _: True, 0.0)
    assert isinstance(step, CheckAgreement)
    ask = c.on_agreement(True, lambda _: True)
    assert isinstance(ask, Wait)  # the settle delay starts
    c.begin(m, ["c"], ["b", "c"], lambda _: True, 1.0)
    finish = c.on_agreement(True, lambda _: True)
    assert not isinstance(finish, Wait)
    c.on_finish(100)
    return step.digest


def test_a_pending_owner_that_forgot_the_barrier_gets_a_new_one() -> None:
    m = _changing_map()
    c = Claimant("a", settle_delay=0.5)
    digest = _at_barrier(c, m)
    assert isinstance(c.begin(m, ["c"], ["b", "c"], lambda _: True, 2.0), AskStatus)
    # c restarted: it knows the map again, but neither the barrier nor that it finished it.
    verdict = c.on_status([Status(digest, done=0, requested=0)])
    assert isinstance(verdict, Wait)
    assert isinstance(c.begin(m, ["c"], ["b", "c"], lambda _: True, 3.0), CheckAgreement)


def test_a_pending_owner_still_finishing_is_waited_for() -> None:
    m = _changing_map()
    c = Claimant("a", settle_delay=0.5)
    digest = _at_barrier(c, m)
    c.begin(m, ["c"], ["b", "c"], lambda _: True, 2.0)
    assert isinstance(c.on_status([Status(digest, done=0, requested=100)]), Wait)
    assert isinstance(c.begin(m, ["c"], ["b", "c"], lambda _: True, 3.0), AskStatus)
    assert isinstance(c.on_status([Status(digest, done=100, requested=100)]), Settle)
