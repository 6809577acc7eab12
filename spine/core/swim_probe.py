"""SWIM's failure detector bookkeeping (SWIM §4.3; Lifeguard's nacks, §IV-A).

`ProbeOrder` picks probe targets round-robin through a list shuffled anew each round, so every
live member is probed within 2(n-1) periods of its previous probe — a bound that uniform random
choice cannot give. A member that (re)appears is inserted at a random place in the rest of the
current round, so it is probed soon without waiting for the next shuffle. `Probe` is the state of
the one probe in flight.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from spine.core.swim_messages import Member

__all__ = ["Probe", "ProbeOrder", "Relay"]


@dataclass(slots=True)
class Probe:
    """The probe in flight: whom, at which incarnation, and its two deadlines."""

    seq: int
    target: str
    incarnation: int
    scale: int  # Lifeguard: awareness + 1 when it started; T and the ping timeout scale by it
    ping_deadline: float  # no direct ack by then: ask the helpers
    period_end: float  # no ack at all by then: suspect the target
    acked: bool = False
    indirect: bool = False
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class Relay:
    """A ping this node sends on behalf of `requester` (a PingReq): the requester's `seq`, and
    when to answer it with a Nack if no ack has come back (Lifeguard)."""

    requester: str
    seq: int
    nack_at: float


class ProbeOrder:
    """Round-robin over a per-round shuffle of the live members (SWIM §4.3)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._order: list[str] = []
        self._index = 0

    def next(
        self, members: Mapping[str, Member], live: Callable[[Member], bool]
    ) -> Member | None:
        """The next live member to probe, reshuffling at the end of a round; None if no member
        is live."""
        for _ in range(2):
            while self._index < len(self._order):
                m = members.get(self._order[self._index])
                self._index += 1
                if m is not None and live(m):
                    return m
            self._order = sorted(k for k, m in members.items() if live(m))
            self._rng.shuffle(self._order)
            self._index = 0
        return None

    def add(self, node_id: str) -> None:
        """Probe `node_id` in the current round, at a random place among those still to come."""
        if node_id not in self._order[self._index:]:
            pos = self._rng.randint(self._index, len(self._order))
            self._order.insert(pos, node_id)
