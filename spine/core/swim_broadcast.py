"""SWIM's dissemination queue (SWIM §4.1; memberlist's `TransmitLimitedQueue`).

Membership changes travel piggybacked on the protocol's own pings and acks. The queue keeps the
newest update per member; each outgoing message takes the ones sent fewest times (then the
newest) that fit its byte budget, and an update is dropped once it has been sent
`retransmit_limit` times: with λ·log(n) transmissions per update, every member hears of it with
high probability (SWIM §4.1).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from spine.core.swim_config import SwimConfig, retransmit_limit
from spine.core.swim_messages import Update, update_size

__all__ = ["ENVELOPE", "Broadcast", "BroadcastQueue"]

ENVELOPE = 160  # a PingReq's own fields, with room for long ids and addresses


@dataclass(slots=True)
class Broadcast:
    """One queued update, its encoded size, its age (`order`) and how often it has been sent."""

    update: Update
    order: int
    size: int
    transmits: int = 0


class BroadcastQueue:
    """The newest update per member, waiting to be piggybacked a bounded number of times."""

    def __init__(self) -> None:
        self._items: dict[str, Broadcast] = {}
        self._order = 0

    def enqueue(self, up: Update) -> None:
        """Queue `up`, replacing any older update about the same member (its count restarts)."""
        self._order += 1
        self._items[up.member.node_id] = Broadcast(up, self._order, update_size(up))

    def discard(self, node_id: str) -> None:
        """Forget whatever is queued about `node_id`."""
        self._items.pop(node_id, None)

    def clear(self) -> None:
        """Forget everything queued."""
        self._items.clear()

    def __getitem__(self, node_id: str) -> Broadcast:
        return self._items[node_id]

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def take(self, picked: list[Update], room: int, max_count: int, limit: int) -> None:
        """Append to `picked` up to `max_count` queued updates that fit in `room` bytes,
        fewest-sent first, then newest; each one considered counts as sent (an update already
        in `picked` too), and one sent `limit` times leaves the queue."""
        taken = 0
        for b in sorted(self._items.values(), key=lambda b: (b.transmits, -b.order)):
            if taken == max_count:
                break
            if b.update not in picked:
                if b.size > room:
                    continue
                picked.append(b.update)
                room -= b.size
                taken += 1
            b.transmits += 1
            if b.transmits >= limit:
                del self._items[b.update.member.node_id]

    def fill(self, picked: list[Update], config: SwimConfig, n_members: int) -> tuple[Update, ...]:
        """`picked` (sent whatever the budget) and then what `take` adds within the datagram
        budget of `config`, for a cluster of `n_members`: one message's piggyback."""
        room = config.max_datagram - ENVELOPE - sum(update_size(u) for u in picked)
        # (an update already in `picked`, our own record, counts as sent once more)
        self.take(picked, room, config.max_piggyback,
                  retransmit_limit(config.retransmit_mult, n_members))
        return tuple(picked)
