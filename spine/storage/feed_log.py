"""The feed log: per namespace, each key's last change on this node, in change-seq order
(DESIGN §15).

The change log (`changelog.py`) keeps every change until the indexes have persisted past it;
the change feed needs something else: a log a consumer can read from any point, for as long as
it likes, per namespace. So this one is compacted by key, as a Kafka topic with
`cleanup.policy=compact`: when a key's stored version is replaced, its entry moves to the new
change seq (the old entry is deleted in the same transaction), so the log holds exactly one
entry per stored key and never grows beyond the records it describes. A reader after seq `s`
sees every key whose stored version changed after `s`, at its current version; a change it
missed because a newer one replaced it is covered by that newer one (the feed's promise).

Tables: `feed`, keyed by namespace, NUL, big-endian seq (one namespace is one contiguous range,
in seq order) -> records key; and `feed_at`, records key -> seq of its entry. A purged record
(tombstone GC, a shard handed away) leaves the log with it.
"""

from __future__ import annotations

from typing import Any

from spine.storage.changelog import BeginRead
from spine.storage.layout import from_u64, split_record_key, u64


def _key(namespace: str, seq: int) -> bytes:
    return namespace.encode() + b"\0" + u64(seq)


class FeedLog:
    """The `feed` and `feed_at` tables."""

    def __init__(self, env: Any, begin_read: BeginRead) -> None:
        self.db = env.open_db(b"feed")
        self.at = env.open_db(b"feed_at")
        self._begin_read = begin_read

    def record(self, txn: Any, rk: bytes, seq: int) -> None:
        """In a write transaction: the record at `rk` was replaced at change `seq`."""
        namespace = split_record_key(rk)[1]
        old = txn.get(rk, db=self.at)
        if old is not None:
            txn.delete(_key(namespace, from_u64(old)), db=self.db)
        txn.put(_key(namespace, seq), rk, db=self.db)
        txn.put(rk, u64(seq), db=self.at)

    def forget(self, txn: Any, rk: bytes) -> None:
        """In a write transaction: the record at `rk` was purged."""
        old = txn.get(rk, db=self.at)
        if old is not None:
            txn.delete(_key(split_record_key(rk)[1], from_u64(old)), db=self.db)
            txn.delete(rk, db=self.at)

    def since(self, txn: Any, namespace: str, after: int, limit: int) -> list[tuple[int, bytes]]:
        """In a read transaction: up to `limit` (seq, records key) of `namespace` after `after`,
        in seq order."""
        prefix = namespace.encode() + b"\0"
        out: list[tuple[int, bytes]] = []
        cur = txn.cursor(db=self.db)
        if limit <= 0 or not cur.set_range(_key(namespace, after + 1)):
            return out
        for k, rk in cur:
            if not k.startswith(prefix) or len(k) != len(prefix) + 8:
                break
            out.append((from_u64(k[len(prefix):]), bytes(rk)))
            if len(out) >= limit:
                break
        return out

    def seq_of(self, txn: Any, rk: bytes) -> int:
        """In a read transaction: the seq of the entry of the record at `rk` (0: none)."""
        raw = txn.get(rk, db=self.at)
        return 0 if raw is None else from_u64(raw)

    def empty(self) -> bool:
        """Whether the log has no entry (a store written before it existed may need a backfill)."""
        with self._begin_read(self.at) as txn:
            n: int = txn.stat(self.at)["entries"]
        return n == 0
