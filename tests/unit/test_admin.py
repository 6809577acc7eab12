"""`spine status` and the ring-change progress bar, from synthetic views."""

from __future__ import annotations

import io
from typing import Any

from spine.admin import format_status, ownership, progress_line, watch


def _views() -> tuple[dict[str, Any], dict[str, Any]]:
    cluster = {"cluster": "c", "node": "n1", "members": [
        {"id": "n1", "address": "127.0.0.1:1", "zone": "", "state": "active", "alive": True},
        {"id": "n2", "address": "127.0.0.1:2", "zone": "z2", "state": "leaving", "alive": False},
        {"id": "n3", "address": "127.0.0.1:3", "zone": "", "state": "joining", "alive": True},
    ]}
    shards = {"ring": {"digest": "d", "changing": True}, "shards": [
        {"shard": 0, "preference_list": ["n1", "n2"], "pending": ["n3"]},
        {"shard": 1, "preference_list": ["n1", "n2"], "pending": []},
    ]}
    return cluster, shards


def test_ownership_counts_owned_and_pending_shards() -> None:
    _, shards = _views()
    assert ownership(shards) == {"n1": (2, 0), "n2": (2, 0), "n3": (0, 1)}


def test_status_codes_ownership_and_records() -> None:
    cluster, shards = _views()
    text = format_status(cluster, shards, {"n1": 10, "n2": None, "n3": 0})
    rows = {ln.split()[1]: ln.split() for ln in text.splitlines()[3:]}
    assert rows["n1"][0] == "UN" and rows["n1"][3] == "10" and rows["n1"][4] == "100.0%"
    assert rows["n2"][0] == "DL" and rows["n2"][3] == "?" and rows["n2"][-1] == "z2"
    assert rows["n3"][0] == "UJ" and rows["n3"][4] == "0.0%" and rows["n3"][5] == "1"
    assert "changing" in text.splitlines()[0]


def test_a_removed_node_is_marked_removed_not_merely_left() -> None:
    cluster, shards = _views()
    cluster["members"].append({"id": "n4", "address": "127.0.0.1:4", "zone": "",
                               "state": "left", "alive": False, "removed": True})
    cluster["members"].append({"id": "n5", "address": "127.0.0.1:5", "zone": "",
                               "state": "left", "alive": False, "removed": False})
    text = format_status(cluster, shards, {})
    rows = {ln.split()[1]: ln.split() for ln in text.splitlines()[3:]}
    assert rows["n4"][0] == "DR" and rows["n5"][0] == "DX"
    assert "R(removed)" in text.splitlines()[1]


def test_progress_line_sums_every_pending_owner() -> None:
    line = progress_line([{"shards": 4, "copied": 1, "records": 10, "bytes": 2048},
                          {"shards": 4, "copied": 3, "records": 5, "bytes": 0}], 7.2, width=8)
    assert line.startswith("[####....] 4/8 shards  15 records  2.0 KiB  7s")
    assert progress_line([], 0.0, width=4).startswith("[####] 0/0 shards")


def test_watch_stops_when_the_node_reaches_its_state() -> None:
    calls = {"n": 0}

    def get(url: str, path: str) -> Any:
        calls["n"] += 1
        done = calls["n"] > 4
        if path == "/v1/cluster/shards":
            return {"ring": {"changing": not done},
                    "transfers": {"shards": 2, "copied": 2 if done else 1}}
        return {"members": [{"id": "n4", "state": "active" if done else "joining"}]}

    out = io.StringIO()
    assert watch(get, lambda: {"n1": "u"}, "n4", "join", timeout=10, out=out, interval=0)
    assert "n4 is active" in out.getvalue() and "1/2 shards" in out.getvalue()
    out = io.StringIO()
    assert not watch(get, lambda: {}, "n4", "join", timeout=0.01, out=out, interval=0)
