"""One LMDB environment per node: records, history, hints, a change log and meta (DESIGN §6).

Writes are group-committed by one writer thread (LMDB write transactions must stay on the thread
that began them): concurrent `apply` calls queue up, the writer drains the queue into a single
transaction, commits (fsync when `sync`), and only then resolves the callers' futures. Nothing is
acknowledged before it is durable. Reads run on the caller's thread in their own read transaction;
LMDB's MVCC lets them proceed beside the writer.

Disk faults (spine.core.disk_health says what LMDB does under each): a commit that fails to
write or sync turns the store FAILED — every later write answers StorageFailed (503) until the
process restarts, and no write transaction is begun again (a failed fsync is never retried); a
full filesystem or map answers InsufficientStorage (507) and the next write tries again, so the
store recovers by itself once space is freed. Reads go on from the last commit while LMDB allows.
"""

from __future__ import annotations

import asyncio
import queue
import struct
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import lmdb
import msgpack
import structlog

from spine.core.errors import SpineError
from spine.core.model import Record, is_concurrent, merge
from spine.storage.disk_guard import DiskGuard
from spine.storage.files import fsync_dir
from spine.storage.layout import (
    Applied,
    Hint,
    HistoryEntry,
    Outcome,
    decode_record,
    encode_record,
    record_key,
    shard_prefix,
    split_record_key,
)

__all__ = [
    "Applied",
    "Hint",
    "HistoryEntry",
    "Outcome",
    "Store",
    "decode_record",
    "encode_record",
    "record_key",
    "shard_prefix",
    "split_record_key",
]

log = structlog.get_logger("spine.store")

_U64 = struct.Struct(">Q")


class Store:
    """The node's LMDB environment and its single group-committing writer."""

    def __init__(
        self,
        path: str | Path,
        *,
        shard_of: Callable[[str, str], int],
        sync: bool = True,
        map_size_mb: int = 8192,
        max_batch: int = 512,
        history_keep: int = 10,
        on_commit: Callable[[list[Applied]], None] | None = None,
        reserve_mb: int = 0,
        writer: Literal["thread", "loop"] = "thread",
    ) -> None:
        """`writer`: "thread" commits on a writer thread (a node); "loop" commits on the event
        loop, the ops submitted in one loop iteration as one group (the deterministic
        simulator, where no thread may run)."""
        Path(path).mkdir(parents=True, exist_ok=True)
        self.path = Path(path)
        self._shard_of = shard_of
        self._max_batch = max_batch
        self._history_keep = history_keep
        # Called on the writer thread after each commit, with every apply result in commit
        # order: derived structures (the vector index, hash trees) follow LMDB exactly.
        self.on_commit = on_commit
        self.env = lmdb.open(
            str(path),
            max_dbs=8,
            map_size=map_size_mb * 1024 * 1024,
            sync=sync,
            metasync=sync,
            readahead=False,
            max_readers=512,
        )
        if sync:  # LMDB fsyncs its files, never their directory entries: a fresh data.mdb
            for d in (self.path, *list(self.path.parents)[:2]):  # could vanish with power
                fsync_dir(d)  # loss despite every commit's fsync (so could the new directories)
        self.records = self.env.open_db(b"records")
        self.by_ns = self.env.open_db(b"by_ns")
        self.history_db = self.env.open_db(b"history")
        self.hints_db = self.env.open_db(b"hints")
        self.changes = self.env.open_db(b"changes")
        self.meta = self.env.open_db(b"meta")
        self._seq = self._meta_int(b"seq")
        self.max_hlc = self._meta_int(b"hlc")
        self._hint_seq = self._meta_int(b"hint_seq")
        self._queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._on_loop = writer == "loop"
        self._pending: list[_Op] = []  # loop writer: submitted, to commit at the next flush
        self._open = False
        self.commits = 0
        self.committed_ops = 0
        self.disk = DiskGuard(self.path, reserve_mb * 1024 * 1024)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start the writer thread."""
        self._open = True
        if self._thread is None and not self._on_loop:
            self._thread = threading.Thread(target=self._writer, name="lmdb-writer", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the writer after it drains what is queued, then close the environment."""
        self._flush()
        self._open = False
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        self.env.close()

    # ---------------------------------------------------------------- reads

    def check_writable(self) -> None:
        """Raise StorageFailed (503) or InsufficientStorage (507) when a write cannot be tried."""
        self.disk.check_writable()

    def _begin_read(self, db: Any = None) -> Any:
        """A read transaction; StorageFailed once LMDB has declared the environment unusable."""
        try:
            return self.env.begin(db=db)
        except lmdb.PanicError as e:
            raise self.disk.panicked(e) from None

    @property
    def seq(self) -> int:
        """The change-log position of the last committed apply (the index watermark source)."""
        return self._seq

    def key_of(self, namespace: str, mid: str) -> bytes:
        """The records key of (namespace, id)."""
        return record_key(self._shard_of(namespace, mid), namespace, mid)

    def get(self, namespace: str, mid: str) -> Record | None:
        """The stored version of a key (tombstones included), or None."""
        with self._begin_read(db=self.records) as txn:
            raw = txn.get(self.key_of(namespace, mid))
        return None if raw is None else decode_record(raw)

    def get_many(self, keys: Sequence[tuple[str, str]]) -> list[Record | None]:
        """Several keys in one read transaction."""
        out: list[Record | None] = []
        with self._begin_read(db=self.records) as txn:
            for ns, mid in keys:
                raw = txn.get(self.key_of(ns, mid))
                out.append(None if raw is None else decode_record(raw))
        return out

    def history(self, namespace: str, mid: str) -> list[HistoryEntry]:
        """Superseded and concurrent-losing versions of a key, newest first."""
        prefix = self.key_of(namespace, mid) + b"\0"
        out: list[HistoryEntry] = []
        with self._begin_read(db=self.history_db) as txn:
            cur = txn.cursor()
            if cur.set_range(prefix):
                for k, v in cur:
                    if not k.startswith(prefix):
                        break
                    wire, concurrent = msgpack.unpackb(v, raw=False)
                    out.append(HistoryEntry(Record.from_wire(wire), bool(concurrent)))
        out.reverse()
        return out

    def list_namespace(
        self,
        namespace: str,
        after: str | None,
        limit: int,
        predicate: Callable[[Record], bool] | None = None,
        *,
        include_deleted: bool = False,
        max_scan: int = 100_000,
        max_bytes: int = 0,
    ) -> list[Record]:
        """Records of a namespace with id > `after`, in id order, up to `limit` that match and
        until their stored size reaches `max_bytes` (0: no bound; at least one record)."""
        prefix = namespace.encode() + b"\0"
        start = prefix + (after.encode() + b"\0" if after is not None else b"")
        out: list[Record] = []
        with self._begin_read() as txn:
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
                rk = shard_raw + k
                raw = txn.get(rk, db=self.records)
                if raw is None:
                    continue
                rec = decode_record(raw)
                if rec.deleted and not include_deleted:
                    continue
                if predicate is None or predicate(rec):
                    out.append(rec)
                    size += len(raw)
        return out

    def scan_shard(
        self, shard: int, after: bytes | None = None, limit: int = 1000
    ) -> list[tuple[bytes, Record]]:
        """Up to `limit` (records key, record) pairs of one shard with key > `after`."""
        prefix = shard_prefix(shard)
        out: list[tuple[bytes, Record]] = []
        with self._begin_read(db=self.records) as txn:
            cur = txn.cursor()
            if not cur.set_range(after + b"\0" if after is not None else prefix):
                return out
            for k, v in cur:
                if not k.startswith(prefix) or len(out) >= limit:
                    break
                out.append((bytes(k), decode_record(v)))
        return out

    def iter_all(self) -> Iterable[Record]:
        """Every stored record (tombstones included), one read transaction at a time."""
        with self._begin_read(db=self.records) as txn:
            for _, v in txn.cursor():
                yield decode_record(v)

    def changes_since(self, seq: int, limit: int = 10_000) -> list[tuple[int, bytes]]:
        """(seq, records key) of the change log after `seq` (index catch-up after a crash)."""
        out: list[tuple[int, bytes]] = []
        with self._begin_read(db=self.changes) as txn:
            cur = txn.cursor()
            if cur.set_range(_U64.pack(seq + 1)):
                for k, v in cur:
                    out.append((_U64.unpack(k)[0], bytes(v)))
                    if len(out) >= limit:
                        break
        return out

    def get_by_record_key(self, rk: bytes) -> Record | None:
        """A record by its raw records key."""
        with self._begin_read(db=self.records) as txn:
            raw = txn.get(rk)
        return None if raw is None else decode_record(raw)

    def count(self) -> int:
        """Records stored (tombstones included)."""
        with self._begin_read(db=self.records) as txn:
            n: int = txn.stat(self.records)["entries"]
        return n

    def hint_counts(self) -> dict[str, int]:
        """Pending hints per target node."""
        counts: dict[str, int] = {}
        with self._begin_read(db=self.hints_db) as txn:
            for k in txn.cursor().iternext(keys=True, values=False):
                target = bytes(k).split(b"\0", 1)[0].decode()
                counts[target] = counts.get(target, 0) + 1
        return counts

    def hints_for(self, target: str, limit: int) -> list[Hint]:
        """The oldest `limit` hints kept for `target`."""
        prefix = target.encode() + b"\0"
        out: list[Hint] = []
        with self._begin_read(db=self.hints_db) as txn:
            cur = txn.cursor()
            if cur.set_range(prefix):
                for k, v in cur:
                    if not k.startswith(prefix) or len(out) >= limit:
                        break
                    created, wire = msgpack.unpackb(v, raw=False)
                    out.append(Hint(bytes(k), target, created, Record.from_wire(wire)))
        return out

    def meta_get(self, name: str) -> bytes | None:
        """A raw meta value."""
        with self._begin_read(db=self.meta) as txn:
            v = txn.get(name.encode())
        return None if v is None else bytes(v)

    def _meta_int(self, name: bytes) -> int:
        with self._begin_read(db=self.meta) as txn:
            v = txn.get(name)
        return 0 if v is None else int(_U64.unpack(v)[0])

    # ---------------------------------------------------------------- writes

    async def apply(self, records: Sequence[Record]) -> list[Applied]:
        """Merge incoming versions into the store; resolves after the commit is durable."""
        result: list[Applied] = await self._submit("apply", list(records))
        return result

    async def add_hints(self, hints: Sequence[tuple[str, int, Record]]) -> None:
        """Keep (target, created_ms, record) hints durably."""
        await self._submit("hints", list(hints))

    async def delete_hints(self, keys: Sequence[bytes]) -> None:
        """Drop delivered or expired hints."""
        await self._submit("del_hints", list(keys))

    async def meta_put(self, name: str, value: bytes) -> None:
        """Set a raw meta value."""
        await self._submit("meta", (name.encode(), value))

    async def prune_changes(self, upto: int) -> None:
        """Forget change-log entries at or below `upto` (the index has persisted past them)."""
        await self._submit("prune", upto)

    async def purge(self, keys: Sequence[bytes]) -> None:
        """Remove records (tombstone purge, or a shard this node no longer owns)."""
        await self._submit("purge", list(keys))

    def _submit(self, kind: str, payload: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if not self._open:
            raise RuntimeError("store writer is not running")
        if self._on_loop:
            self._pending.append(_Op(kind, payload, fut, loop))
            if len(self._pending) == 1:
                loop.call_soon(self._flush)
            return fut
        self._queue.put(_Op(kind, payload, fut, loop))
        return fut

    def _flush(self) -> None:
        """Loop writer: commit what was submitted since the last flush, in groups."""
        batch, self._pending = self._pending, []
        for i in range(0, len(batch), self._max_batch):
            self._commit(batch[i:i + self._max_batch])

    def abandon(self) -> None:
        """Loop writer: drop what is submitted but not committed and refuse further writes, as a
        process killed before its next commit would (the simulator's crash); then close."""
        self._pending.clear()
        self._open = False
        self.env.close()

    def _writer(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._commit(batch)
            if stop:
                return

    def _commit(self, batch: list[_Op]) -> None:
        try:  # FAILED: never begin another write transaction (no fsync retried); or below reserve
            self.disk.check_writable()
        except SpineError as err:
            for op in batch:
                op.loop.call_soon_threadsafe(_set_exception, op.future, err)
            return
        results: list[Any] = []
        seq, hint_seq = self._seq, self._hint_seq
        max_hlc = self.max_hlc
        try:
            with self.env.begin(write=True) as txn:
                for op in batch:
                    if op.kind == "apply":
                        out = []
                        for rec in op.payload:
                            seq += 1
                            out.append(self._apply_one(txn, rec, seq))
                            max_hlc = max(max_hlc, rec.version.hlc)
                        results.append(out)
                    elif op.kind == "hints":
                        for target, created, rec in op.payload:
                            hint_seq += 1
                            k = target.encode() + b"\0" + _U64.pack(hint_seq)
                            v = msgpack.packb([created, rec.to_wire()], use_bin_type=True)
                            txn.put(k, v, db=self.hints_db)
                        results.append(None)
                    elif op.kind == "del_hints":
                        for k in op.payload:
                            txn.delete(k, db=self.hints_db)
                        results.append(None)
                    elif op.kind == "meta":
                        txn.put(op.payload[0], op.payload[1], db=self.meta)
                        results.append(None)
                    elif op.kind == "prune":
                        cur = txn.cursor(db=self.changes)
                        while cur.first() and _U64.unpack(cur.key())[0] <= op.payload:
                            cur.delete()
                        results.append(None)
                    elif op.kind == "purge":
                        purged = []
                        for rk in op.payload:
                            seq += 1
                            gone = self._purge_one(txn, rk, seq)
                            if gone is not None:
                                purged.append(gone)
                        results.append(purged)
                txn.put(b"seq", _U64.pack(seq), db=self.meta)
                txn.put(b"hint_seq", _U64.pack(hint_seq), db=self.meta)
                txn.put(b"hlc", _U64.pack(max_hlc), db=self.meta)
        except Exception as e:  # the whole transaction failed: fail every caller in it
            failed = self.disk.commit_failed(e, _batch_bytes(batch)) if isinstance(
                e, lmdb.Error) else e
            for op in batch:
                op.loop.call_soon_threadsafe(_set_exception, op.future, failed)
            return
        self.disk.committed()
        self._seq, self._hint_seq, self.max_hlc = seq, hint_seq, max_hlc
        if self.on_commit is not None:
            committed = [a for op, res in zip(batch, results, strict=True)
                         if op.kind in ("apply", "purge") for a in res]
            if committed:
                try:
                    self.on_commit(committed)
                except Exception:  # a derived structure failing must not fail the commit
                    log.exception("on_commit_hook_failed")
        self.commits += 1
        self.committed_ops += len(batch)
        for op, res in zip(batch, results, strict=True):
            op.loop.call_soon_threadsafe(_set_result, op.future, res)

    def _apply_one(self, txn: Any, rec: Record, seq: int) -> Applied:
        rk = record_key(self._shard_of(rec.namespace, rec.id), rec.namespace, rec.id)
        raw = txn.get(rk, db=self.records)
        old = None if raw is None else decode_record(raw)
        if old is None:
            self._put_record(txn, rk, rec, seq)
            txn.put(rec.namespace.encode() + b"\0" + rec.id.encode(), rk[:2], db=self.by_ns)
            return Applied(Outcome.APPLIED, None, rec, False, seq)
        merged = merge(old, rec)
        conflict = is_concurrent(old, rec)
        if rec.version > old.version:
            self._put_record(txn, rk, merged, seq)
            self._add_history(txn, rk, old, conflict)
            return Applied(Outcome.APPLIED, old, merged, conflict, seq)
        if rec.version < old.version and conflict:
            self._add_history(txn, rk, rec, True)
        if merged is not old and dict(merged.clock) != dict(old.clock):
            txn.put(rk, encode_record(merged), db=self.records)
        return Applied(Outcome.STALE, old, merged, conflict and rec.version != old.version, seq)

    def _put_record(self, txn: Any, rk: bytes, rec: Record, seq: int) -> None:
        txn.put(rk, encode_record(rec), db=self.records)
        txn.put(_U64.pack(seq), rk, db=self.changes)

    def _add_history(self, txn: Any, rk: bytes, rec: Record, concurrent: bool) -> None:
        prefix = rk + b"\0"
        k = prefix + _U64.pack(rec.version.hlc) + rec.version.node.encode()
        txn.put(k, msgpack.packb([rec.to_wire(), concurrent], use_bin_type=True),
                db=self.history_db)
        cur = txn.cursor(db=self.history_db)
        keys: list[bytes] = []
        if cur.set_range(prefix):
            for hk in cur.iternext(keys=True, values=False):
                if not hk.startswith(prefix):
                    break
                keys.append(bytes(hk))
        for old_key in keys[: max(0, len(keys) - self._history_keep)]:
            txn.delete(old_key, db=self.history_db)

    def _purge_one(self, txn: Any, rk: bytes, seq: int) -> Applied | None:
        raw = txn.get(rk, db=self.records)
        if raw is None:
            return None
        rec = decode_record(raw)
        txn.delete(rk, db=self.records)
        txn.delete(rec.namespace.encode() + b"\0" + rec.id.encode(), db=self.by_ns)
        txn.put(_U64.pack(seq), rk, db=self.changes)  # replay sees the key gone
        gone = replace(rec, deleted=True, vector=None)
        return Applied(Outcome.APPLIED, rec, gone, False, seq)


def _batch_bytes(batch: list[_Op]) -> int:
    """Roughly how many bytes a batch writes (content and vectors of its records)."""
    total = 0
    for op in batch:
        if op.kind == "apply":
            total += sum(len(r.content) + len(r.vector or b"") for r in op.payload)
    return total


@dataclass(slots=True)
class _Op:
    kind: str
    payload: Any
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
