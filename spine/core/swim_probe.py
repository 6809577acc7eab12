"""SWIM's failure detector bookkeeping (SWIM §4.3; Lifeguard's nacks, §IV-A).

`ProbeOrder` picks probe targets round-robin through a list shuffled anew each round, so every
live member is probed within 2(n-1) periods of its previous probe — a bound that uniform random
choice cannot give. A member that (re)appears is inserted at a random place in the rest of the
current round, so it is probed soon without waiting for the next shuffle. `Probe` is the state of
the one probe in flight; `Relays` the pings this node sends on others' behalf.

An Ack or a Nack counts only from whom it can honestly come (the target, or a helper this probe
asked, once each): with sequence numbers alone, a datagram meant for another node and replayed
here could pass for an answer (see `swim_auth`).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from spine.core.swim_messages import Member

__all__ = ["MAX_RELAYS", "Probe", "ProbeOrder", "Relay", "Relays"]

MAX_RELAYS = 256
"""Pings in flight for others' PingReqs; each lasts one ping timeout, so a healthy cluster holds
a handful, and a flood of PingReqs is refused past this."""


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
    nacks: int = 0
    helpers: tuple[str, ...] = ()  # the helpers asked to probe the target indirectly
    nacked: set[str] = field(default_factory=set)

    @property
    def expected_nacks(self) -> int:
        """Nacks due if the target is down and every helper is well: one per helper asked."""
        return len(self.helpers)

    def next_due(self) -> float:
        """When this probe next needs a tick: its ping deadline (until it is acked or gone
        indirect), else the end of its period."""
        if self.acked or self.indirect:
            return self.period_end
        return min(self.period_end, self.ping_deadline)

    def go_indirect(self, helpers: list[str], deadline: float) -> None:
        """Record the helpers asked; the period lasts at least until `deadline` (a late tick,
        after a pause, must still give them their time)."""
        self.indirect = True
        self.helpers = tuple(helpers)
        self.period_end = max(self.period_end, deadline)

    def ack(self, seq: int, sender: str) -> bool:
        """Count an Ack: True if it answers this probe, from the target or a helper asked."""
        if seq == self.seq and (sender == self.target or sender in self.helpers):
            self.acked = True
        return self.acked

    def nack(self, seq: int, sender: str) -> None:
        """Count a helper's Nack for this probe, once per helper asked."""
        if seq == self.seq and sender in self.helpers and sender not in self.nacked:
            self.nacked.add(sender)
            self.nacks += 1


@dataclass(slots=True)
class Relay:
    """A ping this node sends on behalf of `requester` (a PingReq): the requester's `seq`, and
    when to answer it with a Nack if no ack has come back (Lifeguard)."""

    requester: str
    seq: int
    nack_at: float
    target: str = ""  # the member pinged: only its Ack is relayed


class Relays:
    """The relays in flight, by the sequence number of the ping this node sent; at most
    `cap` of them."""

    def __init__(self, cap: int = MAX_RELAYS) -> None:
        self.cap = cap
        self._by_seq: dict[int, Relay] = {}

    def __len__(self) -> int:
        return len(self._by_seq)

    def add(self, seq: int, relay: Relay) -> bool:
        """Remember `relay` under our ping's `seq`; False (and nothing kept) when full."""
        if len(self._by_seq) >= self.cap:
            return False
        self._by_seq[seq] = relay
        return True

    def answered(self, seq: int, sender: str) -> Relay | None:
        """The relay an Ack from `sender` for our ping `seq` completes (taken out), if any."""
        relay = self._by_seq.get(seq)
        if relay is None or relay.target != sender:
            return None
        return self._by_seq.pop(seq)

    def due(self, now: float) -> list[Relay]:
        """Relays unanswered by their nack time (taken out): each owes its requester a Nack."""
        late = [seq for seq, r in self._by_seq.items() if now >= r.nack_at]
        return [self._by_seq.pop(seq) for seq in late]

    def deadlines(self) -> list[float]:
        """When each relay in flight comes due."""
        return [r.nack_at for r in self._by_seq.values()]


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
