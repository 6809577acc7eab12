"""Per-client admission: token bucket, concurrency cap, bounded client table."""

from __future__ import annotations

import pytest

from spine.core.ratelimit import ClientLimiter


def test_rate_limit_refuses_past_the_burst_and_says_when_to_retry() -> None:
    lim = ClientLimiter(rate=10, burst=3, max_inflight=0, max_clients=16)
    for _ in range(3):
        assert lim.admit("a", 100.0).ok
        lim.release("a")
    refused = lim.admit("a", 100.0)
    assert not refused.ok and "per second" in refused.reason
    assert refused.retry_after == pytest.approx(0.1)
    assert lim.admit("b", 100.0).ok  # another client has its own bucket
    assert lim.admit("a", 100.2).ok  # tokens refill at rate per second


def test_concurrency_cap_counts_requests_in_flight_per_client() -> None:
    lim = ClientLimiter(rate=0, burst=0, max_inflight=2, max_clients=16)
    assert lim.admit("a", 0.0).ok and lim.admit("a", 0.0).ok
    refused = lim.admit("a", 0.0)
    assert not refused.ok and refused.retry_after >= 1 and "in flight" in refused.reason
    lim.release("a")
    assert lim.admit("a", 0.0).ok


def test_client_table_is_capped_and_keeps_busy_clients() -> None:
    lim = ClientLimiter(rate=1, burst=1, max_inflight=1, max_clients=4)
    assert lim.admit("busy", 0.0).ok  # stays in flight
    for i in range(100):
        lim.admit(f"c{i}", 0.0)
        lim.release(f"c{i}")
    assert len(lim) <= 4
    assert not lim.admit("busy", 0.0).ok  # its in-flight count survived the evictions


def test_unlimited_when_rate_and_concurrency_are_zero() -> None:
    lim = ClientLimiter(rate=0, burst=0, max_inflight=0, max_clients=1)
    assert all(lim.admit("a", 0.0).ok for _ in range(10_000))
