"""Records: the stored version of every key, merged on write (DESIGN §5, §6).

Applying an incoming version merges it with the stored one (spine.core.model.merge: the higher
version wins, clocks join). A newer version replaces the stored one, which moves to history; an
older version that was concurrent with it goes to history as the conflict's loser; a version the
store already has changes nothing but the joined clock. Every replacement and every purge takes a
change seq in the change log, in the same transaction, and moves the key's entry in the feed log
(`feed_log.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any

from spine.core.model import Record, is_concurrent, merge, wins_tie
from spine.storage.changelog import BeginRead, ChangeLog
from spine.storage.feed_log import FeedLog
from spine.storage.history import History
from spine.storage.layout import (
    Applied,
    Outcome,
    by_ns_key,
    decode_record,
    encode_record,
    record_key,
    shard_prefix,
)


class Records:
    """The `records` table and its `by_ns` listing index."""

    def __init__(
        self,
        env: Any,
        begin_read: BeginRead,
        *,
        shard_of: Callable[[str, str], int],
        history: History,
        changes: ChangeLog,
        feed: FeedLog,
    ) -> None:
        self.db = env.open_db(b"records")
        self.by_ns = env.open_db(b"by_ns")
        self._begin_read = begin_read
        self._shard_of = shard_of
        self.history = history
        self.changes = changes
        self.feed = feed

    def key_of(self, namespace: str, mid: str) -> bytes:
        """The records key of (namespace, id)."""
        return record_key(self._shard_of(namespace, mid), namespace, mid)

    # ---------------------------------------------------------------- reads

    def get(self, rk: bytes) -> Record | None:
        """The stored version at a records key (tombstones included), or None."""
        with self._begin_read(self.db) as txn:
            raw = txn.get(rk)
        return None if raw is None else decode_record(raw)

    def get_many(self, keys: Sequence[bytes]) -> list[Record | None]:
        """Several records keys in one read transaction."""
        out: list[Record | None] = []
        with self._begin_read(self.db) as txn:
            for rk in keys:
                raw = txn.get(rk)
                out.append(None if raw is None else decode_record(raw))
        return out

    def list_namespace(
        self,
        namespace: str,
        after: str | None,
        limit: int,
        predicate: Callable[[Record], bool] | None,
        include_deleted: bool,
        max_scan: int,
        max_bytes: int,
    ) -> list[Record]:
        """Records of a namespace with id > `after`, in id order (see `Store.list_namespace`)."""
        prefix = by_ns_key(namespace, "")
        start = by_ns_key(namespace, after) + b"\0" if after is not None else prefix
        out: list[Record] = []
        with self._begin_read(None) as txn:
            cur = txn.cursor(db=self.by_ns)
            if not cur.set_range(start):
                return out
            scanned = size = 0
            for k, shard_raw in cur:
                if not k.startswith(prefix) or len(out) >= limit or scanned >= max_scan:
                    break
                if max_bytes and size >= max_bytes:
                    break
                scanned += 1
                raw = txn.get(shard_raw + k, db=self.db)
                if raw is None:
                    continue
                rec = decode_record(raw)
                if rec.deleted and not include_deleted:
                    continue
                if predicate is None or predicate(rec):
                    out.append(rec)
                    size += len(raw)
        return out

    def scan_shard(self, shard: int, after: bytes | None, limit: int) -> list[tuple[bytes, Record]]:
        """Up to `limit` (records key, record) pairs of one shard with key > `after`."""
        prefix = shard_prefix(shard)
        out: list[tuple[bytes, Record]] = []
        with self._begin_read(self.db) as txn:
            cur = txn.cursor()
            if not cur.set_range(after + b"\0" if after is not None else prefix):
                return out
            for k, v in cur:
                if not k.startswith(prefix) or len(out) >= limit:
                    break
                out.append((bytes(k), decode_record(v)))
        return out

    def iter_all(self) -> Iterator[Record]:
        """Every stored record (tombstones included), in one read transaction."""
        with self._begin_read(self.db) as txn:
            for _, v in txn.cursor():
                yield decode_record(v)

    def count(self) -> int:
        """Records stored (tombstones included)."""
        with self._begin_read(self.db) as txn:
            n: int = txn.stat(self.db)["entries"]
        return n

    # ---------------------------------------------------------------- writes

    def apply(self, txn: Any, rec: Record, seq: int) -> Applied:
        """In a write transaction: merge `rec` into the stored version; `seq` is its change seq
        (recorded in the change log only when the stored version is replaced)."""
        rk = self.key_of(rec.namespace, rec.id)
        raw = txn.get(rk, db=self.db)
        old = None if raw is None else decode_record(raw)
        if old is None:
            self._put(txn, rk, rec, seq)
            txn.put(by_ns_key(rec.namespace, rec.id), rk[:2], db=self.by_ns)
            return Applied(Outcome.APPLIED, None, rec, False, seq)
        merged = merge(old, rec)
        conflict = is_concurrent(old, rec)
        if merged.version != old.version or wins_tie(rec, old):
            # `rec` won, or one session's writes were reordered (`merge`)
            self._put(txn, rk, merged, seq)
            self.history.add(txn, rk, old, conflict)
            return Applied(Outcome.APPLIED, old, merged, conflict, seq)
        if rec.version < old.version and conflict:
            self.history.add(txn, rk, rec, True)
        if merged is not old and (dict(merged.clock) != dict(old.clock)
                                  or dict(merged.fences) != dict(old.fences)):
            txn.put(rk, encode_record(merged), db=self.db)
        return Applied(Outcome.STALE, old, merged, conflict and rec.version != old.version, seq)

    def purge(self, txn: Any, rk: bytes, seq: int) -> Applied | None:
        """In a write transaction: remove the record at `rk` (None when there is none); the
        change log records the key, so a replay sees it gone."""
        raw = txn.get(rk, db=self.db)
        if raw is None:
            return None
        rec = decode_record(raw)
        txn.delete(rk, db=self.db)
        txn.delete(by_ns_key(rec.namespace, rec.id), db=self.by_ns)
        self.changes.record(txn, seq, rk)
        self.feed.forget(txn, rk)
        gone = replace(rec, deleted=True, vector=None)
        return Applied(Outcome.APPLIED, rec, gone, False, seq)

    def _put(self, txn: Any, rk: bytes, rec: Record, seq: int) -> None:
        txn.put(rk, encode_record(rec), db=self.db)
        self.changes.record(txn, seq, rk)
        self.feed.record(txn, rk, seq)
