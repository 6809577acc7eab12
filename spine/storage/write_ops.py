"""The store's writes as typed values: what callers submit and one group commit carries out.

Each op is a frozen value; the store commits a group of them in one LMDB write transaction and
answers each caller with its op's result (`ApplyRecords` and `Purge`: the `Applied` of each
record, in order; the others: None). `Write` is the closed set the commit matches on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from spine.core.model import Record


@dataclass(frozen=True, slots=True)
class ApplyRecords:
    """Merge incoming versions into the stored ones (each gets the next change seq)."""

    records: Sequence[Record]


@dataclass(frozen=True, slots=True)
class Purge:
    """Remove records by records key (tombstone purge, or a shard no longer owned)."""

    keys: Sequence[bytes]


@dataclass(frozen=True, slots=True)
class AddHints:
    """Keep (target node, created_ms, record) hints."""

    hints: Sequence[tuple[str, int, Record]]


@dataclass(frozen=True, slots=True)
class DeleteHints:
    """Drop hints by hints key (delivered or expired)."""

    keys: Sequence[bytes]


@dataclass(frozen=True, slots=True)
class PutMeta:
    """Set one raw meta value."""

    name: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class PruneChanges:
    """Forget change-log entries at or below `upto`."""

    upto: int


@dataclass(frozen=True, slots=True)
class PutBallots:
    """Replace a key's Paxos acceptor state (its records key, the state's stored bytes)."""

    key: bytes
    value: bytes


Write = ApplyRecords | Purge | AddHints | DeleteHints | PutMeta | PruneChanges | PutBallots


def write_bytes(ops: Sequence[Write]) -> int:
    """Roughly how many bytes a group writes (content and vectors of its records): what a full
    disk is judged against."""
    return sum(len(r.content) + len(r.vector or b"")
               for op in ops if isinstance(op, ApplyRecords) for r in op.records)
