"""Strong reads as a small state machine (ABD: Attiya, Bar-Noy, Dolev 1995). Pure.

A strong read has two phases over a majority of the key's replicas: read a quorum's versions and
take the newest; unless a quorum already holds it, write it back to enough replicas first, so
that no later read can return anything older. (Strong writes were ABD's write too - read a
quorum's versions, write a newer one to a quorum - until conditional writes came: a strong write
is now one round of per-key Paxos, `spine.core.paxos`, so that it is ordered with them. A Paxos
change is committed as an ordinary record on a quorum, which this read sees.)

While the ring changes the write-back also goes to the pending (and trailing) owners, one more
acknowledgement each (see `spine.core.routing`): the newest value then sits on a quorum of the
next ring as well as the current one.

The machine never touches a socket or a clock. The shell starts one, carries out each step it
returns (`ReadQuorum`, `WriteQuorum`), feeds the replies back, and stops at `Done` or `Failed`.
Each step method may be called once, in order; a call out of order is a bug (`RuntimeError`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from spine.core.clock import Version
from spine.core.errors import QuorumUnavailable, SessionUnavailable, SpineError
from spine.core.model import Record
from spine.core.quorum import meets_floor, resolve

STRONG = "strong"


@dataclass(frozen=True, slots=True)
class ReadQuorum:
    """Ask `nodes` for the key's version (no read repair); go on once `r` answered or all did."""

    nodes: tuple[str, ...]
    r: int


@dataclass(frozen=True, slots=True)
class WriteQuorum:
    """Send `record` to `nodes` (no hint counts); go on once `need` acknowledged or all answered."""

    record: Record
    nodes: tuple[str, ...]
    need: int


@dataclass(frozen=True, slots=True)
class Done:
    """The operation succeeded: the version read, or the one written (`created`: a new key)."""

    record: Record | None
    created: bool = False


@dataclass(frozen=True, slots=True)
class Failed:
    """The operation failed with `error`; `metric` names the quorum-failure series to count
    (operation, level), or is None when the failure is not a quorum's."""

    error: SpineError
    metric: tuple[str, str] | None = None


WriteSet = tuple[Sequence[str], int]  # (nodes a write goes to, acknowledgements beyond W)


def _too_few_answers(got: int, r: int, what: str, metric: tuple[str, str]) -> Failed:
    return Failed(QuorumUnavailable(f"{got} of {r} replicas answered{what}", reached=got,
                                    needed=r), metric)


@dataclass
class StrongRead:
    """One strong read of a key: `start`, `on_answers`, then (if it writes back) `on_acks`."""

    nodes: Sequence[str]  # the key's live owners
    r: int
    w: int
    floor: Version | None = None  # the session token's floor for the key, if any
    repaired: int = 0  # replicas the write-back brought up to date (read-repair metric)
    _step: str = field(default="new", repr=False)
    _newest: Record | None = field(default=None, repr=False)
    _holders: int = field(default=0, repr=False)
    _need: int = field(default=0, repr=False)

    def _advance(self, expected: str, to: str) -> None:
        if self._step != expected:
            raise RuntimeError(f"strong read: {to} called in step {self._step}")
        self._step = to

    def start(self) -> ReadQuorum:
        """Phase one: read a quorum's versions."""
        self._advance("new", "read")
        return ReadQuorum(tuple(self.nodes), self.r)

    def on_answers(
        self, answers: Mapping[str, Record | None], write_set: WriteSet
    ) -> WriteQuorum | Done | Failed:
        """The versions the replicas answered, and the key's write set now. A quorum that holds
        the newest already ends the read; otherwise the newest goes back to the replicas that lack
        it, until `w` (+ one per pending or trailing owner) hold it."""
        self._advance("read", "write_back")
        if len(answers) < self.r:
            return self._end(_too_few_answers(len(answers), self.r, "", ("read", STRONG)))
        outcome = resolve(answers)
        targets, extra = write_set
        self._newest, self._holders = outcome.newest, len(outcome.holders)
        self._need = self.w + extra
        if self._newest is not None and self._holders < self._need:
            others = tuple(p for p in targets if p not in outcome.holders)
            return WriteQuorum(self._newest, others, self._need - self._holders)
        return self._verdict()

    def on_acks(self, acks: int) -> Done | Failed:
        """How many of the replicas written back acknowledged."""
        self._advance("write_back", "ended")
        held = acks + self._holders
        if held < self._need:
            return Failed(QuorumUnavailable("could not write the value back to a quorum",
                                            reached=held, needed=self._need),
                          ("write_back", STRONG))
        self.repaired = acks
        return self._verdict()

    def _verdict(self) -> Done | Failed:
        self._step = "ended"
        if not meets_floor(self._newest, self.floor):
            return Failed(SessionUnavailable("no quorum holds the version this session has seen"))
        return Done(self._newest)

    def _end(self, step: Failed) -> Failed:
        self._step = "ended"
        return step
