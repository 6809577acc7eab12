"""SWIM's full-state sync: the push-pull schedule, the round's peers, reaping, and how a peer's
DEAD verdict is taken."""

from __future__ import annotations

import math
import random

from spine.core.swim_config import SwimConfig
from spine.core.swim_messages import Member, MemberState
from spine.core.swim_sync import FullSync, as_heard_in_full_state

A, S, D, L = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
CFG = SwimConfig(push_pull_interval=10.0, dead_reap_after=60.0)


def m(node: str, state: MemberState) -> Member:
    return Member(node, f"{node}:7946", 3, state, (("zone", "z1"),))


def sync(seed: int = 1) -> FullSync:
    return FullSync(CFG, random.Random(seed))


def test_no_round_before_the_schedule_and_one_per_interval_after() -> None:
    s = sync()
    assert s.next_round == math.inf and not s.due(1e9)
    s.schedule(100.0)
    assert 100.0 <= s.next_round <= 110.0
    first = s.next_round
    assert not s.due(first - 0.001)
    assert s.due(first + 2.0)
    assert s.next_round == first + 2.0 + CFG.push_pull_interval
    assert not s.due(first + 3.0)


def test_a_round_asks_the_seeds_while_no_member_is_alive() -> None:
    s = sync()
    s.seeds = ["s1:7946", "s2:7946"]
    assert s.peers({}) == ["s1:7946", "s2:7946"]
    assert s.peers({"b": m("b", S)}) == ["s1:7946", "s2:7946"]  # SUSPECT is not ALIVE


def test_a_round_picks_one_alive_member_and_one_dead_one() -> None:
    members = {k: m(k, st) for k, st in [("b", A), ("c", A), ("d", D), ("e", D), ("f", L)]}
    seen_alive: set[str] = set()
    seen_dead: set[str] = set()
    for seed in range(40):
        s = sync(seed)
        s.seeds = ["s1:7946"]
        alive, dead = s.peers(members)
        seen_alive.add(alive)
        seen_dead.add(dead)
    assert seen_alive == {"b:7946", "c:7946"}
    assert seen_dead == {"d:7946", "e:7946"}  # LEFT members are not reconnected to


def test_gone_members_are_reaped_after_dead_reap_after_in_the_order_they_went() -> None:
    s = sync()
    s.gone("c", 10.0)
    s.gone("b", 20.0)
    s.gone("d", 30.0)
    assert s.reapable(69.9) == []
    assert s.reapable(80.0) == ["c", "b"]
    s.forget("b")  # back alive (or forgotten) before its reaping: no clock
    assert s.reapable(1000.0) == ["c", "d"]


def test_a_dead_verdict_on_a_known_member_is_taken_as_suspect() -> None:
    assert as_heard_in_full_state(m("b", D), known=True) == m("b", S)
    assert as_heard_in_full_state(m("b", D), known=False) == m("b", D)
    for st in (A, S, L):
        assert as_heard_in_full_state(m("b", st), known=True) == m("b", st)
