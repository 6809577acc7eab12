"""The memory record, its key, its LWW merge and its wire form.

A record is a last-write-wins register (a state-based CRDT): `merge` keeps the payload of the larger
`Version` and the pointwise maximum of the version vectors, so it is commutative, associative and
idempotent, and every replica that has seen the same set of writes holds the same record.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import orjson

from spine.core.clock import Ordering, Version, hlc_ms, vv_compare, vv_merge


@dataclass(frozen=True, slots=True)
class Key:
    """A memory's address: (namespace, id)."""

    namespace: str
    id: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.id}"


@dataclass(frozen=True, slots=True)
class Record:
    """One version of a memory, live or a tombstone. `vector` is raw float32 bytes."""

    namespace: str
    id: str
    version: Version
    clock: Mapping[str, int] = field(default_factory=dict)
    content: str = ""
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    agent_id: str | None = None
    vector: bytes | None = None
    created_hlc: int = 0
    deleted: bool = False
    fences: Mapping[str, int] = field(default_factory=dict)  # lease -> highest token accepted
    # The HLC at which this version stops being visible (DESIGN §13); 0: it never expires.
    # Part of the version, so a copy of it arriving late (repair, hints) is just as expired.
    expires_hlc: int = 0
    # The client session that wrote this version and its number for the write (Spine-Write-Seq,
    # DESIGN §4): one session's later write outranks its earlier ones in `merge`.
    writer: str | None = None
    writer_seq: int = 0

    @property
    def key(self) -> Key:
        """The (namespace, id) this record belongs to."""
        return Key(self.namespace, self.id)

    def public(self, include_vector: bool = False) -> dict[str, Any]:
        """The JSON shape of DESIGN §11 (the vector only when asked for)."""
        out: dict[str, Any] = {
            "namespace": self.namespace,
            "id": self.id,
            "content": self.content,
            "tags": list(self.tags),
            "metadata": dict(self.metadata),
            "agent_id": self.agent_id,
            "created_at": rfc3339(hlc_ms(self.created_hlc or self.version.hlc)),
            "updated_at": rfc3339(hlc_ms(self.version.hlc)),
            "version": self.version.encode(),
            "deleted": self.deleted,
            "expires_at": rfc3339(hlc_ms(self.expires_hlc)) if self.expires_hlc else None,
        }
        if include_vector:
            out["vector"] = vector_to_list(self.vector)
        return out

    def size(self) -> int:
        """Roughly the bytes this version takes on the wire: content, vector, tags, ids."""
        return (len(self.content.encode()) + len(self.vector or b"") + len(self.id)
                + len(self.namespace) + sum(len(t) for t in self.tags) + 32)

    def to_wire(self) -> list[Any]:
        """A compact msgpack-friendly list (positional, so keep the order append-only)."""
        return [
            self.namespace,
            self.id,
            self.version.hlc,
            self.version.node,
            dict(self.clock),
            self.content,
            list(self.tags),
            dict(self.metadata),
            self.agent_id,
            self.vector,
            self.created_hlc,
            self.deleted,
            dict(self.fences),
            self.expires_hlc,
            self.writer,
            self.writer_seq,
        ]

    @classmethod
    def from_wire(cls, w: list[Any]) -> Record:
        """Inverse of `to_wire`."""
        return cls(
            namespace=w[0],
            id=w[1],
            version=Version(w[2], w[3]),
            clock=dict(w[4]),
            content=w[5],
            tags=tuple(w[6]),
            metadata=dict(w[7]),
            agent_id=w[8],
            vector=w[9],
            created_hlc=w[10],
            deleted=bool(w[11]),
            fences=dict(w[12]) if len(w) > 12 else {},
            expires_hlc=int(w[13]) if len(w) > 13 else 0,
            writer=w[14] if len(w) > 14 and isinstance(w[14], str) else None,
            writer_seq=int(w[15]) if len(w) > 15 and isinstance(w[15], int) else 0,
        )


def merge(a: Record, b: Record) -> Record:
    """The LWW merge: payload of the larger version; version vectors and fences joined (a
    fence, like a clock entry, only grows: DESIGN §12).

    Two writes of one session (same `writer`) rank by their `writer_seq` instead (monotonic
    writes, Terry et al. 1994): a write that was minted late — a node paused with the request in
    its socket buffer runs it after the client gave up and wrote again elsewhere — can carry a
    larger HLC than the session's later write. The later write then wins, restamped just above
    the earlier one (`restamped`), so the order stays the plain total order on versions that
    every replica, read and anti-entropy round uses, and every replica that meets the two makes
    the same record."""
    win, lose = _ranked(a, b)
    same_fences = dict(win.fences) == dict(lose.fences)
    if win.version == lose.version and dict(win.clock) == dict(lose.clock) and same_fences:
        return win
    fences = win.fences if same_fences else vv_merge(win.fences, lose.fences)
    return replace(win, clock=vv_merge(win.clock, lose.clock), fences=fences)


def _ranked(a: Record, b: Record) -> tuple[Record, Record]:
    """(winner, loser) of two versions of one key; see `merge`."""
    if a.writer is not None and a.writer == b.writer and a.writer_seq != b.writer_seq:
        later, earlier = (a, b) if a.writer_seq > b.writer_seq else (b, a)
        if later.version < earlier.version:
            later = restamped(later, earlier)
        return later, earlier
    if a.version != b.version:
        return (a, b) if a.version > b.version else (b, a)
    # One version, two records: only a restamp can make this (two nodes' HLC readings never
    # coincide with one node id); the session's later write wins, then a fixed order on the
    # payload, so that every replica picks the same one.
    return (a, b) if _tiebreak(a) >= _tiebreak(b) else (b, a)


def wins_tie(new: Record, old: Record) -> bool:
    """At one version (only a restamp makes two records of one), whether `new` wins the
    tie-break `merge` uses; strictly, so a copy of the same record arriving again does not."""
    return new.version == old.version and _tiebreak(new) > _tiebreak(old)


def _tiebreak(r: Record) -> tuple[int, str, str, bool, tuple[str, ...], bytes, bytes]:
    meta = orjson.dumps(r.metadata, option=orjson.OPT_SORT_KEYS)
    return (r.writer_seq, r.writer or "", r.content, r.deleted, r.tags, meta, r.vector or b"")


def restamped(later: Record, earlier: Record) -> Record:
    """`later` (the session's later write) moved just above `earlier`: one HLC tick past it,
    keeping its own node id; the same on every replica, so they converge on one record."""
    return replace(later, version=Version(earlier.version.hlc + 1, later.version.node))


def is_concurrent(a: Record, b: Record) -> bool:
    """True when neither version vector dominates the other (a real write conflict)."""
    return vv_compare(a.clock, b.clock) is Ordering.CONCURRENT


def rfc3339(ms: int) -> str:
    """Milliseconds since the epoch as an RFC 3339 UTC timestamp."""
    return _second(ms // 1000) + f"{ms % 1000:03d}Z"


@functools.lru_cache(maxsize=4096)
def _second(s: int) -> str:
    """The timestamp of a whole second, up to its dot (strftime was 5 % of a node's CPU in a
    read benchmark: every reply formats two or three of these, mostly of recent seconds)."""
    return dt.datetime.fromtimestamp(s, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.")


def vector_to_list(raw: bytes | None) -> list[float] | None:
    """float32 bytes → a JSON list."""
    if raw is None:
        return None
    return [float(x) for x in np.frombuffer(raw, dtype=np.float32)]
