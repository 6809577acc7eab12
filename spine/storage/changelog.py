"""The change log: every records key a commit changed, under its change seq (DESIGN §6).

Each applied version and each purge takes the next seq and writes (seq -> records key) in the
same transaction as the record, so the log is exactly LMDB's order of changes. Whoever derives a
structure from the records (the vector index) keeps the seq it has applied as its watermark and
replays the log after it to catch up; the log is pruned only below what such a structure has
persisted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from spine.storage.layout import from_u64, u64

BeginRead = Callable[[Any], Any]  # db -> a read transaction on it


class ChangeLog:
    """The `changes` table."""

    def __init__(self, env: Any, begin_read: BeginRead) -> None:
        self.db = env.open_db(b"changes")
        self._begin_read = begin_read

    def record(self, txn: Any, seq: int, rk: bytes) -> None:
        """In a write transaction: the record at `rk` changed at `seq`."""
        txn.put(u64(seq), rk, db=self.db)

    def since(self, seq: int, limit: int = 10_000) -> list[tuple[int, bytes]]:
        """Up to `limit` (seq, records key) entries after `seq`, in seq order."""
        out: list[tuple[int, bytes]] = []
        with self._begin_read(self.db) as txn:
            cur = txn.cursor()
            if cur.set_range(u64(seq + 1)):
                for k, v in cur:
                    out.append((from_u64(k), bytes(v)))
                    if len(out) >= limit:
                        break
        return out

    def prune(self, txn: Any, upto: int) -> None:
        """In a write transaction: forget the entries at or below `upto`."""
        cur = txn.cursor(db=self.db)
        while cur.first() and from_u64(cur.key()) <= upto:
            cur.delete()
