"""The change feed's user surface on a real cluster (DESIGN §15): `Client.changes` pages that
match the served /openapi.json, a long poll that returns on a write, `Client.follow` carried
across a killed node and across a time when no node it knows answers, and `spine changes` as a
user runs it (JSON lines, the cursor on stderr, Ctrl-C without a traceback).

The server side (delivery, order, SSE) is tests/integration/test_feed.py's; here the question is
whether what users hold (the client, the CLI) keeps the promise across failures."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

import jsonschema  # a dependency of openapi-spec-validator and schemathesis (dev)
import pytest

from spine.client import Change, ChangesPage, Client, CursorExpired, InvalidInput
from tests.integration.cluster import LocalCluster

pytestmark = pytest.mark.integration

NODES = ("n1", "n2", "n3")


def vkey(version: str) -> tuple[int, str]:
    """A version's order: (hlc, node) (DESIGN §15)."""
    hexpart, _, node = version.partition(".")
    return int(hexpart, 16), node


def check_order(changes: Iterable[Change]) -> None:
    """Per key, delivered versions never go back."""
    last: dict[str, tuple[int, str]] = {}
    for ch in changes:
        v = vkey(ch.version)
        assert ch.id not in last or v >= last[ch.id], (ch.id, ch.version, last[ch.id])
        last[ch.id] = v


def write(c: Client, ns: str, ids: Iterable[str], text: str) -> dict[str, str]:
    """PUT each id (through the client's round-robin over nodes): id -> version."""
    out: dict[str, str] = {}
    for mid in ids:
        rec = c.put(ns, mid, f"{text} {mid}")
        out[mid] = rec["version"]
    return out


def drain(c: Client, ns: str, cursor: str | None, limit: int = 7,
          deadline_s: float = 30.0) -> tuple[list[Change], str, list[dict[str, Any]]]:
    """Pages until one comes back empty: every change, the last cursor, the raw replies."""
    got: list[Change] = []
    raw: list[dict[str, Any]] = []
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        body = c.request("GET", f"/v1/ns/{ns}/changes", params=params)
        raw.append(body)
        page = ChangesPage.from_body(body)
        got.extend(page.items)
        cursor = page.cursor
        if not page.items:
            return got, cursor, raw
    raise AssertionError(f"the feed of {ns} did not run dry within {deadline_s} s")


def take(feed: Iterable[Change], want: dict[str, str]) -> list[Change]:
    """Changes from `feed` until each id in `want` was delivered at its version or a newer one
    (the test's timeout bounds it)."""
    got: list[Change] = []
    missing = dict(want)
    for ch in feed:
        got.append(ch)
        if ch.id in missing and vkey(ch.version) >= vkey(missing[ch.id]):
            del missing[ch.id]
        if not missing:
            return got
    raise AssertionError("the feed ended")  # pragma: no cover - follow never ends


@pytest.mark.timeout(90)
def test_pages_carry_every_latest_change_and_match_the_served_schema(
        shared_cluster: LocalCluster) -> None:
    c = shared_cluster.client()
    ns = "surface-pages"
    latest = write(c, ns, [f"k{i}" for i in range(12)], "first")
    latest.update(write(c, ns, ["k0", "k1"], "second"))
    latest["k2"] = c.delete(ns, "k2")["version"]
    got, cursor, raw = drain(c, ns, None)
    final = {}
    for ch in got:
        final[ch.id] = ch
    assert {k: v.version for k, v in final.items()} == latest
    assert final["k2"].deleted and final["k2"].record is None
    assert final["k0"].record is not None and final["k0"].record["content"] == "second k0"
    check_order(got)
    # Every reply is what the node's own document says a 200 is.
    doc = shared_cluster.http("n2", "GET", "/openapi.json").json()
    op = doc["paths"]["/v1/ns/{ns}/changes"]["get"]
    schema = {**op["responses"]["200"]["content"]["application/json"]["schema"],
              "components": doc["components"]}
    validator = jsonschema.Draft202012Validator(schema)
    for body in raw:
        validator.validate(body)
    assert {"400", "410", "503"} <= set(op["responses"])
    assert "text/event-stream" in op["responses"]["200"]["content"]
    # Nothing new: an empty page, through any node, with the cursor any node gave.
    for node in NODES:
        page = shared_cluster.client([node]).changes(ns, cursor)
        assert page.items == [] or all(
            vkey(ch.version) <= vkey(latest[ch.id]) for ch in page.items)


@pytest.mark.timeout(90)
def test_a_long_poll_returns_when_a_change_arrives(shared_cluster: LocalCluster) -> None:
    c = shared_cluster.client(["n1"], timeout=5.0)
    ns = "surface-longpoll"
    start = c.changes(ns, from_now=True).cursor
    answered: list[ChangesPage] = []
    failed: list[BaseException] = []

    def wait() -> None:
        try:
            answered.append(c.changes(ns, start, wait_s=25))
        except BaseException as e:  # shown by the assertion below
            failed.append(e)

    t0 = time.monotonic()
    poller = threading.Thread(target=wait)
    poller.start()
    version = shared_cluster.client(["n3"]).put(ns, "news", "it happened")["version"]
    poller.join(timeout=30)
    assert not poller.is_alive() and not failed, failed
    assert time.monotonic() - t0 < 20, "the long poll waited out its wait_s"
    items = answered[0].items
    assert [(ch.id, ch.version) for ch in items] == [("news", version)]


@pytest.mark.timeout(180)
def test_follow_carries_its_cursor_across_a_killed_node_and_a_total_outage(
        shared_cluster: LocalCluster) -> None:
    sc = shared_cluster
    ns = "surface-follow"
    writer = sc.client(["n2", "n3"])
    start = sc.client().changes(ns, from_now=True).cursor
    delivered: list[Change] = []
    try:
        # 1. Following through n1 and n2 while n1 dies: the client fails over to n2.
        feed = sc.client(["n1", "n2"], timeout=5.0).follow(ns, start, wait_s=2, limit=5)
        want = write(writer, ns, [f"a{i}" for i in range(8)], "before")
        delivered += take(feed, want)
        sc.kill("n1")
        want = write(writer, ns, [f"b{i}" for i in range(8)], "after the kill")
        want.update(write(writer, ns, ["a0"], "rewritten"))
        delivered += take(feed, want)
        check_order(delivered)
        saved = feed.cursor
        assert saved is not None

        # 2. A follower whose only node is down waits (no error), then resumes from its cursor
        # once the node is back, and misses nothing written meanwhile.
        outage = threading.Event()
        retries: list[str] = []

        def on_retry(err: BaseException, wait: float) -> None:
            retries.append(type(err).__name__)
            outage.set()

        lone = sc.client(["n1"], timeout=5.0, max_retry_wait=1.0).follow(
            ns, saved, wait_s=2, on_retry=on_retry)
        want = write(writer, ns, [f"c{i}" for i in range(6)], "while n1 is down")
        got: list[Change] = []
        failed: list[BaseException] = []

        def follow_lone() -> None:
            try:
                got.extend(take(lone, want))
            except BaseException as e:
                failed.append(e)

        t = threading.Thread(target=follow_lone)
        t.start()
        assert outage.wait(timeout=30), "the follower never found its node down"
        sc.start("n1")
        t.join(timeout=90)
        assert not t.is_alive() and not failed, failed
        assert set(retries) == {"Unreachable"} and lone.retries >= 1
        # One consumer following its cursor from node to node: per key, versions only rise.
        check_order(delivered + got)
    finally:
        if not sc.is_running("n1"):
            sc.start("n1")


def test_bad_input_is_named_and_an_expired_cursor_ends_a_follow(
        shared_cluster: LocalCluster) -> None:
    from spine.core.feed import Cursor

    c = shared_cluster.client()
    ns = "surface-bad"
    with pytest.raises(InvalidInput) as info:
        c.changes(ns, "not-a-cursor!")
    assert info.value.field == "cursor"
    bad: list[tuple[dict[str, Any], str]] = [({"limit": 0}, "limit"), ({"wait_s": 31}, "wait_s")]
    for kw, field in bad:
        with pytest.raises(InvalidInput) as info:
            c.changes(ns, **kw)
        assert info.value.field == field
    # A cursor issued at HLC 1 is older than any tombstone grace: 410, at every node, and the
    # end of a follow (retrying could not help).
    ancient = Cursor({}, issued_hlc=1).encode()
    for node in NODES:
        with pytest.raises(CursorExpired):
            shared_cluster.client([node]).changes(ns, ancient)
    slept: list[float] = []
    feed = Client([shared_cluster.url(n) for n in NODES], sleep=slept.append).follow(ns, ancient)
    with pytest.raises(CursorExpired):
        next(feed)
    assert slept == [] and feed.cursor == ancient


# ------------------------------------------------------------------ spine changes


def spine(*argv: str) -> tuple[list[str], dict[str, str]]:
    """The command line of `spine ARGV` and an environment free of the caller's SPINE_*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPINE_")}
    return [sys.executable, "-m", "spine", *argv], env


def _readline(proc: subprocess.Popen[str], deadline: float) -> str:
    """One line of the process's stdout, or fail at the deadline (no blocking forever)."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        left = deadline - time.monotonic()
        if left <= 0 or not sel.select(timeout=left):
            raise AssertionError("spine changes printed nothing in time")
    return proc.stdout.readline()


@pytest.mark.timeout(120)
def test_the_cli_prints_json_lines_and_follows_until_ctrl_c(
        shared_cluster: LocalCluster, tmp_path: Any) -> None:
    sc = shared_cluster
    ns = "surface-cli"
    urls = ",".join(sc.url(n) for n in NODES)
    c = sc.client()
    want = write(c, ns, ["x", "y"], "cli")
    cmd, env = spine("changes", ns, "--url", urls, "--limit", "1000",
                     "--session-file", str(tmp_path / "session"))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert p.returncode == 0, p.stderr
    lines = [json.loads(line) for line in p.stdout.splitlines()]
    assert {x["id"]: x["version"] for x in lines} == want
    assert p.stderr.startswith("cursor: ")
    cursor = p.stderr.split()[1]

    cmd, env = spine("changes", ns, "--url", urls, "--cursor", cursor,
                     "--follow", "--wait-s", "2", "--session-file", str(tmp_path / "session"))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        version = c.put(ns, "z", "after the cursor")["version"]
        line = json.loads(_readline(proc, time.monotonic() + 30))
        assert (line["id"], line["version"], line["deleted"]) == ("z", version, False)
        proc.send_signal(signal.SIGINT)
        # (Run by a shell's background job, pytest and the CLI would ignore SIGINT: make test
        # keeps these tests in the foreground.)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)  # reaps it and closes its pipes (no leak into the
            # next test of this worker, where their finaliser would fail it)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("cursor: ") and last.split()[1] != cursor
