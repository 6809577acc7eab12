"""Quorum arithmetic: which answers win, who is stale, whether a floor is met, and per level how
many answers a read waits for and whether a read or a write reached enough replicas.

Pure functions over (node, record) answers and acknowledgement counts, so the coordinator's
decisions can be unit-tested without sockets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from spine.core.clock import Version
from spine.core.consistency import Level
from spine.core.errors import QuorumUnavailable, SessionUnavailable, SpineError
from spine.core.model import Record, merge
from spine.core.session import SessionToken


@dataclass(frozen=True, slots=True)
class ReadOutcome:
    """The newest version among the answers and the nodes that answered with something older."""

    newest: Record | None
    stale: tuple[str, ...]
    holders: tuple[str, ...]


def resolve(answers: Mapping[str, Record | None]) -> ReadOutcome:
    """Merge every answer (LWW) and list who lacks the winning version."""
    newest: Record | None = None
    for rec in answers.values():
        if rec is not None:
            newest = rec if newest is None else merge(newest, rec)
    if newest is None:
        return ReadOutcome(None, (), tuple(answers))
    holders = tuple(n for n, r in answers.items() if r is not None and r.version == newest.version)
    stale = tuple(n for n in answers if n not in holders)
    return ReadOutcome(newest, stale, holders)


def meets_floor(rec: Record | None, floor: Version | None) -> bool:
    """Whether a read result is at least as new as the session requires."""
    if floor is None:
        return True
    return rec is not None and rec.version >= floor


# ------------------------------------------------------------------ tallies per level


def one_is_enough(level: Level, token: SessionToken | None, key: str) -> bool:
    """Whether a non-strong read may stop at one answer (the coordinator's own copy first, when
    it is a replica), else it waits for the quorum's r.

    Eventual: yes. Session: when the client sends a token that may speak for the key (it holds the
    key's floor, or never dropped an entry), the answer being checked against the floor; not
    without a token, nor with an overflowed token that may have forgotten the key — else
    read-your-writes would silently lapse. Strong reads are ABD's (`spine.core.abd`): never.
    """
    if level is Level.EVENTUAL:
        return True
    return level.base is Level.SESSION and token is not None and not token.needs_quorum(key)


@dataclass(frozen=True, slots=True)
class ReadTally:
    """A read's answers judged: the winning version, or why the read fails."""

    outcome: ReadOutcome
    error: SpineError | None  # QuorumUnavailable: too few answers; SessionUnavailable: too old


def tally_read(answers: Mapping[str, Record | None], r: int, floor: Version | None) -> ReadTally:
    """Judge a read's answers: at least `r` of them, and the newest at least the session's floor."""
    outcome = resolve(answers)
    error: SpineError | None = None
    if len(answers) < r:
        error = QuorumUnavailable(
            f"{len(answers)} of {r} replicas answered", reached=len(answers), needed=r
        )
    elif not meets_floor(outcome.newest, floor):
        error = SessionUnavailable(
            "no reachable replica holds the version this session has seen", reached=len(answers)
        )
    return ReadTally(outcome, error)


def write_shortfall(acks: int, need: int) -> QuorumUnavailable | None:
    """The error of a write `acks` replicas acknowledged of the `need` it required, if too few."""
    if acks >= need:
        return None
    return QuorumUnavailable(
        f"{acks} of {need} replicas acknowledged; the write may still land",
        reached=acks, needed=need,
    )
