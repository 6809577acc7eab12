"""AsyncClient: built outside a loop, every method the sync client has, failover and retries."""

from __future__ import annotations

import asyncio
import inspect
import json
from typing import Any

import httpx2 as httpx
import pytest

from spine.client import AsyncClient, Client, NotFound, QuorumUnavailable, Unreachable
from spine.runtime import Runtime


class _FakeRuntime(Runtime):
    def __init__(self) -> None:
        super().__init__()
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


def test_it_has_every_public_method_of_the_sync_client() -> None:
    def public(cls: type) -> set[str]:
        return {n for n, _ in inspect.getmembers(cls, callable) if not n.startswith("_")}

    missing = public(Client) - public(AsyncClient)
    assert missing == set()
    for name in ("create", "list", "history", "batch", "iter_list", "search", "put", "get",
                 "delete", "request", "text", "cluster"):
        sync_params = list(inspect.signature(getattr(Client, name)).parameters)
        async_params = list(inspect.signature(getattr(AsyncClient, name)).parameters)
        assert sync_params == async_params, name


def test_built_outside_a_loop_then_used_in_two_loops() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.host == "n1":
            raise httpx.ConnectError("refused", request=req)
        body = json.loads(req.content) if req.content else {}
        return httpx.Response(200, json={"id": req.url.path.rsplit("/", 1)[-1], **body})

    c = AsyncClient(["http://n1", "http://n2"], transport=httpx.MockTransport(handler))

    async def once() -> Any:
        return await c.put("ns", "a", "x")

    assert asyncio.run(once())["content"] == "x"
    assert asyncio.run(once())["content"] == "x"  # a new loop gets a new pool
    asyncio.run(c.close())


def test_async_calls_list_history_batch_create_and_retry() -> None:
    rt = _FakeRuntime()
    replies = [httpx.Response(503, json={"error": {"code": "quorum_unavailable",
                                                   "message": "m"}}, headers={"Retry-After": "1"})]
    seen: list[tuple[str, str]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append((req.method, req.url.path))
        if replies:
            return replies.pop(0)
        path = req.url.path
        if path.endswith("/history"):
            return httpx.Response(200, json={"versions": []})
        if path.endswith("/_batch"):
            items = json.loads(req.content)["items"]
            return httpx.Response(200, json={"results": [{"id": i["id"], "status": 201}
                                                         for i in items]})
        if path.endswith("/memories") and req.method == "GET":
            cursor = req.url.params.get("cursor")
            return httpx.Response(200, json={"items": [{"id": cursor or "first"}],
                                             "next_cursor": None if cursor else "second"})
        if path.endswith("/gone"):
            return httpx.Response(404, json={"error": {"code": "not_found", "message": "m"}})
        return httpx.Response(200, json={"id": path.rsplit("/", 1)[-1]})

    async def run() -> None:
        async with AsyncClient("http://n1", transport=httpx.MockTransport(handler),
                               runtime=rt) as c:
            rec = await c.create("ns", "x")
            assert seen[0] == seen[1] == ("PUT", f"/v1/ns/ns/memories/{rec['id']}")
            assert rt.slept == [1.0]
            assert (await c.history("ns", "k"))["versions"] == []
            assert len((await c.batch("ns", [{"id": "a", "content": "x"}]))["results"]) == 1
            assert [r["id"] async for r in c.iter_list("ns")] == ["first", "second"]
            assert (await c.list("ns"))["next_cursor"] == "second"
            with pytest.raises(NotFound):
                await c.get("ns", "gone")

    asyncio.run(run())


def test_async_unreachable_and_no_retry_of_a_server_minted_create() -> None:
    rt = _FakeRuntime()

    def refused(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=req)

    def unavailable(req: httpx.Request) -> httpx.Response:
        return httpx.Response(503, json={"error": {"code": "quorum_unavailable", "message": ""}})

    async def run() -> None:
        async with AsyncClient(["http://n1", "http://n2"],
                               transport=httpx.MockTransport(refused)) as c:
            with pytest.raises(Unreachable):
                await c.get("ns", "a")
        async with AsyncClient("http://n1", transport=httpx.MockTransport(unavailable),
                               runtime=rt) as c:
            with pytest.raises(QuorumUnavailable):
                await c.create("ns", "x", server_mint=True)
        assert rt.slept == []

    asyncio.run(run())
