"""A `Transport` that times every call it passes on, for the ranking of replicas.

Wraps the node's peer transport (under `Loopback`, so calls to this node itself, answered from
its own handlers, are not timed) and feeds `spine.core.peer_stats.PeerStats`: a call going out
raises the peer's in-flight count; its end lowers it and adds its latency, read on the
runtime's monotonic clock. A call the peer answered, even with an error, counts as it took; a
transport failure (unreachable, timed out) counts as at least its timeout, so a failing peer
ranks as slow; a call its caller cancelled (a hedged request that lost) counts as the time it
had taken so far, a lower bound on the peer's latency.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from spine.core.errors import PeerUnavailable
from spine.core.messages import Message
from spine.core.peer_stats import PeerStats
from spine.ports import Transport


class PeerLatency:
    """A `Transport` over `inner` that records each call's latency in `stats`."""

    def __init__(
        self, inner: Transport, stats: PeerStats, monotonic: Callable[[], float]
    ) -> None:
        self.inner = inner
        self.stats = stats
        self.monotonic = monotonic

    async def call(self, node: str, msg: Message, timeout: float) -> Any:
        """`inner.call`, timed."""
        self.stats.started(node)
        start = self.monotonic()
        try:
            reply = await self.inner.call(node, msg, timeout)
        except PeerUnavailable as e:
            took = self.monotonic() - start
            if "code" not in e.details:  # not an answer: unreachable or timed out
                took = max(took, timeout)
            self.stats.finished(node, took)
            raise
        except BaseException:  # another answered error, or cancelled (a hedge that lost)
            self.stats.finished(node, self.monotonic() - start)
            raise
        self.stats.finished(node, self.monotonic() - start)
        return reply

    def drop(self, node: str) -> None:
        """Forget the connection to `node`."""
        self.inner.drop(node)

    async def close(self) -> None:
        """Close the wrapped transport's connections."""
        await self.inner.close()
