"""Conditional writes, fences and leases (DESIGN §12) on the real node code, on virtual time.

Each test drives a 5-node simulated cluster without faults, so each step's outcome is exact:
- what a session write does to a key under compare-and-set (it is an ordinary LWW write: the next
  conditional write sees it, the previous ETag no longer matches);
- a fence is never forgotten, not even across an unfenced write;
- a round interrupted after its value was accepted by a quorum is completed by the next round;
- leases: exclusive while unexpired by the deciding node's clock, renewals keep the token, a
  release or an expiry lets another holder in with a higher token, and the lease survives the
  restart of every replica.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from spine.core.clock import Version
from spine.core.conditions import Condition, Fence
from spine.core.consistency import Level
from spine.core.errors import Conflict, Fenced, LeaseHeld, PreconditionFailed, SpineError
from spine.core.leases import lease_key
from spine.core.messages import PaxosAccept, PaxosPrepare
from spine.core.model import Record
from spine.core.requests import ItemResult, WriteOp
from spine.core.validation import WriteBody
from spine.node import Node
from tests.sim.cluster import SimCluster

T = TypeVar("T")
NS = "coord"


@pytest.fixture
def cluster() -> Iterator[SimCluster]:
    with tempfile.TemporaryDirectory(prefix="simcoord-") as root:
        c = SimCluster(1, Path(root), nodes=5, spare=0)

        c.boot()
        try:
            yield c
        finally:
            c.close()


def on(c: SimCluster, name: str, fn: Callable[[Node], Coroutine[Any, Any, T]]) -> T:
    """Run `fn(node)` as a task of node `name` (SimCluster.call)."""
    return c.call(name, fn)


def body(text: str) -> WriteBody:
    return WriteBody(text, (), {}, None, None)


def cas(c: SimCluster, name: str, mid: str, text: str | None, cond: Condition) -> ItemResult:
    op = WriteOp(mid, None if text is None else body(text))
    return on(c, name, lambda n: n.coordinator.conditional(NS, op, cond, None, None))


def put(c: SimCluster, name: str, mid: str, text: str, level: Level) -> Record:
    async def go(n: Node) -> Record:
        item = (await n.coordinator.write(NS, [WriteOp(mid, body(text))], level, None, None))[0]
        assert item.result is not None, item.error
        return item.result.record
    return on(c, name, go)


def get(c: SimCluster, name: str, mid: str, level: Level = Level.STRONG) -> Record | None:
    async def go(n: Node) -> Record | None:
        rec, _, _ = await n.coordinator.get(NS, mid, level, None)
        return rec
    return on(c, name, go)


def ok(item: ItemResult) -> Record:
    assert item.error is None, item.error
    assert item.result is not None
    return item.result.record


def err(item: ItemResult, kind: type[SpineError]) -> Any:
    assert isinstance(item.error, kind), item.error
    return item.error


def test_if_match_and_if_none_match(cluster: SimCluster) -> None:
    first = ok(cas(cluster, "n1", "task", "v1", Condition(if_none_match=True)))
    e = err(cas(cluster, "n2", "task", "again", Condition(if_none_match=True)),
            PreconditionFailed)
    assert e.details["current"] == first.version.encode()
    second = ok(cas(cluster, "n3", "task", "v2", Condition(if_match=first.version)))
    assert second.version > first.version
    stale = err(cas(cluster, "n4", "task", "v3", Condition(if_match=first.version)),
                PreconditionFailed)
    assert stale.details["current"] == second.version.encode()
    got = get(cluster, "n5", "task")
    assert got is not None and got.content == "v2"
    # A conditional delete, then create-only works again (a tombstone is no live record).
    ok(cas(cluster, "n1", "task", None, Condition(if_match=second.version)))
    err(cas(cluster, "n2", "task", "v4", Condition(if_match=second.version)), PreconditionFailed)
    ok(cas(cluster, "n2", "task", "v4", Condition(if_none_match=True)))


@pytest.mark.parametrize("level", [Level.SESSION, Level.STRONG])
def test_a_plain_write_to_a_key_under_compare_and_set_moves_its_etag(
    cluster: SimCluster, level: Level
) -> None:
    """A session (or strong) write acknowledged before a conditional write is seen by it: the
    session write's quorum meets the round's. The ETag read before it no longer matches."""
    before = ok(cas(cluster, "n1", "cfg", "a", Condition(if_none_match=True)))
    plain = put(cluster, "n2", "cfg", "b", level)
    e = err(cas(cluster, "n3", "cfg", "c", Condition(if_match=before.version)),
            PreconditionFailed)
    assert e.details["current"] == plain.version.encode()
    after = ok(cas(cluster, "n4", "cfg", "c", Condition(if_match=plain.version)))
    assert after.version > plain.version


def test_a_fence_is_never_forgotten(cluster: SimCluster) -> None:
    ok(cas(cluster, "n1", "out", "by 2", Condition(fence=Fence("lock", 2))))
    e = err(cas(cluster, "n2", "out", "by 1", Condition(fence=Fence("lock", 1))), Fenced)
    assert e.details["highest"] == 2
    put(cluster, "n3", "out", "unfenced", Level.SESSION)  # carries the key's fences on
    err(cas(cluster, "n4", "out", "by 1 again", Condition(fence=Fence("lock", 1))), Fenced)
    ok(cas(cluster, "n5", "out", "by 3", Condition(fence=Fence("lock", 3))))
    ok(cas(cluster, "n1", "out", "other lease", Condition(fence=Fence("other", 1))))
    rec = get(cluster, "n2", "out")
    assert rec is not None and dict(rec.fences) == {"lock": 3, "other": 1}


def test_a_round_interrupted_after_accept_is_completed_by_the_next(cluster: SimCluster) -> None:
    """A proposer gets its value accepted by a quorum and dies before any commit: the next round
    on the key finds it, completes it, and judges its own condition against it."""
    base = ok(cas(cluster, "n1", "job", "base", Condition(if_none_match=True)))
    node = cluster.node("n1")
    owners = list(node._route(NS, "job").write_to)[:2]
    ballot = Version(node.hlc.now(), "ghost")
    orphan = Record(NS, "job", Version(node.hlc.now(), "ghost"), {"ghost": 1}, "orphan")

    async def half_round(n: Node) -> None:
        for o in owners:
            await n.rpc.call(o, PaxosPrepare(NS, "job", ballot), 1.0)
        for o in owners:
            await n.rpc.call(o, PaxosAccept(NS, "job", ballot, orphan), 1.0)

    on(cluster, "n1", half_round)
    # Nothing committed it: a plain quorum read may not see it yet, but the next round does.
    e = err(cas(cluster, "n5", "job", "mine", Condition(if_match=base.version)),
            PreconditionFailed)
    assert e.details["current"] == orphan.version.encode()
    got = get(cluster, "n3", "job")
    assert got is not None and got.content == "orphan"


def test_leases_are_exclusive_renewable_releasable_and_expire(cluster: SimCluster) -> None:
    def acquire(name: str, holder: str, ttl: int = 1000) -> Any:
        return on(cluster, name, lambda n: n.leases.acquire(NS, "deploy", holder, ttl))

    a = acquire("n1", "agent-a")
    assert (a.holder, a.token) == ("agent-a", 1)
    with pytest.raises(LeaseHeld) as held:
        acquire("n2", "agent-b")
    assert held.value.details["holder"] == "agent-a"
    assert acquire("n3", "agent-a").token == 1  # a renewal keeps the token
    with pytest.raises(Conflict):
        on(cluster, "n4", lambda n: n.leases.release(NS, "deploy", 7))
    released = on(cluster, "n4", lambda n: n.leases.release(NS, "deploy", 1))
    assert released.holder is None
    b = acquire("n5", "agent-b")
    assert (b.holder, b.token) == ("agent-b", 2)
    # Expiry: past ttl + clock.max_offset by the deciding node's clock, C gets it, token 3.
    with pytest.raises(LeaseHeld):
        acquire("n1", "agent-c")
    offset = cluster.node("n1").cfg.clock.max_offset_ms
    cluster.run(cluster.loop.create_task(asyncio.sleep((1000 + offset) / 1000 + 0.05)))
    c = acquire("n1", "agent-c")
    assert (c.holder, c.token) == ("agent-c", 3)
    seen = on(cluster, "n2", lambda n: n.leases.get(NS, "deploy"))
    assert (seen.holder, seen.token) == ("agent-c", 3)


def test_a_lease_survives_the_restart_of_every_replica(cluster: SimCluster) -> None:
    lease = on(cluster, "n1", lambda n: n.leases.acquire(NS, "gate", "agent-a", 60_000))
    owners = list(cluster.node("n1")._route(*lease_key(NS, "gate")).owners)

    async def restart_all() -> None:
        for o in owners:
            await cluster.crash(o)
        for o in owners:
            await cluster.start(o)
        await asyncio.sleep(3.0)

    cluster.run(cluster.loop.create_task(restart_all()))
    other = next(n for n in cluster.live if n not in owners)
    with pytest.raises(LeaseHeld):
        on(cluster, other, lambda n: n.leases.acquire(NS, "gate", "agent-b", 1000))
    seen = on(cluster, other, lambda n: n.leases.get(NS, "gate"))
    assert (seen.holder, seen.token) == ("agent-a", lease.token)
