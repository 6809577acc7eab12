"""Ring changes on real processes (DESIGN §9): join, decommission and remove under load.

Each test writes through every node while the ring changes, keeps what was acknowledged, and
afterwards reads every acknowledged key back at `strong` level. The share of replica copies that
moved is measured from the nodes' own counters and compared with the ideal: adding a 4th node to
3 with N=3 moves 1/4 of the copies, and taking it out again moves the same amount back.

Most of the time goes on the read-back (a strong read costs the nodes a few milliseconds of
CPU, and every acknowledged key is read, some twice), so the writers are paced: at 100 keys a
second several hundred writes, over most of the 256 shards, land while a change is under way,
without thousands of acknowledged keys to read back (unpaced, a writer acknowledged ~400 a
second and the join test spent 77 of its 100 s reading). The rings sync every 100 ms, so a
change settles in little more than the claimant's wait for in-flight writes (write + RPC
timeout, 4 s).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from spine.client import Client, SpineHTTPError

from .cluster import LocalCluster

pytestmark = pytest.mark.integration

NS = "ring"
DROP_GRACE_S = 2
SETTLE_TIMEOUT = 90.0
RING: dict[str, Any] = {"ring": {"drop_grace_s": DROP_GRACE_S, "sync_interval_ms": 100}}
WRITE_RATE = 100.0  # keys a second each Writer puts, at most (in batches of 10)
READERS = 4  # concurrent strong reads in `check_all_readable`


class Writer:
    """Session-level puts of fresh keys through every node in turn, on a thread, until
    stopped, at most `rate` keys a second; remembers each acknowledged key and its content."""

    def __init__(self, cluster: LocalCluster, prefix: str, rate: float = WRITE_RATE) -> None:
        self.client = Client([cluster.url(n) for n in cluster.names], timeout=10.0)
        self.prefix = prefix
        self.period = 10 / rate  # seconds per batch of 10
        self.acked: dict[str, str] = {}
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "the writer thread did not stop"
        self.client.close()

    def _run(self) -> None:
        i = 0
        due = time.monotonic()
        # Pacing, not synchronisation: the wait ends at once when the writer is stopped. A
        # batch that took longer than its period is not made up for with a burst.
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            due = max(due + self.period, time.monotonic())
            items = [{"id": f"{self.prefix}-{i + j}", "content": f"{self.prefix} {i + j}"}
                     for j in range(10)]
            i += 10
            try:
                reply = self.client.batch(NS, items)
            except (SpineHTTPError, OSError):
                self.failed += len(items)
                continue
            for item, res in zip(items, reply["results"], strict=True):
                if res.get("status") in (200, 201):
                    self.acked[item["id"]] = item["content"]
                else:
                    self.failed += 1


def preload(cluster: LocalCluster, count: int) -> dict[str, str]:
    client = cluster.client()
    out: dict[str, str] = {}
    for start in range(0, count, 500):
        items = [{"id": f"pre-{i}", "content": f"preloaded {i}"}
                 for i in range(start, min(count, start + 500))]
        reply = client.batch(NS, items)
        for item, res in zip(items, reply["results"], strict=True):
            assert res["status"] in (200, 201), res
            out[item["id"]] = item["content"]
    return out


def wait_settled(cluster: LocalCluster, nodes: list[str], expect: dict[str, str]) -> None:
    """Until every node in `nodes` has the same ring map, no change is under way, and the
    members' states are `expect`."""
    seen: dict[str, Any] = {}

    def settled() -> bool:
        views = {n: cluster.http(n, "GET", "/v1/cluster/shards").json()["ring"] for n in nodes}
        seen.update(views)
        digests = {v["digest"] for v in views.values()}
        if len(digests) != 1 or any(v["changing"] for v in views.values()):
            return False
        members = {m["id"]: m["state"] for m in cluster.cluster_view(nodes[0])["members"]}
        seen["members"] = members
        return all(members.get(k) == v for k, v in expect.items())

    cluster.wait_until(settled, SETTLE_TIMEOUT, 0.25, lambda: f"the ring to settle: {seen}")


def check_all_readable(cluster: LocalCluster, acked: dict[str, str], via: list[str]) -> None:
    """Every key in `acked` reads back with its content at `strong` level through `via`
    (`READERS` reads at a time)."""
    client = Client([cluster.url(n) for n in via], consistency="strong", timeout=10.0)
    missing: list[str] = []
    wrong: list[str] = []

    def check(mid: str, content: str) -> None:
        try:
            rec = client.get(NS, mid)
        except SpineHTTPError as e:
            if e.status == 404:
                missing.append(mid)
                return
            raise
        if rec["content"] != content:
            wrong.append(mid)

    with client, ThreadPoolExecutor(READERS) as pool:
        for done in [pool.submit(check, mid, content) for mid, content in acked.items()]:
            done.result()
    assert not missing and not wrong, (
        f"{len(missing)} acknowledged keys missing (e.g. {missing[:5]}),"
        f" {len(wrong)} with other content (e.g. {wrong[:5]}) of {len(acked)}")


def spine_cli(cluster: LocalCluster, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run the `spine` CLI against n1."""
    return subprocess.run(
        [sys.executable, "-m", "spine", *argv, "--url", cluster.url("n1")],
        capture_output=True, text=True, timeout=SETTLE_TIMEOUT + 30, check=False,
    )


def stored(cluster: LocalCluster, name: str) -> float:
    return cluster.metric(name, "spine_records_stored")


def moved_ratio(moved: float, total_copies: float) -> float:
    """Moved copies as a multiple of the ideal 1/4 of all copies."""
    return (moved / total_copies) / 0.25


def test_join_then_decommission_under_session_writes(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, 3, spare=1, **RING) as c:
        acked = preload(c, 600)
        with Writer(c, "join") as w:
            c.wait_until(lambda: len(w.acked) >= 100, 30, 0.1, "writes before the join")
            n4 = c.add_node()
            wait_settled(c, c.names, {"n1": "active", "n2": "active", "n3": "active",
                                      n4: "active"})
            c.wait_until(lambda: len(w.acked) >= 300 + 100, 60, 0.1, "writes after the join")
        acked.update(w.acked)
        assert len(w.acked) >= 300

        # The old owners drop what moved once the grace has passed: then every copy is where
        # the 4-node ring puts it, and n4 holds what moved to it.
        def dropped_everywhere() -> bool:
            return sum(stored(c, n) for n in c.names) <= 3 * len(acked)

        c.wait_until(dropped_everywhere, 30, 0.25,
                     lambda: f"drops: {[stored(c, n) for n in c.names]} vs {3 * len(acked)}")
        total = 3 * len(acked)
        ratio = moved_ratio(stored(c, n4), total)
        assert 0.8 <= ratio <= 1.3, f"n4 holds {stored(c, n4)} of {total} copies: {ratio:.2f}×"
        dropped = sum(c.metric(n, "spine_transfer_dropped_records_total") for n in c.names[:3])
        assert 0.8 <= moved_ratio(dropped, total) <= 1.3, dropped
        check_all_readable(c, acked, c.names)
        status = spine_cli(c, "status")
        assert status.returncode == 0, status.stderr
        rows = [ln.split() for ln in status.stdout.splitlines() if ln[:2] in ("UN", "DN")]
        assert [r[1] for r in rows] == ["n1", "n2", "n3", n4], status.stdout
        owns = [float(r[4].rstrip("%")) for r in rows]  # N=3 over 4 nodes: 75% each, roughly
        assert sum(owns) == pytest.approx(300.0, abs=0.5) and all(55 <= o <= 95 for o in owns), owns

        # And back to three, under writes again. What moves is what n4 holds now; writes made
        # while it leaves go to the new owners directly (as pending owners) and do not count.
        before = 3 * len(acked)
        with Writer(c, "leave") as w2:
            c.wait_until(lambda: len(w2.acked) >= 100, 30, 0.1, "writes before decommission")
            # The operator's way: `spine admin` asks, then follows the transfers to the end.
            done = spine_cli(c, "admin", "decommission", n4, "--timeout", str(SETTLE_TIMEOUT))
            assert done.returncode == 0, done.stderr
            assert '"state": "leaving"' in done.stderr and f"{n4} is left" in done.stderr
            assert "shards" in done.stderr  # the progress bar
            wait_settled(c, c.names, {"n1": "active", "n2": "active", "n3": "active",
                                      n4: "left"})
            c.wait_until(lambda: len(w2.acked) >= 300, 60, 0.1, "writes after decommission")
        acked.update(w2.acked)
        c.wait_until(lambda: stored(c, n4) == 0, 30, 0.25, "n4 to drop everything")
        # A node that left takes no client traffic: /readyz drains it from a balancer, and a
        # client that still reaches it is told to go to a member (not served from the past).
        ready = c.http(n4, "GET", "/readyz")
        assert ready.status == 503 and "left the ring" in ready.error()["message"], ready.body
        put = c.http(n4, "PUT", f"/v1/ns/{NS}/memories/after-leaving", {"content": "x"})
        assert put.status == 503 and put.error()["code"] == "not_serving", put.body
        pulled = sum(c.metric(n, "spine_transfer_records_total") for n in c.names[:3])
        assert 0.8 <= moved_ratio(pulled, before) <= 1.3, (pulled, before)
        for n in c.names[:3]:
            assert stored(c, n) >= len(acked)  # N=3 on 3 nodes: each holds every key
        check_all_readable(c, acked, c.names[:3])


def test_remove_a_dead_node_re_replicates_its_shards(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, 4, **RING) as c:
        acked = preload(c, 600)
        c.kill("n4")
        live = ["n1", "n2", "n3"]
        c.wait_until(lambda: not c.cluster_view("n1")["members"][3]["alive"], 30, 0.1,
                     "n1 to see n4 down")
        with Writer(c, "rm") as w:
            r = c.http("n1", "POST", "/v1/cluster/nodes/n4/remove")
            assert r.status == 202, r.body
            wait_settled(c, live, {"n1": "active", "n2": "active", "n3": "active",
                                   "n4": "left"})
            c.wait_until(lambda: len(w.acked) >= 200, 60, 0.1, "writes during the removal")
        acked.update(w.acked)
        for n in live:  # the map says n4 was removed (so no change waits for it, ever)
            members = {m["id"]: m for m in c.cluster_view(n)["members"]}
            assert members["n4"]["removed"] and not members["n1"]["removed"]
        # Writes made while n4 was down left hints for it; once it has left the ring they go
        # to the records' owners instead of waiting for it forever.
        assert sum(c.metric(n, "spine_hints_written_total") for n in live) > 0
        c.wait_until(lambda: sum(c.metric(n, "spine_hints_pending", target="n4")
                                 for n in live) == 0, 30, 0.25, "hints for n4 to drain")
        # Every surviving node is now a replica of every shard (N=3 on 3 nodes) and holds it.
        for n in live:
            c.wait_until(lambda n=n: stored(c, n) >= len(acked), 30, 0.25,
                         f"{n} to hold every key")
        check_all_readable(c, acked, live)


def test_ring_change_requests_are_checked(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, 3) as c:
        r = c.http("n1", "POST", "/v1/cluster/nodes/n3/decommission")
        assert r.status == 409 and r.error()["field"] == "node", r.body  # 2 nodes for N=3
        r = c.http("n1", "POST", "/v1/cluster/nodes/n2/remove")
        assert r.status == 409 and "alive" in r.error()["message"], r.body
        r = c.http("n1", "POST", "/v1/cluster/nodes/n9/decommission")
        assert r.status == 404 and r.error()["field"] == "node", r.body
        r = c.http("n1", "POST", "/v1/cluster/nodes/n2/explode")
        assert r.status == 400 and r.error()["field"] == "action", r.body
        r = c.http("n1", "POST", "/v1/cluster/nodes/n2/join")
        assert r.status == 400 and r.error()["field"] == "node", r.body
        view = c.http("n1", "GET", "/v1/cluster/shards").json()
        assert not view["ring"]["changing"]
        assert all(s["pending"] == [] for s in view["shards"])
