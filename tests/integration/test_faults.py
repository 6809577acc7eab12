"""Crashes, restarts and hinted handoff on real processes and real LMDB (DESIGN §4–§6)."""

from __future__ import annotations

import signal
import statistics
import time
from typing import Any

import pytest

from spine.client import SpineHTTPError
from tests.integration.cluster import LocalCluster
from tests.integration.conftest import WEAK_OK, ClusterFactory

pytestmark = pytest.mark.integration

NODES = ("n1", "n2", "n3")


def _put(c: LocalCluster, node: str, ns: str, mid: str, content: str, level: str) -> Any:
    return c.http(node, "PUT", f"/v1/ns/{ns}/memories/{mid}", {"content": content},
                  {"Spine-Consistency": level})


def _missing_on(c: LocalCluster, node: str, ns: str, expected: dict[str, str]) -> list[str]:
    """Keys whose content `node` does not itself hold (R=1 reads on that node)."""
    missing = []
    for mid, content in expected.items():
        rec = c.local_record(node, ns, mid)
        if rec is None or rec["content"] != content:
            missing.append(mid)
    return missing


@pytest.mark.timeout(120)
def test_one_node_down_then_two_then_hints_bring_back_every_acknowledged_key(
    make_cluster: ClusterFactory,
) -> None:
    # allow_weaker: the eventual header must mean W=1 and, for the checks, R=1 on one replica.
    c = make_cluster(**WEAK_OK)
    ns = "faults-hints"
    acked: dict[str, str] = {}

    # Keys every replica holds before anything fails; some get deleted while n3 is down.
    doomed = [f"doomed-{i}" for i in range(5)]
    for mid in doomed:
        c.client(["n1"]).put(ns, mid, "to be deleted")
    for node in NODES:
        c.wait_until(lambda node=node: all(c.local_record(node, ns, m) for m in doomed), 10,
                     message=f"the doomed keys on {node}")

    # ---- one of three killed: session and strong still work through the other two (W=2).
    c.kill("n3")
    for i, mid in enumerate(doomed):
        r = c.http(("n1", "n2")[i % 2], "DELETE", f"/v1/ns/{ns}/memories/{mid}")
        assert r.status == 200, r.body
    for level in ("session", "strong"):
        client = c.client(["n1", "n2"], consistency=level)
        for i in range(15):
            mid = f"{level}-{i}"
            client.put(ns, mid, f"{level} {i}")
            acked[mid] = f"{level} {i}"
        for i in range(15):
            mid = f"{level}-{i}"
            assert client.get(ns, mid)["content"] == acked[mid]
    # No token: quorum reads through the survivors see everything.
    for i, (mid, content) in enumerate(acked.items()):
        r = c.read(("n1", "n2")[i % 2], ns, mid, "session")
        assert r.status == 200 and r.json()["content"] == content, (mid, r.body)
    assert sum(c.metric(n, "spine_hints_pending", target="n3") for n in ("n1", "n2")) > 0

    # ---- two of three killed: session writes are refused, eventual writes still land.
    c.kill("n2")
    c.wait_until(lambda: c.http("n1", "GET", "/readyz").status == 503, 10,
                 message="n1 to report itself not ready")
    ready = c.http("n1", "GET", "/readyz")
    assert ready.error()["code"] == "quorum_unavailable"
    batch = c.http("n1", "POST", f"/v1/ns/{ns}/memories/_batch",
                   {"items": [{"id": "refused-b1", "content": "x"}, {"id": "doomed-0",
                                                                    "delete": True}]},
                   {"Spine-Consistency": "session"})
    assert batch.status == 200, batch.body
    for item in batch.json()["results"]:
        assert item["status"] == 503 and item["error"]["code"] == "quorum_unavailable", item
    r = _put(c, "n1", ns, "refused", "no quorum", "session")
    assert r.status == 503, r.body
    err = r.error()
    assert err["code"] == "quorum_unavailable"
    assert err["reached"] == 1 and err["needed"] == 2, err
    assert r.headers.get("Retry-After")
    r = _put(c, "n1", ns, "refused-strong", "no quorum", "strong")
    assert r.status == 503 and r.error()["code"] == "quorum_unavailable", r.body
    assert c.metric("n1", "spine_quorum_failures_total", op="write") >= 2
    for i in range(30):
        mid = f"eventual-{i}"
        r = _put(c, "n1", ns, mid, f"eventual {i}", "eventual")
        assert r.status == 201, r.body
        acked[mid] = f"eventual {i}"
    # A session read without a token needs a quorum too.
    r = c.read("n1", ns, "session-0", "session")
    assert r.status == 503 and r.error()["code"] == "quorum_unavailable", r.body

    # ---- both come back: hints deliver every acknowledged key to every replica.
    c.start("n2", wait_peers=False)
    c.start("n3")
    for node in NODES:
        c.wait_until(lambda node=node: not _missing_on(c, node, ns, acked), 30,
                     message=lambda node=node: f"hinted keys on {node}; missing "
                     f"{_missing_on(c, node, ns, acked)[:10]}")
    c.wait_until(lambda: all(c.metric(n, "spine_hints_pending") == 0 for n in NODES), 30,
                 message="every hint to be delivered")
    assert sum(c.metric(n, "spine_hints_delivered_total") for n in NODES) >= len(acked) // 2
    # The deletes reached n3 as tombstones: nothing it held comes back.
    for node in NODES:
        assert [m for m in doomed if c.local_record(node, ns, m) is not None] == [], node
        assert c.http(node, "GET", "/readyz").status == 200
    listed = c.http("n3", "GET", f"/v1/ns/{ns}/memories?limit=1000").json()["items"]
    ids = {x["id"] for x in listed}
    assert set(acked) <= ids
    # Refused writes are indeterminate (they may have landed); the deleted keys stay deleted.
    assert ids - set(acked) <= {"refused", "refused-strong", "refused-b1"}, ids - set(acked)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_restarted_node_keeps_what_it_acknowledged(
    make_cluster: ClusterFactory, how: signal.Signals
) -> None:
    c = make_cluster(sync=True, **WEAK_OK)
    ns = f"faults-restart-{how.name.lower()}"
    client = c.client(["n1"])
    expected = {f"k{i}": f"value {i}" for i in range(60)}
    for mid, content in expected.items():
        client.put(ns, mid, content)
    client.delete(ns, "k0")
    del expected["k0"]
    # Everything has reached n2 (the writes go to all three replicas in parallel).
    c.wait_until(lambda: not _missing_on(c, "n2", ns, expected)
                 and c.local_record("n2", ns, "k0") is None, 20, message="n2 to hold every key")
    code = c.stop("n2") if how is signal.SIGTERM else c.kill("n2")
    assert code == (0 if how is signal.SIGTERM else -signal.SIGKILL), code
    c.start("n2")
    # At once, not eventually: nothing else would restore these keys on n2 (no hints exist,
    # and R=1 reads do not repair).
    assert _missing_on(c, "n2", ns, expected) == []
    assert c.local_record("n2", ns, "k0") is None
    assert all(c.metric(n, "spine_hints_pending") == 0 for n in NODES)
    # Its history and HLC survived too: a new write through it is newer than everything.
    before = c.local_record("n2", ns, "k1")
    assert before is not None
    after = c.client(["n2"]).put(ns, "k1", "after restart")
    assert after["version"] > before["version"]
    assert after["created_at"] == before["created_at"]


@pytest.mark.timeout(150)
def test_every_acknowledged_write_survives_kill_9_of_the_whole_cluster(
    make_cluster: ClusterFactory,
) -> None:
    c = make_cluster(sync=True, **WEAK_OK)
    ns = "faults-durable"
    client = c.client()
    expected: dict[str, str] = {}
    for i in range(200):
        mid = f"d{i:03d}"
        client.put(ns, mid, f"durable {i}")  # session level: 2 of 3 replicas fsynced
        expected[mid] = f"durable {i}"
    for node in NODES:
        c.kill(node)
    for node in NODES:
        c.start(node, wait_peers=False)
    c.wait_peers_alive()
    # Each acknowledged write was committed on at least W=2 replicas before the reply.
    holders: dict[str, int] = dict.fromkeys(expected, 0)
    for node in NODES:
        for mid in expected:
            rec = c.local_record(node, ns, mid)
            if rec is not None:
                assert rec["content"] == expected[mid]
                holders[mid] += 1
    assert [m for m, n in holders.items() if n < 2] == []
    # And a quorum read (no token) of every key, through every node, finds it.
    for i, (mid, content) in enumerate(expected.items()):
        r = c.read(NODES[i % 3], ns, mid, "session")
        assert r.status == 200 and r.json()["content"] == content, (mid, r.body)


@pytest.mark.timeout(60)
def test_reads_fail_cleanly_when_no_replica_answers_a_session_token(
    make_cluster: ClusterFactory,
) -> None:
    # A token names a version only n1 holds (written at W=1 while n2, n3 were down); with n1
    # gone, the other replicas cannot satisfy it: 503 session_unavailable, never stale data.
    c = make_cluster(**WEAK_OK, handoff={"enabled": False})
    ns = "faults-token"
    writer = c.client(["n1"])
    writer.put(ns, "k", "old")
    c.kill("n2")
    c.kill("n3")
    r = c.http("n1", "PUT", f"/v1/ns/{ns}/memories/k", {"content": "new"},
               {"Spine-Consistency": "eventual", "Spine-Session": writer.session or ""})
    assert r.status == 200, r.body
    token = r.headers["Spine-Session"]
    c.start("n2", wait_peers=False)
    c.start("n3", wait_peers=False)
    c.kill("n1")
    c.wait_peers_alive()
    for node in ("n2", "n3"):
        r = c.read(node, ns, "k", "session", session=token)
        assert r.status == 503, (node, r.body)
        assert r.error()["code"] == "session_unavailable"
        assert r.headers.get("Retry-After")
    with pytest.raises(SpineHTTPError):
        c.client(["n2"], session=token).get(ns, "k")


@pytest.mark.timeout(60)
def test_overwrite_through_a_replica_that_missed_the_first_write(
    make_cluster: ClusterFactory,
) -> None:
    # n3 misses a write (down, and hinted handoff is off), comes back, and then coordinates an
    # overwrite from the same client, whose token carries the first version. The key exists:
    # the answer must be 200, and created_at must not move.
    c = make_cluster(handoff={"enabled": False})
    ns = "faults-stale-coordinator"
    c.kill("n3")
    client = c.client(["n1"])
    first = client.put(ns, "k", "first")
    c.start("n3")
    r = c.http("n3", "PUT", f"/v1/ns/{ns}/memories/k", {"content": "second"},
               {"Spine-Session": client.session or ""})
    assert r.status == 200, r.body
    assert r.json()["created_at"] == first["created_at"]


@pytest.mark.timeout(60)
def test_a_quorum_read_repairs_a_replica_that_missed_writes(make_cluster: ClusterFactory) -> None:
    # Hinted handoff and anti-entropy off: only read repair can bring n3 up to date. (With
    # anti-entropy on, a round right after n3's restart could repair a shard before the first
    # check below: seen once in CI, m4 already on n3.)
    c = make_cluster(**WEAK_OK, handoff={"enabled": False}, antientropy={"enabled": False})
    ns = "faults-read-repair"
    c.client(["n1"]).put(ns, "k", "v1")
    # Acknowledged by a quorum; the third copy may still be on its way to n3.
    c.wait_until(lambda: c.local_record("n3", ns, "k") is not None, 10,
                 message="v1 to reach n3")
    c.kill("n3")
    expected = {f"m{i}": f"missed {i}" for i in range(10)}
    client = c.client(["n1", "n2"])
    for mid, content in expected.items():
        client.put(ns, mid, content)
    client.put(ns, "k", "v2")
    c.start("n3")
    assert sorted(_missing_on(c, "n3", ns, {**expected, "k": "v2"})) == sorted([*expected, "k"])
    assert c.local_record("n3", ns, "k")["content"] == "v1"  # type: ignore[index]
    before = c.metric("n3", "spine_read_repairs_total")
    # No token: quorum reads, coordinated by the stale replica. (A client carrying a token
    # would read keys the token does not name at R=1, from n3 alone: DESIGN §4.)
    for mid, content in {**expected, "k": "v2"}.items():
        r = c.read("n3", ns, mid, "session")
        assert r.status == 200 and r.json()["content"] == content, (mid, r.body)
    c.wait_until(lambda: not _missing_on(c, "n3", ns, {**expected, "k": "v2"}), 10,
                 message="read repair to reach n3")
    assert c.metric("n3", "spine_read_repairs_total") >= before + len(expected) + 1


@pytest.mark.timeout(90)
def test_a_paused_replica_does_not_hold_up_quorum_operations(
    make_cluster: ClusterFactory,
) -> None:
    c = make_cluster(**WEAK_OK)
    ns = "faults-pause"
    c.pause("n3")  # its sockets stay open: calls to it hang until timeouts.rpc_ms (2 s)
    expected: dict[str, str] = {}
    took: list[float] = []
    for level in ("session", "strong"):
        client = c.client(["n1", "n2"], consistency=level)
        for i in range(10):
            mid = f"{level}-{i}"
            started = time.monotonic()
            client.put(ns, mid, f"{level} {i}")
            expected[mid] = f"{level} {i}"
            assert client.get(ns, mid)["content"] == expected[mid]
            took.append(time.monotonic() - started)
    # A quorum of two answers at once; nothing waits for the silent third.
    assert statistics.median(took) < 1.0, took
    c.resume("n3")
    c.wait_peers_alive()
    # Whatever was in flight to n3 when it stopped, or hinted after the RPCs timed out, lands.
    c.wait_until(lambda: not _missing_on(c, "n3", ns, expected), 30,
                 message=lambda: f"n3 to catch up; missing {_missing_on(c, 'n3', ns, expected)}")
    c.wait_until(lambda: all(c.metric(n, "spine_hints_pending") == 0 for n in NODES), 30,
                 message="every hint to be delivered")


@pytest.mark.timeout(90)
def test_hints_survive_a_crash_of_the_node_that_keeps_them(make_cluster: ClusterFactory) -> None:
    c = make_cluster(sync=True, **WEAK_OK)
    ns = "faults-hint-crash"
    c.kill("n3")
    client = c.client(["n1"])  # n1 coordinates: the hints for n3 are kept on n1 alone
    expected = {f"h{i}": f"hinted {i}" for i in range(40)}
    for mid, content in expected.items():
        client.put(ns, mid, content)
    pending = c.metric("n1", "spine_hints_pending", target="n3")
    assert pending >= len(expected), pending
    c.kill("n1")
    c.start("n3", wait_peers=False)
    # Only n1's hints can bring these to n3 (R=1 reads do not repair).
    assert sorted(_missing_on(c, "n3", ns, expected)) == sorted(expected)
    c.start("n1")
    c.wait_until(lambda: not _missing_on(c, "n3", ns, expected), 30,
                 message=lambda: f"n1's hints to reach n3; missing "
                 f"{_missing_on(c, 'n3', ns, expected)[:10]}")
    c.wait_until(lambda: c.metric("n1", "spine_hints_pending") == 0, 30,
                 message="n1's hints to be delivered and dropped")
