"""Power loss under a real node (issue 14, item 6): nothing acknowledged is lost, LMDB opens.

The node's data directory lives on LazyFS (tests/powerloss/lazyfs.py), a FUSE layer that keeps
every write in memory until the file is fsynced. Each crash point: restart the layer with a
numbered sync point at which it freezes (counted once the node is up), restart the node, check
the history so far, drive writes (puts, overwrites, deletes; session and strong) from several
clients until the layer freezes, then pull the plug: SIGKILL the node and the layer, so whatever
was not synced is gone.
Crash points fall in LMDB's commits (the data file's fdatasync and the meta page's O_DSYNC
write), in the index snapshots (index files, manifests, CURRENT, directory fsyncs) or anywhere,
each frozen before or after the sync reaches the "disk". Directory entries (new files, renames,
unlinks) not made durable by an fsync of their directory are reverted too.

After every restart: every acknowledged write is there (for each key, the state is the result of
its last acknowledged operation or of one attempted after it), the node started (LMDB opened and
the index recovered), and the index agrees with LMDB (a search for every record of a namespace
finds exactly the ids a list of it returns). At the end LMDB is opened directly from the layer's
backing directory and walked in full.

A single node with replication n=1 (w=1, storage.sync: true) makes "acknowledged" mean "durable
on this node's disk". The default run takes a few crash points; the `slow` one takes 60.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import pytest

from spine.storage.lmdb_store import decode_record
from tests.harness.http_client import http_request
from tests.integration.cluster import LocalCluster
from tests.integration.conftest import ClusterFactory
from tests.powerloss.mount import LazyMount, ensure_fuse

pytestmark = [pytest.mark.integration]

CLIENTS = 3
OPS_PER_POINT = 150  # at most, per client; the crash usually comes first
POINT_SECONDS = 4.0  # the longest a crash point waits for the layer to freeze
ABSENT = None


@dataclass
class Op:
    """One client operation on a key: the state it leaves (content, or ABSENT for a delete)."""

    result: str | None
    acked: bool = False


@dataclass
class History:
    """Every operation attempted, per (namespace, id), in the order its one client sent them."""

    ops: dict[tuple[str, str], list[Op]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, key: tuple[str, str], op: Op) -> None:
        with self.lock:
            self.ops.setdefault(key, []).append(op)

    def allowed(self, key: tuple[str, str]) -> set[str | None]:
        """States the key may be in: from its last acknowledged operation on."""
        ops = self.ops[key]
        last = max((i for i, op in enumerate(ops) if op.acked), default=None)
        if last is None:
            return {ABSENT, *(op.result for op in ops)}
        return {op.result for op in ops[last:]}

    def acked_count(self) -> int:
        return sum(op.acked for ops in self.ops.values() for op in ops)


def client(port: int, ns: str, who: int, history: History, stop: threading.Event,
           rng: random.Random) -> None:
    """Puts new keys, overwrites a hot key, deletes keys it wrote; 2xx = acknowledged."""
    mine: list[str] = []
    hot = f"hot-{who}"
    for n in range(OPS_PER_POINT):
        if stop.is_set():
            return
        roll = rng.random()
        headers: dict[str, str] = {}
        body: dict[str, Any] | None
        if roll < 0.15 and mine:
            mid = mine.pop(rng.randrange(len(mine)))
            method, body, result = "DELETE", None, ABSENT
        else:
            mid = hot if roll < 0.35 else f"k{who}-{n}"
            result = f"{ns}/{mid} #{n} " + "x" * rng.randrange(10, 2000)
            method, body = "PUT", {"content": result}
            if rng.random() < 0.2:
                body["tags"] = ["critical"]  # strong
        op = Op(result)
        history.add((ns, mid), op)
        try:
            r = http_request(port, method, f"/v1/ns/{ns}/memories/{mid}", body, headers,
                             timeout=10)
        except OSError:
            continue  # the node died under it: outcome unknown
        if r.status in (200, 201):
            op.acked = True
            if method == "PUT" and mid != hot:
                mine.append(mid)
        elif method == "DELETE" and r.status == 404:
            op.acked = True  # absent either way


def check_history(c: LocalCluster, history: History) -> None:
    """Every key is in a state its acknowledged history allows."""
    bad: list[str] = []
    for key in list(history.ops):
        ns, mid = key
        r = c.read("n1", ns, mid)
        if r.status == 404:
            got: str | None = ABSENT
        else:
            assert r.status == 200, (key, r.status, r.body)
            got = r.json()["content"]
        if got not in history.allowed(key):
            ops = [(op.acked, (op.result or "<deleted>")[:30]) for op in history.ops[key][-4:]]
            bad.append(f"{ns}/{mid}: holds {(got or '<absent>')[:30]!r}, last ops {ops}")
    assert not bad, "acknowledged writes lost after power loss:\n" + "\n".join(bad[:20])


def listed_ids(c: LocalCluster, ns: str) -> set[str]:
    ids: set[str] = set()
    cursor = None
    while True:
        qs = "limit=1000" + (f"&cursor={cursor}" if cursor else "")
        r = c.http("n1", "GET", f"/v1/ns/{ns}/memories?{qs}")
        assert r.status == 200, (r.status, r.body)
        page = r.json()
        ids |= {item["id"] for item in page["items"]}
        cursor = page.get("next_cursor")
        if not cursor:
            return ids


def check_index(c: LocalCluster, namespaces: list[str]) -> None:
    """The index holds exactly LMDB's live records, namespace by namespace."""
    for ns in namespaces:
        want = listed_ids(c, ns)
        r = c.http("n1", "POST", f"/v1/ns/{ns}/search",
                   {"query": "power loss", "k": max(1, min(1000, len(want) + 5))})
        assert r.status == 200, (r.status, r.body)
        found = {hit["id"] for hit in r.json()["results"]}
        only_indexed, only_listed = sorted(found - want)[:5], sorted(want - found)[:5]
        assert found == want, (f"{ns}: index and LMDB disagree: only indexed {only_indexed},"
                               f" only in LMDB {only_listed}")


def walk_lmdb(path: Path) -> int:
    """Open LMDB where the layer keeps what survived and read every record; live ones."""
    env = lmdb.open(str(path), readonly=True, lock=False, max_dbs=8, subdir=True)
    live = 0
    try:
        records = env.open_db(b"records", create=False)
        with env.begin(db=records) as txn:
            for _, raw in txn.cursor():
                live += not decode_record(raw).deleted
    finally:
        env.close()
    return live


def pull_the_plug(c: LocalCluster, lazy: LazyMount) -> None:
    """SIGKILL the node and the layer. The kill is queued first: a process blocked in a FUSE
    request that the daemon has read dies only once the daemon does; nothing reaches the disk
    after the daemon is gone (a node that touches its mapping then dies of SIGBUS)."""
    proc = c.procs["n1"]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    lazy.cut()
    proc.wait(timeout=30)


@dataclass
class Point:
    crash_on: str
    crash_at: int
    mode: str


def plan(n: int, seed: int) -> list[Point]:
    """Crash points spread over LMDB commits, index snapshots and any sync, before and after."""
    rng = random.Random(seed)
    out: list[Point] = []
    for i in range(n):
        mode = ("before", "after")[(i // 3) % 2]
        if i % 3 == 0:
            out.append(Point("data.mdb", rng.randint(1, 60), mode))
        elif i % 3 == 1:
            out.append(Point("/index/", rng.randint(1, 14), mode))
        else:
            out.append(Point("", rng.randint(1, 90), mode))
    return out


@pytest.fixture
def lazy(tmp_path: Path) -> Iterator[LazyMount]:
    fusermount = ensure_fuse()
    m = LazyMount(tmp_path / "durable", tmp_path / "mnt", tmp_path, fusermount)
    try:
        yield m
    finally:
        m.close()


def run_points(make_cluster: ClusterFactory, lazy: LazyMount, points: list[Point],
               seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    history = History()
    namespaces: list[str] = []
    hits: dict[str, int] = {}
    durations: list[float] = []
    undone = 0  # directory entry operations power losses reverted
    c: LocalCluster | None = None
    for i, point in enumerate(points):
        began = time.monotonic()
        lazy.start(point.crash_at, point.crash_on, point.mode)
        if c is None:
            c = make_cluster(1, sync=True, storage={"path": str(lazy.mount)},
                             index={"persist_interval_s": 1})
        else:
            c.start("n1", wait_peers=False)
        check_history(c, history)
        check_index(c, namespaces)
        lazy.arm()  # the crash point counts from here: the node is up and checked
        ns = f"pl{i}"
        namespaces.append(ns)
        stop = threading.Event()
        threads = [threading.Thread(target=client, daemon=True,
                                    args=(c.port("n1"), ns, w, history, stop,
                                          random.Random(rng.random())))
                   for w in range(CLIENTS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + POINT_SECONDS
        line = None
        while time.monotonic() < deadline and any(t.is_alive() for t in threads):
            line = lazy.crash_line()
            if line is not None:
                break
            time.sleep(0.01)
        stop.set()
        pull_the_plug(c, lazy)
        undone += len(lazy.undone)
        for t in threads:
            t.join(timeout=30)
            assert not t.is_alive(), "a client hung after the node died"
        kind = "no freeze (killed mid-run)" if line is None else (
            f"{point.crash_on or 'any'}:{line.split()[2]}:{point.mode}")
        hits[kind] = hits.get(kind, 0) + 1
        durations.append(time.monotonic() - began)
    assert c is not None
    lazy.start()
    c.start("n1", wait_peers=False)
    check_history(c, history)
    check_index(c, namespaces)
    live = sum(len(listed_ids(c, ns)) for ns in namespaces)
    c.stop("n1")
    lazy.stop()
    assert walk_lmdb(lazy.backing / "n1" / "lmdb") == live
    return {"points": len(points), "acked": history.acked_count(), "live": live,
            "seconds_per_point": round(sum(durations) / len(durations), 2), "hits": hits,
            "entry_ops_reverted": undone}


@pytest.mark.timeout(300)
def test_power_loss_keeps_acknowledged_writes(
    make_cluster: ClusterFactory, lazy: LazyMount
) -> None:
    seed = 1401
    stats = run_points(make_cluster, lazy, plan(4, seed), seed)
    print("power loss:", json.dumps(stats))
    assert stats["acked"] > 0


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_power_loss_at_sixty_crash_points(
    make_cluster: ClusterFactory, lazy: LazyMount
) -> None:
    seed = 14060
    stats = run_points(make_cluster, lazy, plan(60, seed), seed)
    print("power loss:", json.dumps(stats))
    froze = sum(v for k, v in stats["hits"].items() if not k.startswith("no freeze"))
    assert froze >= 50, f"only {froze} of 60 crash points were reached: {stats['hits']}"
