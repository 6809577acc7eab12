"""The one place that reads real time and real randomness.

Everything else takes a `Runtime` (or plain `now` values) so that tests can run on virtual time
and the fault harness can skew one node's wall clock without touching the others.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass, field

from spine.core.links import MAX_FILE_BYTES, Link, LinkFileError, parse_links


@dataclass
class Runtime:
    """Real clocks and randomness; `wall_offset_ms` is a test-only skew applied to wall time."""

    wall_offset_ms: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(os.urandom(8)))

    def wall_ms(self) -> int:
        """Milliseconds since the epoch (skewed by `wall_offset_ms`)."""
        return time.time_ns() // 1_000_000 + self.wall_offset_ms

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for timeouts and latencies)."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Suspend the calling task."""
        await asyncio.sleep(seconds)

    def random(self) -> float:
        """A float in [0, 1)."""
        return self.rng.random()

    def token_bytes(self, n: int) -> bytes:
        """Cryptographically random bytes (nonces)."""
        return os.urandom(n)


CLOCK_FILE_ENV = "SPINE_TEST_CLOCK_FILE"


async def follow_clock_file(rt: Runtime, path: str, interval: float = 0.05) -> None:
    """Test-only clock control (the fault harness's clock-skew nemesis): keep
    `rt.wall_offset_ms` equal to the integer in `path` (milliseconds, may be negative), read
    every `interval`; a missing or malformed file means no skew. Monotonic time is not touched."""
    while True:
        try:
            with open(path) as f:
                rt.wall_offset_ms = int(f.read().strip() or 0)
        except (OSError, ValueError):
            rt.wall_offset_ms = 0
        await asyncio.sleep(interval)


LINK_FILE_ENV = "SPINE_TEST_LINK_FILE"


class LinkTable:
    """Test-only per-link delay and loss (`spine.core.links`): what this node's outgoing RPC
    requests and gossip packets to each peer wait, or whether they are dropped. Jitter and loss
    draw from the runtime's rng, and only on links that have them."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self.links: dict[str, Link] = {}
        self.error: str | None = None  # why the last file read was refused (None: it was not)

    def delay_for(self, peer: str) -> float | None:
        """Seconds to hold one message to `peer` before sending it, or None to drop it."""
        link = self.links.get(peer)
        if link is None:
            return 0.0
        rng = self._rt.rng
        loss_u = rng.random() if link.loss else 1.0
        return link.draw(rng.random() if link.jitter_ms else 0.0, loss_u)

    async def sleep(self, seconds: float) -> None:
        """Hold a message for `seconds` (the runtime's sleep)."""
        await self._rt.sleep(seconds)

    def load(self, path: str) -> None:
        """Follow the file at `path` once: its links, or none if it is missing or refused."""
        try:
            with open(path, "rb") as f:
                text = f.read(MAX_FILE_BYTES + 1)
            links, error = parse_links(text), None
        except FileNotFoundError:
            links, error = {}, None
        except (OSError, LinkFileError) as e:
            links, error = {}, str(e)
        if error is not None and error != self.error:
            import structlog  # here, not at the top: the client imports this module without it

            structlog.get_logger("spine.runtime").warning(
                "test_link_file_refused", file=path, error=error)
        self.links, self.error = links, error


async def follow_link_file(table: LinkTable, path: str, interval: float = 0.05) -> None:
    """Test-only link control (the harness's `set_link`, `regions`): keep `table` equal to the
    link file at `path`, read every `interval`; a missing or malformed file means no delay."""
    while True:
        table.load(path)
        await asyncio.sleep(interval)
