"""Connection-level limits of the HTTP API: a request-head deadline and a cap on connections per
peer address, enforced in aiohttp's protocol object, where a slow client is visible before any
request exists.

aiohttp bounds the idle time of a keep-alive connection (`keepalive_timeout`) and the size of a
request head (`max_line_size`, `max_field_size`, `max_headers`), but not the time a client may
take to send a head: a client trickling one header byte every few seconds holds its connection
for ever (slowloris). `LimitedRequestHandler` arms a timer when a head starts (the connection
opens, or the first byte after a response) and closes the connection unless the head completes
in `header_timeout`. Body deadlines live in the API middleware (`read_body`), which reads the body
before the request takes one of the node's `max_inflight` slots.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from spine.core.config import LimitsSection

log = structlog.get_logger("spine.api")

CLOSE_AFTER = "spine_close_after_response"  # request key: drop the connection after replying


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The slow-client and per-client settings of `limits` (seconds where a time)."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    client_inflight: int = 512
    client_rate: float = 0.0
    client_burst: float = 0.0
    client_connections: int = 1024
    max_clients: int = 65_536

    @classmethod
    def from_section(cls, lim: LimitsSection) -> HttpLimits:
        """The limits cluster.yaml's `limits` section sets."""
        return cls(
            header_timeout=lim.header_timeout_ms / 1000,
            body_timeout=lim.body_timeout_ms / 1000,
            keepalive_timeout=float(lim.keepalive_timeout_s),
            client_inflight=lim.client_inflight,
            client_rate=float(lim.client_rate),
            client_burst=float(lim.client_burst or lim.client_rate),
            client_connections=lim.client_connections,
        )


class ConnectionGuard:
    """Open connections per peer address (entries vanish at zero, so the table is bounded by
    the open connections), and counts of what the limits refused."""

    def __init__(self, per_peer: int) -> None:
        self.per_peer = per_peer
        self.open: dict[str, int] = {}
        self.refused = 0
        self.head_timeouts = 0

    def enter(self, peer: str) -> bool:
        """Count a new connection from `peer`; False when it is one too many."""
        n = self.open.get(peer, 0)
        if self.per_peer and n >= self.per_peer:
            self.refused += 1
            return False
        self.open[peer] = n + 1
        return True

    def leave(self, peer: str) -> None:
        """A connection `enter` counted has closed."""
        n = self.open.get(peer, 0) - 1
        if n > 0:
            self.open[peer] = n
        else:
            self.open.pop(peer, None)


class LimitedRequestHandler(RequestHandler):
    """aiohttp's protocol with a request-head deadline and a per-peer connection cap."""

    def __init__(
        self, manager: web.Server, *, limits: HttpLimits, guard: ConnectionGuard, **kw: Any
    ) -> None:
        super().__init__(manager, **kw)
        self._limits = limits
        self._guard = guard
        self._peer: str | None = None
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peername = transport.get_extra_info("peername")
        peer = str(peername[0]) if isinstance(peername, tuple) and peername else "unknown"
        if not self._guard.enter(peer):
            log.debug("connection_refused", peer=peer, limit=self._guard.per_peer)
            self.force_close()
            return
        self._peer = peer
        self._arm()

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        super().data_received(data)
        if self._request_count != heads:  # a head completed
            self._disarm()
        elif (data and self._head_timer is None and not self._request_in_progress
              and not self._messages):
            self._arm()  # the first bytes of the next head (or of a body before its handler ran)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if self._peer is not None:
            self._guard.leave(self._peer)
            self._peer = None
        super().connection_lost(exc)

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        out = await super().finish_response(request, resp, start_time)
        if request.get(CLOSE_AFTER):
            self.force_close()  # the written reply is flushed before the socket closes
        return out

    def request_started(self) -> None:
        """A handler runs: whatever armed the head timer belonged to this request's body."""
        self._disarm()

    def _arm(self) -> None:
        if self._limits.header_timeout > 0:
            self._head_timer = self._loop.call_later(self._limits.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _expired(self) -> None:
        self._head_timer = None
        if self._request_in_progress or self._messages:
            return  # the head completed; its body has its own deadline
        self._guard.head_timeouts += 1
        log.debug("request_head_timeout", peer=self._peer, timeout=self._limits.header_timeout)
        self.force_close()


class _LimitedServer(web.Server):
    """aiohttp's low-level server, making `LimitedRequestHandler`s."""

    spine_limits: HttpLimits
    spine_guard: ConnectionGuard

    def __call__(self) -> RequestHandler:
        return LimitedRequestHandler(self, loop=self._loop, limits=self.spine_limits,
                                     guard=self.spine_guard, **self._kwargs)


class LimitedRunner(web.AppRunner):
    """An AppRunner whose connections obey `HttpLimits`."""

    def __init__(self, app: web.Application, limits: HttpLimits, **kw: Any) -> None:
        super().__init__(app, keepalive_timeout=limits.keepalive_timeout, **kw)
        self.limits = limits
        self.guard = ConnectionGuard(limits.client_connections)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp has no hook for the protocol class: swap the server's class for a subclass
        # that only overrides the factory (Server has no __slots__; the layout is the same).
        server.__class__ = _LimitedServer
        assert isinstance(server, _LimitedServer)
        server.spine_limits = self.limits
        server.spine_guard = self.guard
        return server
