"""The coordination workloads' checkers (``cas-register``, ``lock``) on hand-made histories, and
their clients against an in-process fake of Spine's conditional writes and leases.

Each violation kind must be reported on its own small history, and the clean history beside it
must pass. The fake serves DESIGN §12 honestly, or breaks it the way the teeth options break the
real server (a compare-and-set that ignores a stale version, fences that are not checked), so the
client code paths and the end-to-end verdicts are covered without Spine nodes.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from jepsen_style.checker.lock import check_lock, grants, parse_content
from jepsen_style.runner import dotted, parse_args
from jepsen_style.workloads import WORKLOADS
from jepsen_style.workloads.cas_register import MISMATCH, cas_outcome, paxos_write_outcome
from jepsen_style.workloads.common import Reply
from jepsen_style.workloads.register import check_register

# --------------------------------------------------------------------------- building histories


class Builder:
    """Hand-made events: ``op(process, f, key, value, t0, t1, type, result, error)`` adds an
    invocation at ``t0`` and (unless ``t1`` is None) its completion at ``t1``, in time order."""

    def __init__(self) -> None:
        self._events: list[tuple[float, int, dict[str, Any]]] = []
        self._seq = itertools.count()

    def op(self, process: int, f: str, key: Any, value: Any, t0: float, t1: float | None,
           type: str = "ok", result: Any = "same", error: str | None = None) -> Builder:
        self._events.append((t0, next(self._seq), {
            "process": process, "type": "invoke", "f": f, "key": key, "value": value,
            "time": t0}))
        if t1 is not None:
            done = {"process": process, "type": type, "f": f, "key": key,
                    "value": value if result == "same" else result, "time": t1}
            if error is not None:
                done["error"] = error
            self._events.append((t1, next(self._seq), done))
        return self

    # the lock workload's operations
    def acquire(self, p: int, lease: str, t0: float, t1: float | None, token: int,
                ttl_ms: int = 1000, remaining_ms: int | None = None, type: str = "ok",
                skew_ms: int = 0) -> Builder:
        holder = f"c{p}"
        result = ({"holder": holder, "token": token, "ttl_ms": ttl_ms, "skew_ms": skew_ms,
                   "remaining_ms": ttl_ms if remaining_ms is None else remaining_ms}
                  if type == "ok" else None)
        return self.op(p, "acquire", lease, {"holder": holder, "ttl_ms": ttl_ms}, t0, t1,
                       type, result)

    def fwrite(self, p: int, key: str, token: int, seq: int, t0: float, t1: float | None,
               type: str = "ok", lease: str = "L") -> Builder:
        content = f"c{p}:{token}:{seq}"
        return self.op(p, "fwrite", key, {"lease": lease, "token": token, "holder": f"c{p}",
                                          "content": content}, t0, t1, type,
                       error="fenced" if type == "fail" else None)

    def release(self, p: int, lease: str, token: int, t0: float, t1: float) -> Builder:
        return self.op(p, "release", lease, {"token": token}, t0, t1)

    def history(self, key: str, contents: list[str], t: float = 100.0) -> Builder:
        rows = [{"content": c, "version": f"v{i}", "concurrent": False}
                for i, c in enumerate(contents)]
        return self.op(10_000 + len(self._events), "history", key, None, t, t + 0.1,
                       result=rows)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for _, _, e in sorted(self._events, key=lambda x: (x[0], x[1]))]


def clean_lock_history() -> Builder:
    """Two holders one after the other, each writing twice to k; a third holder stalls past its
    lease and its late write is refused; the history read back in order."""
    b = Builder()
    b.acquire(0, "L", 0.0, 0.1, token=1).fwrite(0, "k", 1, 1, 0.2, 0.3)
    b.fwrite(0, "k", 1, 2, 0.4, 0.5).release(0, "L", 1, 0.6, 0.7)
    b.acquire(1, "L", 0.65, 0.8, token=2)  # sent before the release was answered: fine
    b.fwrite(1, "k", 2, 3, 0.9, 1.0).fwrite(1, "k", 2, 4, 1.1, 1.2)
    b.acquire(2, "L", 1.0, 1.05, token=1, type="fail")  # lease_held
    b.release(1, "L", 2, 1.3, 1.4)
    b.acquire(2, "L", 1.5, 1.6, token=3, ttl_ms=500).fwrite(2, "k", 3, 5, 1.7, 1.8)
    b.acquire(0, "L", 2.2, 2.3, token=4)  # after c2's lease ran out (1.5 + 0.5 s)
    b.fwrite(0, "k", 4, 6, 2.4, 2.5)
    b.fwrite(2, "k", 3, 7, 2.6, 2.7, type="fail")  # c2 woke up: fenced
    b.release(0, "L", 4, 2.8, 2.9)
    b.history("k", ["c0:1:1", "c0:1:2", "c1:2:3", "c1:2:4", "c2:3:5", "c0:4:6"])
    return b


# --------------------------------------------------------------------------- lock checker


def test_lock_clean_history_is_valid() -> None:
    out = check_lock(clean_lock_history().events)
    assert out["valid"] is True, out
    assert out["grants"] == 4 and out["keys_read"] == 1
    assert out["counts"]["fwrite"] == {"ok": 6, "fail": 1, "info": 0}
    assert out["acked_not_in_history_count"] == 0 and out["lost_count"] == 0


def test_parse_content() -> None:
    assert parse_content("c1:7:42") == ("c1", 7)
    assert parse_content("a:b:c1:7:42") == ("a:b:c1", 7)
    assert parse_content("c1:x:42") is None and parse_content("nope") is None


def test_a_grant_runs_until_its_release_is_sent_or_its_time_is_up() -> None:
    b = Builder().acquire(0, "L", 1.0, 1.1, token=1, ttl_ms=1000, remaining_ms=800)
    b.release(0, "L", 1, 1.5, 1.6).acquire(1, "L", 2.0, 2.1, token=2, ttl_ms=1000)
    g0, g1 = grants(b.events)
    assert g0.until == pytest.approx(1.5)  # released
    assert g1.until == pytest.approx(3.0)  # not released: sent + ttl
    g = grants(Builder().acquire(0, "L", 1.0, 1.1, token=1, remaining_ms=800).events)[0]
    assert g.until == pytest.approx(1.8)  # the server said 800 ms were left


def test_lock_interleaved_holders_in_the_applied_order() -> None:
    b = Builder().history("k", ["c0:1:1", "c1:2:2", "c0:1:3"])
    out = check_lock(b.events)
    assert out["valid"] is False
    assert out["interleaved_count"] == 1
    v = out["interleaved"][0]
    assert v["evidence"] == "history" and v["holding"] == ["c0", 1] and v["between"] == ["c1", 2]
    # the stale token after 2 is the same anomaly seen as (b)
    assert out["stale_applied_count"] == 1


def test_lock_interleaving_of_one_token_given_to_two_holders_is_caught() -> None:
    """Equal tokens defeat fencing (b); only (a) and (c) can see two holders of token 5."""
    b = Builder().acquire(0, "L", 0.0, 0.1, token=5).acquire(1, "L", 0.2, 0.3, token=5)
    b.history("k", ["c0:5:1", "c1:5:2", "c0:5:3"])
    out = check_lock(b.events)
    assert out["valid"] is False and out["stale_applied_count"] == 0
    assert out["interleaved_count"] == 1
    assert [v["kind"] for v in out["overlapping_grants"]] == ["token_reused"]


def test_lock_interleaved_holders_by_acknowledgements() -> None:
    b = Builder().fwrite(0, "k", 1, 1, 0.0, 0.1).fwrite(1, "k", 2, 2, 0.2, 0.3)
    b.fwrite(0, "k", 1, 3, 0.4, 0.5)
    out = check_lock(b.events)
    assert out["valid"] is False
    assert any(v["evidence"] == "acks" for v in out["interleaved"])
    assert any(v["evidence"] == "acks" for v in out["stale_applied"])
    # overlapping in time, the three could have been applied in another order: nothing proven
    b = Builder().fwrite(0, "k", 1, 1, 0.0, 0.1).fwrite(1, "k", 2, 2, 0.05, 0.3)
    b.fwrite(0, "k", 1, 3, 0.2, 0.5)
    assert check_lock(b.events)["valid"] is True


def test_lock_stale_token_applied_in_the_applied_order() -> None:
    out = check_lock(Builder().history("k", ["c0:3:1", "c1:2:2"]).events)
    assert out["valid"] is False and out["interleaved_count"] == 0
    assert out["stale_applied"][0]["applied"] == "c1:2:2"
    assert out["stale_applied"][0]["after"] == "c0:3:1"
    # a lower token before a higher one is the normal order
    assert check_lock(Builder().history("k", ["c1:2:2", "c0:3:1"]).events)["valid"] is True


def test_lock_stale_token_acked_after_a_higher_one() -> None:
    b = Builder().fwrite(0, "k", 3, 1, 0.0, 0.1).fwrite(1, "k", 2, 2, 0.2, 0.3)
    out = check_lock(b.events)
    assert out["valid"] is False and out["stale_applied_count"] == 1
    # refused (409 fenced) or unknown: nothing applied that we know of
    for kind in ("fail", "info"):
        b = Builder().fwrite(0, "k", 3, 1, 0.0, 0.1).fwrite(1, "k", 2, 2, 0.2, 0.3, type=kind)
        assert check_lock(b.events)["valid"] is True
    # another key, or another lease, is not fenced by that token
    b = Builder().fwrite(0, "k", 3, 1, 0.0, 0.1).fwrite(1, "j", 2, 2, 0.2, 0.3)
    assert check_lock(b.events)["valid"] is True
    b = Builder().fwrite(0, "k", 3, 1, 0.0, 0.1).fwrite(1, "k", 2, 2, 0.2, 0.3, lease="M")
    assert check_lock(b.events)["valid"] is True


def test_lock_grant_while_another_holding_runs() -> None:
    b = Builder().acquire(0, "L", 0.0, 0.1, token=1, ttl_ms=1000)
    b.acquire(1, "L", 0.5, 0.6, token=2, skew_ms=700)
    out = check_lock(b.events)
    assert out["valid"] is False
    v = out["overlapping_grants"][0]
    assert v["kind"] == "granted_while_held" and v["overlap_s"] == pytest.approx(0.4)
    assert v["clock_spread_ms"] == 700 and v["beyond_max_offset"] is True
    # answered after the first holding's time was up: fine, however late it was sent
    b = Builder().acquire(0, "L", 0.0, 0.1, token=1, ttl_ms=1000)
    b.acquire(1, "L", 0.5, 1.01, token=2)
    assert check_lock(b.events)["valid"] is True
    # the server said less time was left than asked: the holding ends there
    b = Builder().acquire(0, "L", 0.0, 0.1, token=1, ttl_ms=1000, remaining_ms=300)
    b.acquire(1, "L", 0.5, 0.6, token=2)
    assert check_lock(b.events)["valid"] is True
    # an unknown or refused acquire granted nothing we know of
    for kind in ("info", "fail"):
        b = Builder().acquire(0, "L", 0.0, 0.1, token=1, ttl_ms=1000)
        b.acquire(1, "L", 0.5, 0.6 if kind == "fail" else None, token=2, type=kind)
        assert check_lock(b.events)["valid"] is True
    # a renewal keeps the token and is no second holding
    b = Builder().acquire(0, "L", 0.0, 0.1, token=1).acquire(0, "L", 0.5, 0.6, token=1)
    assert check_lock(b.events)["valid"] is True


def test_lock_token_that_does_not_grow_across_holders() -> None:
    b = Builder().acquire(0, "L", 0.0, 0.1, token=4, ttl_ms=100)
    b.acquire(1, "L", 0.5, 0.6, token=3, ttl_ms=100)
    out = check_lock(b.events)
    assert out["valid"] is False
    assert [v["kind"] for v in out["overlapping_grants"]] == ["token_decreased"]


def test_lock_acked_write_missing_from_a_whole_history_is_lost() -> None:
    b = Builder().fwrite(0, "k", 1, 1, 0.0, 0.1).history("k", ["c0:1:0"])
    out = check_lock(b.events)
    assert out["valid"] is False and out["lost_count"] == 1
    # a history as long as the retention may have been trimmed: reported, not counted
    out = check_lock(b.events, history_keep=0)
    assert out["valid"] is True and out["acked_not_in_history_count"] == 1


def test_lock_ignores_other_workloads_events() -> None:
    b = clean_lock_history().op(50, "read", "k", None, 0.0, 0.1, result=3)
    assert check_lock(b.events)["valid"] is True


# --------------------------------------------------------------------------- cas register


def cas(b: Builder, p: int, key: str, old: Any, new: int, t0: float, t1: float | None,
        type: str = "ok") -> Builder:
    return b.op(p, "cas", key, [old, new], t0, t1, type,
                error=MISMATCH if type == "fail" else None)


def test_cas_register_valid_history() -> None:
    b = Builder()
    cas(b, 0, "k", None, 1, 0.0, 0.1)  # If-None-Match: * create
    cas(b, 1, "k", None, 2, 0.2, 0.3, type="fail")  # a second create: 412
    b.op(2, "read", "k", None, 0.4, 0.5, result=1)
    cas(b, 0, "k", 1, 3, 0.6, 0.7)
    cas(b, 1, "k", 1, 4, 0.65, 0.8, type="fail")  # lost the race
    b.op(2, "write", "k", 5, 0.9, 1.0)
    cas(b, 0, "k", 5, 6, 1.1, 1.2, type="info")  # unknown: landed, a read says so
    b.op(2, "read", "k", None, 1.5, 1.6, result=6)
    out = check_register(b.events)
    assert out["valid"] is True, out
    assert out["counts"]["cas"] == {"ok": 2, "fail": 2, "info": 1}


def test_cas_register_two_successful_cas_from_one_value_are_not_linearizable() -> None:
    """What a proposer that skips the prepare phase (or an acceptor taking any ballot) lets
    happen: two rounds read the same value and both commit."""
    b = Builder().op(2, "write", "k", 1, 0.0, 0.1)
    cas(b, 0, "k", 1, 2, 0.2, 0.4)
    cas(b, 1, "k", 1, 3, 0.25, 0.45)
    out = check_register(b.events)
    assert out["valid"] is False and out["failing_keys"] == ["k"]


def test_cas_register_failed_cas_while_the_value_was_held_is_not_linearizable() -> None:
    b = Builder().op(2, "write", "k", 1, 0.0, 0.1)
    cas(b, 0, "k", 1, 2, 0.2, 0.3, type="fail")
    b.op(2, "read", "k", None, 0.4, 0.5, result=1)
    assert check_register(b.events)["valid"] is False


def test_cas_register_create_over_a_live_record_is_not_linearizable() -> None:
    b = Builder().op(2, "write", "k", 1, 0.0, 0.1)
    cas(b, 0, "k", None, 2, 0.2, 0.3)
    assert check_register(b.events)["valid"] is False


def test_cas_outcome_classes() -> None:
    def reply(status: int | None, code: str | None = None, **extra: Any) -> Reply:
        body = {"error": {"code": code, "message": "m", **extra}} if code else {}
        return Reply("n1", status, body, None, None if status else "timeout")

    assert cas_outcome(reply(200)) == ("ok", None)
    assert cas_outcome(reply(412, "precondition_failed", current="v")) == ("fail", MISMATCH)
    assert cas_outcome(reply(503, "quorum_unavailable")) == ("info", "quorum_unavailable")
    assert cas_outcome(reply(503, "quorum_unavailable", applied=False)) == (
        "fail", "quorum_unavailable")
    assert cas_outcome(reply(503, "quorum_unavailable", applied=True))[0] == "info"
    said = reply(503, "quorum_unavailable")
    assert isinstance(said.body, dict)
    said.body["error"]["message"] = "1 of 2 replicas took part in the round; nothing was applied"
    assert cas_outcome(said) == ("fail", "quorum_unavailable")
    assert paxos_write_outcome(said) == ("fail", "quorum_unavailable")
    assert cas_outcome(reply(503, "session_unavailable", applied=False))[0] == "info"
    assert cas_outcome(reply(504, "timeout"))[0] == "info"
    assert cas_outcome(reply(None))[0] == "info"
    assert cas_outcome(reply(400, "invalid")) == ("fail", "invalid")  # removed, not a mismatch


# --------------------------------------------------------------------------- runner --config


def test_config_overrides_for_the_teeth() -> None:
    o = parse_args(["run", "--config", "paxos.unsafe_accept_any_ballot=true",
                    "--config", "clock.max_offset_ms=300", "--config", "paxos.x=abc"])
    assert o.cluster_config == {"paxos": {"unsafe_accept_any_ballot": True, "x": "abc"},
                                "clock": {"max_offset_ms": 300}}
    assert parse_args(["run"]).cluster_config == {}
    with pytest.raises(ValueError):
        dotted([("a.b", 1), ("a.b.c", 2)])
    with pytest.raises(ValueError):
        dotted([("a..b", 1)])
    with pytest.raises(SystemExit):
        parse_args(["run", "--config", "novalue"])


# --------------------------------------------------------------------------- clients vs a fake


@dataclass
class FakeCoordination:
    """DESIGN §12 over dicts: versioned records with If-Match / If-None-Match, a history per
    key, leases with fencing tokens. ``cas_lies``: every third If-Match that does not match is
    applied anyway; ``ignore_fences``: a stale token is accepted."""

    cas_lies: bool = False
    ignore_fences: bool = False
    versions: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    fences: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    leases: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    mismatches: int = 0
    fenced: int = 0
    granted: int = 0

    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_put("/v1/ns/{ns}/memories/{id}", self.put)
        r.add_get("/v1/ns/{ns}/memories/{id}/history", self.history)
        r.add_get("/v1/ns/{ns}/memories/{id}", self.get)
        r.add_post("/v1/ns/{ns}/leases/{name}", self.acquire)
        r.add_delete("/v1/ns/{ns}/leases/{name}", self.release)
        return app

    @staticmethod
    def _error(status: int, code: str, **details: Any) -> web.Response:
        return web.json_response({"error": {"code": code, "message": code, **details}},
                                 status=status)

    def _current(self, key: tuple[str, str]) -> dict[str, Any] | None:
        vs = self.versions.get(key)
        return vs[-1] if vs else None

    async def put(self, req: web.Request) -> web.Response:
        key = (req.match_info["ns"], req.match_info["id"])
        body = await req.json()
        cur = self._current(key)
        fence = req.headers.get("Spine-Fence")
        if fence is not None:
            lease, _, tok = fence.partition("=")
            highest = self.fences.get(key, {}).get(lease, 0)
            if int(tok) < highest and not self.ignore_fences:
                self.fenced += 1
                return self._error(409, "fenced", lease=lease, token=int(tok), highest=highest)
            self.fences.setdefault(key, {})[lease] = max(highest, int(tok))
        match = req.headers.get("If-Match")
        if match is not None and (cur is None or f'"{cur["version"]}"' != match):
            self.mismatches += 1
            if not (self.cas_lies and self.mismatches % 3 == 0):
                return self._error(412, "precondition_failed",
                                   current=None if cur is None else cur["version"])
        if req.headers.get("If-None-Match") == "*" and cur is not None:
            return self._error(412, "precondition_failed", current=cur["version"])
        rec = {"id": key[1], "content": body["content"], "version": f"v{next(self.counter)}",
               "deleted": False}
        self.versions.setdefault(key, []).append(rec)
        return web.json_response(rec, status=200 if cur else 201,
                                 headers={"ETag": f'"{rec["version"]}"'})

    async def get(self, req: web.Request) -> web.Response:
        cur = self._current((req.match_info["ns"], req.match_info["id"]))
        if cur is None:
            return self._error(404, "not_found")
        return web.json_response(cur, headers={"ETag": f'"{cur["version"]}"'})

    async def history(self, req: web.Request) -> web.Response:
        vs = self.versions.get((req.match_info["ns"], req.match_info["id"]))
        if not vs:
            return self._error(404, "not_found")
        return web.json_response({"versions": [{**v, "concurrent": False}
                                               for v in reversed(vs)]})

    async def acquire(self, req: web.Request) -> web.Response:
        key = (req.match_info["ns"], req.match_info["name"])
        body = await req.json()
        now = time.monotonic()
        cur = self.leases.get(key)
        running = cur is not None and cur["holder"] is not None and cur["expires"] > now
        if running and cur is not None and cur["holder"] != body["holder"]:
            return self._error(409, "lease_held", holder=cur["holder"], token=cur["token"],
                               remaining_ms=int((cur["expires"] - now) * 1000))
        token = cur["token"] if running and cur is not None else next(self.counter)
        self.granted += 0 if running else 1
        self.leases[key] = {"holder": body["holder"], "token": token,
                            "expires": now + body["ttl_ms"] / 1000}
        return web.json_response({"name": key[1], "holder": body["holder"], "token": token,
                                  "ttl_ms": body["ttl_ms"], "remaining_ms": body["ttl_ms"]})

    async def release(self, req: web.Request) -> web.Response:
        key = (req.match_info["ns"], req.match_info["name"])
        cur = self.leases.get(key)
        if cur is None:
            return self._error(404, "not_found")
        if int(req.query["token"]) != cur["token"]:
            return self._error(409, "conflict", field="token")
        cur["holder"] = None
        return web.json_response({"name": key[1], "holder": None, "token": cur["token"]})


@dataclass
class Ctx:
    """The stand-in run context (the harness's RunContext has these fields)."""

    history: Any
    level: str | None = None
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    nodes: list[str] = field(default_factory=lambda: ["n1", "n2"])
    urls: dict[str, str] = field(default_factory=dict)
    out: Path = Path(".")
    options: dict[str, Any] = field(default_factory=dict)
    cluster: Any = None


class Recorder:
    """A minimal stand-in for the harness's History (same call shapes)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def invoke(self, process: int, f: str, key: Any = None, value: Any = None,
               node: str | None = None) -> dict[str, Any]:
        e = {"process": process, "type": "invoke", "f": f, "key": key, "value": value,
             "time": time.monotonic(), "node": node}
        self.events.append(e)
        return e

    def complete(self, handle: dict[str, Any], type: str, value: Any = "same",
                 error: str | None = None) -> dict[str, Any]:
        e = {"process": handle["process"], "type": type, "f": handle["f"],
             "key": handle["key"], "value": handle["value"] if value == "same" else value,
             "time": time.monotonic(), "node": handle["node"]}
        if error is not None:
            e["error"] = error
        self.events.append(e)
        return e


@pytest_asyncio.fixture
async def serve() -> AsyncIterator[Any]:
    runners: list[web.AppRunner] = []

    async def start(fake: FakeCoordination) -> str:
        runner = web.AppRunner(fake.app())
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    try:
        yield start
    finally:
        for runner in runners:
            await runner.cleanup()


async def _drive(name: str, url: str, seconds: float, **options: Any) -> dict[str, Any]:
    ctx = Ctx(history=Recorder(), urls={"n1": url, "n2": url},
              options={"timeout": 2.0, "delay": 0.002, **options})
    w = WORKLOADS[name](ctx)
    assert w.name == name and w.level == "strong"
    stop = asyncio.Event()
    tasks = [asyncio.create_task(w.client(p, stop)) for p in range(3)]
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.gather(*tasks)
    await w.final()
    result: dict[str, Any] = w.check()
    return result


#: Lock options scaled down for a fake: 100 ms leases, half the holdings stall 250 ms.
FAST_LOCK = {"ttl_ms": 100, "stall_s": 0.25, "stall_fraction": 0.5, "retry_s": 0.01}


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_cas_register_against_an_honest_fake_is_valid(serve: Any) -> None:
    fake = FakeCoordination()
    out = await _drive("cas-register", await serve(fake), 0.8, keys=2, ops_per_key=60)
    assert out["valid"] is True, out["summary"]
    assert out["counts"]["cas"]["ok"] > 10 and out["counts"]["cas"]["fail"] > 0
    assert fake.mismatches > 0
    assert any(k != "c0" and k != "c1" for k in out["steps"])  # keys were retired


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_cas_register_against_a_cas_that_ignores_stale_versions_is_invalid(
    serve: Any,
) -> None:
    fake = FakeCoordination(cas_lies=True)
    out = await _drive("cas-register", await serve(fake), 0.8, keys=2, ops_per_key=60)
    assert out["valid"] is False, out["summary"]
    assert out["failing_keys"]


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_lock_against_an_honest_fake_is_valid(serve: Any) -> None:
    fake = FakeCoordination()
    out = await _drive("lock", await serve(fake), 1.5, **FAST_LOCK)
    assert out["valid"] is True, out
    assert fake.fenced > 0, "no stale write was ever sent: fencing went untested"
    assert out["counts"]["fwrite"]["ok"] > 10 and out["grants"] > 3
    assert out["keys_read"] > 2 and out["acked_not_in_history_count"] == 0


@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_lock_against_a_store_that_ignores_fences_is_invalid(serve: Any) -> None:
    fake = FakeCoordination(ignore_fences=True)
    out = await _drive("lock", await serve(fake), 1.5, **FAST_LOCK)
    assert out["valid"] is False, out
    assert out["stale_applied_count"] > 0
    assert not math.isnan(out["violations"])
