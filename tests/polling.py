"""Waiting in tests for something to happen: a poll with a deadline, never a bare sleep."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `cond` on the running loop until it holds; fail once `timeout` seconds passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, f"the condition did not hold within {timeout} s"
        await asyncio.sleep(0.005)
