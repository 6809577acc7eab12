"""The Indexer with a real LMDB Store in a tmp dir (no sockets): the index follows every commit
(upserts, overwrites, deletes, stale replays), a snapshot plus change-log replay recovers the same
contents, and a missing, corrupt or foreign snapshot makes recovery rebuild from LMDB.

Records are applied through `Store.apply`, exactly as the replicator does; the test then polls
`indexer.indexed_seq == store.seq` against a deadline before it looks at the index. The expected
contents come from three places that must agree: the test's own model of the writes, LMDB's live
records, and the index.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from spine.core.clock import Version
from spine.core.model import Record
from spine.core.ring import shard_of
from spine.storage.indexer import Indexer
from spine.storage.lmdb_store import Outcome, Store, record_key

pytestmark = pytest.mark.timeout(60)

DIM = 16
NODE = "n1"
SHARDS = 256
FINGERPRINT = "test-embedder/16"
NAMESPACES = ("alpha", "beta")
TAGS = ("red", "green", "blue", "gold")
AGENTS = ("ann", "bob")

Vec = npt.NDArray[np.float32]
# namespace -> id -> normalised vector
Contents = dict[str, dict[str, Vec]]
Attrs = tuple[frozenset[str], str | None, dict[str, Any]]


def shard(namespace: str, mid: str) -> int:
    return shard_of(namespace, mid, SHARDS)


def unit(rng: np.random.Generator) -> Vec:
    v = rng.standard_normal(DIM).astype(np.float32)
    out: Vec = (v / np.linalg.norm(v)).astype(np.float32)
    return out


def open_store(path: Path) -> Store:
    store = Store(path / "lmdb", shard_of=shard, sync=False, map_size_mb=64)
    return store


def make_indexer(store: Store, path: Path, fingerprint: str = FINGERPRINT) -> Indexer:
    """An Indexer built as spine.node.Node builds one (small graph parameters)."""
    indexer = Indexer(
        store, path / "index", dim=DIM, m=8, ef_construction=64, ef_search=32,
        fingerprint=fingerprint, persist_interval=3600, sleep=asyncio.sleep,
    )
    return indexer


async def caught_up(indexer: Indexer, store: Store, timeout: float = 10.0) -> None:
    """Poll until the index thread has applied every commit of the store, then wait as a search
    does (`Indexer.caught_up`), so the text is committed too."""
    deadline = time.monotonic() + timeout
    while indexer.indexed_seq != store.seq:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"index stuck at seq {indexer.indexed_seq}, store at {store.seq}"
            )
        await asyncio.sleep(0.001)
    assert await indexer.caught_up(max(0.001, deadline - time.monotonic()))


@dataclass
class Model:
    """The test's own account of what each key should hold, and a clock to version writes."""

    hlc: int = 1 << 20
    live: dict[tuple[str, str], Record] = field(default_factory=dict)
    latest: dict[tuple[str, str], Record] = field(default_factory=dict)
    superseded: list[Record] = field(default_factory=list)

    def _next(self, ns: str, mid: str) -> tuple[Version, dict[str, int]]:
        self.hlc += 1
        prev = self.latest.get((ns, mid))
        counter = (prev.clock.get(NODE, 0) if prev is not None else 0) + 1
        return Version(self.hlc, NODE), {NODE: counter}

    def put(
        self,
        ns: str,
        mid: str,
        vec: Vec,
        tags: tuple[str, ...] = (),
        agent: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> Record:
        version, clock = self._next(ns, mid)
        rec = Record(
            namespace=ns, id=mid, version=version, clock=clock, content=f"{ns}/{mid}",
            tags=tuple(sorted(set(tags))), metadata=metadata or {}, agent_id=agent,
            vector=vec.astype(np.float32).tobytes(), created_hlc=version.hlc,
        )
        self._record(rec)
        return rec

    def delete(self, ns: str, mid: str) -> Record:
        version, clock = self._next(ns, mid)
        rec = Record(namespace=ns, id=mid, version=version, clock=clock, deleted=True)
        self._record(rec)
        return rec

    def _record(self, rec: Record) -> None:
        key = (rec.namespace, rec.id)
        prev = self.latest.get(key)
        if prev is not None:
            self.superseded.append(prev)
        self.latest[key] = rec
        if rec.deleted:
            self.live.pop(key, None)
        else:
            self.live[key] = rec

    def contents(self) -> Contents:
        out: Contents = {}
        for (ns, mid), rec in self.live.items():
            assert rec.vector is not None
            out.setdefault(ns, {})[mid] = np.frombuffer(rec.vector, dtype=np.float32)
        return out

    def attrs(self) -> dict[str, dict[str, Attrs]]:
        out: dict[str, dict[str, Attrs]] = {}
        for (ns, mid), rec in self.live.items():
            out.setdefault(ns, {})[mid] = (frozenset(rec.tags), rec.agent_id, dict(rec.metadata))
        return out


def index_contents(indexer: Indexer) -> Contents:
    """What the index holds, namespaces with no live record left out."""
    out: Contents = {}
    for ns in indexer.indexes.namespaces():
        index = indexer.indexes.peek(ns)
        assert index is not None
        vectors: dict[str, Vec] = {}
        for mid in index.keys():  # noqa: SIM118 (a VectorIndex, not a dict)
            v = index.vector(mid)
            assert v is not None, (ns, mid)
            vectors[mid] = v
        if vectors:
            out[ns] = vectors
    return out


def lmdb_contents(store: Store) -> Contents:
    """LMDB's live records with a vector."""
    out: Contents = {}
    for rec in store.iter_all():
        if not rec.deleted and rec.vector is not None:
            out.setdefault(rec.namespace, {})[rec.id] = np.frombuffer(rec.vector, np.float32)
    return out


def indexer_attrs(indexer: Indexer) -> dict[str, dict[str, Attrs]]:
    return {ns: dict(a) for ns, a in indexer.attrs.items() if a}


def assert_same(got: Contents, want: Contents, what: str) -> None:
    assert sorted(got) == sorted(want), f"{what}: namespaces {sorted(got)} != {sorted(want)}"
    for ns in want:
        extra = sorted(set(got[ns]) - set(want[ns]))
        missing = sorted(set(want[ns]) - set(got[ns]))
        assert not extra and not missing, f"{what}/{ns}: extra ids {extra}, missing ids {missing}"
        for mid, vec in want[ns].items():
            np.testing.assert_allclose(got[ns][mid], vec, rtol=0, atol=1e-6,
                                       err_msg=f"{what}: vector of {ns}/{mid}")


def assert_index_matches(indexer: Indexer, store: Store, model: Model) -> None:
    want = model.contents()
    assert_same(lmdb_contents(store), want, "LMDB")
    assert_same(index_contents(indexer), want, "index")
    assert indexer_attrs(indexer) == model.attrs()
    for ns, vectors in want.items():
        assert indexer.count(ns) == len(vectors)


@dataclass
class Opened:
    store: Store
    indexer: Indexer
    recovered: str  # what Indexer.recover() said it did


@asynccontextmanager
async def opened(path: Path, fingerprint: str = FINGERPRINT) -> AsyncIterator[Opened]:
    """A store and its indexer, wired and recovered as Node.start does; always closed."""
    store = open_store(path)
    indexer = make_indexer(store, path, fingerprint)
    try:
        store.subscribe(indexer.on_commit)
        how = indexer.recover()
        store.start()
        yield Opened(store, indexer, how)
    finally:
        await indexer.stop()
        store.close()


async def apply(store: Store, indexer: Indexer, *batches: list[Record]) -> list[list[Any]]:
    """Apply batches concurrently (the writer may group them into one commit), then wait."""
    results = await asyncio.gather(*(store.apply(b) for b in batches))
    await caught_up(indexer, store)
    return [list(r) for r in results]


def random_ops(model: Model, rng: random.Random, nrng: np.random.Generator, n: int) -> list[Record]:
    """n writes over a small id space: new records, overwrites (new vector and attrs), deletes."""
    out: list[Record] = []
    for _ in range(n):
        ns = rng.choice(NAMESPACES)
        mid = f"m{rng.randrange(40)}"
        if (ns, mid) in model.live and rng.random() < 0.3:
            out.append(model.delete(ns, mid))
        else:
            tags = tuple(rng.sample(TAGS, rng.randrange(3)))
            agent = rng.choice((*AGENTS, None))
            out.append(model.put(ns, mid, unit(nrng), tags, agent, {"n": rng.randrange(3)}))
    return out


async def search_ids(indexer: Indexer, ns: str, q: Vec, k: int, filters: list[Any]) -> list[str]:
    return [r.id for r, _ in await indexer.search(ns, q, k, filters)]


def brute_force(model: Model, ns: str, q: Vec, k: int, keep: Any = None) -> list[str]:
    scored = []
    for (rns, mid), rec in model.live.items():
        if rns != ns or (keep is not None and not keep(rec)):
            continue
        assert rec.vector is not None
        scored.append((-float(np.frombuffer(rec.vector, np.float32) @ q), mid))
    return [mid for _, mid in sorted(scored)[:k]]


async def assert_search(
    indexer: Indexer, model: Model, ns: str, q: Vec, k: int, filters: list[Any], keep: Any
) -> None:
    """The indexer's filtered search equals brute force over the model (ids, best first)."""
    found = await indexer.search(ns, q, k, filters)
    want = brute_force(model, ns, q, k, keep)
    got = [r.id for r, _ in found]
    if got != want:
        index = indexer.indexes.peek(ns)
        raise AssertionError(
            f"{ns} k={k} filters={filters}: got {[(r.id, s) for r, s in found]}, want {want}; "
            f"index holds {len(index) if index is not None else None} ids; attrs of the wanted: "
            f"{ {mid: indexer.attrs.get(ns, {}).get(mid) for mid in want} }; "
            f"a second search: {await search_ids(indexer, ns, q, k, filters)}"
        )


# -- keeping in step ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_index_follows_upserts_overwrites_and_deletes(tmp_path: Path) -> None:
    nrng = np.random.default_rng(1)
    model = Model()
    async with opened(tmp_path) as o:
        store, indexer = o.store, o.indexer
        assert o.recovered == "rebuilt"
        assert index_contents(indexer) == {}

        va, vb, vc = unit(nrng), unit(nrng), unit(nrng)
        await apply(store, indexer, [model.put("alpha", "a", va, ("red",), "ann")],
                    [model.put("alpha", "b", vb), model.put("beta", "a", vc, ("blue",))])
        assert_index_matches(indexer, store, model)
        assert await search_ids(indexer, "alpha", va, 1, [[], [], None, None, None]) == ["a"]

        # Overwrite: the new vector replaces the old one, and the new tags replace the old ones.
        va2 = unit(nrng)
        await apply(store, indexer, [model.put("alpha", "a", va2, ("gold",), "bob")])
        assert_index_matches(indexer, store, model)
        assert await search_ids(indexer, "alpha", va2, 1, [[], [], None, None, None]) == ["a"]
        assert await search_ids(indexer, "alpha", va, 5, [["red"], [], None, None, None]) == []
        assert await search_ids(indexer, "alpha", va, 5, [["gold"], [], "bob", None, None]) == [
            "a"
        ]

        # Delete: gone from the index and from every search; the other namespace untouched.
        await apply(store, indexer, [model.delete("alpha", "a")])
        assert_index_matches(indexer, store, model)
        assert "a" not in await search_ids(indexer, "alpha", va2, 10, [[], [], None, None, None])
        assert await search_ids(indexer, "beta", vc, 1, [[], [], None, None, None]) == ["a"]

        # Re-create after a delete (the freed label is reused).
        va3 = unit(nrng)
        await apply(store, indexer, [model.put("alpha", "a", va3)])
        assert_index_matches(indexer, store, model)

        # In one batch: b deleted then re-created, c created then deleted.
        vb2 = unit(nrng)
        await apply(store, indexer, [
            model.delete("alpha", "b"), model.put("alpha", "b", vb2),
            model.put("alpha", "c", unit(nrng)), model.delete("alpha", "c"),
        ])
        assert_index_matches(indexer, store, model)
        assert "c" not in indexer.indexes.get("alpha")

        # Delete every record of a namespace: it searches as empty.
        await apply(store, indexer, [model.delete("beta", "a")])
        assert_index_matches(indexer, store, model)
        assert await search_ids(indexer, "beta", vc, 10, [[], [], None, None, None]) == []


@pytest.mark.asyncio
async def test_stale_and_repeated_versions_change_nothing(tmp_path: Path) -> None:
    nrng = np.random.default_rng(2)
    model = Model()
    async with opened(tmp_path) as o:
        store, indexer = o.store, o.indexer
        old = model.put("alpha", "a", unit(nrng), ("red",))
        new = model.put("alpha", "a", unit(nrng), ("blue",))
        await apply(store, indexer, [new])
        # The older version arrives late (read repair, a hint): LMDB keeps the newer one,
        # and so must the index.
        (res,) = await apply(store, indexer, [old])
        assert res[0].outcome is Outcome.STALE
        assert_index_matches(indexer, store, model)
        # A tombstone older than the live version changes nothing either.
        stale_delete = Record("alpha", "a", Version(old.version.hlc, NODE), {NODE: 1},
                              deleted=True)
        (res,) = await apply(store, indexer, [stale_delete, new])
        assert [a.outcome for a in res] == [Outcome.STALE, Outcome.STALE]
        assert_index_matches(indexer, store, model)


@pytest.mark.asyncio
async def test_index_follows_a_random_history(tmp_path: Path) -> None:
    rng = random.Random(3)
    nrng = np.random.default_rng(3)
    model = Model()
    async with opened(tmp_path) as o:
        store, indexer = o.store, o.indexer
        for _ in range(25):
            # Several concurrent apply calls, each a small batch: the writer groups them.
            batches = [random_ops(model, rng, nrng, rng.randrange(1, 8))
                       for _ in range(rng.randrange(1, 5))]
            # Now and then a superseded version comes back: it must not resurrect anything.
            if model.superseded and rng.random() < 0.5:
                batches.append(rng.sample(model.superseded, min(3, len(model.superseded))))
            await apply(store, indexer, *batches)
            assert_index_matches(indexer, store, model)
            # Filtered searches answer from the attrs kept in step with the records.
            q = unit(nrng)
            for ns in NAMESPACES:
                await assert_search(indexer, model, ns, q, 5, [["red"], [], None, None, None],
                                    lambda r: "red" in r.tags)
                await assert_search(
                    indexer, model, ns, q, 50, [[], ["blue", "gold"], "ann", {"n": 1}, None],
                    lambda r: bool({"blue", "gold"} & set(r.tags)) and r.agent_id == "ann"
                    and r.metadata == {"n": 1},
                )


# -- persistence and recovery ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_snapshot_then_replay_recovers_the_same_contents(tmp_path: Path) -> None:
    rng = random.Random(4)
    nrng = np.random.default_rng(4)
    model = Model()
    async with opened(tmp_path) as o:
        store, indexer = o.store, o.indexer
        await apply(store, indexer, random_ops(model, rng, nrng, 150))
        watermark = await indexer.persist()
        assert watermark == store.seq
        assert indexer.persisted_seq == watermark
        # The change log up to the snapshot is pruned; what follows is kept for replay.
        assert store.changes_since(0) == []

        # More writes after the snapshot: overwrites and deletes of snapshotted keys, new keys,
        # and the deletion of every record of one namespace.
        await apply(store, indexer, random_ops(model, rng, nrng, 80))
        for ns, mid in [k for k in model.live if k[0] == "beta"]:
            await apply(store, indexer, [model.delete(ns, mid)])
        assert all(seq > watermark for seq, _ in store.changes_since(0))
        assert_index_matches(indexer, store, model)

        # A fresh indexer on the same directories (as after a crash: no final snapshot).
        fresh = make_indexer(store, tmp_path)
        try:
            how = fresh.recover()
            changed = len(store.changes_since(watermark))
            assert how == f"loaded snapshot at {watermark}, replayed {changed} changes"
            assert changed > 0
            assert fresh.indexed_seq == store.seq
            assert_index_matches(fresh, store, model)
            q = unit(nrng)
            filters: list[Any] = [[], ["red", "green"], None, None, -1.0]
            assert await search_ids(fresh, "alpha", q, 20, filters) == await search_ids(
                indexer, "alpha", q, 20, filters
            )
        finally:
            await fresh.stop()


@pytest.mark.asyncio
async def test_clean_stop_and_reopen_recovers_without_replay(tmp_path: Path) -> None:
    rng = random.Random(5)
    nrng = np.random.default_rng(5)
    model = Model()
    async with opened(tmp_path) as o:
        store, indexer = o.store, o.indexer
        await apply(store, indexer, random_ops(model, rng, nrng, 60))
        await indexer.persist()
        await apply(store, indexer, random_ops(model, rng, nrng, 60))
        seq = store.seq
    # stop() saved a final snapshot at the last commit; close() closed LMDB.
    async with opened(tmp_path) as o:
        store, indexer = o.store, o.indexer
        assert store.seq == seq
        assert o.recovered == f"loaded snapshot at {seq}, replayed 0 changes"
        assert_index_matches(indexer, store, model)
        # And it keeps following new writes after recovery.
        await apply(store, indexer, random_ops(model, rng, nrng, 40))
        assert_index_matches(indexer, store, model)


def _current_snapshot(index_dir: Path) -> Path:
    return index_dir / (index_dir / "CURRENT").read_text().strip()


def _corrupt(index_dir: Path, how: str) -> None:
    snap = _current_snapshot(index_dir)
    ns_dir = snap / "alpha"
    meta = json.loads((ns_dir / "meta.json").read_text())
    if how == "no_index_dir":
        shutil.rmtree(index_dir)
    elif how == "current_names_nothing":
        (index_dir / "CURRENT").write_text("snap-99999999\n")
    elif how == "current_garbage":
        (index_dir / "CURRENT").write_bytes(b"\xff\x00garbage")
    elif how == "manifest_garbage":
        (snap / "manifest.json").write_text("{not json")
    elif how == "manifest_missing":
        (snap / "manifest.json").unlink()
    elif how == "meta_missing":
        (ns_dir / "meta.json").unlink()
    elif how == "graph_truncated":
        graph = ns_dir / meta["graph"]
        graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    elif how == "graph_missing":
        (ns_dir / meta["graph"]).unlink()
    elif how == "vectors_truncated":
        vecs = ns_dir / meta["vectors"]
        vecs.write_bytes(vecs.read_bytes()[:200])
    elif how == "keys_disagree_with_graph":
        meta["keys"] = meta["keys"][:-1]
        (ns_dir / "meta.json").write_text(json.dumps(meta))
    else:
        raise AssertionError(how)


@pytest.mark.asyncio
@pytest.mark.parametrize("how", [
    "no_index_dir", "current_names_nothing", "current_garbage", "manifest_garbage",
    "manifest_missing", "meta_missing", "graph_truncated", "graph_missing", "vectors_truncated",
    "keys_disagree_with_graph",
])
async def test_damaged_snapshot_is_rebuilt_from_lmdb(tmp_path: Path, how: str) -> None:
    rng = random.Random(6)
    nrng = np.random.default_rng(6)
    model = Model()
    async with opened(tmp_path) as o:
        store, indexer = o.store, o.indexer
        if how.startswith("graph"):  # small namespaces have no graph file unless exact_max=0
            indexer.indexes._params["exact_max"] = 0
        await apply(store, indexer, random_ops(model, rng, nrng, 120))
        await indexer.persist()
        await apply(store, indexer, random_ops(model, rng, nrng, 40))
        assert "alpha" in model.contents()
        _corrupt(tmp_path / "index", how)
        fresh = make_indexer(store, tmp_path)
        try:
            assert fresh.recover() == "rebuilt"
            assert fresh.indexed_seq == store.seq
            assert_index_matches(fresh, store, model)
        finally:
            await fresh.stop()


@pytest.mark.asyncio
async def test_snapshot_of_another_embedder_is_rebuilt(tmp_path: Path) -> None:
    rng = random.Random(7)
    nrng = np.random.default_rng(7)
    model = Model()
    async with opened(tmp_path) as o:
        store, indexer = o.store, o.indexer
        await apply(store, indexer, random_ops(model, rng, nrng, 50))
    async with opened(tmp_path, fingerprint="another-embedder/16") as o:
        store, indexer = o.store, o.indexer
        assert o.recovered == "rebuilt"
        assert_index_matches(indexer, store, model)


@pytest.mark.asyncio
async def test_purged_record_leaves_the_index(tmp_path: Path) -> None:
    nrng = np.random.default_rng(8)
    model = Model()
    async with opened(tmp_path) as o:
        store, indexer = o.store, o.indexer
        await apply(store, indexer, [model.put("alpha", "a", unit(nrng)),
                                     model.put("alpha", "b", unit(nrng))])
        # The shard of alpha/a moved away: the node drops its copy.
        await store.purge([record_key(shard("alpha", "a"), "alpha", "a")])
        model.live.pop(("alpha", "a"))
        await caught_up(indexer, store)
        assert_same(lmdb_contents(store), model.contents(), "LMDB")
        assert_same(index_contents(indexer), model.contents(), "index")


@pytest.mark.asyncio
async def test_replay_drops_a_record_deleted_and_purged_after_the_snapshot(
    tmp_path: Path,
) -> None:
    nrng = np.random.default_rng(9)
    model = Model()
    async with opened(tmp_path) as o:
        store, indexer = o.store, o.indexer
        await apply(store, indexer, [model.put("alpha", "a", unit(nrng)),
                                     model.put("alpha", "b", unit(nrng))])
        await indexer.persist()
        await apply(store, indexer, [model.delete("alpha", "a")])
        # Tombstone garbage collection purges the tombstone before the next snapshot.
        await store.purge([record_key(shard("alpha", "a"), "alpha", "a")])
        fresh = make_indexer(store, tmp_path)
        try:
            assert fresh.recover().startswith("loaded snapshot")
            assert_same(lmdb_contents(store), model.contents(), "LMDB")
            assert_same(index_contents(fresh), model.contents(), "index after recovery")
        finally:
            await fresh.stop()


# -- a search waits for what its node committed ---------------------------------------------------


@pytest.mark.asyncio
async def test_caught_up_waits_for_the_index_thread_then_the_write_is_searchable(
    tmp_path: Path,
) -> None:
    """A write committed (and so acknowledged) while the index thread is busy: `caught_up`
    holds the search until the index has it, vector and keyword alike, and says False when
    the thread takes longer than the caller's bound."""
    nrng = np.random.default_rng(9)
    model = Model()
    async with opened(tmp_path) as o:
        store, indexer = o.store, o.indexer
        await apply(store, indexer, [model.put("alpha", "old", unit(nrng))])
        assert await indexer.caught_up(0.01)  # nothing handed over since: at once

        busy = threading.Event()
        release = threading.Event()

        def block() -> None:
            busy.set()
            release.wait(10)

        blocker = indexer._writer.submit(block)  # the index thread, busy with earlier work
        assert busy.wait(5)
        fresh = model.put("alpha", "fresh", unit(nrng))
        await store.apply([fresh])  # committed: a replica would acknowledge it now
        assert indexer.enqueued_seq == store.seq > indexer.searchable_seq
        assert await indexer.caught_up(0.05) is False  # bounded: the thread is still busy
        q = np.frombuffer(fresh.vector or b"", np.float32)
        assert "fresh" not in await search_ids(indexer, "alpha", q, 1, [[], [], None, None, None])

        waiting = asyncio.ensure_future(indexer.caught_up(10.0))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        release.set()
        assert await waiting is True
        blocker.result(5)
        assert indexer.searchable_seq >= store.seq
        assert await search_ids(indexer, "alpha", q, 1, [[], [], None, None, None]) == ["fresh"]
        hits = await indexer.keyword("alpha", "alpha/fresh", 1, [[], [], None, None, None])
        assert [r.id for r, _ in hits] == ["fresh"]  # its text committed too
        assert not indexer._waiters  # the woken and the timed-out waiter both left
