"""spine.cluster.handoff: what the mutants that survived the unit tests and the simulation seeds
changed (bench/mutation.py --sample 0.1, 2026-12-03; the hints_not_rerouted tooth seed now run
per mutant kills those that lose hints for good). Each test names the mutants it kills. Fake
hint store, replicator and liveness; no sockets, no sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from spine.cluster.handoff import Handoff
from spine.core.clock import Version
from spine.core.metrics import SpineMetrics
from spine.core.model import Record
from spine.storage.layout import Hint

pytestmark = pytest.mark.timeout(30)

NOW_MS = 1_000_000
WINDOW_MS = 10_000


def hint(target: str, i: int, created_ms: int = NOW_MS) -> Hint:
    r = Record("ns", f"k{i}", Version(i + 1, "n1"), {"n1": i + 1}, content=f"v{i}")
    return Hint(f"{target}/{i:04d}".encode(), target, created_ms, r)


class Hints:
    """Hints kept per target, oldest first (the store's order)."""

    def __init__(self, hints: Sequence[Hint]) -> None:
        self.hints = list(hints)

    def hint_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for h in self.hints:
            counts[h.target] = counts.get(h.target, 0) + 1
        return counts

    def hints_for(self, target: str, limit: int) -> list[Hint]:
        return [h for h in self.hints if h.target == target][:limit]

    async def delete_hints(self, keys: Sequence[bytes]) -> None:
        self.hints = [h for h in self.hints if h.key not in set(keys)]


class Sent:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def send(self, node: str, records: Sequence[Record]) -> None:
        self.sent += [(node, r.id) for r in records]


class Liveness:
    def __init__(self, down: set[str]) -> None:
        self.down = down

    def is_alive(self, node: str) -> bool:
        return node not in self.down


async def _nothing(_seconds: float) -> None:
    return None


def handoff(store: Hints, rep: Sent, down: frozenset[str] = frozenset(),
            batch: int = 10) -> Handoff:
    return Handoff(store, rep, Liveness(set(down)), SpineMetrics(),  # type: ignore[arg-type]
                   interval=60.0, window_ms=WINDOW_MS, batch=batch, wall_ms=lambda: NOW_MS,
                   sleep=_nothing)


@pytest.mark.asyncio
async def test_a_down_target_does_not_hold_back_the_hints_of_the_next() -> None:
    """`continue` -> `break` past a target that is down (replay_once__mutmut_9): every target
    after it in the store's order kept its hints until the first came back."""
    store = Hints([hint("n2", 0), hint("n3", 1), hint("n4", 2)])
    rep = Sent()
    assert await handoff(store, rep, down=frozenset({"n2"})).replay_once() == 2
    assert rep.sent == [("n3", "k1"), ("n4", "k2")]
    assert [h.target for h in store.hints] == ["n2"]


@pytest.mark.asyncio
async def test_the_count_delivered_spans_every_batch_and_target() -> None:
    """`delivered += len(live)` -> `=` (replay_once__mutmut_32): the count returned was the
    last batch's only."""
    store = Hints([hint("n2", i) for i in range(5)] + [hint("n3", 9)])
    rep = Sent()
    assert await handoff(store, rep, batch=2).replay_once() == 6
    assert len(rep.sent) == 6 and store.hints == []


@pytest.mark.asyncio
async def test_a_hint_exactly_one_window_old_is_still_delivered() -> None:
    """`created_ms >= cutoff` -> `>` (replay_once__mutmut_23): the window is inclusive, a hint
    as old as `handoff.window` is delivered, one a millisecond older expires."""
    store = Hints([hint("n2", 0, NOW_MS - WINDOW_MS), hint("n2", 1, NOW_MS - WINDOW_MS - 1)])
    rep = Sent()
    assert await handoff(store, rep).replay_once() == 1
    assert rep.sent == [("n2", "k0")] and store.hints == []


@pytest.mark.asyncio
async def test_stop_ends_the_replay_loop_quietly() -> None:
    """`suppress(asyncio.CancelledError)` -> `suppress(None)` (stop__mutmut_2): stop raised."""
    h = handoff(Hints([]), Sent())
    h.start()
    await asyncio.sleep(0)
    await h.stop()
    assert h._task is not None and h._task.cancelled()
