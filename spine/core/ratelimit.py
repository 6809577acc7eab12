"""Per-client admission for the HTTP API: a token bucket (rate) and a concurrency cap per client.

A client is an API key's name when auth is on, else the peer address. The table of clients is an
LRU capped at `max_clients`: an evicted client comes back with a full bucket, which costs the
limiter nothing it promised, since a full bucket is what an idle client has anyway. Pure: the
caller passes `now` (seconds on a monotonic clock).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["Admission", "ClientLimiter"]


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether a request may start; when not, why and how long to wait before retrying."""

    ok: bool
    retry_after: float = 0.0
    reason: str = ""


@dataclass(slots=True)
class _Client:
    tokens: float
    stamp: float
    inflight: int = 0


class ClientLimiter:
    """Token bucket (`rate` requests/s, `burst` deep; rate 0 = unlimited) and at most
    `max_inflight` requests at once (0 = unlimited), per client."""

    def __init__(self, rate: float, burst: float, max_inflight: int, max_clients: int) -> None:
        if rate < 0 or burst < 0 or max_inflight < 0 or max_clients < 1:
            raise ValueError("rate, burst and max_inflight must be >= 0, max_clients >= 1")
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.max_inflight = max_inflight
        self.max_clients = max_clients
        self._clients: OrderedDict[str, _Client] = OrderedDict()

    def __len__(self) -> int:
        return len(self._clients)

    def admit(self, client: str, now: float) -> Admission:
        """Take a token and a concurrency slot for `client`, or say how long to back off."""
        c = self._clients.get(client)
        if c is None:
            c = _Client(self.burst, now)
            self._clients[client] = c
            while len(self._clients) > self.max_clients:
                oldest = next(iter(self._clients))
                if self._clients[oldest].inflight:  # busy: keep its count, drop another idle one
                    self._clients.move_to_end(oldest)
                    if all(x.inflight for x in self._clients.values()):
                        break
                    continue
                del self._clients[oldest]
        else:
            self._clients.move_to_end(client)
        if self.rate > 0:
            c.tokens = min(self.burst, c.tokens + (now - c.stamp) * self.rate)
        c.stamp = now
        if self.max_inflight and c.inflight >= self.max_inflight:
            return Admission(False, 1.0, f"more than {self.max_inflight} requests in flight")
        if self.rate > 0:
            if c.tokens < 1.0:
                return Admission(False, (1.0 - c.tokens) / self.rate,
                                 f"more than {self.rate:g} requests per second")
            c.tokens -= 1.0
        c.inflight += 1
        return Admission(True)

    def release(self, client: str) -> None:
        """The end of a request `admit` let in."""
        c = self._clients.get(client)
        if c is not None and c.inflight > 0:
            c.inflight -= 1
