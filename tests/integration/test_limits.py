"""Quotas and limits against the attacks of issue 14, on real sockets.

Slow clients (2,048 slow-body connections held every request slot for 100 s, none closed), a
per-address connection flood, slow request heads, list pages past 64 MiB, unbounded namespaces,
agent keys reading cluster routes, and client disconnects logged as errors.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator

import pytest

from spine.core.config import hash_key
from tests.harness.wait import wait_until
from tests.integration.cluster import LocalCluster
from tests.integration.conftest import ClusterFactory

pytestmark = pytest.mark.integration

BODY_TIMEOUT_MS = 4000  # room for the normal client on a loaded machine
HEADER_TIMEOUT_MS = 2000
MAX_INFLIGHT = 8
PER_ADDRESS = 48
PAGE_BYTES = 262_144

ADMIN, BOT, FLOOD = "admin-secret-0001", "bot-secret-0002", "flood-secret-0003"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One node with a few request slots and short read deadlines."""
    factory = ClusterFactory(tmp_path_factory.mktemp("limits"))
    try:
        yield factory(1, limits={
            "max_inflight": MAX_INFLIGHT, "body_timeout_ms": BODY_TIMEOUT_MS,
            "header_timeout_ms": HEADER_TIMEOUT_MS, "client_connections": PER_ADDRESS,
            "list_page_bytes": PAGE_BYTES, "body_bytes": 2_000_000,
        })
    finally:
        factory.close()


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One node with API keys, a namespace quota and a per-client rate."""
    root = tmp_path_factory.mktemp("quota")
    c = LocalCluster(root, 1, start=False, api_key=ADMIN,
                     auth={"keys": [
                         {"name": "ops", "sha256": hash_key(ADMIN), "role": "admin"},
                         {"name": "bot", "sha256": hash_key(BOT), "namespaces": ["*"],
                          "max_namespaces": 3},
                         {"name": "flood", "sha256": hash_key(FLOOD), "namespaces": ["*"]},
                     ]},
                     limits={"max_namespaces": 6, "client_rate": 20, "client_burst": 20})
    try:
        c.start_all()
        yield c
    finally:
        c.close()


def _connect(port: int, source: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    s.setblocking(False)
    return s


def _closed_by_peer(s: socket.socket) -> bool:
    """Whether the server closed `s` (EOF or reset); reads and drops what it sent first."""
    try:
        while True:
            ready, _, _ = select.select([s], [], [], 0)
            if not ready:
                return False
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True


def _wait_all_closed(socks: list[socket.socket], deadline: float) -> list[socket.socket]:
    """Poll until every socket is closed by the server or the deadline passes; the open ones."""
    open_ = list(socks)
    while open_ and time.monotonic() < deadline:
        open_ = [s for s in open_ if not _closed_by_peer(s)]
        if open_:
            select.select(open_, [], [], 0.1)
    return open_


def test_slow_bodies_hold_no_request_slot_and_are_closed(node: LocalCluster) -> None:
    port = node.port("n1")
    head = (b"PUT /v1/ns/slow/memories/x HTTP/1.1\r\nHost: spine\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"content\": \"")
    slow = [_connect(port, "127.0.0.21") for _ in range(3 * MAX_INFLIGHT)]
    try:
        sent = time.monotonic()
        for s in slow:
            s.sendall(head)
        time.sleep(0.3)  # let the node start reading every slow body (nothing to poll for)
        # A normal client is served while they dawdle, well before their deadline.
        started = time.monotonic()
        put = node.http("n1", "PUT", "/v1/ns/fast/memories/a", {"content": "hello"}, timeout=5)
        got = node.http("n1", "GET", "/v1/ns/fast/memories/a", timeout=5)
        assert put.status in (200, 201), (put.status, put.body)
        assert got.status == 200, (got.status, got.body)
        assert time.monotonic() - started < BODY_TIMEOUT_MS / 1000
        # Every slow one is answered 408 and closed within the body deadline (plus slack).
        still_open = _wait_all_closed(slow, sent + BODY_TIMEOUT_MS / 1000 + 3)
        assert not still_open, f"{len(still_open)} of {len(slow)} slow bodies still open"
    finally:
        for s in slow:
            s.close()


def test_slow_request_heads_are_closed(node: LocalCluster) -> None:
    port = node.port("n1")
    socks = [_connect(port, "127.0.0.23") for _ in range(10)]
    try:
        start = time.monotonic()
        for s in socks:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: spine\r\n")
        open_ = list(socks)
        deadline = start + HEADER_TIMEOUT_MS / 1000 + 3
        while open_ and time.monotonic() < deadline:  # trickle one header byte per socket
            still: list[socket.socket] = []
            for s in open_:
                if _closed_by_peer(s):
                    continue
                try:
                    s.send(b"X")
                    still.append(s)
                except (BrokenPipeError, ConnectionResetError, BlockingIOError):
                    pass
            open_ = still
            time.sleep(0.2)
        assert not open_, f"{len(open_)} slow heads still open after the head deadline"
        assert node.http("n1", "GET", "/healthz").status == 200
    finally:
        for s in socks:
            s.close()


def _read_reply(s: socket.socket, deadline: float) -> bytes:
    """One whole reply with a Content-Length (blocking socket), or what came before the deadline."""
    buf = b""
    while time.monotonic() < deadline:
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if sep:
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            if len(rest) >= length:
                return buf
        select.select([s], [], [], 0.1)
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf


def test_an_idle_keep_alive_connection_outlives_the_head_deadline(node: LocalCluster) -> None:
    """The head deadline is for heads: a body sent after its head, then a pause longer than the
    deadline, does not get a kept-alive connection closed."""
    s = socket.create_connection(("127.0.0.1", node.port("n1")), timeout=10)
    try:
        body = b'{"content": "kept"}'
        s.sendall(b"PUT /v1/ns/keep/memories/a HTTP/1.1\r\nHost: spine\r\n"
                  b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
        time.sleep(0.2)  # the body in its own packet, after the head
        s.sendall(body)
        assert _read_reply(s, time.monotonic() + 5).startswith(b"HTTP/1.1 20")
        time.sleep(HEADER_TIMEOUT_MS / 1000 + 1)  # idle past the head deadline
        s.sendall(b"GET /v1/ns/keep/memories/a HTTP/1.1\r\nHost: spine\r\n\r\n")
        assert _read_reply(s, time.monotonic() + 5).startswith(b"HTTP/1.1 200")
    finally:
        s.close()


def test_connections_per_address_are_capped(node: LocalCluster) -> None:
    port = node.port("n1")
    socks = [_connect(port, "127.0.0.24") for _ in range(PER_ADDRESS + 16)]
    try:
        # The connections past the cap are closed at once, not after any timeout.
        deadline = time.monotonic() + 1.5
        closed: set[int] = set()
        while time.monotonic() < deadline and len(closed) < 16:
            closed |= {i for i, s in enumerate(socks) if i not in closed and _closed_by_peer(s)}
            time.sleep(0.05)
        assert len(closed) >= 16, f"only {len(closed)} of the connections past the cap closed"
        assert node.http("n1", "GET", "/v1/ns/fast/memories/a").status in (200, 404)
    finally:
        for s in socks:
            s.close()


def test_client_disconnect_is_logged_at_debug_not_as_an_error(node: LocalCluster) -> None:
    port = node.port("n1")
    before = len(node.log_text("n1"))
    for _ in range(5):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"PUT /v1/ns/gone/memories/x HTTP/1.1\r\nHost: spine\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{\"content\"")
        time.sleep(0.05)
        s.close()  # mid-body
    # The node has seen them go once a later request on the same node has been answered.
    wait_until(lambda: node.http("n1", "GET", "/healthz").status == 200, timeout=5)
    time.sleep(0.3)
    new = node.log_text("n1")[before:]
    assert "Traceback" not in new and "request_failed" not in new, new[-3000:]


def test_list_pages_are_bounded_by_bytes(node: LocalCluster) -> None:
    content = "y" * 60_000
    items = [{"id": f"m{i:02d}", "content": content} for i in range(12)]  # 720 kB in all
    r = node.http("n1", "POST", "/v1/ns/big/memories/_batch", {"items": items}, timeout=30)
    assert r.status == 200, r.body[:300]
    seen: list[str] = []
    cursor = ""
    for _ in range(20):
        r = node.http("n1", "GET", f"/v1/ns/big/memories?limit=1000{cursor}")
        assert r.status == 200, r.body[:300]
        page = r.json()
        assert len(r.body) <= PAGE_BYTES + 70_000, len(r.body)  # the budget plus one record
        seen += [it["id"] for it in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert seen == [f"m{i:02d}" for i in range(12)]


def _put(c: LocalCluster, key: str, ns: str, scheme: str = "Bearer") -> tuple[int, str]:
    r = c.http("n1", "PUT", f"/v1/ns/{ns}/memories/m", {"content": "x"},
               headers={"Authorization": f"{scheme} {key}"})
    return r.status, (r.error()["code"] if r.status >= 400 else "")


def test_namespace_quota_per_key_and_per_node(keyed: LocalCluster) -> None:
    for ns in ("q1", "q2", "q3"):
        assert _put(keyed, BOT, ns)[0] == 201
    assert _put(keyed, BOT, "q4") == (507, "too_many_namespaces")  # the key's limit: 3
    assert _put(keyed, BOT, "q1")[0] == 200  # existing namespaces still take writes
    for ns in ("a1", "a2", "a3"):
        assert _put(keyed, ADMIN, ns)[0] == 201
    assert _put(keyed, ADMIN, "a4") == (507, "too_many_namespaces")  # the node's limit: 6
    assert _put(keyed, ADMIN, "a1")[0] == 200


def test_agent_keys_lose_metrics_and_cluster_routes(keyed: LocalCluster) -> None:
    for path in ("/metrics", "/v1/cluster", "/v1/cluster/shards"):
        r = keyed.http("n1", "GET", path, headers={"Authorization": f"Bearer {BOT}"})
        assert r.status == 403, (path, r.status)
        assert keyed.http("n1", "GET", path).status == 200, path  # the admin key
    # The scheme is case-insensitive (RFC 7235).
    r = keyed.http("n1", "GET", "/v1/ns/q1/memories/m", headers={"Authorization": f"bearer {BOT}"})
    assert r.status == 200, r.body


def test_per_client_rate_limit_answers_429_with_retry_after(keyed: LocalCluster) -> None:
    statuses: list[int] = []
    retry: list[str] = []
    for _ in range(60):
        r = keyed.http("n1", "GET", "/v1/ns/f/memories/x",
                       headers={"Authorization": f"Bearer {FLOOD}"})
        statuses.append(r.status)
        if r.status == 429:
            assert r.error()["code"] == "overloaded"
            retry.append(r.headers.get("Retry-After", ""))
    assert 429 in statuses, statuses
    assert all(v.isdigit() and int(v) >= 1 for v in retry), retry
    # Another key is not held back by this one's bucket.
    r = keyed.http("n1", "GET", "/v1/ns/q1/memories/m", headers={"Authorization": f"Bearer {BOT}"})
    assert r.status == 200

