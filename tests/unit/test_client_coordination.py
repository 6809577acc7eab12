"""The client side of conditional writes and leases (DESIGN §12), with no server: the headers a
conditional or fenced write sends, the errors 412/409 map to, what is (not) retried, the lease
calls, the lease keeper's renew/lost rule on an injected clock, the sync and async lease context
managers over a fake transport, and the CLI and MCP front ends."""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

import httpx2 as httpx
import pytest
from mcp import Client as McpClient

from spine import cli, commands
from spine.client import (
    AsyncClient,
    Client,
    Conflict,
    Fenced,
    Lease,
    LeaseHeld,
    LeaseKeeper,
    LeaseLost,
    PreconditionFailed,
    QuorumUnavailable,
    Reply,
    Timeout,
    Unreachable,
)
from spine.client import calls as client_calls
from spine.core import errors as core
from spine.mcp import McpSettings, build_server
from spine.runtime import Runtime

Handler = Callable[[httpx.Request], httpx.Response]
V1 = "0000018c2f3a4b5c.n1"
V2 = "0000018c2f3a4b5d.n2"


class FakeClock(Runtime):
    """A Runtime whose monotonic clock only moves when the test says."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


def _client(handler: Handler, **kw: Any) -> Client:
    return Client(["http://n1", "http://n2"], transport=httpx.MockTransport(handler),
                  sleep=lambda s: None, **kw)


def _err(status: int, code: str, **extra: Any) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": "m", **extra}})


def _lease_body(token: int = 7, holder: str | None = "a", name: str = "task:42") -> dict[str, Any]:
    return {"name": name, "holder": holder, "token": token, "ttl_ms": 3000,
            "remaining_ms": 3000}


# ------------------------------------------------------------------ headers


@pytest.mark.parametrize("given", [
    V1, f'"{V1}"', f'  "{V1}" ', Reply({"version": V1}), {"version": V1, "id": "x"},
    Reply({}, etag=f'"{V1}"'),
])
def test_if_match_takes_a_version_bare_quoted_or_carried(given: Any) -> None:
    assert client_calls.if_match_value(given) == f'"{V1}"'


def test_if_match_takes_what_precondition_failed_reports_as_current() -> None:
    err = PreconditionFailed(412, {"error": {"code": "precondition_failed", "message": "m",
                                             "current": V2}})
    assert client_calls.if_match_value(err.current) == f'"{V2}"'


@pytest.mark.parametrize("given", ["", '""', 'a"b', "v\n1", {"id": "x"}, 17, None.__class__,
                                   "vé"])
def test_if_match_refuses_what_is_no_version(given: Any) -> None:
    with pytest.raises(ValueError, match="if_match"):
        client_calls.if_match_value(given)


def test_fence_takes_a_tuple_a_string_or_a_lease() -> None:
    lease = Lease("task:42", "a", 7, 3000, 2000)
    assert client_calls.fence_value(("task:42", 7)) == "task:42=7"
    assert client_calls.fence_value("task:42=7") == "task:42=7"
    assert client_calls.fence_value(lease) == "task:42=7"
    assert client_calls.fence_value(lease.fence) == "task:42=7"


@pytest.mark.parametrize("given", [("t", 0), ("t", -1), ("t", True), ("t", "7"), ("", 3),
                                   ("a=b", 3), ("a b", 3), "t=", "t", "=3", "t=x", 7, ("t",)])
def test_fence_refuses_what_is_no_name_and_positive_token(given: Any) -> None:
    with pytest.raises(ValueError, match="fence"):
        client_calls.fence_value(given)


def test_condition_headers_are_empty_for_a_plain_write() -> None:
    assert client_calls.condition_headers() == {}
    assert client_calls.condition_headers(V1, True, ("l", 2)) == {
        "If-Match": f'"{V1}"', "If-None-Match": "*", "Spine-Fence": "l=2"}


# ------------------------------------------------------------ the client over a fake transport


def test_conditional_put_sends_the_headers_and_its_reply_carries_the_etag() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json={"id": "k", "content": "x", "version": V2},
                              headers={"ETag": f'"{V2}"'})

    c = _client(handler)
    rec = c.put("ns", "k", "x", if_match=V1, fence=("task:42", 7), tags=["t"])
    assert seen[0].headers["If-Match"] == f'"{V1}"'
    assert seen[0].headers["Spine-Fence"] == "task:42=7"
    assert "If-None-Match" not in seen[0].headers
    assert json.loads(seen[0].content) == {"content": "x", "tags": ["t"]}
    assert isinstance(rec, Reply) and rec["content"] == "x"
    assert rec.etag == f'"{V2}"' and rec.version == V2
    # The reply feeds the next conditional write directly.
    c.put("ns", "k", "y", if_match=rec)
    assert seen[1].headers["If-Match"] == f'"{V2}"'
    c.put("ns", "k2", "z", if_none_match=True)
    assert seen[2].headers["If-None-Match"] == "*" and "If-Match" not in seen[2].headers
    c.delete("ns", "k", if_match=V2, fence=("task:42", 8))
    assert seen[3].method == "DELETE" and seen[3].headers["If-Match"] == f'"{V2}"'
    assert seen[3].headers["Spine-Fence"] == "task:42=8"
    c.put("ns", "k", "plain")
    assert not {"If-Match", "If-None-Match", "Spine-Fence"} & set(seen[4].headers)


def test_a_reply_without_etag_still_has_its_version_and_other_bodies_stay_dicts() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("/memories"):
            return httpx.Response(200, json={"items": [], "next_cursor": None})
        return httpx.Response(200, json={"id": "k", "version": V1})

    c = _client(handler)
    rec = c.get("ns", "k")
    assert isinstance(rec, Reply) and rec.version == V1 and rec.etag == f'"{V1}"'
    assert type(c.list("ns")) is dict


def test_412_is_precondition_failed_with_the_current_version() -> None:
    c = _client(lambda req: _err(412, "precondition_failed", current=V2))
    with pytest.raises(PreconditionFailed) as info:
        c.put("ns", "k", "x", if_match=V1)
    assert info.value.current == V2 and info.value.status == 412
    assert isinstance(info.value, core.PreconditionFailed) and not info.value.retriable
    c = _client(lambda req: _err(412, "precondition_failed", current=None))
    with pytest.raises(PreconditionFailed) as info:
        c.put("ns", "k", "x", if_match=V1)
    assert info.value.current is None


def test_409_fenced_and_lease_held_carry_their_details() -> None:
    c = _client(lambda req: _err(409, "fenced", lease="task:42", token=3, highest=5))
    with pytest.raises(Fenced) as fenced:
        c.put("ns", "k", "x", fence=("task:42", 3))
    assert (fenced.value.lease, fenced.value.token, fenced.value.highest) == ("task:42", 3, 5)
    assert isinstance(fenced.value, core.Fenced) and not fenced.value.retriable
    c = _client(lambda req: _err(409, "lease_held", holder="b", remaining_ms=1234, token=9))
    with pytest.raises(LeaseHeld) as held:
        c.acquire_lease("ns", "task:42", "a", 3000)
    assert (held.value.holder, held.value.remaining_ms, held.value.token) == ("b", 1234, 9)
    assert isinstance(held.value, core.LeaseHeld) and not held.value.retriable
    # A plain conflict stays a Conflict, not one of the new classes.
    c = _client(lambda req: _err(409, "conflict", field="token"))
    with pytest.raises(Conflict) as other:
        c.release_lease("ns", "task:42", 1)
    assert not isinstance(other.value, Fenced | LeaseHeld)


@pytest.mark.parametrize(("status", "code", "exc"), [(503, "quorum_unavailable",
                                                      QuorumUnavailable),
                                                     (504, "timeout", Timeout)])
def test_a_conditional_write_is_not_retried_when_its_outcome_is_unknown(
    status: int, code: str, exc: type[Exception],
) -> None:
    sent: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        sent.append(req.url.host)
        return _err(status, code)

    with pytest.raises(exc):
        _client(handler).put("ns", "k", "x", if_match=V1)
    assert len(sent) == 1
    sent.clear()
    with pytest.raises(exc):
        _client(handler).delete("ns", "k", fence=("l", 1))
    assert len(sent) == 1
    if status == 503:  # the same write without a condition is retried (it is idempotent)
        sent.clear()
        with pytest.raises(exc):
            _client(handler).put("ns", "k", "x")
        assert len(sent) == 4


def test_a_conditional_write_is_retried_after_a_refusal_before_any_work() -> None:
    replies = [_err(429, "overloaded"), _err(503, "not_serving"),
               httpx.Response(200, json={"id": "k", "version": V2})]
    c = _client(lambda req: replies.pop(0))
    assert c.put("ns", "k", "x", if_match=V1).version == V2  # type: ignore[attr-defined]
    assert replies == []


def test_a_conditional_write_that_may_have_been_sent_does_not_move_to_another_node() -> None:
    sent: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        sent.append(req.url.host)
        raise httpx.ReadTimeout("no answer", request=req)

    with pytest.raises(Unreachable):
        _client(handler).put("ns", "k", "x", if_none_match=True)
    assert len(sent) == 1


def test_lease_calls_send_the_documented_requests() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json=_lease_body(holder=None if req.method == "DELETE"
                                                    else "a"))

    c = _client(handler)
    lease = c.acquire_lease("team a", "task:42", "a", 3000)
    assert lease == Lease("task:42", "a", 7, 3000, 3000) and lease.fence == ("task:42", 7)
    assert seen[0].method == "POST"
    assert seen[0].url.raw_path == b"/v1/ns/team%20a/leases/task%3A42"
    assert json.loads(seen[0].content) == {"holder": "a", "ttl_ms": 3000}
    assert c.get_lease("ns", "task:42").holder == "a" and seen[1].method == "GET"
    released = c.release_lease("ns", "task:42", lease)
    assert released.holder is None
    assert seen[2].method == "DELETE" and seen[2].url.params["token"] == "7"
    assert lease.public() == _lease_body()


def test_a_lease_acquire_is_retried_by_the_same_holder() -> None:
    replies = [_err(503, "quorum_unavailable"), httpx.Response(200, json=_lease_body())]
    c = _client(lambda req: replies.pop(0))
    assert c.acquire_lease("ns", "task:42", "a", 3000).token == 7


def test_a_reply_that_is_no_lease_is_a_value_error() -> None:
    c = _client(lambda req: httpx.Response(200, json={"name": "x"}))
    with pytest.raises(ValueError, match="not a lease"):
        c.get_lease("ns", "x")


# ------------------------------------------------------------------ the keeper (pure)


def _keeper(ttl_ms: int = 3000, sent_at: float = 10.0, token: int = 7) -> LeaseKeeper:
    return LeaseKeeper.start(Lease("task:42", "a", token, ttl_ms, ttl_ms), sent_at, ttl_ms)


def test_keeper_renews_every_third_of_the_ttl_and_counts_from_the_send() -> None:
    k = _keeper()
    assert k.interval == pytest.approx(1.0)
    assert k.wait(10.0) == pytest.approx(1.0) and k.wait(11.5) == 0.0
    assert k.deadline == pytest.approx(13.0)
    # A renewal sent at 11.0 and answered at 12.9 extends the lease to 11.0 + 3 s, not 12.9 + 3.
    k.renewed(11.0, Lease("task:42", "a", 7, 3000, 3000), now=12.9)
    assert k.deadline == pytest.approx(14.0) and k.next_at == pytest.approx(12.0)
    assert k.lost(13.99) is None and k.renewals == 1
    assert k.lost(14.0) is not None  # nothing succeeded since: lost at exactly sent + ttl


def test_keeper_is_lost_when_no_renewal_succeeds_within_the_ttl() -> None:
    k = _keeper()
    k.failed(Unreachable(["http://n1"], "refused"), now=11.0)
    assert k.lost(11.0) is None and k.next_at == pytest.approx(11.5)  # retried sooner
    k.failed(QuorumUnavailable(503, {"error": {"code": "quorum_unavailable"}}), now=12.5)
    assert k.lost(12.99) is None
    reason = k.lost(13.0)
    assert reason is not None and "ttl_ms" in reason
    # A renewal answered after the deadline cannot bring it back (it stays lost).
    k.renewed(12.9, Lease("task:42", "a", 7, 3000, 3000), now=13.1)
    assert k.lost(13.1) == reason and k.renewals == 0


def test_keeper_is_lost_at_once_when_a_renewal_is_refused() -> None:
    k = _keeper()
    k.failed(LeaseHeld(409, {"error": {"code": "lease_held", "holder": "b"}}), now=11.0)
    assert k.lost(11.0) is not None and "refused" in (k.lost(11.0) or "")


def test_keeper_is_lost_when_a_renewal_comes_back_with_a_new_token() -> None:
    k = _keeper(token=7)
    k.renewed(11.0, Lease("task:42", "a", 8, 3000, 3000), now=11.1)
    assert "token 7 -> 8" in (k.lost(11.1) or "")


def test_keeper_bounds_a_renewal_by_the_deadline() -> None:
    k = _keeper()
    assert k.timeout(11.0, 10.0) == pytest.approx(2.0)
    assert k.timeout(10.0, 0.5) == pytest.approx(0.5)
    assert k.timeout(13.5, 10.0) == pytest.approx(0.001)


# ------------------------------------------------------------------ HeldLease, stepped by hand


class LeaseServer:
    """A fake lease service: grants to one holder, renews, can be told to fail."""

    def __init__(self) -> None:
        self.acquires = 0
        self.released: list[str] = []
        self.fail: Callable[[], httpx.Response] | None = None
        self.release_reply: httpx.Response | None = None
        self.token = 7
        self.lock = threading.Lock()

    def __call__(self, req: httpx.Request) -> httpx.Response:
        with self.lock:
            if req.method == "DELETE":
                self.released.append(req.url.params["token"])
                if self.release_reply is not None:
                    return self.release_reply
                return httpx.Response(200, json=_lease_body(self.token, None))
            if self.fail is not None and self.acquires > 0:
                return self.fail()
            self.acquires += 1
            return httpx.Response(200, json=_lease_body(self.token))


def test_held_lease_renews_and_is_lost_when_renewals_stop_succeeding() -> None:
    server, clock = LeaseServer(), FakeClock()
    c = Client(["http://n1"], transport=httpx.MockTransport(server), runtime=clock,
               sleep=lambda s: None, retries=0)
    held = c.lease("ns", "task:42", "a", 3000)
    held.acquire()
    assert held.token == 7 and held.fence == ("task:42", 7) and not held.lost
    clock.now += 1.0
    held.renew()
    assert held.renewals == 1 and server.acquires == 2
    server.fail = lambda: _err(503, "quorum_unavailable")
    clock.now += 1.0
    held.renew()  # fails, but the lease holds until 101 + 3 s
    assert not held.lost
    held.check()
    clock.now = 104.0
    assert held.lost
    with pytest.raises(LeaseLost) as info:
        held.check()
    assert info.value.token == 7 and "ttl_ms" in info.value.reason
    held.release()
    assert server.released == ["7"] and held.release_error is None


def test_held_lease_refused_renewal_is_lost_and_a_failed_release_is_kept() -> None:
    server, clock = LeaseServer(), FakeClock()
    c = Client(["http://n1"], transport=httpx.MockTransport(server), runtime=clock,
               sleep=lambda s: None)
    held = c.lease("ns", "task:42", "a", 3000)
    held.acquire()
    server.fail = lambda: _err(409, "lease_held", holder="b", remaining_ms=10)
    held.renew()
    assert held.lost and "refused" in (held.lost_reason or "")
    server.release_reply = _err(409, "conflict", field="token")
    held.release()  # not raised: kept and logged
    assert isinstance(held.release_error, Conflict) and server.released == ["7"]


def test_held_lease_before_entering_says_so() -> None:
    held = _client(LeaseServer()).lease("ns", "x", "a", 1000)
    with pytest.raises(RuntimeError, match="not held yet"):
        held.check()


# ------------------------------------------------------------ the context managers, real time


def _wait_for(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_lease_context_renews_in_a_thread_and_releases_on_exit() -> None:
    server = LeaseServer()
    c = Client(["http://n1"], transport=httpx.MockTransport(server))
    with c.lease("ns", "task:42", "a", 450) as held:  # renewals every 150 ms
        _wait_for(lambda: held.renewals >= 3)
        held.check()
        thread = held._thread
    assert server.released == ["7"]
    assert thread is not None and not thread.is_alive()


def test_lease_context_thread_stops_once_lost() -> None:
    server = LeaseServer()
    c = Client(["http://n1"], transport=httpx.MockTransport(server))
    with c.lease("ns", "task:42", "a", 150) as held:
        server.fail = lambda: _err(409, "lease_held", holder="b")
        _wait_for(lambda: held.lost)
        assert held._thread is not None
        held._thread.join(timeout=5)
        assert not held._thread.is_alive()
        with pytest.raises(LeaseLost):
            held.check()


def test_async_lease_context_renews_in_a_task_and_releases_on_exit() -> None:
    server = LeaseServer()
    writes: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        if "/memories/" in req.url.path:
            writes.append(req)
            return httpx.Response(200, json={"id": "k", "content": "x", "version": V1})
        return server(req)

    async def go() -> None:
        async with AsyncClient(["http://n1"], transport=httpx.MockTransport(handler)) as c:
            async with c.lease("ns", "task:42", "a", 450) as held:  # renewals every 150 ms
                deadline = time.monotonic() + 5
                while held.renewals < 3:
                    assert time.monotonic() < deadline, "timed out"
                    await asyncio.sleep(0.01)
                held.check()
                task = held._task
                assert (await c.put("ns", "k", "x", fence=held))["content"] == "x"
            assert task is not None and task.done()

    asyncio.run(go())
    assert server.released == ["7"]
    assert writes[0].headers["Spine-Fence"] == "task:42=7"


# ------------------------------------------------------------------ CLI


def test_cli_parses_conditions_into_client_keywords() -> None:
    ns = argparse.Namespace(if_match=f'"{V1}"', if_none_match=True, fence="task:42=7")
    assert commands.condition_fields(ns) == {"if_match": V1, "if_none_match": True,
                                             "fence": ("task:42", 7)}
    assert commands.condition_fields(argparse.Namespace()) == {}


@pytest.mark.parametrize("argv", [
    ["put", "ns", "k", "--content", "x", "--fence", "task:42"],
    ["put", "ns", "k", "--content", "x", "--fence", "task:42=0"],
    ["put", "ns", "k", "--content", "x", "--fence", "bad name=3"],
    ["put", "ns", "k", "--content", "x", "--if-match", 'a"b'],
    ["put", "ns", "--content", "x", "--if-none-match"],
    ["rm", "ns", "k", "--fence", "=3"],
    ["lease", "acquire", "ns", "t", "--holder", "a", "--ttl-ms", "0"],
])
def test_cli_refuses_bad_conditions_in_one_line(argv: list[str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([*argv, "--url", "http://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"spine {argv[0]}: --")


def test_cli_help_gives_the_formats(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["put", "--help"], ["lease", "acquire", "--help"]):
        with pytest.raises(SystemExit):
            cli.main(argv)
        out = capsys.readouterr().out
        assert "LEASE=TOKEN" in out or "--ttl-ms N" in out
    with pytest.raises(SystemExit):
        cli.main(["put", "--help"])
    out = capsys.readouterr().out
    assert "--if-match VERSION" in out and "--if-none-match" in out and "task:42=7" in out


# ------------------------------------------------------------------ MCP


class FakeSpine:
    """Records the calls the MCP tools make; answers leases and a 412 for version V1."""

    made: ClassVar[list[FakeSpine]] = []

    def __init__(self, settings: McpSettings) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        FakeSpine.made.append(self)

    def close(self) -> None:
        pass

    def put(self, *a: Any, **kw: Any) -> Any:
        self.calls.append(("put", a, kw))
        if kw.get("if_match") == f'"{V1}"':
            raise PreconditionFailed(412, {"error": {"code": "precondition_failed",
                                                     "message": "version moved",
                                                     "current": V2}})
        return {"id": a[1], "version": V2}

    def delete(self, *a: Any, **kw: Any) -> Any:
        self.calls.append(("delete", a, kw))
        return {"id": a[1], "deleted": True}

    def acquire_lease(self, *a: Any, **kw: Any) -> Lease:
        self.calls.append(("acquire_lease", a, kw))
        if a[2] != "a":
            raise LeaseHeld(409, {"error": {"code": "lease_held", "message": "held by 'a'",
                                            "holder": "a", "remaining_ms": 900}})
        return Lease(a[1], a[2], 7, a[3], a[3])

    def release_lease(self, *a: Any, **kw: Any) -> Lease:
        self.calls.append(("release_lease", a, kw))
        return Lease(a[1], None, a[2], 0, 0)

    def get_lease(self, *a: Any, **kw: Any) -> Lease:
        self.calls.append(("get_lease", a, kw))
        return Lease(a[1], "a", 7, 3000, 1500)


def test_mcp_lease_tools_and_conditional_writes() -> None:
    FakeSpine.made.clear()
    server = build_server(McpSettings(urls=("http://x:1",), namespace="dflt"), FakeSpine)

    async def go() -> None:
        async with McpClient(server) as c:
            tools = {t.name: t for t in (await c.list_tools()).tools}
            assert {"lease_acquire", "lease_release", "lease_show"} <= set(tools)
            assert {"if_match", "fence"} <= set(tools["write"].input_schema["properties"])
            r = await c.call_tool("lease_acquire", {"name": "task:42", "holder": "a",
                                                    "ttl_ms": 3000})
            assert not r.is_error
            assert r.structured_content == {"name": "task:42", "holder": "a", "token": 7,
                                            "ttl_ms": 3000, "remaining_ms": 3000}
            r = await c.call_tool("lease_acquire", {"name": "task:42", "holder": "b",
                                                    "ttl_ms": 3000})
            assert r.is_error and "lease_held" in r.content[0].text  # type: ignore[union-attr]
            r = await c.call_tool("write", {"id": "k", "content": "x", "if_match": V2,
                                            "fence": "task:42=7"})
            assert not r.is_error
            r = await c.call_tool("write", {"id": "k", "content": "x", "if_match": V1})
            text = r.content[0].text  # type: ignore[union-attr]
            assert r.is_error and "precondition_failed" in text and V2 in text
            r = await c.call_tool("write", {"id": "k", "content": "x", "fence": "task:42"})
            text = r.content[0].text  # type: ignore[union-attr]
            assert r.is_error and "(field: fence)" in text
            r = await c.call_tool("write", {"id": "k", "content": "x", "if_match": 'a"b'})
            text = r.content[0].text  # type: ignore[union-attr]
            assert r.is_error and "(field: if_match)" in text
            r = await c.call_tool("write", {"content": "x", "if_match": V2})
            assert r.is_error and "(field: id)" in r.content[0].text  # type: ignore[union-attr]
            r = await c.call_tool("lease_show", {"name": "task:42"})
            assert r.structured_content is not None
            assert r.structured_content["remaining_ms"] == 1500
            r = await c.call_tool("lease_release", {"name": "task:42", "token": 7})
            assert r.structured_content is not None
            assert r.structured_content["holder"] is None
            r = await c.call_tool("delete", {"id": "k", "if_match": V2})
            assert not r.is_error

    asyncio.run(go())
    calls = FakeSpine.made[0].calls
    assert ("put", ("dflt", "k", "x"), {"if_match": f'"{V2}"', "fence": ("task:42", 7)}) in calls
    assert ("release_lease", ("dflt", "task:42", 7), {}) in calls
    assert ("delete", ("dflt", "k"), {"if_match": f'"{V2}"'}) in calls
    # Tool errors for malformed values never reached the client.
    assert sum(1 for name, _, _ in calls if name == "put") == 2


def _cli_against(monkeypatch: pytest.MonkeyPatch, handler: Handler) -> None:
    """`spine` commands talk to `handler` instead of a cluster."""
    monkeypatch.setattr(commands, "client", lambda args: _client(handler))


def test_cli_412_names_the_current_version(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    _cli_against(monkeypatch, lambda req: _err(412, "precondition_failed", current=V2))
    assert cli.main(["put", "ns", "k", "--content", "x", "--if-match", V1]) == 1
    err = capsys.readouterr().err
    assert err == f"spine put: 412 precondition_failed: m; current version: {V2}\n"
    _cli_against(monkeypatch, lambda req: _err(412, "precondition_failed", current=None))
    assert cli.main(["rm", "ns", "k", "--if-match", V1]) == 1
    assert "current version: none (no live record)" in capsys.readouterr().err


def test_cli_lease_held_names_the_holder_and_time_left(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    _cli_against(monkeypatch, lambda req: _err(409, "lease_held", holder="b", remaining_ms=900))
    assert cli.main(["lease", "acquire", "ns", "t", "--holder", "a", "--ttl-ms", "5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("spine lease: 409 lease_held") and "at most 900 ms" in err
    assert err.count("\n") == 1


def test_cli_lease_commands_print_the_lease(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str],
                                            tmp_path: Any) -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return httpx.Response(200, json=_lease_body())

    _cli_against(monkeypatch, handler)
    monkeypatch.setenv("SPINE_SESSION_FILE", str(tmp_path / "s"))
    assert cli.main(["lease", "acquire", "ns", "task:42", "--holder", "a",
                     "--ttl-ms", "3000"]) == 0
    assert json.loads(capsys.readouterr().out) == _lease_body()
    assert cli.main(["lease", "show", "ns", "task:42"]) == 0
    assert cli.main(["lease", "release", "ns", "task:42", "--token", "7"]) == 0
    capsys.readouterr()
    assert [r.method for r in seen] == ["POST", "GET", "DELETE"]
    assert seen[2].url.params["token"] == "7"
    assert cli.main(["put", "ns", "k", "--content", "x", "--fence", "task:42=7",
                     "--if-none-match"]) == 0
    assert seen[3].headers["Spine-Fence"] == "task:42=7"
    assert seen[3].headers["If-None-Match"] == "*"
