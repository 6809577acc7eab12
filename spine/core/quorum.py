"""Quorum arithmetic for reads: which answers win, who is stale, whether a floor is met.

Pure functions over (node, record) answers, so the coordinator's decisions can be unit-tested
without sockets.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from spine.core.clock import Version
from spine.core.model import Record, merge


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
