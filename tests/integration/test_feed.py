"""The change feed on a real cluster (DESIGN §15): every change delivered, per key in version
order, from a cursor valid at any node; long polls that return on a write; server-sent events
that resume with Last-Event-ID; bad input named; a consumer moved off a killed node misses
nothing."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from tests.integration.cluster import LocalCluster

NODES = ("n1", "n2", "n3")


def put(c: LocalCluster, node: str, ns: str, mid: str, content: str) -> str:
    r = c.http(node, "PUT", f"/v1/ns/{ns}/memories/{mid}", {"content": content})
    assert r.status in (200, 201), r.body
    version: str = r.json()["version"]
    return version


def delete(c: LocalCluster, node: str, ns: str, mid: str) -> None:
    r = c.http(node, "DELETE", f"/v1/ns/{ns}/memories/{mid}")
    assert r.status == 200, r.body


def poll(c: LocalCluster, node: str, ns: str, query: str = "",
         timeout: float = 10.0) -> dict[str, Any]:
    r = c.http(node, "GET", f"/v1/ns/{ns}/changes{query}", timeout=timeout)
    assert r.status == 200, r.body
    body: dict[str, Any] = r.json()
    return body


def drain(c: LocalCluster, node: str, ns: str, cursor: str | None,
          seen: list[dict[str, Any]]) -> str:
    """Poll until a page comes back empty; every item is appended to `seen`."""
    while True:
        q = f"?cursor={cursor}&limit=50" if cursor else "?limit=50"
        page = poll(c, node, ns, q)
        seen.extend(page["items"])
        cursor = page["cursor"]
        if not page["items"]:
            return cursor


def vkey(version: str) -> tuple[int, str]:
    hexpart, _, node = version.partition(".")
    return int(hexpart, 16), node


def in_order(items: list[dict[str, Any]]) -> bool:
    last: dict[str, tuple[int, str]] = {}
    for it in items:
        v = vkey(it["version"])
        if it["id"] in last and v < last[it["id"]]:
            return False
        last[it["id"]] = v
    return True


@pytest.mark.timeout(60)
def test_every_change_once_at_least_with_a_cursor_valid_at_any_node(
    shared_cluster: LocalCluster,
) -> None:
    c = shared_cluster
    ns = "feed-basic"
    latest = {f"k{i}": put(c, NODES[i % 3], ns, f"k{i}", f"first {i}") for i in range(30)}
    latest["k0"] = put(c, "n2", ns, "k0", "second")
    before = c.metric("n1", "spine_feed_items_total")
    seen: list[dict[str, Any]] = []
    cursor = drain(c, "n1", ns, None, seen)
    assert c.metric("n1", "spine_feed_items_total") - before == len(seen)
    got = {it["id"]: it["version"] for it in seen}
    assert got == latest or all(vkey(got[k]) >= vkey(v) for k, v in latest.items())
    assert set(got) == set(latest) and in_order(seen)
    assert all(it["record"]["content"] for it in seen if it["id"] != "k0")
    # Later changes, read through another node with the first node's cursor.
    v_new = put(c, "n3", ns, "new", "later")
    delete(c, "n1", ns, "k1")
    later: list[dict[str, Any]] = []
    drain(c, "n2", ns, cursor, later)
    by_id = {it["id"]: it for it in later}
    assert set(by_id) == {"new", "k1"}, later
    assert by_id["new"]["version"] == v_new and by_id["new"]["record"]["content"] == "later"
    assert by_id["k1"]["deleted"] is True and by_id["k1"]["record"] is None


@pytest.mark.timeout(60)
def test_from_now_skips_the_past_and_a_long_poll_returns_on_a_write(
    shared_cluster: LocalCluster,
) -> None:
    c = shared_cluster
    ns = "feed-wait"
    put(c, "n1", ns, "old", "before")
    # Once every replica holds it (a replica that applies it later logs it later, and the feed
    # may then deliver it again: at least once), from=now must not deliver it.
    c.wait_until(lambda: all(c.local_record(n, ns, "old") for n in NODES), 10,
                 message="all replicas hold the write")
    now = poll(c, "n2", ns, "?from=now")
    assert now["items"] == []
    cursor = now["cursor"]
    assert poll(c, "n3", ns, f"?cursor={cursor}")["items"] == []
    # A long poll waiting on n3 for a write that lands through n1 a moment later.
    import threading

    box: dict[str, Any] = {}

    def wait() -> None:
        started = time.monotonic()
        box["page"] = poll(c, "n3", ns, f"?cursor={cursor}&wait_s=20", timeout=30)
        box["took"] = time.monotonic() - started

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.5)  # let the poll start waiting (a write before it is found either way)
    v = put(c, "n1", ns, "fresh", "during the wait")
    t.join(30)
    assert [(i["id"], i["version"]) for i in box["page"]["items"]] == [("fresh", v)]
    assert box["took"] < 15, box["took"]  # woken by the commit, not by the end of the wait


@pytest.mark.timeout(30)
def test_bad_input_is_a_400_naming_the_parameter(shared_cluster: LocalCluster) -> None:
    c = shared_cluster
    for query, field in [("?cursor=not-a-cursor", "cursor"), ("?cursor=" + "A" * 5000, "cursor"),
                         ("?limit=0", "limit"), ("?limit=1001", "limit"), ("?limit=x", "limit"),
                         ("?wait_s=-1", "wait_s"), ("?wait_s=31", "wait_s"),
                         ("?wait_s=nan", "wait_s"), ("?from=yesterday", "from"),
                         ("?colour=red", "colour")]:
        r = c.http("n1", "GET", f"/v1/ns/feed-bad/changes{query}")
        assert r.status == 400, (query, r.body)
        assert r.error()["field"] == field, (query, r.body)


def sse_events(port: int, path: str, headers: dict[str, str], want: int,
               timeout: float = 20.0) -> list[dict[str, str]]:
    """Read `want` events of a server-sent event stream (raw socket, so nothing buffers)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n{head}"
                     "\r\n".encode())
        buf = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(65536)
        status_line, _, buf = buf.partition(b"\r\n\r\n")
        assert b" 200 " in status_line.split(b"\r\n")[0], status_line
        events: list[dict[str, str]] = []
        text = buf.decode(errors="replace")  # what came with the head
        while len(events) < want and time.monotonic() < deadline:
            while "\n\n" in text:
                block, _, text = text.partition("\n\n")
                fields: dict[str, str] = {}
                for line in block.splitlines():
                    if line.startswith(":") or ": " not in line:
                        continue  # comments, and the chunked encoding's size lines
                    k, _, v = line.partition(": ")
                    fields[k] = v
                if "data" in fields:
                    events.append(fields)
            if len(events) >= want:
                break
            chunk = sock.recv(65536)
            if not chunk:
                break
            text += chunk.decode(errors="replace")
        return events
    finally:
        sock.close()


@pytest.mark.timeout(60)
def test_server_sent_events_resume_with_last_event_id(shared_cluster: LocalCluster) -> None:
    c = shared_cluster
    ns = "feed-sse"
    for i in range(3):
        put(c, "n1", ns, f"a{i}", "one")
    first = sse_events(c.port("n2"), f"/v1/ns/{ns}/changes", {}, 3)
    assert sorted(e["data"].split('"id":"')[1][:2] for e in first) == ["a0", "a1", "a2"]
    assert all(e["event"] == "change" for e in first)
    last_id = [e["id"] for e in first if "id" in e][-1]
    put(c, "n3", ns, "b0", "two")
    again = sse_events(c.port("n1"), f"/v1/ns/{ns}/changes", {"Last-Event-ID": last_id}, 1)
    assert '"id":"b0"' in again[0]["data"], again


@pytest.mark.timeout(120)
def test_a_consumer_moved_off_a_killed_node_misses_nothing(cluster: LocalCluster) -> None:
    c = cluster
    ns = "feed-kill"
    written: dict[str, str] = {}
    for i in range(20):
        written[f"k{i}"] = put(c, NODES[i % 3], ns, f"k{i}", "before")
    seen: list[dict[str, Any]] = []
    cursor = drain(c, "n1", ns, None, seen)
    c.kill("n1")
    for i in range(20, 40):
        written[f"k{i}"] = put(c, NODES[1 + i % 2], ns, f"k{i}", "while n1 is down")
    written["k3"] = put(c, "n2", ns, "k3", "changed while n1 is down")
    cursor = drain(c, "n2", ns, cursor, seen)
    got: dict[str, tuple[int, str]] = {}
    for it in seen:
        got[it["id"]] = max(got.get(it["id"], (0, "")), vkey(it["version"]))
    missing = [k for k, v in written.items() if got.get(k, (0, "")) < vkey(v)]
    assert missing == [] and in_order(seen)
    # n1 back: what it missed reaches it by hints; the feed repeats at most, never regresses.
    c.start("n1")
    c.wait_healthy("n1")
    more: list[dict[str, Any]] = []
    drain(c, "n3", ns, cursor, more)
    assert in_order(seen + more)


@pytest.mark.timeout(60)
def test_an_event_source_reconnecting_to_its_first_url_resumes_at_last_event_id(
    shared_cluster: LocalCluster,
) -> None:
    # An EventSource opened with ?from=now (or a first ?cursor=) reconnects to that same URL and
    # adds Last-Event-ID: the id wins, else it could never resume (or would restart each time).
    c = shared_cluster
    ns = "feed-sse-reconnect"
    cursor = poll(c, "n1", ns, "?from=now")["cursor"]
    put(c, "n1", ns, "a", "one")
    first = sse_events(c.port("n2"), f"/v1/ns/{ns}/changes?from=now", {"Last-Event-ID": cursor},
                       1)
    assert '"id":"a"' in first[0]["data"], first
    put(c, "n2", ns, "b", "two")
    again = sse_events(c.port("n3"), f"/v1/ns/{ns}/changes?cursor={cursor}",
                       {"Last-Event-ID": first[-1]["id"]}, 1)
    assert '"id":"b"' in again[0]["data"], again
