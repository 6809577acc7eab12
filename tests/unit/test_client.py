"""The sync client against httpx2's MockTransport: failover, retries, errors, paging, batches."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import httpx2 as httpx
import pytest

from spine.client import (
    BATCH_LIMIT,
    BatchFailed,
    Client,
    Forbidden,
    InvalidInput,
    NotFound,
    NotServing,
    Overloaded,
    QuorumUnavailable,
    SessionUnavailable,
    SpineHTTPError,
    Unreachable,
)
from spine.core import errors as core

Handler = Callable[[httpx.Request], httpx.Response]


def _client(handler: Handler, urls: list[str] | None = None, **kw: Any) -> tuple[Client,
                                                                              list[float]]:
    slept: list[float] = []
    c = Client(urls or ["http://n1", "http://n2", "http://n3"],
               transport=httpx.MockTransport(handler), sleep=slept.append, **kw)
    return c, slept


def _err(status: int, code: str, retry_after: str | None = None, **extra: Any) -> httpx.Response:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return httpx.Response(status, json={"error": {"code": code, "message": "m", **extra}},
                          headers=headers)


def _record(req: httpx.Request) -> httpx.Response:
    body = json.loads(req.content) if req.content else {}
    return httpx.Response(200, json={"id": req.url.path.rsplit("/", 1)[-1], **body},
                          headers={"Spine-Coordinator": req.url.host})


def test_a_refused_node_fails_over_to_the_next_for_every_method() -> None:
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.url.host)
        if req.url.host == "n1":
            raise httpx.ConnectError("refused", request=req)
        return _record(req)

    c, _ = _client(handler, ["http://n1", "http://n2"])
    assert c.get("ns", "a")["id"] == "a"
    assert seen == ["n1", "n2"]
    # A POST that never reached a node (connect failed) may go elsewhere too, even a
    # server-minted create.
    seen.clear()
    c, _ = _client(handler, ["http://n1", "http://n2"])
    c.create("ns", "x", server_mint=True)
    assert seen == ["n1", "n2"]


def test_all_nodes_refused_is_unreachable_an_oserror() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=req)

    c, _ = _client(handler)
    with pytest.raises(Unreachable) as info:
        c.get("ns", "a")
    assert isinstance(info.value, OSError) and isinstance(info.value, core.SpineError)
    assert sorted(info.value.urls) == ["http://n1", "http://n2", "http://n3"]
    assert info.value.retriable


def test_a_read_timeout_fails_over_only_when_idempotent() -> None:
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.method)
        if len(seen) == 1:
            raise httpx.ReadTimeout("slow", request=req)
        return _record(req)

    c, _ = _client(handler)
    assert c.put("ns", "a", "x")["content"] == "x"
    assert seen == ["PUT", "PUT"]
    seen.clear()
    # The server may have minted and stored it: a second POST could create a duplicate.
    with pytest.raises(Unreachable):
        c.create("ns", "x", server_mint=True)
    assert seen == ["POST"]


def test_calls_spread_round_robin_over_the_nodes() -> None:
    c, _ = _client(_record)
    for _ in range(6):
        c.get("ns", "a")
    assert [c.get("ns", "a") and c.last_coordinator for _ in range(3)] == ["n1", "n2", "n3"]


def test_503_and_429_are_retried_after_retry_after_for_idempotent_calls() -> None:
    replies = [_err(503, "quorum_unavailable", "2"), _err(429, "overloaded", "0.5")]
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.url.host)
        return replies.pop(0) if replies else _record(req)

    c, slept = _client(handler)
    assert c.put("ns", "a", "x")["content"] == "x"
    assert slept == [2.0, 0.5]
    assert seen == ["n1", "n2", "n3"]  # each retry goes to the next node


def test_retry_after_is_capped_and_retries_are_bounded() -> None:
    calls = 0

    def handler(req: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return _err(503, "not_serving", "3600")

    c, slept = _client(handler, retries=2, max_retry_wait=1.5)
    with pytest.raises(NotServing) as info:
        c.get("ns", "a")
    assert calls == 3 and slept == [1.5, 1.5]
    assert info.value.retry_after == 3600.0 and info.value.status == 503


def test_no_retry_for_a_server_minted_create_nor_for_errors_that_are_not_retriable() -> None:
    calls: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(req.method)
        if req.method == "POST":
            return _err(503, "quorum_unavailable", "1")
        return _err(400, "invalid", field="tags")

    c, slept = _client(handler)
    with pytest.raises(QuorumUnavailable):
        c.create("ns", "x", server_mint=True)
    with pytest.raises(InvalidInput) as info:
        c.put("ns", "a", "x", tags=["BAD"])
    assert calls == ["POST", "PUT"] and slept == []
    assert info.value.field == "tags" and not info.value.retriable


@pytest.mark.parametrize(("status", "code", "cls", "retriable"), [
    (404, "not_found", NotFound, False),
    (403, "forbidden", Forbidden, False),
    (503, "session_unavailable", SessionUnavailable, True),
    (429, "overloaded", Overloaded, True),
])
def test_errors_are_spine_errors_by_code(status: int, code: str, cls: type[SpineHTTPError],
                                         retriable: bool) -> None:
    c, _ = _client(lambda req: _err(status, code), retries=0)
    with pytest.raises(cls) as info:
        c.get("ns", "a")
    e = info.value
    assert isinstance(e, SpineHTTPError) and isinstance(e, core.SpineError)
    core_cls = getattr(core, cls.__name__)
    assert isinstance(e, core_cls)  # `except spine.core.errors.NotFound` catches it too
    assert (e.status, e.code, e.retriable) == (status, code, retriable)
    assert e.body["error"]["code"] == code


def test_an_error_without_a_json_body_is_a_plain_spine_http_error() -> None:
    c, _ = _client(lambda req: httpx.Response(502, text="bad gateway"), retries=0)
    with pytest.raises(SpineHTTPError) as info:
        c.get("ns", "a")
    assert type(info.value) is SpineHTTPError
    assert (info.value.status, info.value.code, info.value.body) == (502, "", "bad gateway")


def test_consistency_is_a_header_never_a_body_field() -> None:
    got: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        got.append(req)
        return _record(req)

    c, _ = _client(handler, consistency="session")
    c.put("ns", "a", "x", consistency="strong", tags=["t"])
    c.get("ns", "a")
    assert got[0].headers["Spine-Consistency"] == "strong"
    assert json.loads(got[0].content) == {"content": "x", "tags": ["t"]}
    assert got[1].headers["Spine-Consistency"] == "session"


def test_create_mints_a_uuidv7_and_puts_it_so_a_retry_is_the_same_put() -> None:
    got: list[httpx.Request] = []
    replies = [_err(503, "quorum_unavailable", "0")]

    def handler(req: httpx.Request) -> httpx.Response:
        got.append(req)
        return replies.pop(0) if replies else _record(req)

    c, _ = _client(handler)
    rec = c.create("ns", "x", tags=["a"])
    assert [r.method for r in got] == ["PUT", "PUT"]
    assert got[0].url.path == got[1].url.path == f"/v1/ns/ns/memories/{rec['id']}"
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                        rec["id"])
    second = c.create("ns", "y")["id"]
    assert second != rec["id"] and second[:8] >= rec["id"][:8]  # time-ordered prefix


def test_per_call_timeout_reaches_the_transport() -> None:
    timeouts: list[Any] = []

    def handler(req: httpx.Request) -> httpx.Response:
        timeouts.append(req.extensions["timeout"]["read"])
        return _record(req)

    c, _ = _client(handler, timeout=7.0)
    c.get("ns", "a")
    c.get("ns", "a", timeout=0.25)
    assert timeouts == [7.0, 0.25]


def test_iter_list_follows_next_cursor() -> None:
    pages = {None: (["a", "b"], "c1"), "c1": (["c"], "c2"), "c2": ([], None)}
    cursors: list[str | None] = []

    def handler(req: httpx.Request) -> httpx.Response:
        cursor = req.url.params.get("cursor")
        cursors.append(cursor)
        assert req.url.params.get("tag") == "t"
        items, nxt = pages[cursor]
        return httpx.Response(200, json={"items": [{"id": i} for i in items],
                                         "next_cursor": nxt})

    c, _ = _client(handler)
    assert [r["id"] for r in c.iter_list("ns", tag="t", limit=2)] == ["a", "b", "c"]
    assert cursors == [None, "c1", "c2"]


def test_batch_chunks_to_the_server_limit_and_keeps_order() -> None:
    sizes: list[int] = []

    def handler(req: httpx.Request) -> httpx.Response:
        items = json.loads(req.content)["items"]
        sizes.append(len(items))
        return httpx.Response(200, json={"results": [
            {"id": it["id"], "status": 201} for it in items]})

    c, _ = _client(handler)
    items = [{"id": f"k{i}", "content": str(i)} for i in range(2 * BATCH_LIMIT + 5)]
    out = c.batch("ns", items)
    assert sizes == [BATCH_LIMIT, BATCH_LIMIT, 5]
    assert [r["id"] for r in out["results"]] == [it["id"] for it in items]


def test_batch_item_errors_are_returned_or_raised() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        items = json.loads(req.content)["items"]
        return httpx.Response(200, json={"results": [
            {"id": it["id"], "status": 400,
             "error": {"code": "invalid", "message": "bad tag", "field": "tags"}}
            if it["id"] == "bad" else {"id": it["id"], "status": 200} for it in items]})

    c, _ = _client(handler)
    items = [{"id": "ok", "content": "x"}, {"id": "bad", "content": "y", "tags": ["X"]}]
    assert c.batch("ns", items)["results"][1]["status"] == 400  # returned by default
    with pytest.raises(BatchFailed) as info:
        c.batch("ns", items, raise_errors=True)
    assert [i for i, _ in info.value.failures] == [1]
    assert info.value.field == "tags" and not info.value.retriable
    assert len(info.value.results) == 2


def test_batch_is_retried_as_idempotent() -> None:
    replies = [_err(503, "not_serving", "0")]

    def handler(req: httpx.Request) -> httpx.Response:
        if replies:
            return replies.pop(0)
        return httpx.Response(200, json={"results": [{"id": "a", "status": 200}]})

    c, slept = _client(handler)
    assert c.batch("ns", [{"id": "a", "content": "x"}])["results"][0]["status"] == 200
    assert slept == [0.0]


def test_defaults_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPINE_URL", "http://e1:1, http://e2:2/")
    monkeypatch.setenv("SPINE_API_KEY", "k-env")
    got: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        got.append(req)
        return _record(req)

    with Client(transport=httpx.MockTransport(handler)) as c:
        assert c.urls == ["http://e1:1", "http://e2:2"]
        c.get("ns", "a")
    assert got[0].headers["Authorization"] == "Bearer k-env"
    assert Client("http://x", api_key="explicit").api_key == "explicit"


def test_paths_are_percent_encoded() -> None:
    got: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        got.append(req.url.raw_path.decode())
        return _record(req)

    c, _ = _client(handler)
    c.get("ns", "a/b?c")
    c.history("ns", "k")
    assert got == ["/v1/ns/ns/memories/a%2Fb%3Fc", "/v1/ns/ns/memories/k/history"]


def test_one_client_is_safe_across_threads() -> None:
    c, _ = _client(_record)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(50):
                assert c.put("ns", f"{t}-{i}", "x")["id"] == f"{t}-{i}"
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []


def test_importing_the_client_never_loads_the_server_dependencies() -> None:
    # A client-only install has none of these: importing them would fail there.
    server = ["aiohttp", "lmdb", "numpy", "hnswlib", "structlog", "orjson", "uvloop",
              "xxhash", "sortedcontainers"]
    code = (f"import sys\nfor m in {server!r}: sys.modules[m] = None\n"
            "from spine import Client, AsyncClient, __version__\n"
            "import spine.client\nprint(__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"\d+\.\d+\.\d+\S*\n", out.stdout)


def test_text_fails_over_and_raises_errors_by_code() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.host == "n1":
            raise httpx.ConnectError("refused", request=req)
        if req.url.path == "/metrics":
            return httpx.Response(200, text="spine_up 1\n")
        return _err(403, "forbidden")

    c, _ = _client(handler, ["http://n1", "http://n2"])
    assert c.text("/metrics") == "spine_up 1\n"
    with pytest.raises(Forbidden):
        c.text("/other")
