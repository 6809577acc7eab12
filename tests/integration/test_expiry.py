"""Expiry end to end on a real 3-node cluster (DESIGN §13): an expired memory disappears at every
node within a second of its `expires_at`, at every consistency level and from listings, and a
replica that was down while it was swept into a tombstone does not bring it back."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest

from tests.integration.cluster import LocalCluster
from tests.integration.conftest import WEAK_OK, ClusterFactory

pytestmark = pytest.mark.integration

NODES = ("n1", "n2", "n3")
LEVELS = ("eventual", "session", "strong")
# A fast sweep, so the test does not wait for the default one-second cadence to come round.
EXPIRY: dict[str, Any] = {**WEAK_OK, "lifecycle": {"sweep_interval_ms": 200}}


def epoch_s(rfc3339: str) -> float:
    return dt.datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def listed(c: LocalCluster, node: str, ns: str) -> set[str]:
    r = c.http(node, "GET", f"/v1/ns/{ns}/memories?limit=100")
    assert r.status == 200, r.body
    return {item["id"] for item in r.json()["items"]}


def reads(c: LocalCluster, node: str, ns: str, mid: str, token: str) -> dict[str, int]:
    """The status of a GET of `mid` through `node` at each level, and with the session token."""
    out = {level: c.read(node, ns, mid, level).status for level in LEVELS}
    out["session+token"] = c.read(node, ns, mid, "session", session=token).status
    return out


def write(c: LocalCluster, node: str, ns: str, mid: str, ttl_s: int) -> tuple[dict[str, Any],
                                                                             str]:
    w = c.http(node, "PUT", f"/v1/ns/{ns}/memories/{mid}",
               {"content": f"{mid} lives {ttl_s} s", "ttl_s": ttl_s},
               {"Spine-Consistency": "session"})
    assert w.status == 201, w.body
    rec: dict[str, Any] = w.json()
    return rec, w.headers["Spine-Session"]


@pytest.mark.timeout(120)
def test_an_expired_memory_is_gone_at_every_node_within_a_second_of_expires_at(
    shared_cluster: LocalCluster,
) -> None:
    c = shared_cluster  # hiding needs no sweep: each node judges on its own clock
    ns = "expiry-visible"
    rec, token = write(c, "n1", ns, "m1", ttl_s=5)
    expires = epoch_s(rec["expires_at"])
    assert expires == pytest.approx(epoch_s(rec["updated_at"]) + 5, abs=0.002)
    # A memory with no TTL beside it, which must stay.
    keep = c.http("n1", "PUT", f"/v1/ns/{ns}/memories/keep", {"content": "forever"})
    assert keep.status == 201 and keep.json()["expires_at"] is None, keep.body

    # Before expiry, every node answers it, at every level (the eventual read once it landed).
    c.wait_until(lambda: all(c.local_record(n, ns, "m1") is not None for n in NODES), 2,
                 message="m1 on every replica")
    seen = {n: reads(c, n, ns, "m1", token) for n in NODES}
    if time.time() < expires - 0.2:  # a loaded box may get here late: then nothing to say
        assert all(s == 200 for n in NODES for s in seen[n].values()), seen
        assert all("m1" in listed(c, n, ns) for n in NODES)

    # From expires_at on, every node hides it. Each node's own replica (an eventual read, R=1)
    # is polled, with a deadline a second past expires_at: the read answered 404 by then.
    gone_at: dict[str, float] = {}

    def all_gone() -> bool:
        for n in NODES:
            if n not in gone_at:
                status = c.read(n, ns, "m1", "eventual").status
                assert status in (200, 404), status  # never a 503 or 500
                if status == 404:
                    gone_at[n] = time.time()
        return len(gone_at) == len(NODES)

    c.wait_until(all_gone, max(0.1, expires + 1.0 - time.time()), 0.02,
                 lambda: f"m1 hidden everywhere by expires_at + 1 s; hidden at {gone_at}")
    assert all(t <= expires + 1.0 for t in gone_at.values()), (expires, gone_at)
    assert all(t >= expires - 0.1 for t in gone_at.values()), (expires, gone_at)  # not early
    # Hidden for good: every level, every node, the writer's token too (404, not 503).
    for n in NODES:
        assert set(reads(c, n, ns, "m1", token).values()) == {404}
        assert listed(c, n, ns) == {"keep"}
    # A new write to the key is a new memory (201), with no expiry unless it asks for one.
    again = c.http("n2", "PUT", f"/v1/ns/{ns}/memories/m1", {"content": "back"})
    assert again.status == 201, again.body
    assert again.json()["expires_at"] is None


@pytest.mark.timeout(60)
def test_ttl_s_on_every_write_path_and_bad_values_named(shared_cluster: LocalCluster) -> None:
    c = shared_cluster
    ns = "expiry-paths"
    made = c.http("n1", "POST", f"/v1/ns/{ns}/memories", {"content": "minted", "ttl_s": 600})
    assert made.status == 201, made.body
    rec = made.json()
    assert epoch_s(rec["expires_at"]) == pytest.approx(epoch_s(rec["updated_at"]) + 600,
                                                       abs=0.002)
    b = c.http("n2", "POST", f"/v1/ns/{ns}/memories/_batch", {"items": [
        {"id": "b1", "content": "one", "ttl_s": 60}, {"id": "b2", "content": "two"}]})
    assert b.status == 200 and [r["status"] for r in b.json()["results"]] == [201, 201], b.body
    got = {i: c.read("n3", ns, i, "strong").json() for i in ("b1", "b2")}
    assert got["b1"]["expires_at"] is not None and got["b2"]["expires_at"] is None
    for bad in (0, -3, 1.5, "60", True, 10**12):
        r = c.http("n1", "PUT", f"/v1/ns/{ns}/memories/x", {"content": "x", "ttl_s": bad})
        assert r.status == 400 and r.error()["field"] == "ttl_s", (bad, r.body)
    r = c.http("n1", "POST", f"/v1/ns/{ns}/memories/_batch", {"items": [
        {"id": "ok", "content": "fine"}, {"id": "no", "content": "x", "ttl_s": 0}]})
    assert r.status == 400 and r.error()["field"] == "items[1].ttl_s", r.body
    r = c.http("n1", "POST", f"/v1/ns/{ns}/memories/_batch", {"items": [
        {"id": "gone", "delete": True, "ttl_s": 5}]})
    assert r.status == 400 and r.error()["field"] == "items[0]", r.body  # deletes carry none


@pytest.mark.timeout(180)
def test_a_replica_down_across_the_sweep_does_not_resurrect_the_memory(
    make_cluster: ClusterFactory,
) -> None:
    c = make_cluster(**EXPIRY)
    ns = "expiry-returning"
    rec, token = write(c, "n1", ns, "m1", ttl_s=2)
    c.wait_until(lambda: all(c.local_record(n, ns, "m1") is not None for n in NODES), 10,
                 message="m1 on every replica")

    c.stop("n3")  # n3 keeps the live (soon expired) version on disk and misses the sweep
    sweepers = ("n1", "n2")

    def swept() -> bool:
        h = c.http("n1", "GET", f"/v1/ns/{ns}/memories/m1/history")
        return (h.status == 200 and h.json()["versions"][0]["deleted"] is True
                and sum(c.metric(n, "spine_expiry_swept_total") for n in sweepers) >= 1)

    # expiry (2 s) + the sweep's margin (write timeout + max offset: 2.5 s) + a few ticks
    c.wait_until(swept, 30, 0.2, "m1 to be swept into a tombstone by n1 or n2")
    tomb = c.http("n1", "GET", f"/v1/ns/{ns}/memories/m1/history").json()["versions"][0]
    assert tomb["version"] > rec["version"]  # versions order like (hlc, node) as strings

    c.start("n3")  # back with the expired version: it must hide it, and never spread it
    for n in NODES:
        statuses = reads(c, n, ns, "m1", token)
        assert set(statuses.values()) == {404}, (n, statuses)
        assert "m1" not in listed(c, n, ns), n
    # Once the hints for n3 are replayed, n3 holds the tombstone; still gone everywhere.
    c.wait_until(lambda: sum(c.metric(n, "spine_hints_pending", target="n3")
                             for n in sweepers) == 0, 30, 0.2, "hints for n3 to be replayed")
    for n in NODES:
        statuses = reads(c, n, ns, "m1", token)
        assert set(statuses.values()) == {404}, (n, statuses)
        assert "m1" not in listed(c, n, ns), n
    versions = c.http("n3", "GET", f"/v1/ns/{ns}/memories/m1/history").json()["versions"]
    assert versions[0]["version"] == tomb["version"] and versions[0]["deleted"] is True
