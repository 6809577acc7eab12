"""How the store lays its tables out in LMDB, and the values it answers with.

A record's key is its shard (2 bytes, big-endian), namespace, NUL and id, so one shard is one
contiguous key range (a shard's scan, transfer and hash tree read one range); its value is the
record's msgpack wire form. The other tables key off it:

- by_ns: namespace, NUL, id -> the record's shard (a namespace listing in id order);
- history: records key, NUL, HLC (8 bytes), origin node -> a superseded version (oldest first);
- changes: seq (8 bytes) -> records key (the change log, in commit order);
- hints: target node, NUL, hint seq (8 bytes) -> a write kept for that node (oldest first);
- meta: name -> value (the counters below are 8-byte big-endian).

Big-endian integers make LMDB's byte order the numeric order. Pure: no LMDB here.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

import msgpack

from spine.core.clock import Version
from spine.core.model import Record

_U16 = struct.Struct(">H")
_U64 = struct.Struct(">Q")


class Outcome(enum.Enum):
    """What applying one incoming version did to the stored record."""

    APPLIED = "applied"  # the incoming version is now the stored one
    STALE = "stale"  # the store already held this version or a newer one


@dataclass(frozen=True, slots=True)
class Applied:
    """The result of applying one record: outcome, previous and current stored versions."""

    outcome: Outcome
    old: Record | None
    new: Record
    conflict: bool
    seq: int


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One superseded or concurrent-losing version kept in a key's history."""

    record: Record
    concurrent: bool


@dataclass(frozen=True, slots=True)
class Hint:
    """A write kept for a replica that did not acknowledge it (Dynamo §4.6)."""

    key: bytes
    target: str
    created_ms: int
    record: Record


def record_key(shard: int, namespace: str, mid: str) -> bytes:
    """records key: shard (2 bytes), namespace, NUL, id — so one shard is one contiguous range."""
    return _U16.pack(shard) + namespace.encode() + b"\0" + mid.encode()


def split_record_key(rk: bytes) -> tuple[int, str, str]:
    """Inverse of `record_key`: (shard, namespace, id)."""
    ns, _, mid = rk[2:].partition(b"\0")
    return _U16.unpack(rk[:2])[0], ns.decode(), mid.decode()


def shard_prefix(shard: int) -> bytes:
    """The key prefix of every record in `shard`."""
    return _U16.pack(shard)


def encode_record(r: Record) -> bytes:
    """A record's stored form."""
    out: bytes = msgpack.packb(r.to_wire(), use_bin_type=True)
    return out


def decode_record(raw: bytes) -> Record:
    """Inverse of `encode_record`."""
    return Record.from_wire(msgpack.unpackb(raw, raw=False))


def by_ns_key(namespace: str, mid: str) -> bytes:
    """by_ns key of (namespace, id): a namespace is one contiguous range, in id order."""
    return namespace.encode() + b"\0" + mid.encode()


def history_prefix(rk: bytes) -> bytes:
    """The history key prefix of every kept version of the record at `rk`."""
    return rk + b"\0"


def history_key(rk: bytes, version: Version) -> bytes:
    """history key of one kept version: ordered by HLC within the record's range."""
    return history_prefix(rk) + _U64.pack(version.hlc) + version.node.encode()


def u64(n: int) -> bytes:
    """An unsigned 64-bit counter as a key or meta value (change seq, hint seq, HLC)."""
    return _U64.pack(n)


def from_u64(raw: bytes) -> int:
    """Inverse of `u64`."""
    n: int = _U64.unpack(raw)[0]
    return n


def hint_prefix(target: str) -> bytes:
    """The hints key prefix of every hint kept for `target`."""
    return target.encode() + b"\0"


def hint_key(target: str, hint_seq: int) -> bytes:
    """hints key: target, NUL, hint seq, so a target's hints read oldest first."""
    return hint_prefix(target) + _U64.pack(hint_seq)


def hint_target(key: bytes) -> str:
    """The target node of a hints key."""
    return key.split(b"\0", 1)[0].decode()
