"""Which peers are up: the interface routing, hinted handoff and fan-out ask.

`ProbeLiveness` is the simple detector of the core: a peer is down after a failed RPC and up
again after a successful probe. Gossip (SWIM) replaces it behind the same `Liveness` protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol

import structlog

log = structlog.get_logger("spine.liveness")


class Liveness(Protocol):
    """What the data path needs to know about peers."""

    def is_alive(self, node: str) -> bool: ...

    def report_failure(self, node: str) -> None: ...

    def report_success(self, node: str) -> None: ...


class ProbeLiveness:
    """Down on a failed call; up again when a periodic probe succeeds."""

    def __init__(
        self,
        self_id: str,
        peers: Iterable[str],
        probe: Callable[[str], Awaitable[None]],
        interval: float,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.self_id = self_id
        self.peers = [p for p in peers if p != self_id]
        self._down: set[str] = set()
        self._probe = probe
        self._interval = interval
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self.on_up: list[Callable[[str], None]] = []

    def is_alive(self, node: str) -> bool:
        return node == self.self_id or node not in self._down

    def report_failure(self, node: str) -> None:
        if node != self.self_id and node not in self._down:
            self._down.add(node)
            log.warning("peer_down", peer=node)

    def report_success(self, node: str) -> None:
        if node in self._down:
            self._down.discard(node)
            log.info("peer_up", peer=node)
            for cb in self.on_up:
                cb(node)

    def down(self) -> set[str]:
        """Peers currently believed down."""
        return set(self._down)

    def start(self) -> None:
        """Start the probe loop."""
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Stop the probe loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await self._sleep(self._interval)
            await asyncio.gather(*(self._check(p) for p in self.peers))

    async def _check(self, peer: str) -> None:
        try:
            await self._probe(peer)
        except Exception:
            self.report_failure(peer)
        else:
            self.report_success(peer)
