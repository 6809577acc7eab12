"""Property tests for spine.core.ring_change: whatever the facts the claimant is fed, turn after
turn, it sends the barrier only after every member agreed for the whole settle delay with every
pending owner up, and settles only when every pending owner reported that barrier done on the
change's own map."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from spine.core.ring_change import (
    AskFinish,
    AskStatus,
    CheckAgreement,
    Claimant,
    Settle,
    Status,
    Wait,
)
from spine.core.ringmap import ACTIVE, JOINING, LEAVING, Entry, RingMap

DELAY = 3.0
NODES = ("a", "b", "c", "d")
MAPS = [
    RingMap([Entry("a", ACTIVE, 1), Entry("b", ACTIVE, 1), Entry("c", ACTIVE, 1),
             Entry("d", JOINING, 1)]),
    RingMap([Entry("a", ACTIVE, 1), Entry("b", ACTIVE, 1), Entry("c", LEAVING, 2),
             Entry("d", ACTIVE, 2)]),
    RingMap([Entry("a", ACTIVE, 1), Entry("b", ACTIVE, 1), Entry("c", ACTIVE, 3),
             Entry("d", ACTIVE, 3)]),  # no change under way
]

turns = st.lists(st.fixed_dictionaries({
    "map": st.sampled_from(range(len(MAPS))),
    "down": st.sets(st.sampled_from(NODES[1:])),
    "advance": st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.0]),
    "agreed": st.booleans(),
    "accepted": st.booleans(),
    "answered": st.booleans(),
    "done_lag": st.lists(st.integers(0, 2), min_size=2, max_size=2),
    "other_map": st.booleans(),
}), max_size=40)


@settings(deadline=None, max_examples=300)
@given(turns)
def test_barrier_and_settle_only_when_their_conditions_hold(script: list[dict[str, Any]]) -> None:
    c = Claimant("a", DELAY)
    now = 0.0
    agreed_since: dict[str, float] = {}  # digest → when agreement began (unbroken since)
    barrier_of: dict[str, int] = {}  # digest → barrier every target accepted
    next_barrier = 1
    for t in script:
        now += t["advance"]
        m = MAPS[t["map"]]
        digest = m.digest()
        alive = lambda n, down=t["down"]: n not in down  # noqa: E731
        targets = ["b", "c"]
        step = c.begin(m, targets, NODES[1:], alive, now)
        if not m.changing:
            assert step == Wait("no change")
            agreed_since.clear()
            barrier_of.clear()
            continue
        if isinstance(step, CheckAgreement):
            assert step.peers == NODES[1:]  # every member, up or down
            barrier_of.pop(digest, None)
            if not t["agreed"]:
                agreed_since.pop(digest, None)
            else:
                agreed_since.setdefault(digest, now)
            for other in list(agreed_since):
                if other != digest:
                    del agreed_since[other]
            nxt = c.on_agreement(t["agreed"], alive)
            if isinstance(nxt, AskFinish):
                assert t["agreed"] and now - agreed_since[digest] >= DELAY
                assert all(alive(x) for x in nxt.targets)
                b = next_barrier if t["accepted"] else None
                next_barrier += 1
                c.on_finish(b)
                if b is not None:
                    barrier_of[digest] = b
            continue
        assert isinstance(step, AskStatus)
        assert digest in barrier_of  # polled only after every target accepted a barrier
        b = barrier_of[digest]
        statuses = None if not t["answered"] else [
            Status("elsewhere" if t["other_map"] and i == 0 else digest, b - lag)
            for i, lag in enumerate(t["done_lag"])]
        verdict = c.on_status(statuses)
        if isinstance(verdict, Settle):
            assert statuses is not None
            assert all(s.transition == digest and s.done >= b for s in statuses)
            assert verdict.digest == digest
        if statuses is not None and any(s.transition != digest for s in statuses):
            # The barrier starts over; the agreement stands until a check finds it broken (a
            # pending owner on a newer map shows up there, as a map that no longer agrees).
            barrier_of.pop(digest)
