"""The change feed over HTTP (DESIGN §15): `GET /v1/ns/{ns}/changes`.

As JSON, one poll: `{items, cursor}`, long-polling up to `wait_s` when nothing is new. With
`Accept: text/event-stream`, a stream of server-sent events: one `change` event per item, the
last of each batch carrying the cursor after it as its `id:`, so a client that reconnects with
`Last-Event-ID` resumes after the last whole batch it received (a batch cut short is sent again:
at least once). A comment line keeps an idle stream open through proxies.

Long polls and streams are counted per node: past `feed.max_waiters` at once, a new one is
refused with 503 and `Retry-After` rather than queued.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from spine.core.config import FeedSection
from spine.core.errors import InvalidInput, NotServing, Overloaded, SpineError
from spine.core.feed import Cursor, item

if TYPE_CHECKING:
    from spine.cluster.feed import FeedService

PARAMS = ("cursor", "from", "limit", "wait_s")
EVENT_STREAM = "text/event-stream"
STREAM_WAIT_S = 10.0  # each poll of a stream waits this long at most, then sends a keep-alive

NamespaceOf = Callable[[web.Request], str]


@dataclass(frozen=True, slots=True)
class FeedRequest:
    """One validated poll: where from, how many, how long to wait."""

    cursor: Cursor | None
    from_now: bool
    limit: int
    wait_s: float


def feed_request(
    query: Mapping[str, str], last_event_id: str | None, limits: FeedSection
) -> FeedRequest:
    """The poll a query asks for; InvalidInput naming the parameter otherwise.

    `Last-Event-ID` wins over `cursor` and `from`: an EventSource reconnects to the URL it was
    opened with (`?from=now`, or its first `?cursor=`) and adds the last event id it received,
    which is where it must resume."""
    for name in query:
        if name not in PARAMS:
            raise InvalidInput(f"unknown query parameter {name!r}", field=name)
    start = query.get("from")
    if start is not None and start != "now":
        raise InvalidInput("from must be now (or leave it out: from the beginning)",
                           field="from")
    if last_event_id is not None:
        return FeedRequest(Cursor.decode(last_event_id, "Last-Event-ID"), False,
                           _limit(query, limits), _wait(query, limits))
    raw = query.get("cursor")
    cursor = None if raw is None else Cursor.decode(raw)
    if start is not None and cursor is not None:
        raise InvalidInput("give cursor or from=now, not both", field="from")
    return FeedRequest(cursor, start is not None, _limit(query, limits), _wait(query, limits))


def _limit(query: Mapping[str, str], limits: FeedSection) -> int:
    return int(_number(query.get("limit", "100"), "limit", 1, limits.max_limit, integer=True))


def _wait(query: Mapping[str, str], limits: FeedSection) -> float:
    return _number(query.get("wait_s", "0"), "wait_s", 0, limits.max_wait_s, integer=False)


def _number(raw: str, name: str, lo: int, hi: int, *, integer: bool) -> float:
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise InvalidInput(f"{name} must be {kind} in {lo}..{hi}", field=name) from None
    if not lo <= value <= hi:  # NaN fails this too
        raise InvalidInput(f"{name} must be in {lo}..{hi}", field=name)
    return value


def _event(data: bytes, event_id: str | None) -> bytes:
    head = b"event: change\n" + (b"id: " + event_id.encode() + b"\n" if event_id else b"")
    return head + b"data: " + data + b"\n\n"


class ChangeRoutes:
    """`GET /v1/ns/{ns}/changes`, as JSON polls or an event stream."""

    def __init__(self, feed: FeedService | None, limits: FeedSection,
                 namespace: NamespaceOf) -> None:
        self.feed = feed
        self.limits = limits
        self.namespace = namespace  # validates the namespace and the caller's right to read it
        self.following = 0  # long polls and streams open on this node

    def add_to(self, router: web.UrlDispatcher) -> None:
        """Register the route."""
        router.add_get("/v1/ns/{ns}/changes", self.changes)

    async def changes(self, request: web.Request) -> web.StreamResponse:
        """One poll, or a stream when the client accepts `text/event-stream`."""
        ns = self.namespace(request)
        req = feed_request(request.query, request.headers.get("Last-Event-ID"), self.limits)
        if self.feed is None:
            raise NotServing("the change feed is not available on this node")
        stream = EVENT_STREAM in request.headers.get("Accept", "")
        waits = stream or req.wait_s > 0
        if waits and self.following >= self.limits.max_waiters:
            raise Overloaded("too many change-feed followers on this node; retry shortly",
                             retry_after=1)
        self.following += waits
        try:
            if stream:
                return await self._stream(request, self.feed, ns, req)
            records, cursor = await self.feed.poll(ns, req.cursor, from_now=req.from_now,
                                                   limit=req.limit, wait_s=req.wait_s)
        finally:
            self.following -= waits
        body = {"items": [item(r) for r in records], "cursor": cursor.encode()}
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    async def _stream(
        self, request: web.Request, feed: FeedService, ns: str, req: FeedRequest
    ) -> web.StreamResponse:
        cursor, from_now = req.cursor, req.from_now
        if from_now:  # fix the start before the stream opens: nothing later is missed
            _, cursor = await feed.poll(ns, None, from_now=True)
        resp = web.StreamResponse(headers={"Content-Type": EVENT_STREAM,
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        wait_s = min(STREAM_WAIT_S, float(self.limits.max_wait_s)) or STREAM_WAIT_S
        with contextlib.suppress(ConnectionError):  # the client went away: the stream is over
            await self._follow(resp, feed, ns, cursor, req.limit, wait_s)
        return resp

    async def _follow(self, resp: web.StreamResponse, feed: FeedService, ns: str,
                      cursor: Cursor | None, limit: int, wait_s: float) -> None:
        while True:
            try:
                records, cursor = await feed.poll(ns, cursor, limit=limit, wait_s=wait_s)
            except SpineError as e:  # the headers are out: say why in the stream, and end it
                err = {"code": e.code, "message": e.message}
                await resp.write(b"event: error\ndata: " + orjson.dumps(err) + b"\n\n")
                return
            if not records:
                await resp.write(b": keep-alive\n\n")  # fails once the client has gone
                continue
            last = len(records) - 1
            chunk = b"".join(_event(orjson.dumps(item(r)), cursor.encode() if i == last else None)
                             for i, r in enumerate(records))
            await resp.write(chunk)
