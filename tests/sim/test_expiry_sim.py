"""Expiry (DESIGN §13) on the real node code, on virtual time: exact instants, no faults but one
crash.

- Every live node hides the record from the first read at or after its expires_at (its HLC
  passes the expiry) and not a moment before, at every level.
- The shard's first owner is down at the sweep: the next live owner sweeps instead; the crashed
  owner restarts holding the expired version, hides it at once, and ends up holding the sweep's
  tombstone (hints, anti-entropy); no read anywhere ever answers the record again.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from spine.core.clock import Version, hlc_ms
from spine.core.consistency import Level
from spine.core.model import Record
from spine.core.requests import WriteOp
from spine.core.validation import WriteBody
from spine.node import Node
from tests.sim.cluster import EPOCH_MS, SimCluster

T = TypeVar("T")
NS = "expiry"


@pytest.fixture
def cluster() -> Iterator[SimCluster]:
    with tempfile.TemporaryDirectory(prefix="simexpiry-") as root:
        c = SimCluster(3, Path(root), nodes=5, spare=0,
                       settings={"lifecycle": {"sweep_interval_ms": 200}})

        c.boot()
        try:
            yield c
        finally:
            c.close()


def on(c: SimCluster, name: str, fn: Callable[[Node], Coroutine[Any, Any, T]]) -> T:
    """Run `fn(node)` as a task of node `name` (SimCluster.call)."""
    return c.call(name, fn)


def advance_to(c: SimCluster, wall_ms: int) -> None:
    """Let virtual time run until the (unskewed) wall clock reads `wall_ms`."""
    delay = (wall_ms - EPOCH_MS) / 1000 - c.loop.time()
    assert delay >= 0
    c.run(c.loop.create_task(asyncio.sleep(delay)))


def visible(c: SimCluster, name: str, mid: str, level: Level) -> bool:
    async def go(n: Node) -> bool:
        rec, _, _ = await n.coordinator.get(NS, mid, level, None)
        return rec is not None and not rec.deleted
    return on(c, name, go)


def test_expiry_is_exact_at_every_node_and_survives_a_crashed_sweeper(
    cluster: SimCluster,
) -> None:
    c = cluster

    async def write(n: Node) -> Record:
        op = WriteOp("k", WriteBody("short-lived", (), {}, None, None, 5))
        item = (await n.coordinator.write(NS, [op], Level.SESSION, None, None))[0]
        assert item.result is not None, item.error
        return item.result.record

    placement = c.node("n1").placement()
    owners = placement.owners(placement.shard(NS, "k"))
    first = owners[0]
    rec = on(c, owners[1], write)
    e_ms = hlc_ms(rec.expires_hlc)
    assert e_ms == hlc_ms(rec.version.hlc) + 5000
    c.run(c.loop.create_task(asyncio.sleep(1.0)))
    for name in c.live:
        for level in Level:
            assert visible(c, name, "k", level), (name, level)

    c.run(c.crash(first))  # the shard's sweeper is away across the expiry and the sweep
    advance_to(c, e_ms - 20)  # a replica's own copy (an eventual read: no network time)
    for name in owners:
        if name in c.live:
            assert visible(c, name, "k", Level.EVENTUAL), name
    advance_to(c, e_ms)
    for name in c.live:
        for level in Level:
            assert not visible(c, name, "k", level), (name, level)

    # The next live owner sweeps once the margin (write timeout + max offset) has passed.
    sweeper = next(o for o in owners if o in c.live)
    margin = c.node(sweeper).expiry.margin_ms
    advance_to(c, e_ms + margin + 1000)
    held = c.node(sweeper).store.get(NS, "k")
    assert held is not None and held.deleted and held.version == Version(rec.expires_hlc,
                                                                        sweeper)

    c.run(c.start(first))  # back with the expired version on disk
    for level in Level:
        assert not visible(c, first, "k", level), level
    c.run(c.loop.create_task(asyncio.sleep(5.0)))  # hints and anti-entropy
    for name in owners:
        got = c.node(name).store.get(NS, "k")
        assert got is not None and got.deleted and got.version == held.version, name
    for name in c.live:
        for level in Level:
            assert not visible(c, name, "k", level), (name, level)
    assert not c.errors, c.errors


def test_a_forwarded_write_keeps_its_ttl(cluster: SimCluster) -> None:
    """A write sent to a node that is not a replica of the key is forwarded to one, which mints
    the version: the TTL must travel with the body (spine.core.requests.body_to_wire)."""
    c = cluster
    placement = c.node("n1").placement()
    mid = next(f"f{i}" for i in range(100)
               if "n1" not in placement.owners(placement.shard(NS, f"f{i}")))

    async def write(n: Node) -> Record:
        op = WriteOp(mid, WriteBody("forwarded", (), {}, None, None, 60))
        item = (await n.coordinator.write(NS, [op], Level.SESSION, None, None))[0]
        assert item.result is not None, item.error
        return item.result.record

    rec = on(c, "n1", write)
    assert rec.version.node != "n1"  # minted by a replica
    assert hlc_ms(rec.expires_hlc) == hlc_ms(rec.version.hlc) + 60_000
