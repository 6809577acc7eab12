"""The workloads' checkers on hand-made histories, and their clients against an in-process fake.

Each checker must report the anomaly it exists for (a lost add, an unexpected key, a
read-your-writes or monotonic-read violation, a non-linearizable register, replicas that never
converge, a deleted record still found) and pass the clean history beside it. The last tests run
each workload's ``client``/``final``/``check`` against a small fake of Spine's HTTP API served in
this process (no Spine nodes), once honest and once lying, so the client code paths are covered.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from jepsen_style.workloads import WORKLOADS
from jepsen_style.workloads.common import (
    Reply,
    http_client,
    option,
    pairs,
    read_outcome,
    shard_divergence,
    write_outcome,
)
from jepsen_style.workloads.convergence import check_convergence, unit_vector
from jepsen_style.workloads.register import check_register
from jepsen_style.workloads.session import check_session
from jepsen_style.workloads.set import check_set

# --------------------------------------------------------------------------- building histories


class Builder:
    """Hand-made Jepsen events: ``op(process, f, key, value, t0, t1, ...)`` adds an invocation at
    ``t0`` and (unless ``t1`` is None) a completion at ``t1``; events are kept in time order."""

    def __init__(self) -> None:
        self._events: list[tuple[float, int, dict[str, Any]]] = []
        self._seq = itertools.count()

    def op(
        self,
        process: int,
        f: str,
        key: Any,
        value: Any,
        t0: float,
        t1: float | None,
        type: str = "ok",
        result: Any = "same",
        error: str | None = None,
    ) -> Builder:
        self._events.append((t0, next(self._seq), {
            "process": process, "type": "invoke", "f": f, "key": key, "value": value, "time": t0}))
        if t1 is not None:
            done = {"process": process, "type": type, "f": f, "key": key,
                    "value": value if result == "same" else result, "time": t1}
            if error is not None:
                done["error"] = error
            self._events.append((t1, next(self._seq), done))
        return self

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for _, _, e in sorted(self._events, key=lambda x: (x[0], x[1]))]


class Recorder:
    """A minimal stand-in for the harness's History (same call shapes)."""

    def __init__(self, events: list[dict[str, Any]] | None = None) -> None:
        self.events: list[dict[str, Any]] = list(events or [])

    def now(self) -> float:
        return time.monotonic()

    def invoke(self, process: int, f: str, key: Any = None, value: Any = None,
               node: str | None = None) -> dict[str, Any]:
        e = {"process": process, "type": "invoke", "f": f, "key": key, "value": value,
             "time": self.now(), "node": node}
        self.events.append(e)
        return e

    def complete(self, handle: dict[str, Any], type: str, value: Any = "same",
                 error: str | None = None) -> dict[str, Any]:
        e = {"process": handle["process"], "type": type, "f": handle["f"], "key": handle["key"],
             "value": handle["value"] if value == "same" else value, "time": self.now(),
             "node": handle["node"]}
        if error is not None:
            e["error"] = error
        self.events.append(e)
        return e


@dataclass
class Ctx:
    """The stand-in run context (the harness's RunContext has these fields)."""

    history: Recorder
    level: str | None = None
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    nodes: list[str] = field(default_factory=lambda: ["n1", "n2", "n3"])
    urls: dict[str, str] = field(default_factory=dict)
    out: Path = Path(".")
    options: dict[str, Any] = field(default_factory=dict)
    cluster: Any = None


def ctx_with(events: list[dict[str, Any]], **kw: Any) -> Ctx:
    return Ctx(history=Recorder(events), **kw)


# --------------------------------------------------------------------------- the registry


def test_registry_names_the_seven_workloads() -> None:
    assert set(WORKLOADS) == {"register", "set", "session", "convergence", "cas-register", "lock",
                              "feed"}
    for name, registered in WORKLOADS.items():
        cls: Any = registered
        assert cls.name == name
        w = cls(ctx_with([]))
        for method in ("client", "final", "check"):
            assert callable(getattr(w, method))


def test_default_levels_and_the_level_override() -> None:
    expect = {"register": "strong", "set": "session", "session": "session",
              "convergence": "eventual", "cas-register": "strong", "lock": "strong",
              "feed": "session"}
    for name, cls in WORKLOADS.items():
        assert cls(ctx_with([])).level == expect[name]
        assert cls(ctx_with([], level="eventual")).level == "eventual"


def test_options_may_be_scoped_to_one_workload() -> None:
    ctx = ctx_with([], options={"keys": 3, "register.keys": 2, "session.namespace": "mine"})
    register: Any = WORKLOADS["register"](ctx)
    assert register.keys == ["r0", "r1"]
    assert option(ctx, "set", "keys", 9) == 3 and option(ctx, "set", "other", 9) == 9
    session: Any = WORKLOADS["session"](ctx)
    assert session.ns == "mine" and register.ns.startswith("jepsen-register-")


# --------------------------------------------------------------------------- classification


@pytest.mark.parametrize(("status", "code", "write", "read"), [
    (200, None, "ok", "ok"),
    (201, None, "ok", "ok"),
    (404, "not_found", "fail", "ok"),  # a read of nothing observed absence
    (400, "invalid", "fail", "fail"),
    (409, "conflict", "fail", "fail"),
    (429, "overloaded", "fail", "fail"),
    (503, "quorum_unavailable", "info", "fail"),  # a write that may still land
    (503, "session_unavailable", "info", "fail"),
    (504, "timeout", "info", "fail"),
    (500, "internal", "info", "fail"),
    (None, None, "info", "fail"),  # sent, and no answer
])
def test_outcome_classes(status: int | None, code: str | None, write: str, read: str) -> None:
    body = {"error": {"code": code, "message": "x"}} if code else {}
    reply = Reply("n1", status, body, None, None if status else "timeout")
    assert write_outcome(reply)[0] == write
    assert read_outcome(reply)[0] == read
    if status is not None and status >= 400:
        assert write_outcome(reply)[1] == code
    if status is None:
        assert write_outcome(reply)[1] == "timeout"


def test_a_request_that_never_left_is_a_definite_failure() -> None:
    refused = Reply("n1", None, error="connect: ClientConnectorError", sent=False)
    assert write_outcome(refused) == ("fail", "connect: ClientConnectorError")
    assert read_outcome(refused)[0] == "fail"


def test_pairs_match_each_invocation_with_its_process_completion() -> None:
    b = Builder().op(0, "write", "k", 1, 0, 3).op(1, "read", "k", None, 1, 2, result=1)
    b.op(2, "write", "k", 2, 1.5, None)
    got = pairs(b.events)
    assert [(p.process, p.f, p.outcome) for p in got] == [
        (0, "write", "ok"), (1, "read", "ok"), (2, "write", "info")]
    assert got[1].result == 1 and got[0].value == 1
    assert got[2].t1 == float("inf")


# --------------------------------------------------------------------------- register


def test_register_retires_a_key_after_ops_per_key() -> None:
    w: Any = WORKLOADS["register"](ctx_with([], options={"keys": 2, "ops_per_key": 3}))
    picked = [w.pick_key() for _ in range(30)]
    counts = {k: picked.count(k) for k in set(picked)}
    assert max(counts.values()) <= 3 and len(w.keys) == 2
    assert set(picked) <= set(w.used) and len(w.used) >= 10
    forever: Any = WORKLOADS["register"](ctx_with([], options={"keys": 2, "ops_per_key": 0}))
    assert {forever.pick_key() for _ in range(30)} == {"r0", "r1"}


def test_register_sequential_history_is_linearizable() -> None:
    b = Builder()
    b.op(0, "read", "r0", None, 0, 1, result=None)
    b.op(0, "write", "r0", 1, 2, 3)
    b.op(1, "read", "r0", None, 4, 5, result=1)
    b.op(2, "write", "r1", 2, 4, 5)
    b.op(0, "read", "r1", None, 6, 7, result=2)
    out = WORKLOADS["register"](ctx_with(b.events)).check()
    assert out["valid"] is True
    assert out["verdict"] == "linearizable"
    assert out["keys"] == 2 and out["ops"] == 5
    assert out["counts"]["write"] == {"ok": 2, "fail": 0, "info": 0}


def test_register_stale_read_is_not_linearizable() -> None:
    b = Builder()
    b.op(0, "write", "r0", 1, 0, 1)
    b.op(0, "write", "r0", 2, 2, 3)
    b.op(1, "read", "r0", None, 4, 5, result=1)  # 2 was acknowledged before this began
    b.op(1, "read", "r1", None, 0, 1, result=None)
    out = WORKLOADS["register"](ctx_with(b.events)).check()
    assert out["valid"] is False
    assert out["failing_keys"] == ["r0"]
    assert out["first_bad_key"] == "r0"
    assert "read -> 1" in out["explanation"]
    assert out["ops_involved"]


def test_register_unknown_write_may_land_later_and_failed_write_never() -> None:
    b = Builder()
    b.op(0, "write", "r0", 1, 0, 1)
    b.op(1, "write", "r0", 2, 2, 3, type="info", error="quorum_unavailable")
    b.op(2, "read", "r0", None, 10, 11, result=2)  # the indeterminate write landed late
    assert check_register(b.events)["valid"] is True
    b2 = Builder()
    b2.op(0, "write", "r0", 1, 0, 1)
    b2.op(1, "write", "r0", 2, 2, 3, type="fail", error="overloaded")
    b2.op(2, "read", "r0", None, 10, 11, result=2)  # a definitely failed write showed up
    assert check_register(b2.events)["valid"] is False


def test_register_out_of_budget_is_unknown_not_valid() -> None:
    b = Builder()
    for i in range(12):  # many concurrent indeterminate writes: a large search
        b.op(i, "write", "r0", i + 1, 0, None)
    for i in range(12):
        b.op(100 + i, "read", "r0", None, 1 + i, 1.5 + i, result=12 - i)
    out = check_register(b.events, budget=5)
    assert out["valid"] == "unknown"
    assert out["unknown_keys"] == ["r0"]
    assert out["first_unknown_key"] == "r0"


def test_a_read_whose_body_no_write_produced_is_an_anomaly_everywhere() -> None:
    bad = "unexpected body: {'content': 'garbage'}"
    b = Builder().op(0, "write", "r0", 1, 0, 1)
    b.op(1, "read", "r0", None, 2, 3, type="fail", error=bad, result=None)
    out = check_register(b.events)
    assert out["valid"] is False and out["corrupt_reads"] == 1
    assert check_session(b.events)["corrupt_reads"] == 1
    assert check_session(b.events)["valid"] is False
    s = _clean_set()
    s.op(2, "read", "e0", None, 9, 9.5, type="fail", error=bad, result=None)
    out = check_set(s.events)
    assert out["valid"] is False and out["corrupt_reads"] == 1


def test_register_drops_indeterminate_writes_no_read_observed() -> None:
    # A partition leaves 40 writes indeterminate; none is ever read. Kept, they would make the
    # search exponential; dropped, the verdict is the same (they may never have happened).
    b = Builder().op(0, "write", "r0", 1, 0, 1)
    for i in range(40):
        b.op(10 + i, "write", "r0", 100 + i, 2 + i * 0.01, None)
    b.op(1, "read", "r0", None, 3, 4, result=1)
    b.op(2, "write", "r0", 2, 5, 6)
    b.op(1, "read", "r0", None, 7, 8, result=2)
    out = check_register(b.events, budget=1000)
    assert out["valid"] is True and out["unobserved_info_writes_dropped"] == 40
    b.op(1, "read", "r0", None, 9, 10, result=105)  # one of them landed late: kept, and fine
    out = check_register(b.events, budget=10_000)
    assert out["valid"] is True and out["unobserved_info_writes_dropped"] == 39
    b.op(1, "read", "r0", None, 11, 12, result=2)  # but 2 cannot come back after 105
    assert check_register(b.events, budget=10_000)["valid"] is False


def test_register_ignores_other_workloads_events() -> None:
    b = Builder().op(0, "write", "r0", 1, 0, 1).op(0, "roots", "*", None, 2, 3)
    assert check_register(b.events)["valid"] is True


# --------------------------------------------------------------------------- set


def _final(b: Builder, present: dict[str, bool], listed: list[str], t: float = 100.0,
           partial: bool = False) -> Builder:
    for i, (key, found) in enumerate(sorted(present.items())):
        b.op(10_000, "final-read", key, None, t + i, t + i + 0.5, result=found)
    b.op(10_001, "final-list", "*", None, t + 50, t + 51,
         result={"ids": sorted(listed), "partial": partial})
    return b


def _clean_set() -> Builder:
    b = Builder()
    b.op(0, "add", "e0", "e0", 0, 1)
    b.op(1, "add", "e1", "e1", 0.5, 1.5)
    b.op(2, "read", "e0", None, 1.2, 1.4, result=True)  # visible 0.4 s after the ack
    b.op(2, "read", "e1", None, 2.0, 2.1, result=False)  # acked at 1.5: a stale read
    b.op(2, "read", "e1", None, 3.0, 3.1, result=True)
    return _final(b, {"e0": True, "e1": True}, ["e0", "e1"])


def test_set_clean_history_is_valid_with_visibility_and_stale_reads() -> None:
    out = WORKLOADS["set"](ctx_with(_clean_set().events)).check()
    assert out["valid"] is True, out["summary"]
    assert out["lost_count"] == 0 and out["unexpected_count"] == 0
    assert out["acknowledged"] == 2
    vis = out["visibility_s"]
    assert vis["count"] == 2 and vis["max"] == pytest.approx(1.6)  # e1: 3.1 - 1.5
    assert vis["lower_bound"]["max"] == pytest.approx(0.5)  # e1 missed at 2.0
    assert vis["seen_by_first_read"] == 1
    assert out["stale_reads"] == 1 and out["stale_reads_allowed"] is False
    assert out["flickers"] == 0


def test_set_lost_add_is_invalid() -> None:
    b = Builder()
    b.op(0, "add", "e0", "e0", 0, 1)
    b.op(1, "add", "e1", "e1", 0, 1)
    _final(b, {"e0": True, "e1": False}, ["e0"])
    out = check_set(b.events, "session")
    assert out["valid"] is False
    assert out["lost"] == ["e1"] and out["lost_count"] == 1
    assert "1 lost" in out["summary"]


def test_set_unexpected_keys_are_invalid() -> None:
    b = Builder()
    b.op(0, "add", "e0", "e0", 0, 1)
    _final(b, {"e0": True}, ["e0", "zzz"])  # zzz was never attempted
    out = check_set(b.events)
    assert out["valid"] is False
    assert out["unexpected"] == ["zzz"] and out["unexpected_never_attempted"] == 1

    b = Builder()
    b.op(0, "add", "e0", "e0", 0, 1)
    b.op(0, "add", "e1", "e1", 2, 3, type="fail", error="overloaded")  # definitely rejected
    _final(b, {"e0": True, "e1": True}, ["e0", "e1"])
    out = check_set(b.events)
    assert out["valid"] is False
    assert out["unexpected"] == ["e1"] and out["unexpected_failed_adds"] == 1


def test_set_indeterminate_adds_may_or_may_not_appear() -> None:
    b = Builder()
    b.op(0, "add", "e0", "e0", 0, 1)
    b.op(1, "add", "e1", "e1", 0, 3, type="info", error="quorum_unavailable")
    b.op(2, "add", "e2", "e2", 0, 3, type="info", error="timeout")
    b.op(3, "add", "e3", "e3", 0, None)  # never completed
    _final(b, {"e0": True, "e1": True, "e2": False, "e3": False}, ["e0", "e1"])
    out = check_set(b.events)
    assert out["valid"] is True, out["summary"]
    assert out["recovered"] == ["e1"] and out["indeterminate"] == 3


def test_set_unresolved_acked_add_makes_it_unknown() -> None:
    b = Builder()
    b.op(0, "add", "e0", "e0", 0, 1)
    b.op(0, "add", "e1", "e1", 2, 3)
    b.op(10_000, "final-read", "e1", None, 50, 51, type="fail", error="timeout", result=None)
    _final(b, {"e0": True}, ["e0"])
    out = check_set(b.events)
    assert out["valid"] == "unknown"
    assert out["unresolved"] == ["e1"]


def test_set_key_only_the_list_finds_is_lost_and_flickers_are_reported() -> None:
    b = Builder()
    b.op(0, "add", "e0", "e0", 0, 1)
    b.op(1, "read", "e0", None, 2, 3, result=True)
    b.op(1, "read", "e0", None, 4, 5, result=False)  # it was seen, then not
    _final(b, {"e0": False}, ["e0"])  # the strong read missed it: only a minority holds it
    out = check_set(b.events, "eventual")
    assert out["valid"] is False and out["lost"] == ["e0"]
    assert out["final"]["listed_but_read_absent"] == ["e0"]
    assert "1 of the lost are on a minority of replicas only" in out["summary"]
    assert out["flickers"] == 1 and out["stale_reads_allowed"] is True


def test_set_list_decides_a_key_whose_strong_read_never_answered() -> None:
    b = Builder()
    b.op(0, "add", "e0", "e0", 0, 1)
    b.op(0, "add", "e1", "e1", 2, 3)
    b.op(10_000, "final-read", "e1", None, 50, 51, type="fail", error="timeout", result=None)
    _final(b, {"e0": True}, ["e0", "e1"])
    out = check_set(b.events)
    assert out["valid"] is True, out["summary"]
    assert out["unresolved_count"] == 0


def test_set_reports_replicas_that_never_agreed() -> None:
    b = Builder()
    b.op(0, "add", "e0", "e0", 0, 1)
    b.op(10_002, "roots", "*", None, 90, 99,
         result={"converged": False, "diverged_count": 3, "elapsed_s": 9.0})
    _final(b, {"e0": True}, ["e0"])
    out = check_set(b.events)
    assert out["valid"] is True  # nothing lost: disagreement alone is convergence's finding
    assert out["replicas_agreed"] is False and "3 shards never agreed" in out["summary"]


def test_set_without_a_final_list_is_unknown() -> None:
    b = Builder()
    b.op(0, "add", "e0", "e0", 0, 1)
    b.op(10_000, "final-read", "e0", None, 50, 51, result=True)
    assert check_set(b.events)["valid"] == "unknown"


# --------------------------------------------------------------------------- session


def _clean_session() -> Builder:
    b = Builder()
    b.op(0, "write", "p0-k0", 1, 0, 1)
    b.op(0, "read", "p0-k0", None, 2, 3, result=1)
    b.op(0, "write", "p0-k0", 2, 4, 5)
    b.op(0, "read", "p0-k0", None, 6, 7, result=2)
    b.op(1, "read", "p0-k0", None, 0.5, 0.7, result=None)  # before any write landed: fine
    b.op(1, "read", "p0-k0", None, 2, 3, result=1)
    b.op(1, "read", "p0-k0", None, 8, 9, result=2)
    b.op(1, "read", "p0-k0", None, 10, 11, type="fail", error="session_unavailable", result=None)
    return b


def test_session_clean_history_is_valid_and_counts_refusals() -> None:
    out = WORKLOADS["session"](ctx_with(_clean_session().events)).check()
    assert out["valid"] is True, out["summary"]
    assert out["session_unavailable"] == 1
    assert out["own_reads"] == 2 and out["other_reads"] == 3
    assert out["errors"] == {"session_unavailable": 1}


def test_session_read_your_writes_violation() -> None:
    b = _clean_session()
    b.op(0, "read", "p0-k0", None, 12, 13, result=1)  # p0's own write of 2 was acknowledged
    out = check_session(b.events)
    assert out["valid"] is False
    assert out["ryw_violations"] == 1
    assert out["ryw_examples"][0]["own_acked_write"] == 2
    assert out["ryw_examples"][0]["read"] == 1


def test_session_read_your_writes_violation_by_a_404() -> None:
    b = Builder()
    b.op(0, "write", "p0-k0", 1, 0, 1)
    b.op(0, "read", "p0-k0", None, 2, 3, result=None)
    out = check_session(b.events)
    assert out["valid"] is False and out["ryw_violations"] == 1


def test_session_monotonic_read_violation() -> None:
    b = _clean_session()
    b.op(1, "read", "p0-k0", None, 12, 13, result=1)  # p1 had already read 2
    out = check_session(b.events)
    assert out["valid"] is False
    assert out["monotonic_violations"] == 1 and out["ryw_violations"] == 0
    assert out["monotonic_examples"][0]["earlier_read"] == 2


def test_session_indeterminate_write_is_no_floor_but_once_read_it_is() -> None:
    b = Builder()
    b.op(0, "write", "p0-k0", 1, 0, 1)
    b.op(0, "write", "p0-k0", 2, 2, 3, type="info", error="quorum_unavailable")
    b.op(0, "read", "p0-k0", None, 4, 5, result=1)  # 2 never acknowledged: 1 is fine
    assert check_session(b.events)["valid"] is True
    b.op(0, "read", "p0-k0", None, 6, 7, result=2)  # it landed after all
    b.op(0, "read", "p0-k0", None, 8, 9, result=1)  # and now time goes backwards
    out = check_session(b.events)
    assert out["valid"] is False and out["monotonic_violations"] == 1


def test_session_phantom_value_is_invalid() -> None:
    b = Builder()
    b.op(0, "write", "p0-k0", 1, 0, 1)
    b.op(1, "read", "p0-k0", None, 2, 3, result=99)
    out = check_session(b.events)
    assert out["valid"] is False and out["phantom_reads"] == 1
    b = Builder()
    b.op(0, "write", "p0-k0", 1, 0, 1, type="fail", error="overloaded")  # definitely rejected
    b.op(1, "read", "p0-k0", None, 2, 3, result=1)
    out = check_session(b.events)
    assert out["valid"] is False and out["phantom_examples"][0]["write"] == "fail"


def test_session_indeterminate_write_landing_after_a_later_acked_one_is_reordering() -> None:
    # p0's write of 1 timed out, its write of 2 was acknowledged, and then 1 is what everyone
    # reads: the first write took effect after the second (monotonic writes), which is not the
    # same thing as a replica answering with a stale version.
    b = Builder()
    b.op(0, "write", "p0-k0", 1, 0, 3, type="info", error="timeout")
    b.op(0, "write", "p0-k0", 2, 4, 5)
    b.op(1, "read", "p0-k0", None, 5.5, 5.7, result=2)
    b.op(0, "read", "p0-k0", None, 6, 7, result=1)
    b.op(1, "read", "p0-k0", None, 6, 7, result=1)
    out = check_session(b.events, monotonic_writes=False)
    assert out["valid"] is True  # reported, not a violation, when monotonic writes are not asked
    assert out["ryw_violations"] == 0 and out["monotonic_violations"] == 0
    assert out["monotonic_write_violations"] == 2 and out["monotonic_write_incidents"] == 2
    assert out["monotonic_write_examples"][0]["own_acked_write"] == 2
    assert "2 monotonic-write" in out["summary"]
    assert check_session(b.events)["valid"] is False  # the default: Spine promises them
    w = WORKLOADS["session"](ctx_with(b.events))
    assert w.check()["valid"] is False
    w = WORKLOADS["session"](ctx_with(b.events, options={"monotonic_writes": False}))
    assert w.check()["valid"] is True


def test_session_without_any_successful_read_is_unknown() -> None:
    b = Builder().op(0, "write", "p0-k0", 1, 0, 1)
    b.op(0, "read", "p0-k0", None, 2, 3, type="fail", error="timeout", result=None)
    assert check_session(b.events)["valid"] == "unknown"


# --------------------------------------------------------------------------- convergence


def _roots(b: Builder, converged: bool = True) -> Builder:
    b.op(10_000, "roots", "*", None, 50, 51, result={
        "converged": converged, "elapsed_s": 1.0, "diverged_count": 0 if converged else 3,
        "diverged": [], "nodes_answered": ["n1", "n2", "n3"]})
    return b


def _search(b: Builder, key: str, seed: int, hits: list[tuple[str, str]], t: float) -> None:
    b.op(10_001, "search", key, seed, t, t + 0.1, result={
        "seed": seed, "ids": [h[0] for h in hits], "scores": [1.0] + [0.1] * (len(hits) - 1),
        "contents": [h[1] for h in hits], "partial": False})


def _clean_convergence() -> Builder:
    b = Builder()
    b.op(0, "write", "v0-0", 1, 0, 1)
    b.op(0, "write", "v0-0", 2, 2, 3)
    b.op(0, "write", "v0-1", 3, 4, 5)
    b.op(0, "delete", "v0-1", None, 6, 7)
    b.op(1, "write", "v1-0", 4, 0, 1, type="info", error="timeout")  # landed after all
    _roots(b)
    b.op(10_001, "final-read", "v0-0", None, 60, 61, result={"live": True, "seed": 2})
    b.op(10_001, "final-read", "v0-1", None, 62, 63, result={"live": False, "seed": None})
    b.op(10_001, "final-read", "v1-0", None, 64, 65, result={"live": True, "seed": 4})
    _search(b, "v0-0", 2, [("v0-0", "2"), ("v1-0", "4")], 70)
    _search(b, "v0-1", 3, [("v0-0", "2")], 71)
    _search(b, "v1-0", 4, [("v1-0", "4")], 72)
    return b


def test_convergence_clean_history_is_valid() -> None:
    out = WORKLOADS["convergence"](ctx_with(_clean_convergence().events)).check()
    assert out["valid"] is True, out["summary"]
    assert out["live_at_end"] == 2 and out["deleted_at_end"] == 1
    assert out["self_hit_not_first"] == 0 and out["self_score_min"] == 1.0


def test_convergence_roots_that_never_agree_are_invalid() -> None:
    events = [e for e in _clean_convergence().events if e["f"] != "roots"]
    out = check_convergence(_roots(Builder(), converged=False).events + events)
    assert out["valid"] is False and out["roots_converged"] is False
    assert "still differ" in out["summary"]


def test_convergence_live_record_missing_from_search_is_invalid() -> None:
    b = _clean_convergence()
    _search(b, "v1-0", 4, [("v0-0", "2")], 80)  # a later search lost it
    out = check_convergence(b.events)
    assert out["valid"] is False
    assert out["missing_from_search_count"] == 1
    assert out["missing_from_search"][0]["key"] == "v1-0"


def test_convergence_deleted_record_returned_is_invalid() -> None:
    b = _clean_convergence()
    _search(b, "v0-1", 3, [("v0-1", "3"), ("v0-0", "2")], 80)
    out = check_convergence(b.events)
    assert out["valid"] is False
    assert out["deleted_returned"][0]["key"] == "v0-1"


def test_convergence_stale_record_in_search_is_invalid() -> None:
    b = _clean_convergence()
    _search(b, "v0-0", 2, [("v0-0", "1")], 80)  # the old version's content
    out = check_convergence(b.events)
    assert out["valid"] is False and out["stale_search_records_count"] == 1


def test_convergence_final_state_the_history_cannot_explain_is_invalid() -> None:
    b = Builder()
    b.op(0, "write", "v0-0", 1, 0, 1)
    b.op(0, "delete", "v0-0", None, 2, 3)  # acknowledged: the record must stay deleted
    _roots(b)
    b.op(10_001, "final-read", "v0-0", None, 60, 61, result={"live": True, "seed": 1})
    _search(b, "v0-0", 1, [("v0-0", "1")], 70)
    out = check_convergence(b.events)
    assert out["valid"] is False
    assert out["unexplained"] == [{"key": "v0-0", "final": "live:1", "allowed": ["absent"]}]


def test_convergence_unread_key_or_no_roots_is_unknown() -> None:
    b = Builder()
    b.op(0, "write", "v0-0", 1, 0, 1)
    _roots(b)
    assert check_convergence(b.events)["valid"] == "unknown"  # never read back
    events = [e for e in _clean_convergence().events if e["f"] != "roots"]
    assert check_convergence(events)["valid"] == "unknown"


def test_shard_divergence_compares_preference_list_members_only() -> None:
    def view(root1: str | None, root2: str) -> dict[str, Any]:
        return {"shards": [
            {"shard": 0, "preference_list": ["n1", "n2"], "root": root1},
            {"shard": 1, "preference_list": ["n2", "n3"], "root": root2},
        ]}
    same = {"n1": view("aa", "bb"), "n2": view("aa", "bb"), "n3": view("zz", "bb")}
    assert shard_divergence(same) == (2, [])  # n3's root for shard 0 is not compared
    differ = {"n1": view("aa", "bb"), "n2": view("ab", "bb")}
    n, diverged = shard_divergence(differ)
    assert n == 2 and [d["shard"] for d in diverged] == [0]
    assert diverged[0]["roots"] == {"n1": "aa", "n2": "ab"}
    assert diverged[0]["silent"] == []
    unbuilt = {"n1": view(None, "bb"), "n2": view("aa", "bb")}
    assert [d["shard"] for d in shard_divergence(unbuilt)[1]] == [0]
    only_n3 = {"n3": view("zz", "bb")}  # n1 and n2 silent: shard 0 has no member to compare
    assert [d["shard"] for d in shard_divergence(only_n3)[1]] == []


def test_unit_vectors_are_unit_and_repeatable() -> None:
    v = unit_vector(5, 384)
    assert len(v) == 384 and v == unit_vector(5, 384) and v != unit_vector(6, 384)
    assert sum(x * x for x in v) == pytest.approx(1.0, abs=1e-4)


# --------------------------------------------------------------------------- clients vs a fake


@dataclass
class FakeSpine:
    """Spine's public HTTP API over one dict, enough for the four workloads. ``lie``: acknowledge
    every third write without storing it, and answer reads with the first version written."""

    lie: bool = False
    dim: int = 8
    store: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    first: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    writes: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_put("/v1/ns/{ns}/memories/{id}", self.put)
        r.add_get("/v1/ns/{ns}/memories/{id}", self.get)
        r.add_delete("/v1/ns/{ns}/memories/{id}", self.delete)
        r.add_get("/v1/ns/{ns}/memories", self.list)
        r.add_post("/v1/ns/{ns}/search", self.search)
        r.add_get("/v1/cluster", self.cluster)
        r.add_get("/v1/cluster/shards", self.shards)
        return app

    @staticmethod
    def _key(req: web.Request) -> tuple[str, str]:
        return req.match_info["ns"], req.match_info["id"]

    def _write(self, key: tuple[str, str], rec: dict[str, Any]) -> web.Response:
        self.writes += 1
        if not (self.lie and self.writes % 3 == 0):
            self.store[key] = rec
            self.first.setdefault(key, rec)
        return web.json_response({"id": key[1], **rec}, headers={"Spine-Session": "t"})

    async def put(self, req: web.Request) -> web.Response:
        body = await req.json()
        return self._write(self._key(req), {"content": body["content"], "deleted": False,
                                            "vector": body.get("vector")})

    async def delete(self, req: web.Request) -> web.Response:
        return self._write(self._key(req), {"content": "", "deleted": True, "vector": None})

    async def get(self, req: web.Request) -> web.Response:
        key = self._key(req)
        rec = (self.first if self.lie else self.store).get(key)
        if rec is None or rec["deleted"]:
            return web.json_response({"error": {"code": "not_found", "message": "no"}},
                                     status=404, headers={"Spine-Session": "t"})
        return web.json_response({"id": key[1], "content": rec["content"]},
                                 headers={"Spine-Session": "t"})

    async def list(self, req: web.Request) -> web.Response:
        ns = req.match_info["ns"]
        items = [{"id": k[1]} for k, rec in sorted(self.store.items())
                 if k[0] == ns and not rec["deleted"]]
        return web.json_response({"items": items, "next_cursor": None, "partial": False})

    async def search(self, req: web.Request) -> web.Response:
        ns = req.match_info["ns"]
        body = await req.json()
        q = body["vector"]
        scored = sorted(
            ((sum(a * b for a, b in zip(q, rec["vector"], strict=True)), k[1], rec)
             for k, rec in self.store.items()
             if k[0] == ns and not rec["deleted"] and rec["vector"]),
            key=lambda x: -x[0])[: body.get("k", 10)]
        return web.json_response({"results": [
            {"id": mid, "score": s, "record": {"content": rec["content"]}}
            for s, mid, rec in scored], "partial": False, "missing_shards": []})

    async def cluster(self, req: web.Request) -> web.Response:
        return web.json_response({"embedder": {"name": "fake", "dim": self.dim}})

    async def shards(self, req: web.Request) -> web.Response:
        return web.json_response({"shards": [
            {"shard": 0, "preference_list": ["n1", "n2"], "root": "00ff"}]})


@pytest_asyncio.fixture
async def fake_url() -> AsyncIterator[tuple[FakeSpine, FakeSpine, str, str]]:
    honest, liar = FakeSpine(), FakeSpine(lie=True)
    runners = []
    urls = []
    for fake in (honest, liar):
        runner = web.AppRunner(fake.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        runners.append(runner)
        urls.append(f"http://127.0.0.1:{port}")
    try:
        yield honest, liar, urls[0], urls[1]
    finally:
        for runner in runners:
            await runner.cleanup()


async def _drive(name: str, url: str, fake: FakeSpine, seconds: float = 0.6,
                 min_writes: int = 12, **options: Any) -> dict[str, Any]:
    """Run the workload's clients against `url` for `seconds`, and on until `fake` has taken
    `min_writes` writes (a loaded CI box runs fewer in the time; 30 s at most)."""
    ctx = Ctx(history=Recorder(), nodes=["n1", "n2"], urls={"n1": url, "n2": url},
              options={"timeout": 2.0, "delay": 0.002, "deadline": 2.0, **options})
    w = WORKLOADS[name](ctx)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(w.client(p, stop)) for p in range(3)]
    await asyncio.sleep(seconds)
    deadline = time.monotonic() + 30.0
    while fake.writes < min_writes and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.gather(*tasks)
    await w.final()
    result: dict[str, Any] = w.check()
    return result


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["register", "set", "session", "convergence"])
async def test_workload_against_an_honest_fake_is_valid(
    fake_url: tuple[FakeSpine, FakeSpine, str, str], name: str
) -> None:
    honest, _, url, _ = fake_url
    out = await _drive(name, url, honest)
    assert out["valid"] is True, out.get("summary")
    assert honest.writes > 10


@pytest.mark.asyncio
@pytest.mark.timeout(60)
@pytest.mark.parametrize(("name", "field_"), [
    ("register", "failing_keys"),
    ("set", "lost_count"),
    ("session", "ryw_violations"),
    ("convergence", "unexplained_count"),
])
async def test_workload_against_a_lying_fake_is_invalid(
    fake_url: tuple[FakeSpine, FakeSpine, str, str], name: str, field_: str
) -> None:
    _, liar, _, url = fake_url
    out = await _drive(name, url, liar)
    assert out["valid"] is False, out.get("summary")
    assert out[field_]


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_refused_connection_fails_reads_and_writes() -> None:
    ctx = Ctx(history=Recorder(), nodes=["n1"], urls={"n1": "http://127.0.0.1:9"},
              options={"timeout": 0.5, "delay": 0.001})
    w = WORKLOADS["register"](ctx)
    stop = asyncio.Event()
    task = asyncio.create_task(w.client(0, stop))
    await asyncio.sleep(0.3)
    stop.set()
    await task
    done = [e for e in ctx.history.events if e["type"] != "invoke"]
    assert {e["type"] for e in done} == {"fail"}  # refused: the request never left
    assert all(str(e["error"]).startswith("connect") for e in done)
    assert w.check()["valid"] is True  # nothing observed, nothing contradicted


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_request_the_server_took_before_dying_is_not_a_definite_failure() -> None:
    """The server reads the PUT, stops listening and drops the connection unanswered (a node
    SIGKILLed mid-request). aiohttp would resend the PUT and report the refused reconnect as a
    connect error; the client must neither resend nor call the outcome a definite fail."""
    seen: list[bytes] = []
    server: asyncio.base_events.Server | None = None

    async def take_and_die(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        assert server is not None
        server.close()
        writer.transport.abort()

    server = await asyncio.start_server(take_and_die, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ctx = Ctx(history=Recorder(), nodes=["n1"], urls={"n1": f"http://127.0.0.1:{port}"},
              options={"timeout": 5.0})
    async with http_client(ctx, "set") as http:
        reply = await http.call("n1", "PUT", "/v1/ns/x/memories/k", json={"content": "k"})
    await server.wait_closed()
    assert len(seen) == 1 and seen[0].startswith(b"PUT ")
    assert reply.status is None and reply.sent
    assert write_outcome(reply)[0] == "info"
