"""`spine mcp`: Spine's memory operations as MCP tools, on the official `mcp` SDK (an extra).

Tools: write, read, search, list, delete, history. Each MCP session gets its own
`spine.client.Client`, so the session token that client carries gives read-your-writes across
the tool calls of that session and never leaks into another's. A stdio server serves exactly
one session (its parent), so it keeps one client; over streamable HTTP the client is found by
the `mcp-session-id` the SDK assigned (at most `MAX_SESSIONS`, least recently used dropped),
and a stateless request without one gets a client of its own.

Failures a caller can act on (a 4xx naming a field, an unreachable cluster, a missing
namespace) come back as tool errors (`is_error`) with one line from `spine.explain`; they never
end the server.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import anyio.to_thread
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

from spine.explain import explain

SESSION_HEADER = "mcp-session-id"  # the SDK's streamable-HTTP session id
MAX_SESSIONS = 256  # Spine clients kept for streamable-HTTP sessions (each holds a pool)

INSTRUCTIONS = (
    "Spine is a shared memory store for agents. `write` stores a memory (text, tags, metadata)"
    " under an id, `search` finds memories by meaning (by shared words if the cluster runs the"
    " hash embedder), `read`, `list`, `history` and `delete` do what they say. Memories live in"
    " namespaces; calls use the server's default namespace unless they name one. Within this"
    " session every read sees this session's earlier writes."
)


@dataclass(frozen=True, slots=True)
class McpSettings:
    """Where the tools send their requests, and as whom."""

    urls: tuple[str, ...]
    api_key: str | None = None
    namespace: str | None = None
    consistency: str | None = None
    verify: bool | str = True
    timeout: float = 10.0


def new_client(settings: McpSettings) -> Any:
    """A Spine client over every URL (it fails over between them), with no token yet."""
    from spine.client import Client

    return Client(list(settings.urls), api_key=settings.api_key,
                  consistency=settings.consistency, verify=settings.verify,
                  timeout=settings.timeout)


# Argument types with the descriptions a model reads in the tool's input schema.
Namespace = Annotated[str | None, Field(
    description="namespace (lower case, digits, '_' or '-'); default: the server's")]
MemoryId = Annotated[str, Field(description="memory id: letters, digits and '._:-', ≤128")]
Tags = Annotated[list[str] | None, Field(
    description="tags: lower case, digits and ':_.-', each ≤64")]
Metadata = Annotated[dict[str, Any] | None, Field(description="a JSON object stored as is")]
AgentId = Annotated[str | None, Field(
    description="the agent writing (an agent API key records its own name instead)")]


def _close(client: Any) -> None:
    close = getattr(client, "close", None)  # the urllib client has nothing to close
    if callable(close):
        close()


class SpineTools:
    """The tool functions; `client_factory` makes one Spine client per MCP session."""

    def __init__(self, settings: McpSettings,
                 client_factory: Callable[[McpSettings], Any] = new_client) -> None:
        self.settings = settings
        self._new = client_factory
        self._clients: OrderedDict[str, Any] = OrderedDict()

    def close(self) -> None:
        """Close every session's client."""
        while self._clients:
            _close(self._clients.popitem()[1])

    def _client(self, ctx: Context) -> tuple[Any, bool]:
        """This MCP session's Spine client (made on its first call), and whether it is kept
        for the session's next calls (not for a stateless request's)."""
        headers = ctx.headers
        if headers is None:  # stdio: the process serves one session
            key: str | None = ""
        else:
            key = headers.get(SESSION_HEADER)
        if key is None:
            return self._new(self.settings), False
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = self._new(self.settings)
            while len(self._clients) > MAX_SESSIONS:
                _close(self._clients.popitem(last=False)[1])
        else:
            self._clients.move_to_end(key)
        return client, True

    def _ns(self, namespace: str | None) -> str:
        ns = namespace or self.settings.namespace
        if not ns:
            raise ToolError("invalid: no namespace given and the server has no default"
                            " (spine mcp --namespace or SPINE_NAMESPACE) (field: namespace)")
        return ns

    async def _call(self, ctx: Context, method: str, *args: Any, **kw: Any) -> Any:
        """Run one client call off the event loop; a failure a caller can act on is a
        ToolError carrying its one-line account."""
        client, kept = self._client(ctx)
        try:
            call = functools.partial(getattr(client, method), *args, **kw)
            return await anyio.to_thread.run_sync(call)
        except Exception as e:
            line = explain(e, self.settings.urls)
            if line is None:
                raise  # a bug: the SDK answers "Error executing tool" and logs the traceback
            raise ToolError(line) from None
        finally:
            if not kept:
                _close(client)

    async def write(self, content: Annotated[str, Field(description="the memory's text")],
                    ctx: Context, id: Annotated[str | None, Field(
                        description="memory id; omit it to have one minted")] = None,
                    tags: Tags = None, metadata: Metadata = None, agent_id: AgentId = None,
                    namespace: Namespace = None) -> dict[str, Any]:
        """Store a memory (create, or replace the one with this id); returns the record."""
        ns = self._ns(namespace)
        fields: dict[str, Any] = {}
        if tags is not None:
            fields["tags"] = tags
        if metadata is not None:
            fields["metadata"] = metadata
        if agent_id is not None:
            fields["agent_id"] = agent_id
        if id is None:
            out: dict[str, Any] = await self._call(ctx, "create", ns, content, **fields)
        else:
            out = await self._call(ctx, "put", ns, id, content, **fields)
        return out

    async def read(self, id: MemoryId, ctx: Context,
                   namespace: Namespace = None) -> dict[str, Any]:
        """Read one memory by id."""
        out: dict[str, Any] = await self._call(ctx, "get", self._ns(namespace), id)
        return out

    async def search(
        self, query: Annotated[str, Field(description="what to look for, in words")],
        ctx: Context,
        k: Annotated[int, Field(description="results wanted", ge=1)] = 10,
        tags_all: Annotated[list[str] | None, Field(
            description="only memories with every one of these tags")] = None,
        tags_any: Annotated[list[str] | None, Field(
            description="only memories with at least one of these tags")] = None,
        agent_id: Annotated[str | None, Field(
            description="only memories written by this agent")] = None,
        metadata: Annotated[dict[str, Any] | None, Field(
            description="only memories whose metadata holds all these key/value pairs")] = None,
        min_score: Annotated[float | None, Field(
            description="drop results scoring below this")] = None,
        mode: Annotated[str | None, Field(
            description="search mode, passed to the server as given (where it has modes)")] = None,
        namespace: Namespace = None,
    ) -> dict[str, Any]:
        """Find memories by meaning; `results` holds {id, score, record}, best first."""
        body: dict[str, Any] = {"k": k}
        for name, value in (("tags_all", tags_all), ("tags_any", tags_any),
                            ("agent_id", agent_id), ("metadata", metadata),
                            ("min_score", min_score), ("mode", mode)):
            if value is not None:
                body[name] = value
        out: dict[str, Any] = await self._call(ctx, "search", self._ns(namespace), query, **body)
        return out

    async def list(
        self, ctx: Context,
        tag: Annotated[str | None, Field(description="only memories with this tag")] = None,
        agent_id: Annotated[str | None, Field(
            description="only memories written by this agent")] = None,
        limit: Annotated[int, Field(description="memories per page", ge=1)] = 100,
        cursor: Annotated[str | None, Field(
            description="the next_cursor of the previous page")] = None,
        namespace: Namespace = None,
    ) -> dict[str, Any]:
        """One page of live memories in id order; pass next_cursor back for the next page."""
        params = {k: v for k, v in (("tag", tag), ("agent_id", agent_id), ("limit", limit),
                                    ("cursor", cursor)) if v is not None}
        out: dict[str, Any] = await self._call(ctx, "list", self._ns(namespace), **params)
        return out

    async def delete(self, id: MemoryId, ctx: Context,
                     namespace: Namespace = None) -> dict[str, Any]:
        """Delete a memory (it then reads as not found)."""
        out: dict[str, Any] = await self._call(ctx, "delete", self._ns(namespace), id)
        return out

    async def history(self, id: MemoryId, ctx: Context,
                      namespace: Namespace = None) -> dict[str, Any]:
        """The versions kept for a memory, newest first (concurrent ones marked)."""
        out: dict[str, Any] = await self._call(ctx, "history", self._ns(namespace), id)
        return out


def build_server(settings: McpSettings,
                 client_factory: Callable[[McpSettings], Any] = new_client,
                 tools: SpineTools | None = None) -> MCPServer:
    """An MCPServer with Spine's tools (`tools`, or new ones over `client_factory`)."""
    from spine.cli import _version

    server: MCPServer = MCPServer("spine", instructions=INSTRUCTIONS, version=_version(),
                                  log_level="WARNING")
    tools = tools or SpineTools(settings, client_factory)
    reading = ToolAnnotations(read_only_hint=True, open_world_hint=False)
    server.add_tool(tools.write, name="write", annotations=ToolAnnotations(
        read_only_hint=False, destructive_hint=False, open_world_hint=False))
    server.add_tool(tools.read, name="read", annotations=reading)
    server.add_tool(tools.search, name="search", annotations=reading)
    server.add_tool(tools.list, name="list", annotations=reading)
    server.add_tool(tools.delete, name="delete", annotations=ToolAnnotations(
        read_only_hint=False, destructive_hint=True, idempotent_hint=True,
        open_world_hint=False))
    server.add_tool(tools.history, name="history", annotations=reading)
    return server


def serve(settings: McpSettings, http_port: int | None = None) -> None:
    """Serve over stdio, or streamable HTTP on 127.0.0.1:`http_port` at /mcp."""
    tools = SpineTools(settings)
    server = build_server(settings, tools=tools)
    try:
        if http_port is None:
            server.run("stdio")
        else:
            server.run("streamable-http", host="127.0.0.1", port=http_port)
    finally:
        tools.close()
