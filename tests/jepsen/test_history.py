"""History and Timeline: the recorder's format, thread safety, files, pairing and windows."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from jepsen_style.checker import Verdict, check, ops_from_events
from jepsen_style.history import History, Timeline, load_jsonl, merge, pair_ops, windows


def test_invoke_complete_events_are_jepsen_format() -> None:
    h = History(workload="register")
    w = h.invoke(1, "write", "k", 3, "n2", level="strong")
    h.complete(w, "ok")
    r = h.invoke(1, "read", "k", None, "n3")
    h.complete(r, "ok", value=3, node="n4")
    c = h.invoke(2, "cas", "k", [5, 6], "n1")  # the register holds 3: mismatch
    h.complete(c, "fail", error="mismatch")
    ev = h.events
    assert [e["type"] for e in ev] == ["invoke", "ok", "invoke", "ok", "invoke", "fail"]
    assert ev[0] == {"workload": "register", "process": 1, "type": "invoke", "f": "write",
                     "key": "k", "value": 3, "time": ev[0]["time"], "node": "n2",
                     "level": "strong"}
    assert ev[1]["value"] == 3 and ev[1]["level"] == "strong"  # value and level carried over
    assert ev[3]["value"] == 3 and ev[3]["node"] == "n4"
    assert ev[5]["error"] == "mismatch" and "error" not in ev[1]
    times = [e["time"] for e in ev]
    assert times == sorted(times) and times[0] >= 0
    # The checker reads it as is.
    ops = ops_from_events(ev)
    assert [o.f for o in ops] == ["write", "read", "cas"]
    assert check(ops).verdict is Verdict.LINEARIZABLE


def test_misuse_is_refused() -> None:
    h = History()
    a = h.invoke(0, "read", "k")
    with pytest.raises(ValueError, match="invokes"):
        h.invoke(0, "read", "k")
    with pytest.raises(ValueError, match="completion type"):
        h.complete(a, "done")
    h.complete(a, "info", error="timeout")
    with pytest.raises(ValueError, match="not open"):
        h.complete(a, "ok")


def test_times_share_one_origin() -> None:
    origin = time.monotonic() - 5.0
    a, b = History(origin, workload="a"), History(origin, workload="b")
    tl = Timeline(origin)
    ha = a.invoke(0, "add", "x")
    tl.start("kill", {"nodes": ["n1"]})
    hb = b.invoke(0, "add", "y")
    a.complete(ha, "ok")
    b.complete(hb, "info")
    tl.stop("kill", {})
    assert all(e["time"] >= 5.0 for e in a.events + b.events + tl.events)
    merged = merge([b, a])
    assert [e["time"] for e in merged] == sorted(e["time"] for e in merged)
    assert [(e["workload"], e["type"]) for e in merged] == [
        ("a", "invoke"), ("b", "invoke"), ("a", "ok"), ("b", "info")]
    # Pairing tells processes of different workloads apart.
    pairs = pair_ops(merged)
    assert sorted((p["invoke"]["workload"], p["type"]) for p in pairs) == [("a", "ok"),
                                                                           ("b", "info")]


def test_threads_and_tasks_record_consistently() -> None:
    h = History()

    def worker(p: int) -> None:
        for i in range(200):
            hd = h.invoke(p, "write", f"k{i % 3}", i)
            h.complete(hd, "ok" if i % 2 else "fail")

    threads = [threading.Thread(target=worker, args=(p,)) for p in range(8)]
    for t in threads:
        t.start()

    async def tasks() -> None:
        async def one(p: int) -> None:
            for _ in range(50):
                hd = h.invoke(p, "read", "k0")
                await asyncio.sleep(0)
                h.complete(hd, "ok", value=None)

        await asyncio.gather(*(one(100 + p) for p in range(5)))

    asyncio.run(tasks())
    for t in threads:
        t.join()
    ev = h.events
    assert len(ev) == 2 * (8 * 200 + 5 * 50)
    assert [e["time"] for e in ev] == sorted(e["time"] for e in ev)
    ops_from_events(ev)  # well formed: every completion follows its process's invocation
    assert not h.open_handles()


def test_close_open_marks_info() -> None:
    h = History()
    h.invoke(3, "write", "k", 1)
    h.complete(h.invoke(4, "write", "k", 2), "ok")
    assert h.close_open("cancelled") == 1
    last = h.events[-1]
    assert (last["process"], last["type"], last["error"]) == (3, "info", "cancelled")


def test_jsonl_round_trip(tmp_path: Path) -> None:
    h = History(workload="set")
    hd = h.invoke(0, "read", None, None, "n1")
    h.complete(hd, "ok", value={3, 1, 2})  # a set is written as a sorted list
    hd = h.invoke(0, "cas", "k", (1, 2), "n1")
    h.complete(hd, "ok")
    path = tmp_path / "history.jsonl"
    h.write_jsonl(path)
    back = History.load_jsonl(path)
    assert back[1]["value"] == [1, 2, 3]
    assert back[2]["value"] == [1, 2]
    assert [e["time"] for e in back] == [e["time"] for e in h.events]
    assert load_jsonl(path) == back
    assert len(path.read_text().splitlines()) == 4


def test_timeline_windows(tmp_path: Path) -> None:
    tl = Timeline()
    tl.start("partition", {"shape": "isolate"})
    tl.stop("partition", {})
    tl.start("kill", {"nodes": ["n2"]})
    tl.start("skew", {})
    tl.stop("kill", {})
    ws = tl.windows()
    assert [(w.fault, w.stop is None) for w in ws] == [("partition", False), ("kill", False),
                                                        ("skew", True)]
    assert ws[0].detail == {"shape": "isolate"}
    assert all(w.stop is None or w.stop >= w.start for w in ws)
    tl.write_jsonl(tmp_path / "nemesis.jsonl")
    assert windows(Timeline.load_jsonl(tmp_path / "nemesis.jsonl")) == ws
