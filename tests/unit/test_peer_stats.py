"""PeerStats: EWMA latency, calls in flight, p95 hedge delay and the ranking (issue 17 item 3)."""

from __future__ import annotations

import pytest

from spine.core.peer_stats import MIN_SAMPLES, HedgeBudget, PeerStats


def feed(s: PeerStats, node: str, *latencies: float) -> None:
    for x in latencies:
        s.started(node)
        s.finished(node, x)


def test_the_ewma_moves_toward_each_sample_by_alpha() -> None:
    s = PeerStats(alpha=0.5)
    feed(s, "a", 0.010)
    assert s.ewma("a") == pytest.approx(0.010)
    feed(s, "a", 0.020)
    assert s.ewma("a") == pytest.approx(0.015)
    assert s.ewma("unknown") is None and s.score("unknown") is None


def test_calls_in_flight_raise_the_score_and_finishing_lowers_them() -> None:
    s = PeerStats()
    feed(s, "a", 0.002)
    s.started("a")
    s.started("a")
    assert s.outstanding("a") == 2
    assert s.score("a") == pytest.approx(0.002 * 3)
    s.finished("a", 0.0, sample=False)
    assert s.outstanding("a") == 1 and s.ewma("a") == pytest.approx(0.002)
    s.finished("gone", 1.0)  # never tracked: ignored
    assert "gone" not in s


@pytest.mark.parametrize(("fast", "slow", "expected"), [
    ((0.001,), (0.010,), ["fast", "slow"]),
    ((0.010,), (0.001,), ["slow", "fast"]),
])
def test_rank_puts_the_lower_score_first(
    fast: tuple[float, ...], slow: tuple[float, ...], expected: list[str]
) -> None:
    s = PeerStats()
    feed(s, "fast", *fast)
    feed(s, "slow", *slow)
    assert s.rank(["slow", "fast"]) == expected


def test_a_peer_with_calls_piling_up_ranks_last_before_any_times_out() -> None:
    s = PeerStats()
    feed(s, "a", 0.001)
    feed(s, "b", 0.002)
    assert s.rank(["a", "b"]) == ["a", "b"]
    for _ in range(3):
        s.started("a")  # a was paused: nothing comes back
    assert s.rank(["a", "b"]) == ["b", "a"]


def test_rank_is_stable_and_an_unknown_peer_is_neither_first_nor_last() -> None:
    s = PeerStats()
    assert s.rank(["c", "a", "b"]) == ["c", "a", "b"]  # nothing known: the given order
    feed(s, "fast", 0.001)
    feed(s, "mid", 0.005)
    feed(s, "slow", 0.050)
    ranked = s.rank(["slow", "new", "fast", "mid"])
    assert ranked[0] == "fast" and ranked[-1] == "slow"
    assert ranked.index("new") in (1, 2)


def test_a_failure_counted_at_its_timeout_makes_the_peer_slow() -> None:
    s = PeerStats(alpha=0.5)
    feed(s, "a", 0.001, 1.0)
    feed(s, "b", 0.002)
    assert s.rank(["a", "b"]) == ["b", "a"]


def test_hedge_after_is_the_recent_p95_clamped() -> None:
    s = PeerStats(hedge_min=0.005, hedge_max=0.5, window=100)
    feed(s, "a", *[0.010] * 95, *[0.200] * 5)
    assert s.percentile("a") == pytest.approx(0.010)
    assert s.hedge_after("a") == pytest.approx(0.010)
    feed(s, "b", *[0.001] * 20)
    assert s.hedge_after("b") == pytest.approx(0.005)  # clamped up to hedge_min
    feed(s, "c", *[2.0] * 20)
    assert s.hedge_after("c") == pytest.approx(0.5)  # clamped down to hedge_max


def test_hedge_after_with_few_or_no_samples() -> None:
    s = PeerStats(hedge_min=0.001, hedge_max=1.0, hedge_default=0.05)
    assert s.hedge_after("nobody") == pytest.approx(0.05)
    feed(s, "a", *[0.020] * (MIN_SAMPLES - 1))
    assert s.percentile("a") is None
    assert s.hedge_after("a") == pytest.approx(0.040)  # twice the EWMA


def test_the_window_keeps_only_recent_samples() -> None:
    s = PeerStats(window=10)
    feed(s, "a", *[1.0] * 10)
    feed(s, "a", *[0.01] * 10)
    assert s.percentile("a") == pytest.approx(0.01)


def test_state_is_bounded_and_busy_peers_are_never_forgotten() -> None:
    s = PeerStats(max_peers=3)
    s.started("busy")
    for i in range(100):
        feed(s, f"p{i}", 0.001)
    assert s.tracked() == 3
    assert "busy" in s and "p99" in s  # the least recently used idle peers went
    for n in ("x", "y", "z"):
        s.started(n)
    s.started("w")
    assert s.tracked() == 3  # every tracked peer is busy: w is not tracked
    s.finished("w", 0.1)
    assert "w" not in s


def test_bad_samples_are_not_kept() -> None:
    s = PeerStats()
    s.started("a")
    s.finished("a", float("nan"))
    s.started("a")
    s.finished("a", float("inf"))
    assert s.ewma("a") is None and s.outstanding("a") == 0
    s.started("a")
    s.finished("a", -5.0)
    assert s.ewma("a") == 0.0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        PeerStats(alpha=0)
    with pytest.raises(ValueError):
        PeerStats(max_peers=0)


def test_a_slow_spell_the_ewma_forgot_does_not_hold_the_hedge_delay_up() -> None:
    s = PeerStats(hedge_min=0.001, hedge_max=1.0, window=64)
    feed(s, "a", *[0.100] * 40)  # slowed...
    feed(s, "a", *[0.002] * 24)  # ...and recovered: the window still holds the slow spell
    assert s.percentile("a") == pytest.approx(0.100)
    ewma = s.ewma("a")
    assert ewma is not None and s.hedge_after("a") == pytest.approx(4 * ewma)
    assert s.hedge_after("a") < 0.011


def test_the_hedge_budget_allows_a_burst_then_ratio_per_request() -> None:
    b = HedgeBudget(ratio=0.25, burst=2)
    assert b.take() and b.take() and not b.take()
    for _ in range(3):
        b.request()
    assert not b.take()
    b.request()
    assert b.take() and not b.take()
    for _ in range(1000):
        b.request()
    assert b.tokens == 2  # never more than the burst
    with pytest.raises(ValueError):
        HedgeBudget(burst=0.5)
