"""`spine mcp` driven by the MCP SDK's own client against a real keyed cluster: over stdio (the
server a subprocess, as Claude Code runs it) and over streamable HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client as McpClient
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from spine.core.config import hash_key
from tests.harness.wait import wait_until
from tests.integration.cluster import LocalCluster
from tests.integration.conftest import ClusterFactory

pytestmark = pytest.mark.integration

ADMIN = "mcp-admin-key-0123456789"
AGENT = "mcp-agent-key-0123456789"
NS = "team-mcp"


@pytest.fixture(scope="module")
def mcp_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    factory = ClusterFactory(tmp_path_factory.mktemp("mcp"))
    try:
        yield factory(api_key=ADMIN, auth={"keys": [
            {"name": "mcp-agent", "sha256": hash_key(AGENT), "role": "agent",
             "namespaces": [NS]},
            {"name": "root", "sha256": hash_key(ADMIN), "role": "admin"},
        ]})
    finally:
        factory.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def _env(c: LocalCluster) -> dict[str, str]:
    """The server's settings from the environment, as a client config would pass them; the
    first URL is dead, so every call also exercises the client's failover."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPINE_")}
    env.update({"SPINE_URL": f"http://127.0.0.1:{_free_port()},{c.url('n1')},{c.url('n2')}",
                "SPINE_API_KEY": AGENT, "SPINE_NAMESPACE": NS})
    return env


def _text(result: Any) -> str:
    return "".join(getattr(part, "text", "") for part in result.content)


async def _conversation(session: Any, run: str) -> None:
    """What an agent does: list tools, write, find it with search in the next call, read,
    list, history, delete, and make mistakes that come back as tool errors (`run` keeps the
    ids and tags of one test apart from the other's in the shared cluster)."""
    mid, tag = f"incident-{run}", f"ops-{run}"
    tools = {t.name: t for t in (await session.list_tools()).tools}
    assert set(tools) == {"write", "read", "search", "list", "delete", "history",
                          "lease_acquire", "lease_release", "lease_show", "changes"}
    assert "query" in tools["search"].input_schema["properties"]
    assert "mode" in tools["search"].input_schema["properties"]

    w = await session.call_tool("write", {
        "content": "the deploy of service atlas failed on a full disk", "id": mid,
        "tags": [tag, "atlas"], "metadata": {"sev": 2}})
    assert not w.is_error, _text(w)
    assert w.structured_content["id"] == mid
    assert w.structured_content["agent_id"] == "mcp-agent"  # the key's name
    s = await session.call_tool("search", {"query": "atlas deploy failed disk", "k": 3,
                                           "tags_any": [tag], "metadata": {"sev": 2}})
    assert not s.is_error, _text(s)
    assert [r["id"] for r in s.structured_content["results"]] == [mid]
    r = await session.call_tool("read", {"id": mid})
    assert not r.is_error and r.structured_content["content"].startswith("the deploy")
    m = await session.call_tool("write", {"content": "minted id", "tags": [tag]})
    assert not m.is_error, _text(m)
    page = await session.call_tool("list", {"tag": tag, "limit": 10})
    assert {i["id"] for i in page.structured_content["items"]} == {
        mid, m.structured_content["id"]}
    h = await session.call_tool("history", {"id": mid})
    assert len(h.structured_content["versions"]) == 1
    d = await session.call_tool("delete", {"id": m.structured_content["id"]})
    assert not d.is_error and d.structured_content["deleted"] is True

    missing = await session.call_tool("read", {"id": "no-such-memory"})
    assert missing.is_error and "404 not_found" in _text(missing)
    assert "field: id" in _text(missing)
    bad = await session.call_tool("write", {"content": "x", "namespace": "Bad Namespace"})
    assert bad.is_error and "field: namespace" in _text(bad), _text(bad)
    other = await session.call_tool("read", {"id": "x", "namespace": "team-other"})
    assert other.is_error and "403 forbidden" in _text(other), _text(other)
    big_k = await session.call_tool("search", {"query": "q", "k": 100_000})
    assert big_k.is_error and "field: k" in _text(big_k), _text(big_k)
    # The server is still there after the errors.
    again = await session.call_tool("read", {"id": mid})
    assert not again.is_error


@pytest.mark.timeout(120)
def test_stdio_server_with_the_sdk_client(mcp_cluster: LocalCluster, tmp_path: Path) -> None:
    params = StdioServerParameters(command=sys.executable, args=["-m", "spine", "mcp"],
                                   env=_env(mcp_cluster), cwd=str(tmp_path))
    errlog = tmp_path / "server.err"

    async def go() -> None:
        with errlog.open("w") as err:
            async with stdio_client(params, errlog=err) as (read, write), ClientSession(
                    read, write) as session:
                await session.initialize()
                await _conversation(session, "stdio")

    asyncio.run(go())
    assert "Traceback" not in errlog.read_text(), errlog.read_text()


@pytest.mark.timeout(120)
def test_streamable_http_server_on_loopback(mcp_cluster: LocalCluster, tmp_path: Path) -> None:
    port = _free_port()
    errlog = tmp_path / "server.err"
    with errlog.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "spine", "mcp", "--http", str(port)],
                                env=_env(mcp_cluster), stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
    try:
        def listening() -> bool:
            assert proc.poll() is None, errlog.read_text()
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, 30.0, 0.1, "spine mcp --http to listen on 127.0.0.1")

        async def go() -> None:
            async with McpClient(f"http://127.0.0.1:{port}/mcp") as client:
                await _conversation(client, "http")

        asyncio.run(go())
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    assert "Traceback" not in errlog.read_text(), errlog.read_text()
