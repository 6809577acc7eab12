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
