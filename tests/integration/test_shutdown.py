"""Stopping a node the way a balancer needs: it drains first, and it stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.integration.cluster import LocalCluster

pytestmark = pytest.mark.integration

DRAIN_MS = 3000


def test_sigterm_drains_then_stops_with_json_logs_and_no_traceback(
    make_cluster: object,
) -> None:
    c: LocalCluster = make_cluster(shutdown={"drain_ms": DRAIN_MS})  # type: ignore[operator]
    r = c.http("n1", "PUT", "/v1/ns/drain/memories/k", {"content": "before"})
    assert r.status in (200, 201), r.body
    assert c.http("n1", "GET", "/readyz").status == 200
    proc = c.procs["n1"]
    os.killpg(proc.pid, signal.SIGTERM)
    signalled = time.monotonic()

    # At once: not ready (a balancer stops sending), yet still serving what reaches it.
    ready = c.wait_until(lambda: (r := c.http("n1", "GET", "/readyz", timeout=1)).status == 503
                         and r, 2.0, 0.05, "n1 to answer /readyz 503 while draining")
    assert ready.error()["code"] == "not_serving"
    assert "shutting down" in ready.error()["message"]
    got = c.http("n1", "GET", "/v1/ns/drain/memories/k")
    assert got.status == 200 and got.json()["content"] == "before"
    assert time.monotonic() - signalled < DRAIN_MS / 1000, "the drain ended before we looked"

    proc.wait(timeout=DRAIN_MS / 1000 + 20)
    assert proc.returncode == 0, c.log_tail("n1")
    assert time.monotonic() - signalled >= DRAIN_MS / 1000 * 0.9
    lines = [ln for ln in c.log_text("n1").splitlines()
             if ln.strip() and not ln.startswith("--- harness")]
    assert "Traceback" not in c.log_text("n1"), c.log_tail("n1")
    records = [json.loads(ln) for ln in lines]  # every line a JSON object
    assert all(rec.get("node") == "n1" for rec in records)
    events = [rec["event"] for rec in records]
    assert "node_draining" in events and events[-1] == "node_stopped", events[-5:]
