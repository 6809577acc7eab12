"""How the store lays records out in LMDB, and the values it answers with.

A record's key is its shard (2 bytes, big-endian), namespace, NUL and id, so one shard is one
contiguous key range (a shard's scan, transfer and hash tree read one range); its value is the
record's msgpack wire form. Pure: no LMDB here.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

import msgpack

from spine.core.model import Record

_U16 = struct.Struct(">H")


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
