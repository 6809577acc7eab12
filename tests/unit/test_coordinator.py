"""The coordinator's shell carries out the pure decisions: a node `n1` in process (no listener),
its peers played by an in-memory transport that serves Read, Apply and Forward from dicts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from spine.core.clock import Version
from spine.core.config import from_dict
from spine.core.consistency import Level
from spine.core.messages import Apply, Forward, Message, Read, records_to_wire
from spine.core.model import Record, merge
from spine.core.requests import WriteOp
from spine.core.session import SessionToken
from spine.core.validation import WriteBody
from spine.node import Node
from tests.polling import until

pytestmark = pytest.mark.timeout(30)

NS = "ns"


class Peers:
    """Every other node: a dict of records each, and a canned answer to Forward."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Record]] = {}
        self.calls: list[tuple[str, Message]] = []
        self.forward_reply: Callable[[str, Forward], Any] | None = None
        self.hang: set[str] = set()  # nodes that never answer (their calls wait until cancelled)

    async def call(self, node: str, msg: Message, timeout: float) -> Any:
        self.calls.append((node, msg))
        if node in self.hang:
            await asyncio.Event().wait()
        held = self.data.setdefault(node, {})
        if isinstance(msg, Read):
            return records_to_wire([held.get(mid) for _, mid in msg.keys])
        if isinstance(msg, Apply):
            for r in msg.records:
                held[r.id] = r if r.id not in held else merge(held[r.id], r)
            return [True] * len(msg.records)
        if isinstance(msg, Forward) and self.forward_reply is not None:
            return self.forward_reply(node, msg)
        raise AssertionError(f"unexpected {msg!r} to {node}")

    def drop(self, node: str) -> None:
        pass

    async def close(self) -> None:
        pass


async def started(tmp_path: Path, nodes: list[str], peers: Peers) -> Node:
    cfg = from_dict({
        "nodes": [{"id": n, "host": "127.0.0.1"} for n in nodes], "replication": {"n": 3},
        "storage": {"path": str(tmp_path)}, "embedder": {"name": "hash"},
        "gossip": {"enabled": False},
    })
    n = Node(cfg, "n1", transport=peers)
    n.store.start()
    return n


@pytest_asyncio.fixture
async def three(tmp_path: Path) -> AsyncIterator[tuple[Node, Peers]]:
    peers = Peers()
    node = await started(tmp_path, ["n1", "n2", "n3"], peers)
    try:
        yield node, peers
    finally:
        await node.replicator.stop()
        node.store.close()


def rec(hlc: int, content: str, mid: str = "k") -> Record:
    return Record(NS, mid, Version(hlc, "n9"), clock={"n9": hlc}, content=content)


async def stale_here(node: Node, peers: Peers, holders: tuple[str, ...] = ("n2", "n3")) -> None:
    """n1 holds an old version of k; `holders` hold a newer one."""
    await node.store.apply([rec(1, "old")])
    for h in holders:
        peers.data.setdefault(h, {})["k"] = rec(2, "new")


def overflowed() -> SessionToken:
    tok = SessionToken(max_keys=1)
    tok.observe(f"{NS}/a", Version(1, "n9"))
    tok.observe(f"{NS}/b", Version(2, "n9"))
    assert tok.overflowed and f"{NS}/k" not in tok.entries
    return tok


@pytest.mark.asyncio
async def test_an_eventual_read_answers_from_the_local_copy(three: tuple[Node, Peers]) -> None:
    node, peers = three
    await stale_here(node, peers)
    got, _, _ = await node.coordinator.get(NS, "k", Level.EVENTUAL, None)
    assert got is not None and got.content == "old"


@pytest.mark.asyncio
async def test_an_overflowed_token_reads_a_forgotten_key_at_a_quorum(
    three: tuple[Node, Peers],
) -> None:
    """Mutant (a) of issue 18: with needs_quorum ignored this read stops at the stale local copy."""
    node, peers = three
    await stale_here(node, peers)
    got, _, _ = await node.coordinator.get(NS, "k", Level.SESSION, overflowed())
    assert got is not None and got.content == "new"


@pytest.mark.asyncio
async def test_a_token_that_never_overflowed_trusts_one_copy(three: tuple[Node, Peers]) -> None:
    node, peers = three
    await stale_here(node, peers)
    got, _, _ = await node.coordinator.get(NS, "k", Level.SESSION, SessionToken())
    assert got is not None and got.content == "old"  # nothing in the token says it is stale


@pytest.mark.asyncio
async def test_a_session_floor_newer_than_the_local_copy_asks_the_replicas(
    three: tuple[Node, Peers],
) -> None:
    node, peers = three
    await stale_here(node, peers)
    tok = SessionToken()
    tok.observe(f"{NS}/k", Version(2, "n9"))
    got, _, _ = await node.coordinator.get(NS, "k", Level.SESSION, tok)
    assert got is not None and got.content == "new"
    assert node.metrics.session_waits.get() == 1


@pytest.mark.asyncio
async def test_a_strong_read_writes_the_newest_back_before_returning_it(
    three: tuple[Node, Peers],
) -> None:
    node, peers = three
    await stale_here(node, peers, holders=("n2",))
    peers.hang.add("n3")  # the quorum is n1 (old) and n2 (new); only n1 can take the write-back
    got, level, _ = await node.coordinator.get(NS, "k", Level.STRONG, None)
    assert level is Level.STRONG
    assert got is not None and got.content == "new"
    mine = node.store.get(NS, "k")
    assert mine is not None and mine.content == "new"
    assert node.metrics.read_repairs.get() == 1


@pytest.mark.asyncio
async def test_a_session_write_reaches_every_replica_and_builds_on_the_newest(
    three: tuple[Node, Peers],
) -> None:
    node, peers = three
    tok = SessionToken()
    tok.observe(f"{NS}/k", Version(2, "n9"))
    await stale_here(node, peers)
    (item,) = await node.coordinator.write(
        NS, [WriteOp("k", WriteBody("newer", (), {}, None, None))], Level.SESSION, tok, None)
    assert item.error is None and item.result is not None
    new = item.result.record
    assert new.clock["n9"] == 2  # built on the replicas' version, not on the stale local one
    assert not item.result.created
    held = [node.store.get(NS, "k")] + [peers.data[p].get("k") for p in ("n2", "n3")]
    assert sum(1 for r in held if r is not None and r.version == new.version) >= 2  # W


@pytest.mark.asyncio
async def test_a_non_owner_forwards_to_the_first_live_owner(tmp_path: Path) -> None:
    peers = Peers()
    node = await started(tmp_path, ["n1", "n2", "n3", "n4"], peers)
    try:
        p = node.placement()
        mid = next(f"k{i}" for i in range(1000)
                   if "n1" not in p.owners(p.shard(NS, f"k{i}")))
        owners = p.owners(p.shard(NS, mid))
        stored = rec(5, "there", mid)

        def reply(target: str, msg: Forward) -> Any:
            assert msg.op == "get" and msg.id == mid
            return {"coordinator": target, "record": stored.to_wire(), "level": 1,
                    "token": SessionToken().encode()}

        peers.forward_reply = reply
        tok = SessionToken()
        got, level, coordinator = await node.coordinator.get(NS, mid, None, tok)
        assert got == stored and level is Level.SESSION and coordinator == owners[0]
        assert [n for n, m in peers.calls if isinstance(m, Forward)] == [owners[0]]
        assert tok.entries == {}  # the caller merges; the coordinator does not
    finally:
        await node.replicator.stop()
        node.store.close()


def notices_to(peers: Peers, node: str) -> list[tuple[str, str, Version]]:
    return [n for p, m in peers.calls if p == node and isinstance(m, Apply) for n in m.notices]


@pytest.mark.asyncio
async def test_a_write_every_replica_took_is_settled_and_the_others_are_told(
    three: tuple[Node, Peers],
) -> None:
    node, peers = three
    (item,) = await node.coordinator.write(
        NS, [WriteOp("k", WriteBody("v", (), {}, None, None))], Level.SESSION, None, None)
    assert item.result is not None
    version = item.result.record.version
    await until(lambda: bool(notices_to(peers, "n2")) and bool(notices_to(peers, "n3")))
    assert notices_to(peers, "n2") == notices_to(peers, "n3") == [(NS, "k", version)]
    got = await node.coordinator.read(NS, "k", Level.SESSION, SessionToken())
    assert got.record is not None and got.record.version == version and got.settled
    tok = SessionToken()
    got.merge_into(tok, f"{NS}/k")
    assert tok.entries == {}  # nothing to carry: every owner holds it
    assert node.metrics.settled_reads.get() == 1


@pytest.mark.asyncio
async def test_a_write_one_replica_did_not_take_stays_in_the_token(
    three: tuple[Node, Peers],
) -> None:
    node, peers = three
    peers.hang.add("n3")
    (item,) = await node.coordinator.write(
        NS, [WriteOp("k", WriteBody("v", (), {}, None, None))], Level.SESSION, None, None)
    assert item.result is not None  # n1 and n2: W=2
    got = await node.coordinator.read(NS, "k", Level.SESSION, SessionToken())
    assert got.record is not None and not got.settled
    tok = SessionToken()
    got.merge_into(tok, f"{NS}/k")
    assert tok.entries == {f"{NS}/k": item.result.record.version}
    assert notices_to(peers, "n2") == []
