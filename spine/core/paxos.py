"""Per-key consensus for conditional and strong writes: single-decree Paxos per change. Pure.

Every change of a key that must be linearizable (a write with `If-Match`, `If-None-Match` or
`Spine-Fence`, a lease grant, and every `strong` write) is one round of Paxos among the key's
replicas, as Cassandra's lightweight transactions run it (and CASPaxos, Rystsov 2018), with the
read folded into the prepare:

1. **Prepare** with a fresh ballot `(HLC, node)`. A replica promises when the ballot is above
   every ballot it has promised, and answers what it accepted (ballot and record), the highest
   ballot it has committed, and the record it stores for the key.
2. With promises from a quorum: if the highest accepted ballot among them is above the highest
   committed one, a change was in flight when its proposer stopped: it is **re-proposed** under our
   ballot and committed, and the round starts again (the interrupted change completes; had it
   reached no quorum, it may complete or vanish, as the client that sent it was never answered).
3. Otherwise the key's **current** record is the LWW merge of the records the quorum stores: every
   change committed before holds on a majority, and a majority meets ours. The request's condition
   is judged against it. A failed condition answers 412 / 409 once the last commit has reached the
   promisers that lacked it (so the version a 412 reports is on a majority, as a read that follows
   will see).
4. **Accept** the new record (minted over the current one: its version vector dominates every
   version read) under the ballot; with a quorum of acceptances it is chosen.
5. **Commit**: each replica merges the record into its store (an ordinary versioned record every
   read level sees) and notes the ballot committed; the client is answered after a quorum.

**Warm rounds** (the 1-RTT round of Multi-Paxos and CASPaxos, kept per key and without a leader
lease): a proposer that saw its previous round on the key chosen by its own acceptor and one other
(the *partner*; quorum two) skips the networked prepare of its next round there. Its own acceptor
promises the new ballot, and the partner promises and accepts it in one step, only while the key
is `settled_at` the previous ballot (promised, accepted and committed there, nothing since) and
the replica stores that round's record: then each would answer a prepare exactly as the previous
round left it, so the change is decided on that record as a full round would decide it. A rival's
prepare, an interrupted change or a write of any level reaching either replica since breaks the
guard, and the proposer runs a full round. (A replica that accepted the previous round but has
not had its commit yet commits it first: the warm message says its proposer saw that round
chosen, so the commit is only early.) The guards are checked before anything is accepted
anywhere (this node's promise, then the partner's accept, then this node's accept), so a write
acknowledged by a majority before the round began, which is on one of the two, stops it before a
stale change could be accepted and later completed.

Quorum: a majority of the key's owners plus one per pending or trailing owner, from the write set
(owners, pending and trailing), as `spine.core.routing` gives it for writes during a ring change
(Cassandra's rule), so any two rounds' quorums meet.

The acceptor's three transitions and the proposer's reading of promises are here; the shells in
`spine.cluster.paxos` send, persist and wait.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from spine.core.clock import ZERO, Version, vv_merge
from spine.core.model import Record
from spine.core.quorum import resolve

Ballot = Version  # ordered by (HLC, node): two proposers never mint the same ballot


def ballot_to_wire(b: Ballot) -> list[Any]:
    """A ballot's wire form."""
    return [b.hlc, b.node]


def ballot_from_wire(w: Any) -> Ballot:
    """Inverse of `ballot_to_wire`; ValueError on anything else (a peer's bytes are hostile)."""
    if (not isinstance(w, list) or len(w) != 2 or not isinstance(w[0], int)
            or not isinstance(w[1], str) or not 0 <= w[0] < 2**64 or len(w[1]) > 256):
        raise ValueError("not a ballot")
    return Version(w[0], w[1])


# ---------------------------------------------------------------------------- the acceptor


@dataclass(frozen=True, slots=True)
class AcceptorState:
    """What one replica remembers about one key's rounds, durable before it answers: accepted
    values and commits as this state, a promise through the shell's promise bound (an upper
    bound on every promise kept in memory, taken as the promise of every key after a restart:
    `spine.cluster.paxos`)."""

    promised: Ballot = ZERO
    accepted: Ballot = ZERO
    accepted_record: Record | None = None
    committed: Ballot = ZERO

    def to_wire(self) -> list[Any]:
        """Stored form."""
        rec = None if self.accepted_record is None else self.accepted_record.to_wire()
        return [ballot_to_wire(self.promised), ballot_to_wire(self.accepted), rec,
                ballot_to_wire(self.committed)]

    @classmethod
    def from_wire(cls, w: list[Any]) -> AcceptorState:
        """Inverse of `to_wire`."""
        rec = None if w[2] is None else Record.from_wire(w[2])
        return cls(ballot_from_wire(w[0]), ballot_from_wire(w[1]), rec, ballot_from_wire(w[3]))


@dataclass(frozen=True, slots=True)
class Promise:
    """A replica's answer to a prepare. `ok` False: it had promised `promised`, which is higher."""

    ok: bool
    promised: Ballot
    accepted: Ballot
    accepted_record: Record | None
    committed: Ballot
    record: Record | None  # what the replica stores for the key

    def to_wire(self) -> list[Any]:
        """Reply form."""
        acc = None if self.accepted_record is None else self.accepted_record.to_wire()
        rec = None if self.record is None else self.record.to_wire()
        return [self.ok, ballot_to_wire(self.promised), ballot_to_wire(self.accepted), acc,
                ballot_to_wire(self.committed), rec]

    @classmethod
    def from_wire(cls, w: Any) -> Promise:
        """Inverse of `to_wire`; ValueError/TypeError/IndexError on a malformed reply."""
        if not isinstance(w, list) or len(w) != 6 or not isinstance(w[0], bool):
            raise ValueError("not a promise")
        acc = None if w[3] is None else Record.from_wire(w[3])
        rec = None if w[5] is None else Record.from_wire(w[5])
        return cls(w[0], ballot_from_wire(w[1]), ballot_from_wire(w[2]), acc,
                   ballot_from_wire(w[4]), rec)


def on_prepare(
    st: AcceptorState, ballot: Ballot, *, any_ballot: bool = False
) -> tuple[AcceptorState | None, bool]:
    """A prepare: (the state to persist or None when unchanged, promised?). `any_ballot` is the
    test-only tooth `paxos.unsafe_accept_any_ballot`: promise whatever the ballot."""
    if ballot > st.promised:
        return replace(st, promised=ballot), True
    return None, any_ballot


def on_accept(
    st: AcceptorState, ballot: Ballot, record: Record, *, any_ballot: bool = False
) -> tuple[AcceptorState | None, bool]:
    """An accept: (the state to persist or None, accepted?). Accepted when no higher ballot has
    been promised (the proposer's own promise is equal)."""
    if ballot >= st.promised or any_ballot:
        return replace(st, promised=max(st.promised, ballot), accepted=ballot,
                       accepted_record=record), True
    return None, False


def taken_already(st: AcceptorState, ballot: Ballot) -> bool:
    """Whether an accept at `ballot` is one this acceptor has taken (its last accepted ballot; a
    proposer sends one record per ballot): a second delivery of it is answered "accepted" again,
    whatever was promised since. That is true (the acceptance happened, and every promise made
    after it reported it), and a refusal would be wrong: the proposer, whose first answer may be
    lost, would take its change for accepted nowhere and decide the request afresh while the
    change could still be chosen."""
    return ballot != ZERO and st.accepted == ballot


def settled_at(st: AcceptorState, after: Ballot) -> bool:
    """Whether the key's rounds stand exactly where a proposer's own last round left them: it
    promised, accepted and committed `after` and nothing since (a warm round's guard, below)."""
    return st.promised == after and st.accepted == after and st.committed == after


def stands_at(p: Promise, after: Ballot, expect: Version) -> bool:
    """Whether a replica's answer to a guarded prepare at `after` itself (a warm refusal's check,
    which changes nothing) says the key stands where the round `after` left it: promised,
    accepted and committed there, storing that round's version `expect`."""
    return (p.promised == after and p.accepted == after and p.committed == after
            and p.record is not None and p.record.version == expect)


def on_warm_accept(
    st: AcceptorState, ballot: Ballot, record: Record, after: Ballot, *, any_ballot: bool = False
) -> tuple[AcceptorState | None, bool]:
    """A warm round's accept, which stands for a prepare and an accept at once: taken only when
    the key is `settled_at(after)` and `ballot` is above it (the shell checks the stored record
    too). Then this acceptor's promise for `ballot` would have answered exactly what the
    proposer's own acceptor promised it (nothing accepted past the commit of `after`), so
    promising and accepting in one step is a round of the usual kind."""
    if (settled_at(st, after) and ballot > after) or any_ballot:
        return replace(st, promised=max(st.promised, ballot), accepted=ballot,
                       accepted_record=record), True
    return None, False


def round_leader(st: AcceptorState, me: str, write_to: Sequence[str],
                 is_alive: Callable[[str], bool]) -> str | None:
    """Where a conditional write of a key should run, from a replica's acceptor state: at the node
    whose ballot it promised last (who led the key's latest round) when that is another live
    replica of the key; None: here. There the change finds the key warm, and it takes its turn
    with that node's other changes of the key instead of duelling with them from here. Any node
    may propose, so this is a preference: a wrong or stale answer costs a hop, never safety."""
    lead = st.promised.node
    if not lead or lead == me or lead not in write_to or not is_alive(lead):
        return None
    return lead


def on_commit(st: AcceptorState, ballot: Ballot) -> AcceptorState | None:
    """A commit (its record is merged into the store by the shell): the state to persist or None."""
    if ballot > st.committed:
        return replace(st, committed=ballot)
    return None


# ---------------------------------------------------------------------------- the proposer


def quorum_size(owners: int, extra: int) -> int:
    """Promises or acceptances a round needs: a majority of the owners plus one per pending or
    trailing owner (spine.core.routing's `extra`)."""
    return owners // 2 + 1 + extra


@dataclass(frozen=True, slots=True)
class Rejected:
    """Too few promises or acceptances: retry with a ballot above `highest` (or give up)."""

    granted: int
    need: int
    highest: Ballot


@dataclass(frozen=True, slots=True)
class Repropose:
    """An interrupted change to complete under our ballot before this round's own."""

    record: Record
    ballot: Ballot  # the ballot it was accepted under


@dataclass(frozen=True, slots=True)
class Current:
    """The key as a quorum holds it: the record a condition is judged on and a new version is
    minted over, the clock the new version must dominate, and the last commit to send to the
    promisers that lack it before a 412 is answered."""

    record: Record | None
    clock: dict[str, int]
    repair: Record | None
    repair_ballot: Ballot
    laggards: tuple[str, ...]


def read_promises(promises: Mapping[str, Promise], need: int) -> Rejected | Repropose | Current:
    """What a round does next, given the prepare answers that arrived."""
    granted = {n: p for n, p in promises.items() if p.ok}
    if len(granted) < need:
        highest = max((p.promised for p in promises.values()), default=ZERO)
        return Rejected(len(granted), need, highest)
    top = max(granted.values(), key=lambda p: p.accepted)
    committed = max(p.committed for p in granted.values())
    if top.accepted > committed and top.accepted_record is not None:
        return Repropose(top.accepted_record, top.accepted)
    records = {n: p.record for n, p in granted.items()}
    if top.accepted_record is not None and top.accepted == committed:
        records["~committed"] = top.accepted_record
    newest = resolve(records).newest
    clock: dict[str, int] = {}
    for r in records.values():
        if r is not None:
            clock = vv_merge(clock, r.clock)
    laggards = tuple(n for n, p in granted.items() if p.committed < committed)
    repair = top.accepted_record if top.accepted == committed and laggards else None
    return Current(newest, clock, repair, committed, laggards if repair is not None else ())


def count_accepts(answers: Mapping[str, tuple[bool, Ballot]], need: int) -> Rejected | None:
    """None when a quorum accepted, else why not (the highest ballot a refuser had promised)."""
    ok = sum(1 for accepted, _ in answers.values() if accepted)
    if ok >= need:
        return None
    highest = max((b for _, b in answers.values()), default=ZERO)
    return Rejected(ok, need, highest)
