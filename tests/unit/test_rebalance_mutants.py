"""spine.cluster.rebalance: what the mutants that survived the unit tests and the simulation
seeds changed (bench/mutation.py --sample 0.1, 2026-12-03): the admin endpoint's answers and
refusals (the simulator drives ring changes through the keeper, not through `admin`), the
transfer views, and dropping a shard this node no longer owns. Each test names the mutants it
kills. A real RingKeeper on an in-memory map; no sockets, no sleeps."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from spine.cluster.rebalance import Copy, Rebalancer
from spine.cluster.ringkeeper import RingKeeper
from spine.core.errors import Conflict, InvalidInput, NotFound
from spine.core.messages import Transfer
from spine.core.metrics import SpineMetrics
from spine.core.ringmap import ACTIVE, LEAVING, Entry, genesis
from tests.unit.test_runtime_injection import MetaStore, Peers

pytestmark = pytest.mark.timeout(30)

NODES = ["n1", "n2", "n3", "n4", "n5"]
SHARDS = 8


class Liveness:
    def __init__(self) -> None:
        self.down: set[str] = set()

    def is_alive(self, node: str) -> bool:
        return node not in self.down

    def report_failure(self, node: str) -> None:
        pass

    def report_success(self, node: str) -> None:
        pass


class ShardStore:
    """The little of a RecordStore dropping a shard touches: pages of keys, and purge."""

    def __init__(self, keys: dict[int, list[bytes]]) -> None:
        self.keys = keys
        self.purged: list[bytes] = []

    def scan_shard(self, shard: int, after: bytes | None = None,
                   limit: int = 1000) -> list[tuple[bytes, Any]]:
        return [(k, None) for k in self.keys.get(shard, [])[:limit]]

    async def purge(self, keys: list[bytes]) -> None:
        self.purged += keys
        gone = set(keys)
        for shard, held in self.keys.items():
            self.keys[shard] = [k for k in held if k not in gone]


async def _nothing(_seconds: float) -> None:
    return None


class World:
    def __init__(self) -> None:
        self.live = Liveness()
        self.keeper = RingKeeper(
            "n1", MetaStore(), Peers(), self.live,  # type: ignore[arg-type]
            genesis=genesis({"id": n, "host": "127.0.0.1"} for n in NODES),
            me=Entry("n1", ACTIVE, 0, "", "127.0.0.1", 1, 2, 3),
            shards=SHARDS, vnodes=4, n=3, interval=1.0, rpc_timeout=1.0,
            now_version=lambda: 100, sleep=_nothing, monotonic=lambda: 0.0,
            rng=random.Random(1), trailing_window=1.0)
        self.store = ShardStore({})
        self.metrics = SpineMetrics()
        self.rb = Rebalancer(
            "n1", self.keeper, None, self.store, None, self.live,  # type: ignore[arg-type]
            self.metrics, max_keys_per_s=100, drop_grace=1.0, settle_delay=1.0, min_synced=1,
            rpc_timeout=1.0, monotonic=lambda: 0.0, sleep=_nothing)


@pytest_asyncio.fixture
async def world() -> AsyncIterator[World]:
    w = World()
    yield w
    await w.keeper.stop()


@pytest.mark.asyncio
async def test_join_asked_of_this_member_answers_its_state(world: World) -> None:
    """`action == "join"` -> `"XXjoinXX"` (admin__mutmut_5: join refused as an unknown action);
    the answer's keys `action` and `state` (admin__mutmut_87, _89)."""
    got = await world.rb.admin("join", "n1")
    assert got == {"node": "n1", "action": "join", "state": ACTIVE,
                   "ring": world.keeper.map.digest()}


@pytest.mark.asyncio
async def test_a_join_asked_for_another_node_is_refused_naming_the_node(world: World) -> None:
    """`field="node"` -> `None` (admin__mutmut_9): the API points the caller at the node."""
    with pytest.raises(InvalidInput) as e:
        await world.rb.admin("join", "n2")
    assert e.value.field == "node"


@pytest.mark.asyncio
async def test_an_unknown_node_is_not_found_naming_the_node(world: World) -> None:
    """`field="node"` -> `None` / `"NODE"` (admin__mutmut_19, _23)."""
    with pytest.raises(NotFound) as e:
        await world.rb.admin("decommission", "n9")
    assert e.value.field == "node"


@pytest.mark.asyncio
async def test_a_down_peer_cannot_be_decommissioned(world: World) -> None:
    """`node != self.node_id and not alive` -> `==` (admin__mutmut_35): a down peer, which cannot
    hand its data over, would be made leaving instead of refused (remove is for it)."""
    world.live.down.add("n3")
    with pytest.raises(Conflict, match="remove it instead"):
        await world.rb.admin("decommission", "n3")
    assert world.keeper.state("n3") == ACTIVE


@pytest.mark.asyncio
async def test_a_live_peer_decommissioned_becomes_leaving(world: World) -> None:
    """`set_state(node, LEAVING)` -> `set_state(node, )` (admin__mutmut_48)."""
    got = await world.rb.admin("decommission", "n3")
    assert got["state"] == LEAVING and world.keeper.state("n3") == LEAVING


@pytest.mark.asyncio
async def test_a_live_node_cannot_be_removed_naming_the_node(world: World) -> None:
    """`field="node"` dropped or `"NODE"` (admin__mutmut_58, _60)."""
    with pytest.raises(Conflict, match="decommission it instead") as e:
        await world.rb.admin("remove", "n3")
    assert e.value.field == "node"
    world.live.down.add("n3")
    assert (await world.rb.admin("remove", "n3"))["state"] == LEAVING


def test_a_copys_view_names_its_state_and_bytes() -> None:
    """The view's keys `state` and `bytes` (Copy.view__mutmut_2, _8)."""
    c = Copy(3, ("n2", "n3"), "copying", "n2", 10, 2_000)
    assert c.view() == {"state": "copying", "source": "n2", "records": 10, "bytes": 2_000}


@pytest.mark.asyncio
async def test_no_copy_view_for_a_shard_this_node_is_not_copying(world: World) -> None:
    """`None if c is None` -> `is not None` (copy_view__mutmut_5)."""
    assert world.rb.copy_view(5) is None


@pytest.mark.asyncio
async def test_a_shard_no_longer_owned_is_dropped_whole_and_counted(world: World) -> None:
    """`total = 0` -> `1`, `total += len(page)` -> `=` (_drop__mutmut_2, _17): the drop counter
    is the records purged over every page; `holds(node, shard)` -> `(node, None)`
    (_drop__mutmut_5) fails on every drop."""
    placement = world.keeper.placement
    gone = next(s for s in range(SHARDS) if not placement.holds("n1", s))
    world.store.keys[gone] = [f"k{i:05d}".encode() for i in range(2_500)]
    await world.rb._drop(gone)
    assert world.store.keys[gone] == [] and len(world.store.purged) == 2_500
    assert world.rb.dropped.get() == 2_500


@pytest.mark.asyncio
async def test_a_shard_owned_again_is_not_dropped(world: World) -> None:
    """The guard `holds(node, shard)` (_drop__mutmut_5 with it): a shard back with this node
    keeps its records."""
    held = next(s for s in range(SHARDS) if world.keeper.placement.holds("n1", s))
    world.store.keys[held] = [b"a", b"b"]
    await world.rb._drop(held)
    assert world.store.keys[held] == [b"a", b"b"] and world.store.purged == []



@pytest.mark.asyncio
async def test_an_unknown_transfer_op_is_refused_naming_the_op(world: World) -> None:
    """`field="op"` -> `"XXopXX"` (_handle__mutmut_23)."""
    with pytest.raises(InvalidInput) as e:
        await world.rb._handle("n2", Transfer("bogus", "", 0))
    assert e.value.field == "op"


@pytest.mark.asyncio
async def test_the_transfer_metrics_keep_their_names_and_help(world: World) -> None:
    """The /metrics names and help texts dashboards and alerts read (__init__ mutants 53, 57,
    62, 80: a help text None or a name upper-cased), and the pending gauge's value
    (__init__mutmut_101: `sum(None)`, which failed every scrape)."""
    text = world.metrics.registry.render()
    for name, help_ in [
        ("spine_transfer_records_total", "records pulled into this node by shard transfers"),
        ("spine_transfer_bytes_total", "payload bytes pulled into this node by shard transfers"),
        ("spine_transfer_dropped_records_total",
         "records purged from shards this node no longer owns (after the grace)"),
        ("spine_transfer_last_seconds",
         "how long this node's last completed set of shard copies took"),
    ]:
        assert f"# HELP {name} {help_}\n" in text
    assert "\nspine_transfers_pending 0\n" in text


class Syncs:
    """Anti-entropy's `sync_shards` as a shard copy sees it: scripted answers, each pulling
    some records, and every call recorded."""

    def __init__(self, answers: list[tuple[dict[int, bool], int, int]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, list[int]]] = []

    async def sync_shards(self, peer: str, shards: list[int], bucket: Any,
                          tally: Any) -> dict[int, bool]:
        self.calls.append((peer, shards))
        equal, records, size = self.answers.pop(0) if self.answers else ({}, 0, 0)
        tally.records += records
        tally.bytes += size
        return equal


@pytest.mark.asyncio
async def test_a_shard_copy_counts_every_pass_and_times_the_whole_set(world: World) -> None:
    """`c.bytes += tally.bytes` -> `=` (_sync_until_equal__mutmut_14: only the last pass's
    bytes); `took = monotonic() - started_at` -> `+` (_copy__mutmut_21: the last-copy gauge)."""
    rb = world.rb
    rb.ae = Syncs([({3: False}, 5, 100), ({3: True}, 2, 40)])  # type: ignore[assignment]
    c = Copy(3, ("n2", "n3"))
    rb._copies, rb._started_at = {3: c}, 10.0
    rb.monotonic = lambda: 14.0
    await rb._copy(c)
    assert (c.state, c.source, c.records, c.bytes) == ("copied", "n2", 7, 140)
    assert rb.last_duration.values[()] == 4.0


@pytest.mark.asyncio
async def test_a_copy_no_source_answers_for_waits(world: World) -> None:
    """`c.state = "waiting"` -> `"XXwaitingXX"` (_copy__mutmut_40): the transfer view's state
    after every source failed."""
    rb = world.rb
    rb.ae = Syncs([])  # type: ignore[assignment]
    c = Copy(3, ("n2", "n3"))
    rb._copies = {3: c}
    await rb._copy(c)
    assert c.state == "waiting" and [p for p, _ in rb.ae.calls] == ["n2", "n3"]


@pytest.mark.asyncio
async def test_a_copied_shard_is_not_copied_again(world: World) -> None:
    """`c.state != "copied"` -> `!= "COPIED"` (_copy_loop__mutmut_4): every turn synced every
    shard again, copied or not."""
    rb = world.rb
    rb.ae = Syncs([])  # type: ignore[assignment]
    rb._plan()
    rb._copies = {3: Copy(3, ("n2",), "copied")}
    turns = 0

    async def three_turns() -> None:  # the loop's nap, ending it at the fourth
        nonlocal turns
        turns += 1
        if turns > 3:
            raise asyncio.CancelledError

    rb._nap = three_turns  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        await rb._copy_loop()
    assert rb.ae.calls == []
