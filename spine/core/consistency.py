"""Consistency levels, per-tag overrides and quorum sizes (DESIGN §4).

A write uses the strongest level of its old and new tags; a read escalates to the strongest level
of the tags it finds; a request header may only strengthen the level (unless the operator allows
weaker). All of it is plain arithmetic on levels.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from spine.core.errors import InvalidInput


class Level(enum.IntEnum):
    """Consistency levels, ordered from weakest to strongest (what `max` of two means).

    The region-local forms (issue 17) are acknowledged by a quorum of the key's replicas in
    the coordinator's region; the other regions get the write through the normal replication,
    hints and anti-entropy. Each ranks just below its global form. Without regions (or where
    the coordinator's region holds every replica) a local form is its global one.
    """

    EVENTUAL = 0
    LOCAL_SESSION = 1
    SESSION = 2
    LOCAL_STRONG = 3
    STRONG = 4

    @classmethod
    def parse(cls, text: str, field: str = "Spine-Consistency") -> Level:
        """`eventual | local_session | session | local_strong | strong` (case-insensitive)."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise InvalidInput(
                "consistency must be one of eventual, local_session, session, local_strong,"
                " strong", field=field,
            ) from None

    @property
    def label(self) -> str:
        """The lowercase name used in headers, config and metrics."""
        return self.name.lower()

    @property
    def local(self) -> bool:
        """Whether this is a region-local form."""
        return self in (Level.LOCAL_SESSION, Level.LOCAL_STRONG)

    @property
    def base(self) -> Level:
        """The global form: SESSION for LOCAL_SESSION, STRONG for LOCAL_STRONG, else itself."""
        return _BASE.get(self, self)

    @property
    def code(self) -> int:
        """The number messages carry (0, 1, 2 as before the local forms; 3, 4 for them)."""
        return _CODE[self]

    @classmethod
    def from_code(cls, code: object) -> Level:
        """Inverse of `code`; InvalidInput for anything else (a peer's bytes are hostile)."""
        for level, c in _CODE.items():
            if c == code and type(code) is int:
                return level
        raise InvalidInput(f"unknown level code {code!r}", field="level")


_BASE = {Level.LOCAL_SESSION: Level.SESSION, Level.LOCAL_STRONG: Level.STRONG}
_CODE = {Level.EVENTUAL: 0, Level.SESSION: 1, Level.STRONG: 2, Level.LOCAL_SESSION: 3,
         Level.LOCAL_STRONG: 4}


@dataclass(frozen=True, slots=True)
class Quorum:
    """How many replicas must acknowledge a write (w) and answer a read (r)."""

    w: int
    r: int


def majority(n: int) -> int:
    """The smallest majority of n replicas."""
    return n // 2 + 1


@dataclass(frozen=True, slots=True)
class Policy:
    """The operator's consistency policy: default level, tag overrides and quorum sizes."""

    n: int = 3
    default: Level = Level.SESSION
    overrides: Mapping[str, Level] = field(default_factory=dict)
    allow_weaker: bool = False
    quorums: Mapping[Level, Quorum] = field(default_factory=dict)

    def quorum(self, level: Level) -> Quorum:
        """w and r for a level (eventual 1/1, others a majority of n unless configured). A
        local form's is its global form's; the coordinator takes a majority of the region's
        replicas instead (`spine.core.routing.localized`)."""
        level = level.base
        if level in self.quorums:
            return self.quorums[level]
        if level is Level.EVENTUAL:
            return Quorum(1, 1)
        return Quorum(majority(self.n), majority(self.n))

    def for_tags(self, tags: Iterable[str]) -> Level:
        """The level the tags ask for: the strongest override among them, else the default."""
        levels = [self.overrides[t] for t in tags if t in self.overrides]
        return max(levels) if levels else self.default

    def floor(self, tags: Iterable[str]) -> Level:
        """The weakest level the tags' overrides allow (EVENTUAL when no tag has an override)."""
        levels = [self.overrides[t] for t in tags if t in self.overrides]
        return max(levels) if levels else Level.EVENTUAL

    def apply_request(self, base: Level, floor: Level, requested: Level | None) -> Level:
        """The header picks the level, but never below what the tags require (`floor`).

        With no header the tags' level (or the default) applies. The default is only a default:
        a client may ask for any level at least as strong as the tags' overrides; the operator's
        overrides are the floor, unless `allow_weaker` lifts that too.
        """
        if requested is None:
            return base
        if self.allow_weaker:
            return requested
        return max(requested, floor)

    def write_level(
        self, old_tags: Iterable[str] | None, new_tags: Iterable[str], requested: Level | None
    ) -> Level:
        """The level of a write: strongest of the old and new tags' levels, then the header.

        `old_tags` is None when the key has no previous version: a create is governed by its
        new tags alone (a new `metric` record is eventual, not the default).
        """
        new = tuple(new_tags)
        old = None if old_tags is None else tuple(old_tags)
        base = self.for_tags(new)
        floor = self.floor(new)
        if old is not None:
            base = max(base, self.for_tags(old))
            floor = max(floor, self.floor(old))
        return self.apply_request(base, floor, requested)

    def read_level(self, requested: Level | None) -> Level:
        """The level a read starts at, before it knows the record's tags (then `escalate`)."""
        return self.apply_request(self.default, Level.EVENTUAL, requested)

    def escalate(self, current: Level, found_tags: Iterable[str]) -> Level | None:
        """A stronger level the found tags require, or None if `current` is enough."""
        tags = tuple(found_tags)
        needed = self.for_tags(tags)
        has_override = any(t in self.overrides for t in tags)
        return needed if has_override and needed > current else None
