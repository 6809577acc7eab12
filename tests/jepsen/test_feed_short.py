"""The feed workload's short schedule (issue 11 acceptance): 3 nodes, 30 s of puts and deletes
through random nodes under partitions and kills, one consumer following the change feed and moved
to another node on each fault, then healing and a drain. The run must be VALID, the consumer must
really have moved and been fed, and the checker must have teeth: each anomaly planted in the run's
own recorded deliveries (a change dropped, an old version redelivered last, a record rewritten, a
put reported as a deletion) makes the same history invalid with that anomaly."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jepsen_style.checker.feed import check_feed, parse_version
from jepsen_style.history import load_jsonl

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


@pytest.mark.integration
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
    assert feed["valid"] is True and feed["drained"], feed["summary"]
    # The consumer followed the feed across nodes, moved by faults, and was fed.
    assert feed["moves"]["fault"] >= 2 and len(feed["nodes_polled"]) >= 2, feed
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
