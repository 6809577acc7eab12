"""Safeguards of the real node code, each removable by a test-only patch (the simulator's teeth).

Every mutant is a function of a `pytest.MonkeyPatch`: it replaces one method, pure function or
constructor argument of the real code with a version lacking the safeguard, and the patch is
undone when the monkeypatch is (at the end of the test). `tests/sim/test_sim_teeth.py` runs the
simulator under each and asserts a seed reports the violation the safeguard prevents.

The patches sit at the narrowest stable point: the pure halves (`spine.core.ring_change`,
`spine.core.quorum`, `spine.core.abd`) as the shells call them, or one method of a shell.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pytest

from spine.cluster import acceptor, handoff, paxos, reads, replication, ringkeeper
from spine.core import abd, feed, quorum, ring_change, settlement
from spine.core.consistency import Level
from spine.core.messages import PaxosCommit
from spine.core.model import Record
from spine.core.quorum import ReadOutcome
from spine.core.ringmap import RingMap
from spine.core.session import SessionToken

Mutant = Callable[[pytest.MonkeyPatch], None]


def no_barrier(mp: pytest.MonkeyPatch) -> None:
    """The claimant settles without waiting for the pending owners: the first status poll after
    the barrier went out settles the map, whatever the pending owners answered (their final sync
    with the owners not done)."""
    def on_status(self: ring_change.Claimant, replies: Sequence[ring_change.Status] | None
                  ) -> ring_change.Wait | ring_change.Settle:
        return ring_change.Settle(self.digest)
    mp.setattr(ring_change.Claimant, "on_status", on_status)


def no_trailing(mp: pytest.MonkeyPatch) -> None:
    """A settle switches reads and writes to the new owners at once: no trailing owners (the
    ring keeper's `trailing_window` is 0)."""
    real = ringkeeper.RingKeeper.__init__

    def init(self: ringkeeper.RingKeeper, *args: Any, **kwargs: Any) -> None:
        kwargs["trailing_window"] = 0.0
        real(self, *args, **kwargs)
    mp.setattr(ringkeeper.RingKeeper, "__init__", init)


def agree_live_only(mp: pytest.MonkeyPatch) -> None:
    """Issue 18's mutant (c), the old bug: the claimant asks agreement of the peers it thinks
    alive only, so a member cut off for the whole change is skipped."""
    real = ring_change.Claimant.begin

    def begin(self: ring_change.Claimant, ringmap: RingMap, move_targets: Iterable[str],
              peers: Iterable[str], is_alive: ring_change.IsAlive, now: float) -> Any:
        return real(self, ringmap, move_targets, [p for p in peers if is_alive(p)], is_alive, now)
    mp.setattr(ring_change.Claimant, "begin", begin)


def early_ack(mp: pytest.MonkeyPatch) -> None:
    """The coordinator acknowledges before W replicas committed: a write (session and eventual,
    and a strong read's write-back) counts as done at the first replica's acknowledgement.
    (Strong and conditional writes commit through Paxos: `paxos_early_ack`.)"""
    real = replication.Replicator.write

    async def write(self: replication.Replicator, records: Sequence[Record],
                    prefs: Sequence[Sequence[str]], w: int | Sequence[int], *,
                    hints_count: bool, timeout: float,
                    counted: Sequence[frozenset[str] | None] | None = None) -> list[int]:
        need = [w] * len(records) if isinstance(w, int) else list(w)
        acks = await real(self, records, prefs, 1, hints_count=hints_count, timeout=timeout,
                          counted=counted)
        return [n if a >= 1 else a for a, n in zip(acks, need, strict=True)]
    mp.setattr(replication.Replicator, "write", write)


def _oldest_first(answers: Mapping[str, Record | None]) -> ReadOutcome:
    """`resolve` turned around: the OLDEST answer wins, and whoever holds another is stale."""
    held = [r for r in answers.values() if r is not None]
    if not held:
        return ReadOutcome(None, (), tuple(answers))
    oldest = min(held, key=lambda r: r.version)
    holders = tuple(n for n, r in answers.items() if r is not None and r.version == oldest.version)
    return ReadOutcome(oldest, tuple(n for n in answers if n not in holders), holders)


def repair_older(mp: pytest.MonkeyPatch) -> None:
    """Read repair writes an older version over a newer one: the repairs' pick of the version
    to spread (the replicator's read repair and ABD's write-back) takes the oldest answer."""
    mp.setattr(replication, "resolve", _oldest_first)
    mp.setattr(abd, "resolve", _oldest_first)


def ignore_needs_quorum(mp: pytest.MonkeyPatch) -> None:
    """Issue 18's mutant (a): a session read with a token stops at one answer even when the
    token overflowed and may have forgotten the key (read at R=1 with no floor)."""
    def one_is_enough(level: Level, token: SessionToken | None, key: str) -> bool:
        return level is Level.EVENTUAL or (level is Level.SESSION and token is not None)
    mp.setattr(quorum, "one_is_enough", one_is_enough)
    mp.setattr(reads, "one_is_enough", one_is_enough)


def hints_not_rerouted(mp: pytest.MonkeyPatch) -> None:
    """Issue 18's mutant (b): hints for a node that left the ring are kept for it (it never
    answers again) instead of going to the records' new owners."""
    mp.setattr(handoff.Handoff, "_gone", lambda self, target: False)


def stale_ballot(mp: pytest.MonkeyPatch) -> None:
    """Issue 10's tooth: an acceptor promises and accepts any ballot, however stale (what
    `paxos.unsafe_accept_any_ballot` does in a real cluster): two rounds both read the same
    version and both commit over it."""
    real = acceptor.Acceptor.__init__

    def init(self: acceptor.Acceptor, *a: Any, **kw: Any) -> None:
        real(self, *a, **{**kw, "any_ballot": True})

    mp.setattr(acceptor.Acceptor, "__init__", init)


def paxos_early_ack(mp: pytest.MonkeyPatch) -> None:
    """A Paxos round (a strong or conditional write) answers its client once one replica has
    committed the chosen record, not a quorum."""
    real = paxos.Proposer._gather

    async def gather(self: paxos.Proposer, nodes: Any, msg: Any, need: int, *a: Any) -> Any:
        if not isinstance(msg, PaxosCommit):
            return await real(self, nodes, msg, need, *a)
        got = await real(self, nodes, msg, 1, *a)
        return {n: True for n in nodes} if any(got.values()) else got  # "enough acked"

    mp.setattr(paxos.Proposer, "_gather", gather)


def feed_unsettled(mp: pytest.MonkeyPatch) -> None:
    """The change feed delivers whatever version the logs show, settled on a quorum or not:
    a replica that logs an old version late makes a key go back in time."""
    mp.setattr(feed, "on_quorum", lambda state, write_set, need: True)


def feed_skips_held(mp: pytest.MonkeyPatch) -> None:
    """The change feed's positions move past a key it could not settle (no quorum), as past any
    other: the change is never delivered."""
    real = feed.advance
    mp.setattr(feed, "advance", lambda start, pages, held: real(start, pages, set()))


def feed_probe_any_holder(mp: pytest.MonkeyPatch) -> None:
    """The change feed takes any replica holding a version as proof the consumer has it, not
    only one whose entry lies at or before the consumer's position: a change seen first on one
    replica is dropped as a repeat, and its position then passes it."""
    def delivered_before(candidate: Any, probes: Mapping[str, Any], start: Any) -> bool:
        return any(v is not None and v >= candidate for _, v, _ in probes.values())
    mp.setattr(feed, "delivered_before", delivered_before)


def settled_at_w(mp: pytest.MonkeyPatch) -> None:
    """A version taken as settled (held by every owner, so tokens drop it) as soon as its write
    reached W replicas, not once every node of its write set acknowledged it."""
    real = replication.Replicator.write

    async def write(self: replication.Replicator, records: Sequence[Record],
                    prefs: Sequence[Sequence[str]], w: int | Sequence[int], **kw: Any
                    ) -> list[int]:
        acks = await real(self, records, prefs, w, **kw)
        for rec, pl, a in zip(records, prefs, acks, strict=True):
            if a > 0:
                self._settled(rec, pl)
        return acks
    mp.setattr(replication.Replicator, "write", write)


def settled_any_seq(mp: pytest.MonkeyPatch) -> None:
    """Anti-entropy's proof stretched: once a shard's trees matched every other owner's, every
    record of the shard is taken as settled, whatever it was written after the match."""
    real = settlement.Settlement.matched

    def matched(self: settlement.Settlement, shard: int, owners: Sequence[str],
                write_set: Sequence[str]) -> int:
        return 2**62 if real(self, shard, owners, write_set) > 0 else 0
    mp.setattr(settlement.Settlement, "matched", matched)


MUTANTS: dict[str, Mutant] = {
    "settled_at_w": settled_at_w,
    "settled_any_seq": settled_any_seq,
    "feed_probe_any_holder": feed_probe_any_holder,
    "feed_unsettled": feed_unsettled,
    "feed_skips_held": feed_skips_held,
    "no_barrier": no_barrier,
    "no_trailing": no_trailing,
    "agree_live_only": agree_live_only,
    "early_ack": early_ack,
    "repair_older": repair_older,
    "ignore_needs_quorum": ignore_needs_quorum,
    "hints_not_rerouted": hints_not_rerouted,
    "stale_ballot": stale_ballot,
    "paxos_early_ack": paxos_early_ack,
}
