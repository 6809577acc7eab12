"""spine.cluster.ringkeeper: what the mutants that survived the unit tests and the simulation
seeds changed (bench/mutation.py --sample 0.1, 2026-12-03): a join that finds no peer, and a
rejoin whose clock is behind its old entry (the simulation's joins are of fresh nodes with clocks
ahead). Each test names the mutant it kills. A real RingKeeper, no sockets, no sleeps."""

from __future__ import annotations

import random
from typing import Any

import pytest

from spine.cluster.ringkeeper import RingKeeper
from spine.core.errors import PeerUnavailable, SpineError
from spine.core.messages import Message
from spine.core.ringmap import JOINING, LEFT, Entry, genesis
from tests.unit.test_runtime_injection import AllAlive, MetaStore, Peers

pytestmark = pytest.mark.timeout(30)

NODES = ["n1", "n2", "n3"]


class Nobody:
    """A transport on which no peer answers."""

    async def call(self, node: str, msg: Message, timeout: float) -> Any:
        raise PeerUnavailable(f"{node} refused the connection", node=node)

    def drop(self, node: str) -> None:
        pass

    async def close(self) -> None:
        pass


async def _nothing(_seconds: float) -> None:
    return None


def keeper(rpc: Any, *, join: bool, now_version: int = 1, store: Any = None) -> RingKeeper:
    return RingKeeper(
        "n1", store if store is not None else MetaStore(), rpc, AllAlive(),  # type: ignore[arg-type]
        genesis=genesis({"id": n, "host": "127.0.0.1"} for n in NODES),
        me=Entry("n1", JOINING, 0, "", "127.0.0.1", 1, 2, 3),
        shards=8, vnodes=4, n=3, interval=1.0, rpc_timeout=1.0,
        now_version=lambda: now_version, sleep=_nothing, monotonic=lambda: 0.0,
        rng=random.Random(1), trailing_window=1.0, join=join)


@pytest.mark.asyncio
async def test_a_join_no_peer_answers_fails_naming_its_seeds() -> None:
    """`list(seeds)` -> `list(None)` in the message (_fetch__mutmut_12): a TypeError instead of
    the SpineError that tells the operator which peers it tried."""
    k = keeper(Nobody(), join=True)
    with pytest.raises(SpineError, match=r"no peer of \['n2', 'n3'\] answered .* cannot join"):
        await k.start(["n2", "n3"], deadline=1.0)
    await k.stop()


@pytest.mark.asyncio
async def test_a_rejoin_with_a_clock_behind_its_old_entry_still_wins() -> None:
    """`replace(me, version=old.version + 1)` -> `replace(None, ...)` (start_join__mutmut_18):
    a node that left at version 50 and rejoins with its clock at 1 must still publish a newer
    entry (51), or the map keeps it as left."""
    k = keeper(Peers(), join=False)
    left = Entry("n1", LEFT, 50, "", "127.0.0.1", 1, 2, 3)
    await k.adopt([left])
    assert k.state() == LEFT
    await k.start_join()
    e = k.map.get("n1")
    assert e is not None and (e.state, e.version) == (JOINING, 51)
    await k.stop()


@pytest.mark.asyncio
async def test_a_removed_node_restarted_without_join_stays_out() -> None:
    """`self.join and self.state() in (None, LEFT)` -> `or` (start__mutmut_19): a node the ring
    removed, restarted with its stored map and no `join`, put itself back as joining."""
    k = keeper(Peers(), join=False)
    await k.adopt([Entry("n1", LEFT, 50, "", "127.0.0.1", 1, 2, 3)])
    await k.start([])
    assert k.state() == LEFT
    await k.stop()


@pytest.mark.asyncio
async def test_the_keeper_says_where_its_map_came_from() -> None:
    """`origin` (the readiness view's `ring_from`): "genesis", "peer" for a joining node
    (__init__mutmut_38: "XXpeerXX") and "stored" when restarted on its own map
    (__init__mutmut_33: None)."""
    store = MetaStore()
    first = keeper(Peers(), join=False, store=store)
    assert first.origin == "genesis"
    await first.start([])
    await first.stop()
    again = keeper(Peers(), join=False, store=store)
    assert again.origin == "stored"
    assert keeper(Peers(), join=True).origin == "peer"
