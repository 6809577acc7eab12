"""`spine mcp`'s tools through the SDK's own in-process client, over a fake Spine client: the
arguments each tool sends, one Spine client per MCP session, errors as tool errors naming the
field."""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from mcp import Client as McpClient

from spine.client import NotFound
from spine.mcp import MAX_SESSIONS, McpSettings, SpineTools, build_server


class FakeSpine:
    """Records the calls the tools make."""

    made: ClassVar[list[FakeSpine]] = []

    def __init__(self, settings: McpSettings) -> None:
        self.settings = settings
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.closed = False
        FakeSpine.made.append(self)

    def close(self) -> None:
        self.closed = True

    def _rec(self, name: str, *args: Any, **kw: Any) -> dict[str, Any]:
        self.calls.append((name, args, kw))
        return {"call": name}

    def put(self, *a: Any, **kw: Any) -> Any:
        return self._rec("put", *a, **kw)

    def create(self, *a: Any, **kw: Any) -> Any:
        return self._rec("create", *a, **kw)

    def search(self, *a: Any, **kw: Any) -> Any:
        return self._rec("search", *a, **kw)

    def list(self, *a: Any, **kw: Any) -> Any:
        return self._rec("list", *a, **kw)

    def history(self, *a: Any, **kw: Any) -> Any:
        return self._rec("history", *a, **kw)

    def delete(self, *a: Any, **kw: Any) -> Any:
        return self._rec("delete", *a, **kw)

    def get(self, ns: str, mid: str) -> Any:
        self.calls.append(("get", (ns, mid), {}))
        raise NotFound(404, {"error": {"code": "not_found", "message": f"no memory {mid!r}",
                                       "field": "id"}})


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_tools_send_what_they_are_given_through_one_client_per_session() -> None:
    FakeSpine.made.clear()
    server = build_server(McpSettings(urls=("http://x:1",), namespace="dflt"), FakeSpine)

    async def go() -> None:
        async with McpClient(server) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert names == {"write", "read", "search", "list", "delete", "history",
                             "lease_acquire", "lease_release", "lease_show", "changes"}
            r = await c.call_tool("write", {"content": "hi", "id": "m1", "tags": ["a"],
                                            "metadata": {"k": 1}, "agent_id": "bot"})
            assert not r.is_error and r.structured_content == {"call": "put"}
            await c.call_tool("write", {"content": "minted", "namespace": "other"})
            await c.call_tool("search", {"query": "q", "k": 3, "tags_any": ["a"],
                                         "min_score": 0.5, "mode": "hybrid"})
            await c.call_tool("list", {"tag": "a", "limit": 5})
            await c.call_tool("history", {"id": "m1"})
            await c.call_tool("delete", {"id": "m1"})

    run(go())
    assert len(FakeSpine.made) == 1  # every call of the session went through one client
    calls = FakeSpine.made[0].calls
    assert calls == [
        ("put", ("dflt", "m1", "hi"), {"tags": ["a"], "metadata": {"k": 1}, "agent_id": "bot"}),
        ("create", ("other", "minted"), {}),
        ("search", ("dflt", "q"), {"k": 3, "tags_any": ["a"], "min_score": 0.5,
                                   "mode": "hybrid"}),
        ("list", ("dflt",), {"tag": "a", "limit": 5}),
        ("history", ("dflt", "m1"), {}),
        ("delete", ("dflt", "m1"), {}),
    ]


def test_errors_are_tool_errors_naming_the_field() -> None:
    server = build_server(McpSettings(urls=("http://x:1",)), FakeSpine)

    async def go() -> None:
        async with McpClient(server) as c:
            r = await c.call_tool("read", {"id": "nope", "namespace": "ns"})
            assert r.is_error
            text = r.content[0].text  # type: ignore[union-attr]
            assert "404 not_found" in text and "field: id" in text
            r = await c.call_tool("read", {"id": "x"})  # no namespace, no default
            assert r.is_error and "field: namespace" in r.content[0].text  # type: ignore[union-attr]
            r = await c.call_tool("search", {"query": "q", "k": 0, "namespace": "ns"})
            assert r.is_error and "k" in r.content[0].text  # type: ignore[union-attr]

    run(go())


class _Ctx:
    def __init__(self, headers: dict[str, str] | None) -> None:
        self.headers = headers


def test_http_sessions_get_their_own_clients_and_the_cache_is_capped() -> None:
    FakeSpine.made.clear()
    tools = SpineTools(McpSettings(urls=("http://x:1",)), FakeSpine)
    def client(headers: dict[str, str]) -> tuple[Any, bool]:
        got: tuple[Any, bool] = tools._client(_Ctx(headers))  # type: ignore[arg-type]
        return got

    a, kept = client({"mcp-session-id": "a"})
    assert kept and client({"mcp-session-id": "a"}) == (a, True)
    b, _ = client({"mcp-session-id": "b"})
    assert b is not a
    # A stateless request (no session id) shares nobody's token, and its client is not kept.
    c, kept = client({})
    assert not kept and c not in (a, b)
    for i in range(MAX_SESSIONS):
        client({"mcp-session-id": f"s{i}"})
    assert len(tools._clients) == MAX_SESSIONS
    assert a.closed and b.closed  # the least recently used were dropped and closed
    kept_clients = list(tools._clients.values())
    tools.close()
    assert not tools._clients and all(k.closed for k in kept_clients)
