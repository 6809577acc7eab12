"""spine.cluster.strong_reads: the change feed's `settle`, which no test run per mutant reached
(bench/mutation.py --sample 0.1, 2026-12-03: its mutants had no tests; the feed's simulation
seeds run apart). Each test names the mutants it kills. A fake replicator; no sockets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from spine.cluster.strong_reads import StrongReads
from spine.core.clock import Version
from spine.core.consistency import Policy
from spine.core.errors import QuorumUnavailable
from spine.core.metrics import SpineMetrics
from spine.core.model import Record
from spine.core.routing import Route

pytestmark = pytest.mark.timeout(30)

OWNERS = ("n1", "n2", "n3")


def rec(hlc: int) -> Record:
    return Record("ns", "k", Version(hlc, "n1"), {"n1": hlc}, content=f"v{hlc}")


class Replicas:
    """Each owner holds one version (or none), answers reads and acknowledges writes unless it
    refuses them (a full disk)."""

    def __init__(self, held: dict[str, Record | None]) -> None:
        self.held = held
        self.refuse: set[str] = set()
        self.writes: list[tuple[list[Record], list[list[str]], Any]] = []
        self.timeouts: list[float] = []

    async def read(self, namespace: str, mid: str, nodes: Sequence[str], r: int,
                   **_kw: Any) -> dict[str, Record | None]:
        return {n: self.held.get(n) for n in nodes}

    async def write(self, records: Sequence[Record], prefs: Sequence[Sequence[str]],
                    w: int | Sequence[int], *, timeout: float, **_kw: Any) -> list[int]:
        self.timeouts.append(timeout)
        self.writes.append((list(records), [list(p) for p in prefs], w))
        acked = [n for n in prefs[0] if n not in self.refuse]
        for n in acked:
            self.held[n] = records[0]
        return [len(acked)]


class Alive:
    def is_alive(self, node: str) -> bool:
        return True


def strong(reps: Replicas, extra: int = 0) -> StrongReads:
    route = Route(0, OWNERS, OWNERS + (("n4",) if extra else ()), extra, OWNERS)
    return StrongReads(lambda ns, mid: route, reps, Alive(), Policy(n=3),  # type: ignore[arg-type]
                       SpineMetrics(), read_timeout=1.0, write_timeout=2.0)


@pytest.mark.asyncio
async def test_a_version_newer_than_the_quorum_holds_is_written_to_the_write_set() -> None:
    """The write of `rec` to `[rt.write_to]`, needing W (+ extra) acknowledgements
    (settle__mutmut_7: the quorum of level None; _18: the read without its floor argument;
    _27, _32: the write set None or missing)."""
    reps = Replicas({"n1": rec(3), "n2": rec(3), "n3": rec(3)})  # n1's feed logged rec(6) alone
    got = await strong(reps, extra=1).settle(rec(6))
    assert got == rec(6)
    assert reps.writes == [([rec(6)], [["n1", "n2", "n3", "n4"]], 3)]  # W = 2, plus 1 extra
    assert [reps.held[n] for n in OWNERS] == [rec(6)] * 3
    assert reps.timeouts == [2.0]  # the write timeout (__init__mutmut_7: None, no bound)


@pytest.mark.asyncio
async def test_a_version_a_quorum_already_holds_newer_is_delivered_instead() -> None:
    reps = Replicas({"n1": rec(7), "n2": rec(7), "n3": rec(5)})
    assert await strong(reps).settle(rec(5)) == rec(7)


@pytest.mark.asyncio
async def test_a_version_no_quorum_can_take_is_refused() -> None:
    """The refusal's message (settle__mutmut_46)."""
    reps = Replicas({"n1": rec(3), "n2": rec(3), "n3": rec(3)})
    reps.refuse |= {"n2", "n3"}
    with pytest.raises(QuorumUnavailable, match="could not write the version to a quorum"):
        await strong(reps).settle(rec(6))


@pytest.mark.asyncio
async def test_a_local_strong_read_writes_back_within_its_region() -> None:
    """`rt = localize(rt) or rt` -> `localize(None)` (read__mutmut_29): the write-back of a
    local_strong read goes to the key's write set within this region, as `localize` makes it."""
    reps = Replicas({"n1": rec(5), "n2": rec(3), "n3": rec(3)})
    region = Route(0, ("n1", "n2"), ("n1", "n2"), 0, ("n1",))
    got = await strong(reps).read("ns", "k", OWNERS, 2, 2, None,
                                  localize=lambda rt: region if rt.owners == OWNERS else None)
    assert got == rec(5)
    assert [p for _, p, _ in reps.writes] == [[["n2"]]]  # not n3, outside the region
