"""`ttl_s` through every interface (DESIGN §13): the client's request body, the CLI's --ttl-s,
the MCP write tool, and /openapi.json's write and record schemas."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import pytest
from mcp import Client as McpClient

from spine import commands as cm
from spine.api.openapi import openapi_document
from spine.cli import main
from spine.client import calls
from spine.core.validation import Limits
from spine.mcp import McpSettings, build_server
from tests.unit.test_cli_mcp import FakeSpine


def _ns(**kw: Any) -> argparse.Namespace:
    base: dict[str, Any] = {"tags": None, "metadata": None, "agent_id": None, "ttl_s": None}
    return argparse.Namespace(**{**base, **kw})


def test_the_client_sends_ttl_s_in_the_write_body() -> None:
    call = calls.put("ns", "m1", "text", {"ttl_s": 60})
    assert call.body == {"content": "text", "ttl_s": 60}
    assert calls.post_create("ns", "text", {"ttl_s": 5}).body == {"content": "text", "ttl_s": 5}


def test_cli_ttl_s_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[argparse.Namespace] = []

    def fake_put(args: argparse.Namespace) -> int:
        seen.append(args)
        return 0

    monkeypatch.setattr(cm, "cmd_put", fake_put)
    assert main(["put", "ns", "m1", "--content", "x", "--ttl-s", "90"]) == 0
    assert cm.write_fields(seen[0]) == {"ttl_s": 90}
    assert cm.write_fields(_ns()) == {}
    for bad in (0, -5):
        with pytest.raises(cm.UsageError, match="--ttl-s"):
            cm.write_fields(_ns(ttl_s=bad))
    with pytest.raises(SystemExit):  # argparse: not an integer
        main(["put", "ns", "m1", "--ttl-s", "1.5"])


def test_mcp_write_passes_ttl_s_and_refuses_less_than_a_second() -> None:
    FakeSpine.made.clear()
    server = build_server(McpSettings(urls=("http://x:1",), namespace="dflt"), FakeSpine)

    async def go() -> None:
        async with McpClient(server) as c:
            r = await c.call_tool("write", {"content": "hi", "id": "m1", "ttl_s": 30})
            assert not r.is_error
            r = await c.call_tool("write", {"content": "minted", "ttl_s": 7})
            assert not r.is_error
            bad = await c.call_tool("write", {"content": "hi", "ttl_s": 0})
            assert bad.is_error

    asyncio.run(go())
    sent = [(name, kw) for fake in FakeSpine.made for name, _, kw in fake.calls]
    assert ("put", {"ttl_s": 30}) in sent
    assert ("create", {"ttl_s": 7}) in sent
    assert all(kw.get("ttl_s") != 0 for _, kw in sent)


def test_openapi_declares_ttl_s_on_writes_and_expires_at_on_records() -> None:
    doc = openapi_document(4, Limits(max_ttl_s=3600), 600_000)
    schemas = doc["components"]["schemas"]
    ttl = schemas["WriteBody"]["properties"]["ttl_s"]
    assert {"type": "integer", "minimum": 1, "maximum": 3600} in ttl["anyOf"]
    item = schemas["BatchItem"]["oneOf"][0]["properties"]
    assert "ttl_s" in item
    rec = schemas["Record"]
    assert rec["properties"]["expires_at"]["type"] == ["string", "null"]
    assert "expires_at" in rec["required"]
