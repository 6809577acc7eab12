"""`spine mcp`: Spine's memory operations as MCP tools, on the official `mcp` SDK (an extra).

Tools: write, read, search, list, delete, history, changes (the change feed, DESIGN §15), and
lease_acquire, lease_release, lease_show for coordinating agents (DESIGN §12: `write` and
`delete` take `if_match` and `fence`). Each MCP
session gets its own `spine.client.Client`, so the session token that client carries gives
read-your-writes across the tool calls of that session and never leaks into another's. A stdio
server serves exactly one session (its parent), so it keeps one client; over streamable HTTP the
client is found by the `mcp-session-id` the SDK assigned (at most `MAX_SESSIONS`, least recently
used dropped), and a stateless request without one gets a client of its own.

Failures a caller can act on (a 4xx naming a field, an unreachable cluster, a missing
namespace) come back as tool errors (`is_error`) with one line from `spine.explain`; they never
end the server.
"""

from __future__ import annotations

import functools
import math
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
MAX_TOOL_WAIT_S = 10  # the longest long-poll a `changes` call holds a tool call (and a thread)

INSTRUCTIONS = (
    "Spine is a shared memory store for agents. `write` stores a memory (text, tags, metadata)"
    " under an id (with `ttl_s` it is forgotten that many seconds later), `search` finds"
    " memories by meaning (by shared words if the cluster runs the"
    " hash embedder), `read`, `list`, `history` and `delete` do what they say. Memories live in"
    " namespaces; calls use the server's default namespace unless they name one. Within this"
    " session every read sees this session's earlier writes. To coordinate with other agents:"
    " `write` with `if_match` (a record's version) changes a memory only if nobody changed it"
    " since you read it; `lease_acquire` claims a named lease (e.g. task:42) for ttl_ms and"
    " returns a fencing token: pass `fence` = '<name>=<token>' on your writes, renew by calling"
    " lease_acquire again before ttl_ms has passed since you sent the last call, and"
    " `lease_release` when done. `changes` tells what changed since a cursor it returned (writes,"
    " deletes, expiries), waiting up to wait_s seconds when nothing has yet."
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
IfMatch = Annotated[str | None, Field(
    description="only if the memory's current version is this one (a record's `version`);"
                " else an error giving the current version")]
TtlS = Annotated[int | None, Field(
    description="forget it this many seconds from now (whole seconds >= 1); omitted: its tags'"
                " default, else never", ge=1)]
DedupArg = Annotated[str | float | None, Field(
    description="create without an id unless it exists: 'exact' (the same text, whitespace"
                " aside, is one memory even when agents write it at once) or a similarity score"
                " in [0, 1] (a memory at least that close is returned instead; best effort);"
                " the record says deduplicated: true when it already existed")]
FenceArg = Annotated[str | None, Field(
    description="'<lease name>=<token>' from lease_acquire: refused once a newer holder of that"
                " lease has written this memory")]
LeaseName = Annotated[str, Field(
    description="lease name: letters, digits and '._:-', ≤128, e.g. task:42")]


def _close(client: Any) -> None:
    close = getattr(client, "close", None)  # the urllib client has nothing to close
    if callable(close):
        close()


def _dedup(value: str | float) -> str | float:
    """The client's `dedup=` for the write tool's argument: 'exact' or a score in [0, 1]; a
    tool error naming the argument otherwise (the server would refuse it too)."""
    if isinstance(value, str):
        if value.strip().lower() == "exact":
            return "exact"
        try:
            value = float(value)
        except ValueError:
            value = math.nan
    if isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ToolError("invalid: dedup must be 'exact' or a similarity score in [0, 1]"
                        " (field: dedup)")
    return float(value)


def _conditions(if_match: str | None, fence: str | None) -> dict[str, Any]:
    """The client keywords for a conditional or fenced write; a malformed value is a tool error
    naming its argument."""
    from spine.client.calls import if_match_value
    from spine.core.conditions import parse_fence
    from spine.core.errors import InvalidInput

    out: dict[str, Any] = {}
    if if_match is not None:
        try:
            out["if_match"] = if_match_value(if_match)
        except ValueError:
            raise ToolError("invalid: if_match must be a record's version, as read or write"
                            " return it (field: if_match)") from None
    if fence is not None:
        try:
            f = parse_fence(fence)
        except InvalidInput as e:
            raise ToolError(f"invalid: {e.message}; give '<lease name>=<token>'"
                            " (field: fence)") from None
        out["fence"] = (f.lease, f.token)
    return out


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
        ToolError carrying its one-line account (a failed If-Match also names the current
        version, what to retry with)."""
        client, kept = self._client(ctx)
        try:
            call = functools.partial(getattr(client, method), *args, **kw)
            return await anyio.to_thread.run_sync(call)
        except Exception as e:
            line = explain(e, self.settings.urls)
            if line is None:
                raise  # a bug: the SDK answers "Error executing tool" and logs the traceback
            if getattr(e, "code", None) == "precondition_failed":
                line += f"; current version: {getattr(e, 'current', None) or 'none'}"
            raise ToolError(line) from None
        finally:
            if not kept:
                _close(client)

    async def write(self, content: Annotated[str, Field(description="the memory's text")],
                    ctx: Context, id: Annotated[str | None, Field(
                        description="memory id; omit it to have one minted")] = None,
                    tags: Tags = None, metadata: Metadata = None, agent_id: AgentId = None,
                    namespace: Namespace = None, if_match: IfMatch = None,
                    fence: FenceArg = None, ttl_s: TtlS = None,
                    dedup: DedupArg = None) -> dict[str, Any]:
        """Store a memory (create, or replace the one with this id); returns the record.
        With `if_match` / `fence` it is a conditional / fenced write (needs `id`); with
        `ttl_s` it expires that many seconds later (`expires_at` in the record)."""
        ns = self._ns(namespace)
        fields = _conditions(if_match, fence)
        if fields and id is None:
            raise ToolError("invalid: if_match and fence need the memory id (field: id)")
        if tags is not None:
            fields["tags"] = tags
        if metadata is not None:
            fields["metadata"] = metadata
        if agent_id is not None:
            fields["agent_id"] = agent_id
        if ttl_s is not None:
            fields["ttl_s"] = ttl_s
        if dedup is not None:
            if id is not None or "if_match" in fields or "fence" in fields:
                raise ToolError("invalid: dedup chooses the id; give no id, if_match or fence"
                                " (field: dedup)")
            fields["dedup"] = _dedup(dedup)
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
            description="vector (meaning), keyword (exact words, identifiers, error codes) or"
                        " hybrid (both fused; the default)")] = None,
        recency_half_life_s: Annotated[float | None, Field(
            description="favour recent memories: the age in seconds at which recency halves",
            gt=0)] = None,
        recency_weight: Annotated[float | None, Field(
            description="share of the score given to recency, 0..1 (default 0.5)",
            ge=0, le=1)] = None,
        namespace: Namespace = None,
    ) -> dict[str, Any]:
        """Find memories by meaning and words; `results` holds {id, score, scores, record},
        best first."""
        body: dict[str, Any] = {"k": k}
        for name, value in (("tags_all", tags_all), ("tags_any", tags_any),
                            ("agent_id", agent_id), ("metadata", metadata),
                            ("min_score", min_score), ("mode", mode)):
            if value is not None:
                body[name] = value
        if recency_half_life_s is not None:
            body["recency"] = {"half_life_s": recency_half_life_s,
                               "weight": 0.5 if recency_weight is None else recency_weight}
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

    async def delete(self, id: MemoryId, ctx: Context, namespace: Namespace = None,
                     if_match: IfMatch = None, fence: FenceArg = None) -> dict[str, Any]:
        """Delete a memory (it then reads as not found); `if_match` / `fence` as for write."""
        cond = _conditions(if_match, fence)
        out: dict[str, Any] = await self._call(ctx, "delete", self._ns(namespace), id, **cond)
        return out

    async def lease_acquire(
        self, name: LeaseName, ctx: Context,
        holder: Annotated[str, Field(description="who holds it: your agent's name")],
        ttl_ms: Annotated[int, Field(description="milliseconds it is held unless renewed; count"
                                                 " it from when you sent this call", ge=1)],
        namespace: Namespace = None,
    ) -> dict[str, Any]:
        """Claim a lease, or renew it if you hold it; returns {name, holder, token, ttl_ms,
        remaining_ms}. `token` is the fencing token for `fence`. Fails with lease_held (who
        holds it, for how long) if another holder has it."""
        lease = await self._call(ctx, "acquire_lease", self._ns(namespace), name, holder, ttl_ms)
        out: dict[str, Any] = lease.public()
        return out

    async def lease_release(
        self, name: LeaseName, ctx: Context,
        token: Annotated[int, Field(description="the token lease_acquire returned", ge=1)],
        namespace: Namespace = None,
    ) -> dict[str, Any]:
        """Release a lease you hold (its token must be the current one)."""
        lease = await self._call(ctx, "release_lease", self._ns(namespace), name, token)
        out: dict[str, Any] = lease.public()
        return out

    async def lease_show(self, name: LeaseName, ctx: Context,
                         namespace: Namespace = None) -> dict[str, Any]:
        """Read a lease: holder (null when free), token, ttl_ms, remaining_ms."""
        lease = await self._call(ctx, "get_lease", self._ns(namespace), name)
        out: dict[str, Any] = lease.public()
        return out

    async def changes(
        self, ctx: Context,
        cursor: Annotated[str | None, Field(
            description="the cursor the previous changes call returned; omitted: from the"
                        " beginning (every memory's latest change)", max_length=4096)] = None,
        from_now: Annotated[bool, Field(
            description="only changes made after this call (instead of a cursor)")] = False,
        limit: Annotated[int, Field(description="changes per call", ge=1, le=1000)] = 100,
        wait_s: Annotated[float, Field(
            description="when nothing is new, wait up to this many seconds for a change",
            ge=0, le=MAX_TOOL_WAIT_S)] = 0,
        namespace: Namespace = None,
    ) -> dict[str, Any]:
        """What changed in a namespace since `cursor`: {items: [{id, version, deleted,
        record}], cursor}; pass `cursor` back next time, nothing is missed. Deleted and expired
        memories come with deleted: true and record null. A change may come twice: (id,
        version) identifies it."""
        if cursor is not None and from_now:
            raise ToolError("invalid: give cursor or from_now, not both (field: from_now)")
        page = await self._call(ctx, "changes", self._ns(namespace), cursor, from_now=from_now,
                                limit=limit, wait_s=wait_s)
        out: dict[str, Any] = page.public()
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
    server.add_tool(tools.changes, name="changes", annotations=reading)
    leasing = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
    server.add_tool(tools.lease_acquire, name="lease_acquire", annotations=leasing)
    server.add_tool(tools.lease_release, name="lease_release", annotations=leasing)
    server.add_tool(tools.lease_show, name="lease_show", annotations=reading)
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
