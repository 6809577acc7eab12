"""SWIM's full-state exchange and the reaping of gone members (memberlist's push-pull and reap;
Serf's reconnect).

Gossip alone can leave two views apart for good: a member that missed an update after its
retransmissions ran out, or the two sides of a healed partition, each holding the other DEAD.
So every `push_pull_interval` a node sends its whole view over TCP to one random ALIVE member
(to its seeds while it knows none) and to one random DEAD member, in case that one was only cut
off; the peer merges it and answers with its own. The same round forgets the members DEAD or
LEFT for `dead_reap_after`. `FullSync` keeps that schedule and those clocks and picks the round's
peers; `Swim` carries the rounds out.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import replace

from spine.core.swim_config import SwimConfig
from spine.core.swim_messages import Member, MemberState

__all__ = ["FullSync", "as_heard_in_full_state"]


def as_heard_in_full_state(m: Member, known: bool) -> Member:
    """A peer's full-state record of `m` as this node takes it: a DEAD verdict on a member it
    knows (`known`) becomes only a SUSPECT here (memberlist), so the member gets its chance to
    refute, which is what lets the two sides of a healed partition meet again."""
    if m.state is MemberState.DEAD and known:
        return replace(m, state=MemberState.SUSPECT)
    return m


class FullSync:
    """The push-pull schedule, the seeds, and since when each gone member has been gone."""

    def __init__(self, config: SwimConfig, rng: random.Random) -> None:
        self._config = config
        self._rng = rng
        self.seeds: list[str] = []  # asked for their state until some member is known
        self.next_round = math.inf  # when the next push-pull round is due (inf before join)
        self._gone_at: dict[str, float] = {}  # when a member became DEAD/LEFT

    def schedule(self, now: float) -> None:
        """The first round, at a random point of the first interval (nodes that start together
        do not push-pull in step)."""
        self.next_round = now + self._rng.uniform(0, self._config.push_pull_interval)

    def due(self, now: float) -> bool:
        """Whether a round is due by `now`; if so the next one is set an interval later."""
        if now < self.next_round:
            return False
        self.next_round = now + self._config.push_pull_interval
        return True

    def gone(self, node_id: str, now: float) -> None:
        """`node_id` has just become DEAD or LEFT: its reaping clock starts."""
        self._gone_at[node_id] = now

    def forget(self, node_id: str) -> None:
        """`node_id` is back, or forgotten: no reaping clock."""
        self._gone_at.pop(node_id, None)

    def reapable(self, now: float) -> list[str]:
        """The members gone for `dead_reap_after` by `now`, in the order they went."""
        after = self._config.dead_reap_after
        return [k for k, since in self._gone_at.items() if now - since >= after]

    def peers(self, members: Mapping[str, Member]) -> list[str]:
        """The addresses a round sends this node's state to: one random ALIVE member (every
        seed while none is known), and one random DEAD member."""
        alive = sorted(k for k, m in members.items() if m.state is MemberState.ALIVE)
        out = [members[self._rng.choice(alive)].address] if alive else list(self.seeds)
        dead = sorted(k for k, m in members.items() if m.state is MemberState.DEAD)
        if dead:
            out.append(members[self._rng.choice(dead)].address)
        return out
