"""spine.cluster.antientropy: what the mutants that survived the unit tests and the simulation
seeds changed (bench/mutation.py --sample 0.1, 2026-12-03): a shard transfer's reconcile step
(`sync_shards`, paced by the transfer's own bucket and counted in its tally; in the simulation
anti-entropy's own rounds repair whatever a transfer leaves undone) and the shard view's root.
Each test names the mutants it kills. The three-node world of test_antientropy_service."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from spine.cluster.antientropy import AntiEntropy, Tally
from spine.core.antientropy import TokenBucket
from spine.core.errors import InvalidInput, PeerUnavailable
from spine.core.messages import ShardFetch, ShardTreeQuery
from spine.core.metrics import SpineMetrics
from spine.core.ring import Ring
from tests.unit.test_antientropy_service import (  # noqa: F401 (world: its fixture)
    NOW_MS,
    SHARDS,
    World,
    build_all,
    rec,
    world,
)

pytestmark = pytest.mark.timeout(60)


@pytest.mark.asyncio
async def test_a_transfer_step_is_paced_by_its_own_bucket_and_counted_in_its_tally(
    world: World,  # noqa: F811 (the imported fixture)
) -> None:
    """`_sync_peer(peer, shards, bucket, tally)` with the bucket None (sync_shards__mutmut_4:
    paced by anti-entropy's own 10,000/s instead of the transfer's cap) or the tally left out
    (sync_shards__mutmut_9: the transfer's records and bytes never counted)."""
    w = world
    recs = [rec(f"k{i}", NOW_MS + i) for i in range(250)]
    await w.put("n1", recs)
    await build_all(w)
    shards = list(range(SHARDS))
    tally = Tally()
    equal = await w.aes["n2"].sync_shards("n1", shards, TokenBucket(100, 100, w.mono), tally)
    assert equal and not any(equal.values())  # n2 held none of them
    assert tally.records == 250 and tally.bytes == sum(r.size() for r in recs)
    assert w.contents("n2") == w.contents("n1")
    # Only the pacing sleeps move the virtual clock: all past the bucket's burst of 100 is waited.
    assert sum(w.slept) == pytest.approx((250 - 100) / 100, rel=0.05)


@pytest.mark.asyncio
async def test_a_shards_root_is_shown_as_16_hex_digits(world: World) -> None:  # noqa: F811
    """`None if r is None else f"{r:016x}"` -> always None (root_hex__mutmut_4)."""
    w = world
    await w.put("n1", [rec(f"k{i}", NOW_MS + i) for i in range(40)])
    await build_all(w)
    ae = w.aes["n1"]
    held = [s for s in range(SHARDS) if ae.root(s)]
    assert held
    for s in held:
        assert ae.root_hex(s) == f"{ae.root(s):016x}"


@pytest.mark.asyncio
async def test_the_peer_handlers_refusals_name_the_field_and_the_fault(
    world: World,  # noqa: F811 (the imported fixture)
) -> None:
    """A hostile or mismatched peer is told which field is wrong and why: `field="shape"`
    (_handle_tree__mutmut_6), the queries' error text (_handle_tree__mutmut_9: `None`), and
    `field="pairs"` (_handle_fetch__mutmut_11)."""
    await build_all(world)
    handlers = world.aes["n1"].handlers()
    with pytest.raises(InvalidInput) as e:
        await handlers[ShardTreeQuery.TAG]("n2", ShardTreeQuery(4, 2, [(0, 0, [])]))
    assert e.value.field == "shape"
    with pytest.raises(InvalidInput) as e:
        await handlers[ShardTreeQuery.TAG]("n2", ShardTreeQuery(16, 3, [(0, 7, [0])]))
    assert e.value.field == "queries" and str(e.value) not in ("", "None")
    with pytest.raises(InvalidInput) as e:
        await handlers[ShardFetch.TAG]("n2", ShardFetch(0, [0], [["not", "a", "pair", 4]]))
    assert e.value.field == "pairs"


@pytest.mark.asyncio
async def test_a_failed_anti_entropy_call_is_counted_against_its_peer(
    world: World,  # noqa: F811 (the imported fixture)
) -> None:
    """`rpc_errors.inc(peer)` -> `inc(None)` (_call__mutmut_7): n3 thought alive, but its
    calls fail."""
    w = world
    await build_all(w)
    ae = w.aes["n1"]
    answer = ae.rpc.call

    async def n3_fails(node: str, msg: Any, timeout: float) -> Any:
        if node == "n3":
            raise PeerUnavailable("n3 reset the connection", node="n3")
        return await answer(node, msg, timeout)

    ae.rpc = SimpleNamespace(call=n3_fails)  # type: ignore[assignment]
    await w.rounds(["n1"])
    assert ae.rpc_errors.get("n3") >= 1 and ae.rpc_errors.get("n2") == 0


async def _nap(_seconds: float) -> None:
    return None


def test_the_anti_entropy_metrics_keep_their_names_and_help() -> None:
    """The /metrics names, help texts and the differing gauge's starting value, which no other
    test reads (__init__ mutants 61, 65, 76, 91: a help None or upper-cased, a name upper-cased
    or wrapped; 96: the gauge starting at 1)."""
    ring = Ring({"n1": ""}, shards=SHARDS, vnodes=8, n=1)
    metrics = SpineMetrics()
    AntiEntropy("n1", None, None, None, None, lambda: ring, metrics,  # type: ignore[arg-type]
                interval=3600, shards_per_round=SHARDS, max_keys_per_s=10_000, grace_ms=1,
                rpc_timeout=1.0, wall_ms=lambda: 0, monotonic=lambda: 0.0, sleep=_nap)
    text = metrics.registry.render()
    for name, help_ in [
        ("spine_antientropy_rounds_total", "anti-entropy rounds run"),
        ("spine_antientropy_keys_repaired_total",
         "records anti-entropy copied to or from a peer replica"),
        ("spine_antientropy_shards_differing",
         "shards of the last round whose root differed on some reachable peer replica"),
    ]:
        assert f"# HELP {name} {help_}\n" in text
    assert "\nspine_antientropy_shards_differing 0\n" in text
