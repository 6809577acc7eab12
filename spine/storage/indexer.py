"""Keeps each namespace's HNSW index in step with LMDB, persists it, and recovers it (DESIGN §6).

The indexer subscribes `on_commit` to the store's change feed, which calls it on the committer
after every commit, in commit order; the indexer hands the batch to its own single index thread,
so index updates never block the event loop or the writer, and are applied in exactly the order
LMDB committed them. The index therefore reflects a
prefix of the change log: `indexed_seq`. A snapshot is saved with that watermark; at start the
indexer loads the snapshot and replays the change log after it (or rebuilds from a full scan when
there is no usable snapshot), so after a crash the index holds exactly LMDB's live records.

An index update that fails does not move `indexed_seq`: the indexer is `behind`, the change log
is not pruned past the watermark, and a snapshot never claims a change it does not hold. It
catches up by replaying the change log from the watermark — on the index thread when a later
commit arrives (after 1, 2, 4, … up to 256 commits while the index keeps failing, so a broken
index does not replay the backlog on every commit) and from the persist loop — until the index
holds every commit again. `spine_index_update_failures` counts failed updates and replays;
`spine_index_behind` is 1 while the index waits for a catch-up.

Graph inserts are off that path too: the index thread only stores each vector and marks it
pending, which costs microseconds, and a `GraphBuilder` (spine.storage.graph_builder) inserts
pending vectors into the HNSW graphs in the background. Searches scan the pending vectors
exactly, so a fresh write is findable at once; a snapshot records which labels are pending (and
is taken again when only the graph moved), so a restart rebuilds only those.
`spine_index_pending` exports the backlog.

Beside each vector index the indexer keeps the namespace's full-text index (DESIGN §14,
spine.storage.text_index), updated from the same batches on the same thread. It lives in RAM:
`recover` builds it from the same LMDB scan that loads the attributes, and the replay after the
vector snapshot re-applies later changes to both (upserts and deletes are idempotent). Its
documents become searchable at a tantivy commit, made when a search needs it and otherwise at
most every TEXT_IDLE_COMMIT_S: a tantivy commit is costly (it starts fresh indexing threads and
writes a segment; one per write batch took a third of a node's CPU on the write path at 16
clients: bench/README.md), and nothing but a search reads the text. A search waiting in
`caught_up` asks the index thread for a commit, which runs after the batches queued before it;
while searches wait, the text also commits when no further batch is queued behind the one
applied, and at least every TEXT_COMMIT_S while batches keep coming. A failed text commit makes the
indexer `behind` with the text index marked for a rebuild from LMDB at the catch-up, so the
text index, too, never claims or misses a change LMDB disagrees with.

A search of this node first waits (`caught_up`, bounded) until every change handed to the index
thread before it arrived is searchable (`searchable_seq`: applied, and the text committed). A
write is handed over inside its commit, before it is acknowledged, so a search that starts after
a write's acknowledgement finds it on every node that committed it: a version settled on every
owner (DESIGN §4, which session tokens then stop carrying) is found by a search without the
session's overlay.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from spine.core.clock import ZERO
from spine.core.metrics import Registry
from spine.core.model import Record
from spine.core.validation import matches
from spine.storage.graph_builder import BuildPolicy, GraphBuilder
from spine.storage.index_set import IndexSet
from spine.storage.lmdb_store import Applied, Store, split_record_key
from spine.storage.text_index import TextIndex, TextIndexSet, record_tokens, tokens
from spine.storage.vector_index import VectorIndex

log = structlog.get_logger("spine.indexer")
TEXT_COMMIT_S = 0.05  # with searches waiting: the longest a sustained load delays a commit
TEXT_IDLE_COMMIT_S = 1.0  # with none: the longest applied text stays uncommitted under writes

Attrs = tuple[frozenset[str], str | None, dict[str, Any]]


class Indexer:
    """The node's vector indexes and the thread that maintains them."""

    def __init__(
        self,
        store: Store,
        directory: Path,
        *,
        dim: int,
        m: int,
        ef_construction: int,
        ef_search: int,
        fingerprint: str,
        persist_interval: float,
        sleep: Callable[[float], Awaitable[None]],
        monotonic: Callable[[], float] = time.monotonic,
        exact_max: int = 10_000,
        build: BuildPolicy | None = None,
        recall_target_pct: int = 95,
        probe_every: int = 64,
    ) -> None:
        self.store = store
        self.directory = directory
        self.indexes = IndexSet(
            dim, m=m, ef_construction=ef_construction, ef_search=ef_search,
            exact_max=exact_max, recall_target_pct=recall_target_pct, probe_every=probe_every,
            fingerprint=fingerprint,
        )
        self.builder = GraphBuilder(self._graphs, build or BuildPolicy(), sleep=sleep,
                                    monotonic=monotonic, on_failure=self._build_failed)
        self.attrs: dict[str, dict[str, Attrs]] = {}  # every live record's filter attributes
        self.texts = TextIndexSet()
        self._text_broken = False  # a text commit failed: rebuild it from LMDB at catch-up
        self._pending = 0  # batches queued for the index thread (commit the text when none)
        self._pending_lock = threading.Lock()
        self.indexed_seq = 0
        self.persisted_seq = 0
        self.enqueued_seq = 0  # the last change handed to the index thread (on_commit)
        self.searchable_seq = 0  # every change up to it is applied and its text committed
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []  # searches in caught_up
        self._waiters_lock = threading.Lock()
        self._commit_asked = False  # a commit for waiting searches is queued on the index thread
        self._monotonic = monotonic
        self._text_at = monotonic()  # when the text index last committed
        self.behind = False  # an update failed: commits after indexed_seq wait for catch_up
        self.update_failures = 0  # failed updates and failed catch-ups
        self._retry_every = 1  # while behind: commits between catch-up tries (doubles, to 256)
        self._since_try = 0
        self.persist_interval = persist_interval
        self.sleep = sleep
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="index-writer")
        self._queries = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="index-query")
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ recovery

    def recover(self) -> str:
        """Load the snapshot and replay the change log after it, or rebuild; says which."""
        watermark = self.indexes.load_all(self.directory)
        scan = list(self.store.iter_all())
        for rec in scan:  # filters are answered from attrs kept beside the index
            if not rec.deleted:
                self.attrs.setdefault(rec.namespace, {})[rec.id] = _attrs(rec)
        self._rebuild_text(scan)
        if watermark is None:
            self._rebuild(scan)
            self.indexed_seq = self.persisted_seq = self.store.seq
            self.enqueued_seq = self.searchable_seq = self.indexed_seq
            return "rebuilt"
        self.indexed_seq = self.persisted_seq = watermark
        replayed = self._replay()
        self.texts.commit()
        self.enqueued_seq = self.searchable_seq = self.indexed_seq
        return f"loaded snapshot at {watermark}, replayed {replayed} changes"

    def _replay(self) -> int:
        """Apply the change log after `indexed_seq` (on the index thread once started)."""
        replayed = 0
        while True:
            upto = self.store.seq  # read first: every change up to it is in the log
            changes = self.store.changes_since(self.indexed_seq)
            if not changes:
                self.indexed_seq = max(self.indexed_seq, upto)
                return replayed
            recs: list[Record] = []
            for _, rk in changes:
                found = self.store.get_by_record_key(rk)
                if found is not None:
                    rec = found
                else:  # purged after the snapshot: it must leave the index too
                    _, ns, mid = split_record_key(rk)
                    rec = Record(namespace=ns, id=mid, version=ZERO, deleted=True)
                recs.append(rec)
            self._apply_records(recs)
            self.indexed_seq = changes[-1][0]
            replayed += len(changes)

    def _rebuild_text(self, scan: Sequence[Record]) -> None:
        """A fresh text index of the live records in `scan` (a later replay brings it on)."""
        self.texts.close()
        texts = TextIndexSet(self.texts.max_writers)
        for rec in scan:
            if not rec.deleted:
                texts.upsert(rec.namespace, rec.id, record_tokens(rec.content, rec.tags))
        texts.commit()
        self.texts = texts
        self._text_broken = False

    def _rebuild(self, scan: Sequence[Record]) -> None:
        by_ns: dict[str, list[Record]] = {}
        for rec in scan:
            if not rec.deleted and rec.vector is not None:
                by_ns.setdefault(rec.namespace, []).append(rec)
        for ns, recs in by_ns.items():
            mat = np.frombuffer(b"".join(r.vector for r in recs if r.vector is not None),
                                dtype=np.float32).reshape(len(recs), -1)
            self.indexes.get(ns).upsert_many([r.id for r in recs], mat)

    # ------------------------------------------------------------ keeping in step

    def register_metrics(self, registry: Registry) -> None:
        """Export whether the index is behind LMDB and how often its updates failed."""
        registry.gauge("spine_index_update_failures",
                       "vector index updates and catch-ups that failed since start", (),
                       lambda: {(): float(self.update_failures)})
        registry.gauge("spine_index_pending",
                       "records stored in a vector index but not yet in its HNSW graph"
                       " (searched exactly meanwhile)", (),
                       lambda: {(): float(self.pending())})
        registry.gauge("spine_index_behind",
                       "1 while a failed index update waits for a catch-up from the change log",
                       (), lambda: {(): float(self.behind)})

    def on_commit(self, applied: list[Applied]) -> None:
        """The store's change feed (on its committer): queue the batch for the index thread.
        A store committing on the event loop (writer="loop") hands it over through the loop's
        executor hook, so a loop that runs executor work inline (the simulator's) keeps
        the index in step without a thread."""
        with self._pending_lock:
            self._pending += 1
            self.enqueued_seq = max(self.enqueued_seq, applied[-1].seq)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # the store's writer thread
            self._writer.submit(self._apply_committed, applied)
            return
        loop.run_in_executor(self._writer, self._apply_committed, applied)

    def _apply_committed(self, applied: list[Applied]) -> None:
        with self._pending_lock:
            self._pending -= 1
            last = self._pending == 0
        if self.behind:  # an earlier batch failed: the change log holds this one too
            self._since_try += 1
            if self._since_try >= self._retry_every:
                self._since_try = 0
                with contextlib.suppress(Exception):  # counted and logged by _catch_up
                    self._catch_up()
            return
        # The text commits for the searches waiting once no batch waits behind this one, or,
        # under a load that keeps the queue from draining, once TEXT_COMMIT_S has passed since
        # the last commit; with no search waiting, every TEXT_IDLE_COMMIT_S.
        since = self._monotonic() - self._text_at
        commit = (since >= TEXT_IDLE_COMMIT_S
                  or (bool(self._waiters) and (last or since >= TEXT_COMMIT_S)))
        try:
            self._apply_records([a.new for a in applied if a.outcome.value == "applied"])
            if commit:
                self._commit_text()
        except Exception:
            self._failed("index_update_failed", first_seq=applied[0].seq)
            return
        self.indexed_seq = max(self.indexed_seq, applied[-1].seq)
        if commit:  # the text is committed: everything applied so far is searchable
            self._searchable(self.indexed_seq)

    async def caught_up(self, timeout: float) -> bool:
        """Wait until every change handed to the index thread before this call is searchable
        on this node; False if that took longer than `timeout` (the index is behind: a large
        backlog, or a failed update waiting for its catch-up) and the search goes ahead."""
        target = self.enqueued_seq
        if self.searchable_seq >= target:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._waiters_lock:
            if self.searchable_seq >= target:  # the index thread got there meanwhile
                return True
            self._waiters.append((target, fut))
            ask = not self._commit_asked
            self._commit_asked = True
        if ask:  # a commit after the batches queued so far (the index thread is FIFO)
            asyncio.get_running_loop().run_in_executor(self._writer, self._commit_for_waiters)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._waiters_lock:
                self._waiters = [(t, f) for t, f in self._waiters if f is not fut]

    def _commit_for_waiters(self) -> None:
        """On the index thread, after the batches queued before a search: commit what is applied
        (unless an update failed: the catch-up commits). A search that waits for batches queued
        after this one is served when they are applied (searches waiting: commit at the last)."""
        with self._waiters_lock:
            self._commit_asked = False
        if self.behind or self.searchable_seq >= self.indexed_seq:
            return
        try:
            self._commit_text()
        except Exception:
            self._failed("index_text_commit_failed")
            return
        self._searchable(self.indexed_seq)

    def _failed(self, event: str, **details: int) -> None:
        """An update or commit failed on the index thread: behind until a catch-up; logged."""
        self.behind = True
        self.update_failures += 1
        log.exception(event, indexed_seq=self.indexed_seq, **details)

    def _searchable(self, seq: int) -> None:
        """On the index thread: changes up to `seq` are searchable; wake the searches waiting
        for no more than that."""
        with self._waiters_lock:
            self.searchable_seq = max(self.searchable_seq, seq)
            ready = [f for t, f in self._waiters if t <= self.searchable_seq]
            self._waiters = [(t, f) for t, f in self._waiters if t > self.searchable_seq]
        for fut in ready:
            fut.get_loop().call_soon_threadsafe(_wake, fut)

    async def catch_up(self) -> int:
        """After a failed update: replay the change log on the index thread; changes applied."""
        loop = asyncio.get_running_loop()
        replayed: int = await loop.run_in_executor(self._writer, self._catch_up)
        return replayed

    def _catch_up(self) -> int:
        if not self.behind:
            return 0
        try:
            if self._text_broken:
                self._rebuild_text(list(self.store.iter_all()))
            replayed = self._replay()  # the watermark moves only past what was applied
            self._commit_text()
            self._searchable(self.indexed_seq)
        except Exception:
            self.update_failures += 1
            self._retry_every = min(2 * self._retry_every, 256)
            log.exception("index_catch_up_failed", indexed_seq=self.indexed_seq,
                          store_seq=self.store.seq)
            raise
        self.behind = False
        self._retry_every, self._since_try = 1, 0
        log.info("index_caught_up", replayed=replayed, indexed_seq=self.indexed_seq)
        return replayed

    def _commit_text(self) -> None:
        """Make the text index's changes searchable; on failure rebuild it at catch-up."""
        try:
            self.texts.commit()
        except Exception:
            self._text_broken = True
            raise
        self._text_at = self._monotonic()

    def _apply_records(self, records: Sequence[Record]) -> None:
        upserts: dict[str, dict[str, Record]] = {}
        for rec in records:
            ns_attrs = self.attrs.setdefault(rec.namespace, {})
            if rec.deleted:
                self.texts.delete(rec.namespace, rec.id)
                ns_attrs.pop(rec.id, None)
            else:
                self.texts.upsert(rec.namespace, rec.id, record_tokens(rec.content, rec.tags))
                ns_attrs[rec.id] = _attrs(rec)
            if rec.deleted or rec.vector is None:
                upserts.get(rec.namespace, {}).pop(rec.id, None)
                index = self.indexes.peek(rec.namespace)
                if index is not None:
                    index.delete(rec.id)
            else:
                upserts.setdefault(rec.namespace, {})[rec.id] = rec
        for ns, by_id in upserts.items():
            if not by_id:
                continue
            recs = list(by_id.values())
            mat = np.frombuffer(b"".join(r.vector for r in recs if r.vector is not None),
                                dtype=np.float32).reshape(len(recs), -1)
            index = self.indexes.get(ns)
            index.upsert_many([r.id for r in recs], mat)
            if index.needs_build:
                self.builder.wake()

    # ------------------------------------------------------------ graph builds

    def pending(self) -> int:
        """Records waiting for a graph insert, over every namespace."""
        return self.builder.pending()

    def _graphs(self) -> list[VectorIndex]:
        return [index for index in map(self.indexes.peek, self.indexes.namespaces())
                if index is not None]

    def _build_failed(self) -> None:
        self.update_failures += 1

    # ------------------------------------------------------------ search

    async def search(
        self, namespace: str, vector: np.ndarray[Any, Any], k: int, filters: list[Any]
    ) -> list[tuple[Record, float]]:
        """This node's top-k live records for a query vector, filtered, best first."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._queries, self._search, namespace, vector, k, filters
        )

    def _search(
        self, namespace: str, vector: np.ndarray[Any, Any], k: int, filters: list[Any]
    ) -> list[tuple[Record, float]]:
        index = self.indexes.peek(namespace)
        if index is None:
            return []
        min_score = filters[4]
        predicate = self._predicate(namespace, filters)
        found = index.search(vector, k, predicate)
        if min_score is not None:
            found = [(key, s) for key, s in found if s >= min_score]
        recs = self.store.get_many([(namespace, key) for key, _ in found])
        return [(r, s) for r, (_, s) in zip(recs, found, strict=True)
                if r is not None and not r.deleted]

    def _predicate(self, namespace: str, filters: list[Any]) -> Callable[[str], bool] | None:
        """The search's filter on ids (from the attributes kept beside the index), or None."""
        tags_all, tags_any, agent, meta = filters[:4]
        if not (tags_all or tags_any or agent is not None or meta):
            return None
        ns_attrs = self.attrs.get(namespace, {})

        def predicate(key: str) -> bool:
            a = ns_attrs.get(key)
            return a is not None and matches(tags_all, tags_any, agent, meta, *a)

        return predicate

    async def keyword(
        self, namespace: str, text: str, k: int, filters: list[Any]
    ) -> list[tuple[Record, float]]:
        """This node's top-k live records by BM25 for a query text, filtered, best first."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._queries, self._keyword, namespace, text, k, filters
        )

    def _keyword(
        self, namespace: str, text: str, k: int, filters: list[Any]
    ) -> list[tuple[Record, float]]:
        index = self.texts.peek(namespace)
        terms = tokens(text)
        if index is None or not terms:
            return []
        predicate = self._predicate(namespace, filters)
        limit = k if predicate is None else 4 * k
        while True:  # a filter may reject many hits: widen until k pass or the hits run out
            hits = index.search(terms, limit)
            found = hits if predicate is None else [(i, s) for i, s in hits if predicate(i)]
            if len(found) >= k or len(hits) < limit:
                break
            limit *= 4
        found = found[:k]
        recs = self.store.get_many([(namespace, key) for key, _ in found])
        return [(r, s) for r, (_, s) in zip(recs, found, strict=True)
                if r is not None and not r.deleted]

    def keyword_estimate(self, namespace: str, text: str, rec: Record) -> float | None:
        """BM25 of a record with this node's statistics (for a session's own write that the
        answering nodes' indexes may not hold yet); None when it holds no query term."""
        index = self.texts.peek(namespace)
        if index is None:
            index = _EMPTY_TEXT  # this node stores none of the namespace: no statistics
        return index.estimate(tokens(text), record_tokens(rec.content, rec.tags))

    def count(self, namespace: str) -> int:
        """Live records indexed for a namespace."""
        index = self.indexes.peek(namespace)
        return 0 if index is None else len(index)

    # ------------------------------------------------------------ persistence

    def start(self) -> None:
        """Start the periodic snapshot loop and the graph builder."""
        self._task = asyncio.create_task(self._persist_loop())
        self.builder.start()

    async def persist(self) -> int:
        """Save a snapshot (on the index thread, between updates) and prune the change log."""
        loop = asyncio.get_running_loop()
        watermark: int = await loop.run_in_executor(self._writer, self._save)
        if watermark > self.persisted_seq:
            self.persisted_seq = watermark
        await self.store.prune_changes(watermark)
        return watermark

    def _save(self) -> int:
        self.builder.unsaved = False  # cleared first: a build during the save sets it again
        watermark = self.indexed_seq
        self.indexes.save_all(self.directory, watermark)
        return watermark

    async def _persist_loop(self) -> None:
        while True:
            await self.sleep(self.persist_interval)
            if self.behind:
                with contextlib.suppress(Exception):  # counted and logged by _catch_up
                    await self.catch_up()
            if self.indexed_seq != self.persisted_seq or self.builder.unsaved:
                try:
                    await self.persist()
                except Exception:
                    log.exception("index_persist_failed")

    async def stop(self) -> None:
        """Stop the loop and save a final snapshot."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.builder.stop()
        with contextlib.suppress(Exception):
            if self.indexed_seq != self.persisted_seq or self.builder.unsaved:
                await self.persist()
        self._writer.shutdown(wait=True)
        self._queries.shutdown(wait=True)
        self.texts.close()


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():  # it may have timed out meanwhile
        fut.set_result(None)


_EMPTY_TEXT = TextIndex()  # never written: estimates with a namespace this node has no index of


def _attrs(rec: Record) -> Attrs:
    return frozenset(rec.tags), rec.agent_id, dict(rec.metadata)
