"""The client side of dedup on create (DESIGN §13), with no server: what `create(dedup=...)`
sends and retries, the reply's `.deduplicated`, `spine put --dedup`, and the MCP write tool's
`dedup` argument."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any, ClassVar

import httpx2 as httpx
import pytest
from mcp import Client as McpClient

from spine import cli, commands
from spine.client import AsyncClient, Client, QuorumUnavailable, Reply
from spine.client import calls as client_calls
from spine.mcp import McpSettings, build_server

Handler = Callable[[httpx.Request], httpx.Response]
V1 = "0000018c2f3a4b5c.n1"
MID = "sha256-0123456789abcdef0123456789abcdef"


def _client(handler: Handler) -> Client:
    return Client(["http://n1", "http://n2"], transport=httpx.MockTransport(handler),
                  sleep=lambda s: None)


def _record(deduplicated: bool) -> httpx.Response:
    return httpx.Response(200 if deduplicated else 201,
                          json={"id": MID, "content": "x", "version": V1,
                                "deduplicated": deduplicated},
                          headers={"ETag": f'"{V1}"'})


@pytest.mark.parametrize(("given", "sent"), [
    ("exact", "exact"), (0.9, {"min_score": 0.9}), (1, {"min_score": 1.0}),
    ({"min_score": 0.8, "tags_all": ["a"]}, {"min_score": 0.8, "tags_all": ["a"]}),
])
def test_dedup_value(given: Any, sent: Any) -> None:
    assert client_calls.dedup_value(given) == sent


@pytest.mark.parametrize("given", ["fuzzy", True, None, ["exact"]])
def test_dedup_value_refuses_what_is_no_dedup(given: Any) -> None:
    with pytest.raises(ValueError):
        client_calls.dedup_value(given)


def test_create_with_dedup_posts_and_says_whether_it_existed() -> None:
    seen: list[httpx.Request] = []
    answers = [_record(False), _record(True)]

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return answers.pop(0)

    c = _client(handler)
    first = c.create("ns", "x", dedup="exact", tags=["t"])
    assert (seen[0].method, seen[0].url.path) == ("POST", "/v1/ns/ns/memories")
    assert json.loads(seen[0].content) == {"content": "x", "tags": ["t"], "dedup": "exact"}
    assert isinstance(first, Reply) and first.deduplicated is False and first.version == V1
    again = c.create("ns", "x", dedup=0.85)
    assert json.loads(seen[1].content) == {"content": "x", "dedup": {"min_score": 0.85}}
    assert isinstance(again, Reply) and again.deduplicated is True
    assert Reply({"id": "k"}).deduplicated is False  # a reply without the field
    with pytest.raises(ValueError):
        c.create("ns", "x", id="k", dedup="exact")  # dedup chooses the id
    assert len(seen) == 2


def test_exact_dedup_is_retried_and_semantic_dedup_is_not() -> None:
    sent: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        sent.append(req.url.host)
        return httpx.Response(503, json={"error": {"code": "quorum_unavailable",
                                                   "message": "m"}})

    with pytest.raises(QuorumUnavailable):  # create-only on a content-derived id: idempotent
        _client(handler).create("ns", "x", dedup="exact")
    assert len(sent) > 1
    sent.clear()
    with pytest.raises(QuorumUnavailable):  # a repeat could create a second memory
        _client(handler).create("ns", "x", dedup=0.9)
    assert len(sent) == 1


def test_async_create_with_dedup() -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return _record(True)

    async def go() -> Any:
        async with AsyncClient(["http://n1"], transport=httpx.MockTransport(handler)) as c:
            return await c.create("ns", "x", dedup={"min_score": 0.7})

    rec = asyncio.run(go())
    assert seen[0].method == "POST"
    assert json.loads(seen[0].content)["dedup"] == {"min_score": 0.7}
    assert isinstance(rec, Reply) and rec.deduplicated is True


# ------------------------------------------------------------------ CLI


@pytest.mark.parametrize(("text", "want"), [
    (None, None), ("exact", "exact"), ("EXACT", "exact"), ("0.9", 0.9), ("1", 1.0), ("0", 0.0),
])
def test_cli_parse_dedup(text: str | None, want: Any) -> None:
    assert commands.parse_dedup(text) == want


@pytest.mark.parametrize("argv", [
    ["put", "ns", "--content", "x", "--dedup", "1.5"],
    ["put", "ns", "--content", "x", "--dedup", "fuzzy"],
    ["put", "ns", "--content", "x", "--dedup", "nan"],
    ["put", "ns", "k", "--content", "x", "--dedup", "exact"],
])
def test_cli_refuses_bad_dedup_in_one_line(argv: list[str],
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([*argv, "--url", "http://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("spine put: --dedup")


def test_cli_put_dedup_sends_it_and_prints_the_record(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return _record(True)

    monkeypatch.setattr(commands, "client", lambda args: _client(handler))
    assert cli.main(["put", "ns", "--content", "x", "--dedup", "0.8", "--tags", "a"]) == 0
    assert json.loads(seen[0].content) == {"content": "x", "tags": ["a"],
                                           "dedup": {"min_score": 0.8}}
    assert json.loads(capsys.readouterr().out)["deduplicated"] is True
    with pytest.raises(SystemExit):
        cli.main(["put", "--help"])
    assert "--dedup exact|SCORE" in capsys.readouterr().out


# ------------------------------------------------------------------ MCP


class FakeSpine:
    """Records the client calls the MCP write tool makes."""

    made: ClassVar[list[FakeSpine]] = []

    def __init__(self, settings: McpSettings) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        FakeSpine.made.append(self)

    def close(self) -> None:
        pass

    def create(self, *a: Any, **kw: Any) -> Any:
        self.calls.append(("create", a, kw))
        return {"id": MID, "version": V1, "deduplicated": True}


def test_mcp_write_takes_dedup() -> None:
    FakeSpine.made.clear()
    server = build_server(McpSettings(urls=("http://x:1",), namespace="dflt"), FakeSpine)

    async def go() -> None:
        async with McpClient(server) as c:
            tools = {t.name: t for t in (await c.list_tools()).tools}
            assert "dedup" in tools["write"].input_schema["properties"]
            r = await c.call_tool("write", {"content": "x", "dedup": "exact"})
            assert not r.is_error and r.structured_content is not None
            assert r.structured_content["deduplicated"] is True
            r = await c.call_tool("write", {"content": "y", "dedup": 0.8})
            assert not r.is_error
            r = await c.call_tool("write", {"content": "z", "dedup": "0.75"})
            assert not r.is_error
            for bad in ({"content": "x", "dedup": "fuzzy"}, {"content": "x", "dedup": 2},
                        {"content": "x", "dedup": "exact", "id": "k"}):
                r = await c.call_tool("write", bad)
                text = r.content[0].text  # type: ignore[union-attr]
                assert r.is_error and "(field: dedup)" in text, (bad, text)

    asyncio.run(go())
    assert FakeSpine.made[0].calls == [
        ("create", ("dflt", "x"), {"dedup": "exact"}),
        ("create", ("dflt", "y"), {"dedup": 0.8}),
        ("create", ("dflt", "z"), {"dedup": 0.75}),
    ]
