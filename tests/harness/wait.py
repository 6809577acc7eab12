"""Polling a condition against a deadline: what every harness wait is, instead of a sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A polled condition did not hold before its deadline."""


class StopWaiting(Exception):
    """Raised by a predicate to end a wait at once: the condition can no longer hold."""


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Poll `predicate` until it returns a truthy value (returned), or raise WaitTimeout.

    Exceptions raised by the predicate count as "not yet"; the last one is named in the error.
    StopWaiting from the predicate ends the wait at once and propagates.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    last_value: Any = None
    while True:
        try:
            last_value = predicate()
            if last_value:
                return last_value
            last_exc = None
        except StopWaiting:
            raise
        except Exception as e:  # the condition is not reachable yet: try again
            last_exc = e
        if time.monotonic() >= deadline:
            what = message() if callable(message) else message
            detail = f"; last error: {last_exc!r}" if last_exc else f"; last value: {last_value!r}"
            raise WaitTimeout(f"timed out after {timeout:.1f}s waiting for {what}{detail}")
        time.sleep(interval)
