"""The feed workload's short schedule (issue 11 acceptance): 3 nodes, 30 s of puts and deletes
through random nodes under partitions and kills, one consumer following the change feed and moved
to another node on each fault, then healing and a drain. The run must be VALID, the consumer must
really have moved and been fed, and the checker must have teeth: each anomaly planted in the run's
own recorded deliveries (a change dropped, an old version redelivered last, a record rewritten, a
put reported as a deletion) makes the same history invalid with that anomaly.

The workload's client code is also driven, in seconds, against an in-process fake of the feed
(one change log behind three addresses, a cursor that is a position in it): an honest fake must
come out valid with the consumer moved by the faults of a timeline, and a fake whose feed skips
every third change must come out with lost changes."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from jepsen_style.checker.feed import check_feed, parse_version
from jepsen_style.history import History, Timeline, load_jsonl
from jepsen_style.workloads.feed import Feed

ROOT = Path(__file__).resolve().parents[2]
Events = list[dict[str, Any]]


def _polls(events: Events) -> list[dict[str, Any]]:
    """The ok poll/drain completions that delivered something, in order."""
    return [e for e in events if e.get("f") in ("poll", "drain") and e["type"] == "ok"
            and e["value"]["items"]]


def _acked_puts(events: Events) -> dict[tuple[str, str], str]:
    """(key, version) -> content of every ok put."""
    return {(e["key"], e["value"]["version"]): e["value"]["content"] for e in events
            if e.get("f") == "put" and e["type"] == "ok"}


def _version(item: dict[str, Any]) -> tuple[int, str]:
    v = parse_version(item["version"])
    assert v is not None
    return v


def drop_fresh_key(events: Events) -> None:
    """Lost: every delivery of one fresh key (written once) removed."""
    acked = {k for k, _ in _acked_puts(events) if k.startswith("f")}
    delivered = {i["id"] for e in _polls(events) for i in e["value"]["items"]}
    key = sorted(acked & delivered)[0]
    for e in _polls(events):
        e["value"]["items"] = [i for i in e["value"]["items"] if i["id"] != key]


def redeliver_old_version(events: Events) -> None:
    """Order: the oldest delivered version of a key with several, delivered again at the end."""
    first: dict[str, dict[str, Any]] = {}
    versions: dict[str, set[str]] = {}
    for e in _polls(events):
        for i in e["value"]["items"]:
            versions.setdefault(i["id"], set()).add(i["version"])
            old = first.get(i["id"])
            if old is None or _version(i) < _version(old):
                first[i["id"]] = i
    key = next(k for k in sorted(versions) if len(versions[k]) >= 2)
    _polls(events)[-1]["value"]["items"].append(copy.deepcopy(first[key]))


def rewrite_record(events: Events) -> None:
    """Phantom: one delivered record's content changed to what nobody wrote."""
    item = next(i for e in _polls(events) for i in e["value"]["items"] if not i["deleted"])
    item["record"]["content"] = "planted"


def put_as_deletion(events: Events) -> None:
    """Deleted mismatch: one delivered put turned into a deletion of the same version."""
    acked = _acked_puts(events)
    item = next(i for e in _polls(events) for i in e["value"]["items"]
                if (i["id"], i["version"]) in acked)
    item["deleted"], item["record"] = True, None


def assert_feed_run_and_teeth(out: Path, results: dict[str, Any], fault_moves: int = 2) -> None:
    """A run's feed verdict is VALID with a consumer really moved and fed, and each anomaly
    planted in the run's own recorded deliveries makes the same history invalid with it. Used
    by the CI short schedule (tests/jepsen/test_runner_short.py), which runs the feed among all
    workloads, and by the feed-only schedule below."""
    feed = results["checkers"]["feed"]
    assert feed["valid"] is True and feed["drained"], feed["summary"]
    assert feed["moves"]["fault"] >= fault_moves and len(feed["nodes_polled"]) >= 2, feed
    assert feed["acknowledged"] >= 100 and feed["delivered_exact"] >= 50, feed["summary"]
    events = [e for e in load_jsonl(out / "history.jsonl") if e.get("workload") == "feed"]
    assert check_feed(events)["valid"] is True
    plants: list[tuple[Callable[[Events], None], str]] = [
        (drop_fresh_key, "lost_count"), (redeliver_old_version, "order_count"),
        (rewrite_record, "phantom_count"), (put_as_deletion, "mismatch_count")]
    for plant, count in plants:
        planted = copy.deepcopy(events)
        plant(planted)
        r = check_feed(planted)
        assert r["valid"] is False and r[count] >= 1, (plant.__name__, r["summary"])


@pytest.mark.integration
@pytest.mark.slow  # the CI short schedule runs the feed among all workloads, with these checks
@pytest.mark.timeout(150)
def test_feed_short_schedule(tmp_path: Path) -> None:
    out = tmp_path / "feed"
    cmd = [sys.executable, "-m", "jepsen_style", "run", "--time", "30", "--workload", "feed",
           "--nemesis", "partition,kill", "--nodes", "3", "--seed", "4", "--fault-s", "5",
           "--heal-s", "5", "--quiet-s", "3", "--final-timeout", "60", "--no-plot",
           "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=140,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False)
    tail = (proc.stdout + proc.stderr)[-6000:]
    results = json.loads((out / "results.json").read_text())
    feed = results["checkers"]["feed"]
    assert proc.returncode == 0, f"exit {proc.returncode}: {feed.get('summary')}\n{tail}"
    assert_feed_run_and_teeth(out, results)


# --------------------------------------------------------------------------- against a fake


@dataclass
class FakeFeed:
    """One change log served at every address: puts and deletes append to it with a growing
    version; a poll returns the changes after its cursor (a position in the log, so valid at
    any address), long-polling up to ``wait_s``. ``skip_every``: the feed leaves out every
    n-th change of the log (0: none) and moves the cursor past it anyway."""

    skip_every: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)
    polls: dict[str, int] = field(default_factory=dict)

    def app(self, node: str) -> web.Application:
        async def put(req: web.Request) -> web.Response:
            body = await req.json()
            rec = {"id": req.match_info["id"], "version": self._version(node),
                   "content": body["content"], "deleted": False}
            self.log.append({"id": rec["id"], "version": rec["version"], "deleted": False,
                             "record": rec})
            return web.json_response(rec)

        async def delete(req: web.Request) -> web.Response:
            change = {"id": req.match_info["id"], "version": self._version(node),
                      "deleted": True, "record": None}
            self.log.append(change)
            return web.json_response({k: change[k] for k in ("id", "version", "deleted")})

        async def changes(req: web.Request) -> web.Response:
            self.polls[node] = self.polls.get(node, 0) + 1
            cursor = req.query.get("cursor")
            pos = int(base64.urlsafe_b64decode(cursor)) if cursor else 0
            deadline = time.monotonic() + float(req.query.get("wait_s", "0"))
            while len(self.log) <= pos and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            end = min(len(self.log), pos + int(req.query.get("limit", "100")))
            items = [c for i, c in enumerate(self.log[pos:end], pos)
                     if not self.skip_every or i % self.skip_every != self.skip_every - 1]
            return web.json_response({"items": items,
                                      "cursor": base64.urlsafe_b64encode(b"%d" % end).decode()})

        app = web.Application()
        app.router.add_put("/v1/ns/{ns}/memories/{id}", put)
        app.router.add_delete("/v1/ns/{ns}/memories/{id}", delete)
        app.router.add_get("/v1/ns/{ns}/changes", changes)
        return app

    def _version(self, node: str) -> str:
        return f"{len(self.log) + 1:016x}.{node}"


@dataclass
class Ctx:
    """The parts of the runner's context the workload uses."""

    history: History
    urls: dict[str, str]
    timeline: Timeline
    options: dict[str, Any]
    rng: random.Random = field(default_factory=lambda: random.Random(3))
    level: str | None = None
    out: Path = Path(".")

    @property
    def nodes(self) -> list[str]:
        return list(self.urls)


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Callable[[FakeFeed], Any]]:
    runners: list[web.AppRunner] = []

    async def start(fake: FakeFeed) -> dict[str, str]:
        urls = {}
        for node in ("n1", "n2", "n3"):
            runner = web.AppRunner(fake.app(node))
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            runners.append(runner)
            port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            urls[node] = f"http://127.0.0.1:{port}"
        return urls

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


async def _drive(urls: dict[str, str], faults: int) -> dict[str, Any]:
    """Writers and the consumer for a moment, ``faults`` fault starts on the timeline meanwhile,
    then the drain and the check."""
    origin = time.monotonic()
    ctx = Ctx(History(origin, workload="feed"), urls, Timeline(origin),
              {"delay": 0.005, "fresh_fraction": 0.5, "drain_s": 10})
    w = Feed(ctx)
    stop = asyncio.Event()
    clients = [asyncio.create_task(w.client(p, stop)) for p in range(3)]
    for _ in range(faults):
        await asyncio.sleep(0.4)
        ctx.timeline.start("kill", {})
        await asyncio.sleep(0.1)
        ctx.timeline.stop("kill", {})
    await asyncio.sleep(0.4)
    stop.set()
    await asyncio.gather(*clients)
    ctx.history.close_open()
    await w.final()
    return w.check()


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_an_honest_fake_feed_is_valid(serve: Any) -> None:
    fake = FakeFeed()
    out = await _drive(await serve(fake), faults=3)
    assert out["valid"] is True, out["summary"]
    assert out["moves"]["fault"] >= 2 and len(fake.polls) >= 2, (out["moves"], fake.polls)
    assert out["delivered_exact"] == out["acknowledged"] > 50 and out["drained"]


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_fake_feed_that_skips_changes_loses_them(serve: Any) -> None:
    out = await _drive(await serve(FakeFeed(skip_every=3)), faults=1)
    assert out["valid"] is False and out["lost_count"] > 0, out["summary"]
    assert out["phantom_count"] == out["order_count"] == out["mismatch_count"] == 0
