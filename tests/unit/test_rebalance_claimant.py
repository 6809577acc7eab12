"""The claimant's shell (Rebalancer._claim_loop) on a node in process: peers played by an
in-memory transport, time by a clock the test moves. A member cut off from the claimant holds
the settle back even while the failure detector thinks it down (issue 18's mutant (c): a
claimant that asks live peers only would settle without it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from spine.core.config import from_dict
from spine.core.errors import PeerUnavailable
from spine.core.messages import Message, RingSync, Transfer
from spine.core.ringmap import LEAVING
from spine.node import Node
from spine.runtime import Runtime

pytestmark = pytest.mark.timeout(30)


class Clock(Runtime):
    """A Runtime whose monotonic clock only moves when the test says."""

    t = 1000.0

    def monotonic(self) -> float:
        return self.t


class Peers:
    """Peers that adopt whatever map they are sent (so they agree at once), and record the
    transfer requests; `cut` ones cannot be reached."""

    def __init__(self) -> None:
        self.cut: set[str] = set()
        self.transfers: list[tuple[str, Transfer]] = []

    async def call(self, node: str, msg: Message, timeout: float) -> Any:
        if node in self.cut:
            raise PeerUnavailable(f"{node} is cut off", node=node)
        if isinstance(msg, RingSync):
            return msg.entries
        if isinstance(msg, Transfer):
            self.transfers.append((node, msg))
            return {"transition": msg.transition, "done": 0}
        raise AssertionError(f"unexpected {msg!r} to {node}")

    def drop(self, node: str) -> None:
        pass

    async def close(self) -> None:
        pass


@pytest_asyncio.fixture
async def leaving(tmp_path: Path) -> AsyncIterator[tuple[Node, Peers, Clock]]:
    """n1 of n1..n8 (n=3, 16 shards), n8 decommissioning: n1 is the claimant."""
    cfg = from_dict({
        "nodes": [{"id": f"n{i}", "host": "127.0.0.1"} for i in range(1, 9)],
        "replication": {"n": 3}, "ring": {"shards": 16}, "storage": {"path": str(tmp_path)},
        "embedder": {"name": "hash"}, "gossip": {"enabled": False},
    })
    peers, clock = Peers(), Clock()
    node = Node(cfg, "n1", clock, transport=peers)
    node.store.start()
    try:
        await node.keeper.set_state("n8", LEAVING)
        yield node, peers, clock
    finally:
        await node.keeper.stop()
        await node.replicator.stop()
        node.store.close()


async def turn(node: Node, clock: Clock, advance: float) -> None:
    clock.t += advance
    await node.rebalancer._claim_loop()
    await asyncio.sleep(0)


def finishes(peers: Peers) -> list[str]:
    return [n for n, m in peers.transfers if m.op == "finish"]


@pytest.mark.asyncio
async def test_a_member_thought_down_and_cut_off_holds_the_barrier_back(
    leaving: tuple[Node, Peers, Clock],
) -> None:
    node, peers, clock = leaving
    delay = node.rebalancer.settle_delay
    assert node.keeper.map.changing
    targets = {mv.target for mv in node.keeper.placement.moves()}
    # A member that takes no shard: only the agreement rule can wait for it.
    cut = next(f"n{i}" for i in range(2, 8) if f"n{i}" not in targets)
    peers.cut.add(cut)
    node.liveness.report_failure(cut)
    for _ in range(3):
        await turn(node, clock, delay + 1)
    assert finishes(peers) == []
    assert node.rebalancer._claimant.barrier == 0


@pytest.mark.asyncio
async def test_once_every_member_agrees_for_the_settle_delay_the_barrier_goes_out(
    leaving: tuple[Node, Peers, Clock],
) -> None:
    node, peers, clock = leaving
    delay = node.rebalancer.settle_delay
    targets = sorted({mv.target for mv in node.keeper.placement.moves()})
    assert targets and "n8" not in targets
    await turn(node, clock, 0)  # every member agrees: the settle delay starts now
    assert finishes(peers) == []
    await turn(node, clock, delay / 2)
    assert finishes(peers) == []
    await turn(node, clock, delay / 2)
    assert finishes(peers) == [t for t in targets if t != "n1"]  # n1 answers itself
    assert node.rebalancer._claimant.barrier > 0


@pytest.mark.asyncio
async def test_a_change_that_moves_no_shard_settles(tmp_path: Path) -> None:
    """A member that owns no shard leaves: nothing moves, so the barrier goes to nobody and the
    change settles (the loop before took the empty list of replies for a failure: stuck)."""
    cfg = from_dict({
        "nodes": [{"id": f"n{i}", "host": "127.0.0.1"} for i in range(1, 9)],
        "replication": {"n": 3}, "ring": {"shards": 2}, "storage": {"path": str(tmp_path)},
        "embedder": {"name": "hash"}, "gossip": {"enabled": False},
    })
    peers, clock = Peers(), Clock()
    node = Node(cfg, "n1", clock, transport=peers)
    node.store.start()
    try:
        p = node.placement()
        owning = {o for s in range(p.shards) for o in p.owners(s)}
        idle = next(f"n{i}" for i in range(2, 9) if f"n{i}" not in owning)
        await node.keeper.set_state(idle, LEAVING)
        assert node.keeper.map.changing and node.keeper.placement.moves() == []
        delay = node.rebalancer.settle_delay
        for _ in range(4):
            await turn(node, clock, delay + 1)
        assert not node.keeper.map.changing
        assert node.keeper.state(idle) == "left"
        assert peers.transfers == []
    finally:
        await node.keeper.stop()
        await node.replicator.stop()
        node.store.close()
