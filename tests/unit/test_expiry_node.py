"""Expiry carried out by a node's coordinator, listing and sweep (DESIGN §13): a node `n1` in
process, its peers played by the in-memory transport of test_coordinator, its wall clock moved
forward by its Runtime's offset (no sleeps)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from spine.core.clock import Version, hlc_ms
from spine.core.conditions import Condition
from spine.core.config import from_dict
from spine.core.consistency import Level
from spine.core.errors import SpineError
from spine.core.expiry import sweep_tombstone
from spine.core.messages import ListPage
from spine.core.model import Record
from spine.core.requests import WriteOp
from spine.core.session import SessionToken
from spine.core.validation import WriteBody
from spine.node import Node
from tests.polling import until
from tests.unit.test_coordinator import Peers

pytestmark = pytest.mark.timeout(30)
Decide = Callable[[Record | None, dict[str, int]], Record | SpineError]

NS = "ns"


@pytest_asyncio.fixture
async def three(tmp_path: Path) -> AsyncIterator[tuple[Node, Peers]]:
    peers = Peers()
    cfg = from_dict({
        "nodes": [{"id": n, "host": "127.0.0.1"} for n in ("n1", "n2", "n3")],
        "replication": {"n": 3}, "storage": {"path": str(tmp_path)},
        "embedder": {"name": "hash"}, "gossip": {"enabled": False},
        "lifecycle": {"ttl_s_by_tag": {"scratch": 30}},
    })
    node = Node(cfg, "n1", transport=peers)
    node.store.start()
    try:
        yield node, peers
    finally:
        await node.replicator.stop()
        node.store.close()


def body(ttl_s: int | None = None, tags: tuple[str, ...] = ()) -> WriteBody:
    return WriteBody("remember this", tags, {}, None, None, ttl_s)


async def write(node: Node, mid: str, b: WriteBody | None,
                token: SessionToken | None = None) -> Record:
    item = (await node.coordinator.write(NS, [WriteOp(mid, b)], Level.SESSION, token, None))[0]
    assert item.result is not None, item.error
    rec = item.result.record
    await until(lambda: (h := node.store.get(NS, mid)) is not None and h.version >= rec.version)
    return rec


def skip(node: Node, seconds: float) -> None:
    """Move n1's wall clock (and so its HLC) forward."""
    node.rt.wall_offset_ms += int(seconds * 1000)


@pytest.mark.asyncio
async def test_a_record_reads_as_absent_once_expired_and_the_session_keeps_its_version(
    three: tuple[Node, Peers],
) -> None:
    node, peers = three
    written = await write(node, "k", body(ttl_s=10))
    assert hlc_ms(written.expires_hlc) == hlc_ms(written.version.hlc) + 10_000
    assert written.public()["expires_at"] is not None
    got, _, _ = await node.coordinator.get(NS, "k", Level.EVENTUAL, None)
    assert got is not None and not got.deleted
    skip(node, 11)
    token = SessionToken(32)
    token.observe(f"{NS}/k", written.version)
    for level, tok in ((Level.EVENTUAL, None), (Level.SESSION, token), (Level.STRONG, None)):
        got, _, _ = await node.coordinator.get(NS, "k", level, tok)
        # absent to the caller (404), but the version seen is the one written: a token that
        # merges it keeps its floor, so read-your-writes never goes backwards.
        assert got is not None and got.deleted and got.content == "", level
        assert got.version == written.version
    # The replicas still hold the expired version as written: hiding is a reading, not a write.
    assert not peers.data["n2"]["k"].deleted


@pytest.mark.asyncio
async def test_a_write_over_an_expired_record_creates_it_anew_and_sets_its_own_expiry(
    three: tuple[Node, Peers],
) -> None:
    node, _ = three
    old = await write(node, "k", body(ttl_s=5))
    skip(node, 6)
    items = await node.coordinator.write(NS, [WriteOp("k", body())], Level.SESSION, None, None)
    res = items[0].result
    assert res is not None and res.created  # 201: the expired memory was absent
    assert res.record.expires_hlc == 0  # no TTL this time: never expires
    assert res.record.created_hlc == res.record.version.hlc
    assert res.record.version > old.version


@pytest.mark.asyncio
async def test_if_none_match_creates_over_an_expired_record(three: tuple[Node, Peers]) -> None:
    node, _peers = three

    async def run_paxos(namespace: str, mid: str, decide: Decide, timeout: float,
                        localize: object = None) -> Record:
        """A one-acceptor stand-in for the Paxos round: decide on n1's stored record."""
        current = node.store.get(namespace, mid)
        out = decide(current, dict(current.clock) if current is not None else {})
        if isinstance(out, Exception):
            raise out
        assert isinstance(out, Record)
        return out

    node.proposer.run = run_paxos  # type: ignore[method-assign]
    await write(node, "k", body(ttl_s=5))
    cond = Condition(if_none_match=True)
    refused = await node.coordinator.conditional(NS, WriteOp("k", body()), cond, None, None)
    assert refused.error is not None and refused.error.code == "precondition_failed"
    skip(node, 6)
    item = await node.coordinator.conditional(NS, WriteOp("k", body()), cond, None, None)
    assert item.result is not None and item.result.created, item.error


@pytest.mark.asyncio
async def test_tag_defaults_apply_unless_the_write_gives_its_own(
    three: tuple[Node, Peers],
) -> None:
    node, _ = three
    a = await write(node, "a", body(tags=("scratch",)))
    assert hlc_ms(a.expires_hlc) == hlc_ms(a.version.hlc) + 30_000
    b = await write(node, "b", body(ttl_s=300, tags=("scratch",)))
    assert hlc_ms(b.expires_hlc) == hlc_ms(b.version.hlc) + 300_000
    c = await write(node, "c", body(tags=("other",)))
    assert c.expires_hlc == 0


@pytest.mark.asyncio
async def test_listing_skips_expired_records(three: tuple[Node, Peers]) -> None:
    node, _peers = three
    await write(node, "short", body(ttl_s=5))
    await write(node, "long", body(ttl_s=500))
    await write(node, "never", body())

    async def fan_out(msg: ListPage) -> dict[str, object]:
        from spine.cluster.fanout import local_list
        return {"n1": local_list(node.store, msg)}

    node.fanout.ask_all = fan_out  # type: ignore[method-assign,assignment]
    page = await node.fanout.list_page(NS, None, 10, None, None)
    assert [r.id for r in page.items] == ["long", "never", "short"]
    skip(node, 6)
    page = await node.fanout.list_page(NS, None, 10, None, None)
    assert [r.id for r in page.items] == ["long", "never"]


@pytest.mark.asyncio
async def test_the_sweep_retires_an_expired_record_once_past_the_margin(
    three: tuple[Node, Peers],
) -> None:
    node, peers = three
    written = await write(node, "k", body(ttl_s=5))
    sweep = node.expiry
    skip(node, 6)  # expired, but not yet by the margin (write timeout + max offset)
    assert await sweep.retire(NS, "k") == 0
    skip(node, sweep.margin_ms / 1000)
    assert await sweep.retire(NS, "k") == 1
    tomb = sweep_tombstone(written, "n1")
    assert tomb is not None

    def holders() -> list[Record | None]:
        return [node.store.get(NS, "k"), peers.data["n2"]["k"], peers.data["n3"]["k"]]

    await until(lambda: all(h is not None and h.version == tomb.version for h in holders()))
    assert all(h is not None and h.deleted for h in holders())
    # The expired version arriving late (a hint, read repair) changes nothing: it is older.
    await node.store.apply([written])
    held = node.store.get(NS, "k")
    assert held is not None and held.deleted


@pytest.mark.asyncio
async def test_the_sweep_leaves_a_key_rewritten_on_the_other_replicas(
    three: tuple[Node, Peers],
) -> None:
    node, peers = three
    written = await write(node, "k", body(ttl_s=5))
    # n2 and n3 took a rewrite n1 never saw (it carries no expiry).
    newer = Record(NS, "k", Version(written.version.hlc + 10, "n2"),
                   clock={**written.clock, "n2": 1}, content="rewritten")
    peers.data["n2"]["k"] = peers.data["n3"]["k"] = newer
    skip(node, 6 + node.expiry.margin_ms / 1000)
    assert await node.expiry.retire(NS, "k") == 0
    assert not peers.data["n2"]["k"].deleted


@pytest.mark.asyncio
async def test_a_sweep_pass_reads_the_shards_this_node_sweeps(
    three: tuple[Node, Peers],
) -> None:
    node, _peers = three
    placement = node.placement()
    mine = [f"k{i}" for i in range(60)
            if placement.owners(placement.shard(NS, f"k{i}"))[0] == "n1"]
    theirs = [f"k{i}" for i in range(60)
              if placement.owners(placement.shard(NS, f"k{i}"))[0] != "n1"]
    assert mine and theirs
    for mid in mine + theirs:
        await write(node, mid, body(ttl_s=5))
    skip(node, 6 + node.expiry.margin_ms / 1000)
    swept = 0
    for _ in range(3):  # a tick reads `budget` records at most; the default covers this pass
        swept += await node.expiry.run_once()
    assert swept == len(mine)
    await until(lambda: all((h := node.store.get(NS, m)) is not None and h.deleted
                            for m in mine))
    for mid in theirs:  # another live owner sweeps those
        held = node.store.get(NS, mid)
        assert held is not None and not held.deleted, mid


class CountingStore:
    """The node's store, counting the sweep's scans."""

    def __init__(self, store: Any) -> None:
        self.inner = store
        self.scans = 0

    def scan_shard(self, shard: int, after: bytes | None, limit: int) -> Any:
        self.scans += 1
        return self.inner.scan_shard(shard, after, limit)


@pytest.mark.asyncio
async def test_the_sweep_idles_while_nothing_expiring_is_stored(
    three: tuple[Node, Peers],
) -> None:
    node, _ = three
    sweep = node.expiry
    counting = CountingStore(node.store)
    sweep.store = counting  # type: ignore[assignment]
    await write(node, "plain", body())
    await sweep.run_once()  # one pass (the budget covers every shard): nothing expiring
    scanned = counting.scans
    assert scanned > 0
    await sweep.run_once()
    assert counting.scans == scanned  # idle: no scan at all
    await write(node, "k", body(ttl_s=5))  # an expiring record: the sweep wakes
    await sweep.run_once()
    assert counting.scans > scanned
    scanned = counting.scans
    await sweep.run_once()  # the pass saw an expiring record: it keeps looking
    assert counting.scans > scanned
    # Retire it; the pass after finds nothing expiring, and the sweep idles again.
    skip(node, 6 + sweep.margin_ms / 1000)
    await sweep.run_once()
    await until(lambda: (h := node.store.get(NS, "k")) is not None and h.deleted)
    await sweep.run_once()
    scanned = counting.scans
    await sweep.run_once()
    assert counting.scans == scanned
    # A peer going down hands this node more shards to sweep: it looks at them.
    node.liveness.report_failure("n2")
    await sweep.run_once()
    assert counting.scans > scanned
