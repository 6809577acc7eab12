"""One LMDB environment per node: records, history, hints, a change log, meta and Paxos ballots
(DESIGN §6, §12).

The façade the rest of the node uses. It composes the tables, each a concept of its own
(`records` with `history`, `hints`, `changelog`, `meta`, keyed as `layout` says), the group-commit
writer that carries out typed writes (`write_ops`), and the change feed derived structures
subscribe to (`change_feed`).

Writes are group-committed (`group_commit`): concurrent `apply` calls queue up, the writer takes
them as one LMDB write transaction, commits (fsync when `sync`), publishes the changes to the
feed, and only then resolves the callers' futures. Nothing is acknowledged before it is durable.
Reads run on the caller's thread in their own read transaction; LMDB's MVCC lets them proceed
beside the writer.

Disk faults (spine.core.disk_health says what LMDB does under each): a commit that fails to
write or sync turns the store FAILED — every later write answers StorageFailed (503) until the
process restarts, and no write transaction is begun again (a failed fsync is never retried); a
full filesystem or map answers InsufficientStorage (507) and the next write tries again, so the
store recovers by itself once space is freed. Reads go on from the last commit while LMDB allows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, assert_never

import lmdb

from spine.core.model import Record
from spine.storage.ballots import Ballots
from spine.storage.change_feed import ChangeFeed, Subscriber
from spine.storage.changelog import ChangeLog
from spine.storage.disk_guard import DiskGuard
from spine.storage.feed_log import FeedLog
from spine.storage.files import fsync_dir
from spine.storage.group_commit import GroupCommit, WriterMode
from spine.storage.hints import Hints
from spine.storage.history import History
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
from spine.storage.meta import Meta, Positions
from spine.storage.records import Records
from spine.storage.write_ops import (
    AddHints,
    ApplyRecords,
    DeleteHints,
    PruneChanges,
    Purge,
    PutBallots,
    PutMeta,
    Write,
    write_bytes,
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


class Store:
    """The node's LMDB environment, its tables, its group-committing writer and change feed."""

    def __init__(
        self,
        path: str | Path,
        *,
        shard_of: Callable[[str, str], int],
        sync: bool = True,
        map_size_mb: int = 8192,
        max_batch: int = 512,
        history_keep: int = 10,
        reserve_mb: int = 0,
        writer: WriterMode = "thread",
    ) -> None:
        """`writer`: "thread" commits on a writer thread (a node); "loop" commits on the event
        loop, the ops submitted in one loop iteration as one group (the deterministic
        simulator, where no thread may run)."""
        Path(path).mkdir(parents=True, exist_ok=True)
        self.path = Path(path)
        self.env = lmdb.open(
            str(path),
            max_dbs=16,
            map_size=map_size_mb * 1024 * 1024,
            sync=sync,
            metasync=sync,
            readahead=False,
            max_readers=512,
        )
        if sync:  # LMDB fsyncs its files, never their directory entries: a fresh data.mdb
            for d in (self.path, *list(self.path.parents)[:2]):  # could vanish with power
                fsync_dir(d)  # loss despite every commit's fsync (so could the new directories)
        read = self._begin_read
        self.changelog = ChangeLog(self.env, read)
        self.feed_log = FeedLog(self.env, read)
        self.records = Records(self.env, read, shard_of=shard_of,
                               history=History(self.env, read, history_keep),
                               changes=self.changelog, feed=self.feed_log)
        self.hints = Hints(self.env, read)
        self.meta = Meta(self.env, read)
        self.ballots = Ballots(self.env, read)
        self._pos = self.meta.positions()
        self._backfill_feed_log()
        self.feed = ChangeFeed()
        self.writer: GroupCommit[Write] = GroupCommit(
            self._commit, mode=writer, max_batch=max_batch, name="lmdb-writer")
        self.disk = DiskGuard(self.path, reserve_mb * 1024 * 1024)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start taking writes (in thread mode, start the writer thread)."""
        self.writer.start()

    def close(self) -> None:
        """Stop the writer after it commits what is queued, then close the environment."""
        self.writer.close()
        self.env.close()

    def abandon(self) -> None:
        """Drop what is submitted but not committed and refuse further writes, as a process
        killed before its next commit would (the simulator's crash); then close."""
        self.writer.abandon()
        self.env.close()

    # ---------------------------------------------------------------- change feed

    def subscribe(self, subscriber: Subscriber) -> None:
        """Call `subscriber` after each later commit that changed records, with their `Applied`
        in commit order, on the committer, before the commit's callers resume (change_feed)."""
        self.feed.subscribe(subscriber)

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Stop calling `subscriber`."""
        self.feed.unsubscribe(subscriber)

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
        return self._pos.seq

    @property
    def max_hlc(self) -> int:
        """The highest HLC of any version applied (a restarted node's clock starts above it)."""
        return self._pos.max_hlc

    @property
    def commits(self) -> int:
        """Group commits since start."""
        return self.writer.groups

    @property
    def committed_ops(self) -> int:
        """Writes committed since start."""
        return self.writer.ops

    def key_of(self, namespace: str, mid: str) -> bytes:
        """The records key of (namespace, id)."""
        return self.records.key_of(namespace, mid)

    def get(self, namespace: str, mid: str) -> Record | None:
        """The stored version of a key (tombstones included), or None."""
        return self.records.get(self.key_of(namespace, mid))

    def get_many(self, keys: Sequence[tuple[str, str]]) -> list[Record | None]:
        """Several keys in one read transaction."""
        return self.records.get_many([self.key_of(ns, mid) for ns, mid in keys])

    def history(self, namespace: str, mid: str) -> list[HistoryEntry]:
        """Superseded and concurrent-losing versions of a key, newest first."""
        return self.records.history.entries(self.key_of(namespace, mid))

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
        return self.records.list_namespace(namespace, after, limit, predicate, include_deleted,
                                           max_scan, max_bytes)

    def scan_shard(
        self, shard: int, after: bytes | None = None, limit: int = 1000
    ) -> list[tuple[bytes, Record]]:
        """Up to `limit` (records key, record) pairs of one shard with key > `after`."""
        return self.records.scan_shard(shard, after, limit)

    def iter_all(self) -> Iterable[Record]:
        """Every stored record (tombstones included), one read transaction at a time."""
        return self.records.iter_all()

    def changes_since(self, seq: int, limit: int = 10_000) -> list[tuple[int, bytes]]:
        """(seq, records key) of the change log after `seq` (index catch-up after a crash)."""
        return self.changelog.since(seq, limit)

    def feed_since(
        self, namespace: str, after: int, limit: int, max_bytes: int = 0
    ) -> tuple[list[tuple[int, Record]], int]:
        """The feed log of `namespace` after change seq `after`: up to `limit` (seq, record) in
        seq order, each key at its stored version (tombstones included), stopping once the
        records reach `max_bytes` stored bytes (0: no bound); and this store's last change seq,
        read in the same transaction (where a reader with nothing left to read resumes)."""
        out: list[tuple[int, Record]] = []
        size = 0
        with self._begin_read(None) as txn:
            head = self.meta.seq_in(txn)
            for seq, rk in self.feed_log.since(txn, namespace, after, limit):
                raw = txn.get(rk, db=self.records.db)
                if raw is None:  # cannot happen: a purge removes the entry with the record
                    continue
                out.append((seq, decode_record(raw)))
                size += len(raw)
                if max_bytes and size >= max_bytes:
                    break
        return out, head

    def feed_entries(
        self, namespace: str, ids: Sequence[str]
    ) -> list[tuple[Record | None, int]]:
        """Per id of `namespace`: its stored version and the seq of its feed-log entry (None and
        0 when not stored), read in one transaction."""
        out: list[tuple[Record | None, int]] = []
        with self._begin_read(None) as txn:
            for mid in ids:
                rk = self.key_of(namespace, mid)
                raw = txn.get(rk, db=self.records.db)
                if raw is None:
                    out.append((None, 0))
                else:
                    out.append((decode_record(raw), self.feed_log.seq_of(txn, rk)))
        return out

    def _backfill_feed_log(self) -> None:
        """A store written before the feed log existed: give every stored key an entry (new
        change seqs, after every earlier one), once, at open."""
        if not self.feed_log.empty() or self.records.count() == 0:
            return
        pos = replace(self._pos)
        with self.env.begin(write=True) as txn:
            for rk, _ in txn.cursor(db=self.records.db):
                pos.seq += 1
                self.feed_log.record(txn, bytes(rk), pos.seq)
            self.meta.save_positions(txn, pos)
        self._pos = pos

    def get_by_record_key(self, rk: bytes) -> Record | None:
        """A record by its raw records key."""
        return self.records.get(rk)

    def count(self) -> int:
        """Records stored (tombstones included)."""
        return self.records.count()

    def hint_counts(self) -> dict[str, int]:
        """Pending hints per target node."""
        return self.hints.counts()

    def hints_for(self, target: str, limit: int) -> list[Hint]:
        """The oldest `limit` hints kept for `target`."""
        return self.hints.oldest(target, limit)

    def meta_get(self, name: str) -> bytes | None:
        """A raw meta value."""
        return self.meta.get(name.encode())

    def ballots_get(self, namespace: str, mid: str) -> bytes | None:
        """The stored Paxos acceptor state of a key (spine.core.paxos), or None."""
        return self.ballots.get(self.key_of(namespace, mid))

    # ---------------------------------------------------------------- writes

    async def ballots_put(self, namespace: str, mid: str, value: bytes) -> None:
        """Replace a key's Paxos acceptor state; resolves once durable."""
        await self.writer.submit(PutBallots(self.key_of(namespace, mid), value))

    async def apply(self, records: Sequence[Record]) -> list[Applied]:
        """Merge incoming versions into the store; resolves after the commit is durable."""
        result: list[Applied] = await self.writer.submit(ApplyRecords(tuple(records)))
        return result

    async def add_hints(self, hints: Sequence[tuple[str, int, Record]]) -> None:
        """Keep (target, created_ms, record) hints durably."""
        await self.writer.submit(AddHints(tuple(hints)))

    async def delete_hints(self, keys: Sequence[bytes]) -> None:
        """Drop delivered or expired hints."""
        await self.writer.submit(DeleteHints(tuple(keys)))

    async def meta_put(self, name: str, value: bytes) -> None:
        """Set a raw meta value."""
        await self.writer.submit(PutMeta(name.encode(), value))

    async def prune_changes(self, upto: int) -> None:
        """Forget change-log entries at or below `upto` (the index has persisted past them)."""
        await self.writer.submit(PruneChanges(upto))

    async def purge(self, keys: Sequence[bytes]) -> None:
        """Remove records (tombstone purge, or a shard this node no longer owns)."""
        await self.writer.submit(Purge(tuple(keys)))

    def _commit(self, group: Sequence[Write]) -> list[Any]:
        """The writer's commit: one write transaction for the group, then the change feed.
        Raises (failing the whole group) when the disk refuses or the transaction fails."""
        # FAILED: never begin another write transaction (no fsync retried); or below reserve
        self.disk.check_writable()
        pos = replace(self._pos)
        try:
            with self.env.begin(write=True) as txn:
                results = [self._write(txn, op, pos) for op in group]
                self.meta.save_positions(txn, pos)
        except lmdb.Error as e:
            raise self.disk.commit_failed(e, write_bytes(group)) from None
        self.disk.committed()
        self._pos = pos
        self.feed.publish([a for op, res in zip(group, results, strict=True)
                           if isinstance(op, ApplyRecords | Purge) for a in res])
        return results

    def _write(self, txn: Any, op: Write, pos: Positions) -> Any:
        """Carry out one op in the group's transaction, advancing `pos`; its caller's result."""
        match op:
            case ApplyRecords(records=records):
                out: list[Applied] = []
                for rec in records:
                    pos.seq += 1
                    out.append(self.records.apply(txn, rec, pos.seq))
                    pos.max_hlc = max(pos.max_hlc, rec.version.hlc)
                return out
            case Purge(keys=keys):
                purged: list[Applied] = []
                for rk in keys:
                    pos.seq += 1
                    gone = self.records.purge(txn, rk, pos.seq)
                    if gone is not None:
                        purged.append(gone)
                return purged
            case AddHints(hints=hints):
                for target, created, rec in hints:
                    pos.hint_seq += 1
                    self.hints.add(txn, pos.hint_seq, target, created, rec)
                return None
            case DeleteHints(keys=keys):
                self.hints.delete(txn, keys)
                return None
            case PutMeta(name=name, value=value):
                self.meta.put(txn, name, value)
                return None
            case PruneChanges(upto=upto):
                self.changelog.prune(txn, upto)
                return None
            case PutBallots(key=key, value=value):
                self.ballots.put(txn, key, value)
                return None
            case _:
                assert_never(op)
