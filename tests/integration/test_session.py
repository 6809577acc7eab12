"""Session guarantees across nodes behind a non-sticky balancer, and per-tag levels (DESIGN §4)."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from spine.client import Client, SpineHTTPError
from spine.core.session import SessionToken
from tests.integration.cluster import LocalCluster
from tests.integration.conftest import WEAK_OK, ClusterFactory

pytestmark = pytest.mark.integration

NODES = ("n1", "n2", "n3")
ROUTE = "/v1/ns/{ns}/memories/{id}"  # PUT and GET share it


@pytest.mark.timeout(120)
def test_read_your_writes_across_nodes_with_the_token(cluster: LocalCluster) -> None:
    # One client, round-robin over all three nodes: each overwrite goes to one node and the
    # read that follows to the next, so a read never lands where the write was coordinated.
    client = cluster.client()
    assert client.session is None
    stale: list[tuple[int, str]] = []
    for i in range(200):
        mid = f"k{i % 5}"  # a few keys, overwritten again and again
        written = client.put("sess-ryw", mid, f"value {i}")
        writer = client.last_coordinator
        got = client.get("sess-ryw", mid)
        assert client.last_coordinator != writer
        if got["content"] != f"value {i}" or got["version"] != written["version"]:
            stale.append((i, got["content"]))
    assert stale == [], f"{len(stale)} stale reads, e.g. {stale[:5]}"


@pytest.mark.timeout(120)
def test_quorum_read_without_a_token_sees_the_latest_session_write(
    cluster: LocalCluster,
) -> None:
    writer = cluster.client()
    stale: list[tuple[int, str, str]] = []
    for i in range(100):
        writer.put("sess-quorum", "k", f"value {i}")
        node = NODES[(i + 1) % 3]
        # A fresh client with no token: a session read is then a quorum read (R=2 of N=3).
        r = cluster.read(node, "sess-quorum", "k", "session")
        assert r.status == 200, r.body
        if r.json()["content"] != f"value {i}":
            stale.append((i, node, r.json()["content"]))
    assert stale == []


@pytest.mark.timeout(120)
def test_monotonic_reads_with_the_token(make_cluster: ClusterFactory) -> None:
    # A writer hammers one key at W=1 through n1 only, so n2 and n3 lag behind it; a reader
    # that carries its token round-robins over all nodes and must never see time go backwards.
    # (allow_weaker: see test_eventual_header_selects_eventual_for_an_untagged_record.)
    cluster = make_cluster(**WEAK_OK)
    stop = threading.Event()
    errors: list[BaseException] = []
    written = [0]

    def write() -> None:
        w = Client(cluster.url("n1"), consistency="eventual")
        try:
            i = 0
            while not stop.is_set():
                i += 1
                w.put("sess-mono", "k", str(i))
                written[0] = i
        except BaseException as e:
            errors.append(e)

    first = cluster.client(["n1"]).put("sess-mono", "k", "0")
    assert first
    t = threading.Thread(target=write, daemon=True)
    t.start()
    try:
        reader = cluster.client()
        seen: list[int] = []
        for _ in range(300):
            seen.append(int(reader.get("sess-mono", "k")["content"]))
            if errors:
                break
    finally:
        stop.set()
        t.join(timeout=30)
    assert not t.is_alive()
    assert errors == []
    assert written[0] > 10, "the writer barely ran; the test proves nothing"
    backwards = [(a, b) for a, b in itertools.pairwise(seen) if b < a]
    assert backwards == [], f"reads went backwards: {backwards[:5]}"
    assert seen[-1] > seen[0]


def _requests(c: LocalCluster, node: str, level: str) -> float:
    return c.metric(node, "spine_requests_total", route=ROUTE, level=level)


@pytest.mark.timeout(60)
def test_tag_overrides_choose_the_level(cluster: LocalCluster) -> None:
    c = cluster
    client = c.client(["n1"])
    before = _requests(c, "n1", "strong")
    client.put("sess-tags", "lk", "held", tags=["lock"])
    assert _requests(c, "n1", "strong") == before + 1

    # An `eventual` header cannot weaken a `critical` record: the write is still strong.
    before = _requests(c, "n1", "strong")
    r = c.http("n1", "PUT", "/v1/ns/sess-tags/memories/crit",
               {"content": "important", "tags": ["critical"]}, {"Spine-Consistency": "eventual"})
    assert r.status == 201, r.body
    assert _requests(c, "n1", "strong") == before + 1

    # Its old tags still count when a rewrite drops them.
    before = _requests(c, "n1", "strong")
    r = c.http("n1", "PUT", "/v1/ns/sess-tags/memories/crit", {"content": "untagged"},
               {"Spine-Consistency": "eventual"})
    assert r.status == 200, r.body
    assert _requests(c, "n1", "strong") == before + 1

    # A read escalates to the level of the tags it finds, whatever the header asked for.
    client.put("sess-tags", "crit2", "x", tags=["critical"])
    before = _requests(c, "n2", "strong")
    r = c.read("n2", "sess-tags", "crit2", "eventual")
    assert r.status == 200, r.body
    assert _requests(c, "n2", "strong") == before + 1

    # An existing `analytics` record is rewritten at eventual.
    client.put("sess-tags", "stat", "1", tags=["analytics"])
    before = _requests(c, "n1", "eventual")
    client.put("sess-tags", "stat", "2", tags=["analytics"])
    assert _requests(c, "n1", "eventual") == before + 1


@pytest.mark.timeout(60)
def test_a_new_analytics_record_is_written_at_eventual(cluster: LocalCluster) -> None:
    c = cluster
    before = _requests(c, "n1", "eventual")
    c.client(["n1"]).put("sess-analytics", "fresh", "1", tags=["analytics"])
    assert _requests(c, "n1", "eventual") == before + 1


@pytest.mark.timeout(60)
def test_eventual_header_selects_eventual_for_an_untagged_record(cluster: LocalCluster) -> None:
    c = cluster
    assert c.client(["n1"]).put("sess-weak", "k", "v1")
    before = _requests(c, "n2", "eventual")
    r = c.read("n2", "sess-weak", "k", "eventual")
    assert r.status == 200, r.body
    assert _requests(c, "n2", "eventual") == before + 1
    # W=1 with a sloppy quorum: writable while any node lives (DESIGN §4).
    c.kill("n2")
    c.kill("n3")
    r = c.http("n1", "PUT", "/v1/ns/sess-weak/memories/k", {"content": "v2"},
               {"Spine-Consistency": "eventual"})
    assert r.status == 200, r.body


@pytest.mark.timeout(60)
def test_eventual_header_on_a_critical_record_still_needs_a_quorum(
    make_cluster: ClusterFactory,
) -> None:
    # Default level eventual here, so that an untagged write is accepted with two of three
    # replicas gone (hints count), while a `critical` record stays strong whatever the
    # header says: it needs a quorum, and gets a 503.
    c = make_cluster(consistency={"default": "eventual"})
    assert c.client(["n1"]).put("sess-crit", "c", "v1", tags=["critical"])
    c.kill("n2")
    c.kill("n3")
    r = c.http("n1", "PUT", "/v1/ns/sess-crit/memories/plain", {"content": "x"},
               {"Spine-Consistency": "eventual"})
    assert r.status == 201, r.body
    for body in ({"content": "v2", "tags": ["critical"]}, {"content": "v2"}):
        r = c.http("n1", "PUT", "/v1/ns/sess-crit/memories/c", body,
                   {"Spine-Consistency": "eventual"})
        assert r.status == 503, (body, r.body)
        assert r.error()["code"] == "quorum_unavailable"
    # A read of it with an eventual header escalates to strong: no quorum, no answer.
    r = c.read("n1", "sess-crit", "c", "eventual")
    assert r.status == 503, r.body
    assert r.error()["code"] == "quorum_unavailable"
    with pytest.raises(SpineHTTPError) as e:
        c.client(["n1"], consistency="eventual").put("sess-crit", "c2", "x", tags=["lock"])
    assert e.value.status == 503 and e.value.code == "quorum_unavailable"
    # The untagged record is still readable at eventual from the last node.
    assert c.client(["n1"], consistency="eventual").get("sess-crit", "plain")["content"] == "x"


@pytest.mark.timeout(60)
def test_the_session_token_stays_sendable_with_long_keys(cluster: LocalCluster) -> None:
    ns = "s" * 64  # the longest namespace and ids the API accepts
    client = cluster.client()
    for i in range(40):
        mid = f"{i:03d}" + "x" * 125
        client.put(ns, mid, f"long {i}")
        assert client.get(ns, mid)["content"] == f"long {i}"


@pytest.mark.timeout(90)
def test_strong_reads_of_a_single_writer_register_are_linearizable(cluster: LocalCluster) -> None:
    # One writer counts up at strong through n1; two readers without tokens read at strong
    # through n2 and n3. With a single writer of increasing values, linearizability means: a
    # read returns at least every value whose write finished before it began, never a value
    # whose write had not begun, and never less than a read that finished before it began.
    c = cluster
    ns, mid = "sess-linear", "reg"
    c.client(["n1"]).put(ns, mid, "0")
    writes: list[tuple[float, float, int]] = []  # (invoked, completed, value)
    reads: list[tuple[float, float, int]] = []
    stop = threading.Event()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def writer() -> None:
        w = Client(c.url("n1"), consistency="strong")
        try:
            for v in range(1, 100_000):
                if stop.is_set():
                    return
                t0 = time.monotonic()
                w.put(ns, mid, str(v))
                with lock:
                    writes.append((t0, time.monotonic(), v))
        except BaseException as e:
            errors.append(e)

    def reader(node: str) -> None:
        try:
            while not stop.is_set():
                t0 = time.monotonic()
                r = c.read(node, ns, mid, "strong")  # no token: a fresh quorum read each time
                assert r.status == 200, r.body
                with lock:
                    reads.append((t0, time.monotonic(), int(r.json()["content"])))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, daemon=True)] + [
        threading.Thread(target=reader, args=(n,), daemon=True) for n in ("n2", "n3")
    ]
    for t in threads:
        t.start()
    c.wait_until(lambda: (len(writes) >= 300 and len(reads) >= 600) or errors, 60, 0.05,
                 "enough operations")
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    violations = []
    for r_inv, r_done, value in reads:
        floor = max((v for _, w_done, v in writes if w_done < r_inv), default=0)
        ceiling = max((v for w_inv, _, v in writes if w_inv < r_done), default=0)
        if not floor <= value <= ceiling:
            violations.append(("stale or future", value, floor, ceiling))
        before = [v for _, done, v in reads if done < r_inv]
        if before and value < max(before):
            violations.append(("went backwards", value, max(before)))
    assert violations == [], violations[:5]


@pytest.mark.timeout(60)
def test_read_your_writes_survives_the_loss_of_the_writing_node(cluster: LocalCluster) -> None:
    # The coordinator that took the writes dies at once; the token makes the survivors find
    # each version on whichever replica has it (asking more replicas than one when needed).
    c = cluster
    client = c.client(["n1"])
    expected = {f"k{i}": f"before the crash {i}" for i in range(20)}
    for mid, content in expected.items():
        client.put("sess-crash", mid, content)
    c.kill("n1")
    survivors = Client([c.url("n2"), c.url("n3")], session=client.session)
    for mid, content in expected.items():
        assert survivors.get("sess-crash", mid)["content"] == content
        assert survivors.get("sess-crash", mid)["content"] == content  # and on the other node


@pytest.mark.timeout(120)
def test_reading_many_settled_keys_keeps_the_token_small_and_reads_local(
    cluster: LocalCluster,
) -> None:
    # Versions every owner holds (settled) need no entry in the token: a client that reads far
    # more keys than session.max_keys (32) keeps a token that never overflows, so its reads stay
    # R=1 (answered by one replica) instead of going to a quorum once it would have overflowed.
    ns = "sess-settled"
    writer = cluster.client()
    for i in range(80):
        writer.put(ns, f"k{i}", f"v{i}")
    before = sum(cluster.metric(n, "spine_session_settled_reads_total") for n in NODES)
    reader = cluster.client()
    reader.get(ns, "k0")  # a first token
    deadline = time.monotonic() + 30
    while True:  # the writes' settle notices reach every node within tens of milliseconds
        settled = sum(cluster.metric(n, "spine_session_settled_reads_total") for n in NODES)
        if settled > before or time.monotonic() > deadline:
            break
        reader.get(ns, "k0")
    for i in range(80):
        assert reader.get(ns, f"k{i}")["content"] == f"v{i}"
    token = SessionToken.decode(reader.session or "", 1024)
    assert not token.overflowed, "the token overflowed: settled versions were tracked"
    assert len(token.entries) < 32, token.entries
    settled = sum(cluster.metric(n, "spine_session_settled_reads_total") for n in NODES)
    assert settled - before >= 70, (before, settled)
    # Read-your-writes still holds for what it writes now, read through another node.
    for i in range(20):
        written = reader.put(ns, f"k{i}", f"w{i}")
        got = reader.get(ns, f"k{i}")
        assert got["version"] >= written["version"] and got["content"] == f"w{i}"
