"""The claimant's side of a ring change (DESIGN §9; Riak core's claimant), as a pure machine.

The claimant is the live `active` node with the smallest id (`spine.core.ringmap.claimant`). For
each change (a ring map with joining or leaving nodes, known by its digest) it:

1. waits until **every member** holds the same map — every member, not only those thought alive:
   one cut off for the whole change would come back with the old map and take writes for shards
   it no longer owns; only a node the operator removed is excused;
2. keeps that agreement for `settle_delay` (the write timeout), so that no write begun under an
   older map is still in flight;
3. asks every pending owner (all of them alive) to *finish* after a barrier: sync its new shards
   once more with the live owners;
4. polls them until all report the barrier done, then settles the map (joining → active,
   leaving → left) in one new version. A pending owner that reports another map, or no longer
   knows the barrier (it restarted), starts the barrier over.

`Claimant` holds the state between turns. Each turn the shell calls `begin` with the map and
liveness facts and `now`; then carries out the step it gets back (`CheckAgreement`,
`AskFinish`, `AskStatus`, `Settle`) and feeds the result to the matching method. No clocks, no
sockets: the barrier value (an HLC reading) and `now` come in from the shell.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from spine.core.ringmap import RingMap, claimant

IsAlive = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing to do this turn; `why` says what the change waits for (for logs and tests)."""

    why: str


@dataclass(frozen=True, slots=True)
class CheckAgreement:
    """Exchange maps with each of `peers`; report whether all of them (and this node, after the
    exchanges) hold the map `digest`."""

    digest: str
    peers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AskFinish:
    """Send every target `Transfer("finish", digest, barrier)` with a fresh barrier (an HLC
    value); report the barrier if all accepted, None otherwise."""

    targets: tuple[str, ...]
    digest: str


@dataclass(frozen=True, slots=True)
class AskStatus:
    """Ask every target for its transfer status; report the answers, or None if one failed."""

    targets: tuple[str, ...]
    digest: str


@dataclass(frozen=True, slots=True)
class Settle:
    """Every pending owner finished the barrier: adopt and spread the settled map."""

    digest: str


@dataclass(frozen=True, slots=True)
class Status:
    """A pending owner's answer to a status request: its map's digest, the latest barrier it
    was asked to finish, and the latest it finished."""

    transition: str
    done: int
    requested: int | None = None  # None: not reported (a node of an older release)


Step = Wait | CheckAgreement | AskFinish | AskStatus | Settle


def must_agree(ringmap: RingMap, peers: Iterable[str]) -> tuple[str, ...]:
    """Whose maps a settle waits for: every peer but the ones the operator removed — a node
    merely thought down is not excused (it may be cut off, and would come back with the old
    map)."""
    return tuple(p for p in peers if not ringmap.removed(p))


def agrees(digest: str, theirs: RingMap | None, mine: RingMap) -> bool:
    """One exchange's verdict: the peer answered, and both maps are now the change's map."""
    return theirs is not None and theirs.digest() == digest and mine.digest() == digest


def pending_owners(targets: Iterable[str]) -> tuple[str, ...]:
    """The distinct targets of a change's moves, sorted: whom the barrier goes to."""
    return tuple(sorted(set(targets)))


class Claimant:
    """One node's claimant state across turns: the change it works on, since when every member
    agrees on it, and the barrier it asked for (0: none yet)."""

    def __init__(self, node_id: str, settle_delay: float) -> None:
        self.node_id = node_id
        self.settle_delay = settle_delay
        self.digest = ""
        self.agreed_at: float | None = None
        self.barrier = 0
        self._targets: tuple[str, ...] = ()
        self._now = 0.0

    def begin(
        self,
        ringmap: RingMap,
        move_targets: Iterable[str],
        peers: Iterable[str],
        is_alive: IsAlive,
        now: float,
    ) -> Wait | CheckAgreement | AskStatus:
        """Start a turn: `move_targets` are the targets of the placement's moves, `peers` every
        member but this node and those that left."""
        if not ringmap.changing:
            self.digest = ""
            return Wait("no change")
        alive = [n for n in ringmap.entries if n == self.node_id or is_alive(n)]
        if claimant(ringmap, alive) != self.node_id:
            return Wait("not the claimant")
        digest = ringmap.digest()
        if digest != self.digest:
            self.digest, self.agreed_at, self.barrier = digest, None, 0
        self._targets, self._now = pending_owners(move_targets), now
        if self.barrier == 0:
            return CheckAgreement(digest, must_agree(ringmap, peers))
        return AskStatus(self._targets, digest)

    def on_agreement(self, agreed: bool, is_alive: IsAlive) -> Wait | AskFinish:
        """Whether every member held the map; then whether the barrier may go out."""
        if not agreed:
            self.agreed_at = None
            return Wait("members disagree")
        if self.agreed_at is None:
            self.agreed_at = self._now
        if self._now - self.agreed_at < self.settle_delay:
            return Wait("settle delay")
        if any(t != self.node_id and not is_alive(t) for t in self._targets):
            return Wait("a pending owner is down")  # wait for it, or for the operator to remove it
        return AskFinish(self._targets, self.digest)

    def on_finish(self, barrier: int | None) -> None:
        """The barrier every target accepted, or None when one did not."""
        if barrier is not None:
            self.barrier = barrier

    def on_status(self, replies: Sequence[Status] | None) -> Wait | Settle:
        """The targets' statuses (None: one did not answer)."""
        if replies is None:
            return Wait("a pending owner did not answer")
        if any(r.transition != self.digest for r in replies):
            self.barrier = 0
            return Wait("a pending owner holds another map")
        if any(r.requested is not None and r.requested < self.barrier
               and r.done < self.barrier for r in replies):
            # It restarted since it accepted the barrier (its copy state is in memory), so it
            # will never report it done: ask again with a new barrier, or the change waits
            # for ever.
            self.barrier = 0
            return Wait("a pending owner forgot the barrier")
        if all(r.done >= self.barrier for r in replies):
            return Settle(self.digest)
        return Wait("pending owners finishing")
