"""Whether a node should take client traffic: the decision behind `/readyz` (DESIGN §16).

A balancer sends requests only to nodes whose `/readyz` answers 200, so the answer must be 503
whenever routing a client here would be wrong or pointless: the node is shutting down (it drains
before its listener closes), its disk has failed, it is not an active member of the ring
(joining and still copying its shards, left, or removed by the operator), or it cannot reach a
quorum of the ring. A leaving node stays ready while its shards stream to their new owners:
it still holds and serves them until the settle makes it `left`.

Pure: the node gathers the facts, this says what they mean.
"""

from __future__ import annotations

from dataclasses import dataclass

from spine.core.ringmap import ACTIVE, JOINING, LEAVING, LEFT


@dataclass(frozen=True, slots=True)
class Facts:
    """What the node knows about itself when asked."""

    ring_state: str | None  # this node's state in its ring map; None when not in it
    removed: bool  # the operator removed it
    peers_reachable: int  # ring members it can reach, itself included
    quorum: int  # how many it must reach to serve the default level
    draining: bool = False  # shutting down: let the balancer move traffic away first
    storage_problem: str | None = None  # why its disk takes no write, if it does not


@dataclass(frozen=True, slots=True)
class NotReady:
    """Why a node should take no client traffic now. `kind` says which error answers it:
    `draining` and `membership` (not serving), `storage` (its disk failed), `quorum` (too few
    peers)."""

    kind: str
    reason: str


def not_ready(f: Facts) -> NotReady | None:
    """Why the node should not take client traffic now, or None when it should."""
    if f.draining:
        return NotReady("draining", "shutting down")
    if f.storage_problem:
        return NotReady("storage", f"storage failed: {f.storage_problem}")
    if f.removed:
        return NotReady("membership", "removed from the ring")
    if f.ring_state is None:
        return NotReady("membership", "not in the ring map")
    if f.ring_state == LEFT:
        return NotReady("membership", "left the ring")
    if f.ring_state == JOINING:
        return NotReady("membership", "joining: copying its shards until the ring settles")
    if f.ring_state not in (ACTIVE, LEAVING):
        return NotReady("membership", f"ring state {f.ring_state}")
    if f.peers_reachable < f.quorum:
        return NotReady("quorum", f"too few peers reachable ({f.peers_reachable} of the"
                                  f" {f.quorum} needed)")
    return None


def serves_clients(ring_state: str | None, removed: bool) -> bool:
    """Whether the node coordinates client requests at all: a node that left or was removed
    refuses them (its ring map may be stale and it holds no shards), so a client retries on a
    member instead of being answered from the past."""
    return not removed and ring_state not in (LEFT, None)
