"""Loopback: a call to this node is answered by its own handler table, with a remote call's
semantics; any other call goes to the wrapped transport (issue 18 §1)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spine.cluster.handlers import build_handlers
from spine.cluster.loopback import Loopback
from spine.cluster.replication import Replicator
from spine.cluster.rpc import Handler
from spine.core.clock import Version
from spine.core.config import from_dict
from spine.core.errors import Conflict, InvalidInput, PeerUnavailable, StorageFailed
from spine.core.messages import Apply, Message, Ping, Read, Tag
from spine.core.metrics import SpineMetrics
from spine.core.model import Record
from spine.core.ring import shard_of
from spine.node import Node
from spine.ports import RecordStore
from spine.storage.lmdb_store import Store

pytestmark = pytest.mark.timeout(30)


class Remote:
    """The wrapped transport: records what reaches it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Message, float]] = []
        self.dropped: list[str] = []
        self.closed = False

    async def call(self, node: str, msg: Message, timeout: float) -> Any:
        self.calls.append((node, msg, timeout))
        return f"remote {node}"

    def drop(self, node: str) -> None:
        self.dropped.append(node)

    async def close(self) -> None:
        self.closed = True


class Watch:
    """A liveness that holds everyone alive and records every report."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.successes: list[str] = []

    def is_alive(self, node: str) -> bool:
        return True

    def report_failure(self, node: str) -> None:
        self.failures.append(node)

    def report_success(self, node: str) -> None:
        self.successes.append(node)


def rec(mid: str, hlc: int) -> Record:
    return Record("ns", mid, Version(hlc, "n1"), {"n1": hlc}, content=f"v{hlc}")


@pytest.mark.asyncio
async def test_a_call_to_this_node_runs_its_own_handler_and_nothing_goes_out() -> None:
    seen: list[tuple[str, Message]] = []

    async def ping(peer: str, msg: Ping) -> Any:
        seen.append((peer, msg))
        return {"pong": msg.node}

    remote = Remote()
    lb = Loopback("n1", remote, lambda: {Tag.PING: ping})
    assert await lb.call("n1", Ping("x"), 1.0) == {"pong": "x"}
    assert seen == [("n1", Ping("x"))]  # the caller is this node
    assert remote.calls == []


@pytest.mark.asyncio
async def test_every_other_call_goes_to_the_wrapped_transport() -> None:
    remote = Remote()
    lb = Loopback("n1", remote, lambda: {})
    assert await lb.call("n2", Ping("x"), 0.5) == "remote n2"
    assert remote.calls == [("n2", Ping("x"), 0.5)]
    lb.drop("n2")
    lb.drop("n1")  # no connection to ourselves to drop
    assert remote.dropped == ["n2"]
    await lb.close()
    assert remote.closed


@pytest.mark.asyncio
async def test_the_table_is_looked_up_at_each_call() -> None:
    # A node builds its handler table after its services, which already hold the transport.
    table: dict[Tag, Handler] = {}
    lb = Loopback("n1", Remote(), lambda: table)
    with pytest.raises(InvalidInput) as info:
        await lb.call("n1", Ping("x"), 1.0)  # as a peer serving no PING answers
    assert info.value.field == "tag"

    async def ping(_peer: str, _msg: Ping) -> str:
        return "n1"

    table[Tag.PING] = ping
    assert await lb.call("n1", Ping("x"), 1.0) == "n1"


@pytest.mark.asyncio
async def test_a_handler_error_is_raised_as_itself() -> None:
    async def refuse(_peer: str, _msg: Ping) -> Any:
        raise Conflict("not now", field="transition")

    lb = Loopback("n1", Remote(), lambda: {Tag.PING: refuse})
    with pytest.raises(Conflict) as info:
        await lb.call("n1", Ping(), 1.0)
    assert info.value.field == "transition" and info.value.message == "not now"


@pytest.mark.asyncio
async def test_a_peer_unavailable_from_our_own_handler_is_an_answer_not_our_failure() -> None:
    # Relayed from a peer, such an error carries `code`, and callers then neither mark the peer
    # down nor drop its connection: this node must never be marked down by itself either.
    async def relay(_peer: str, _msg: Ping) -> Any:
        raise PeerUnavailable("n3 is down", node="n3")

    lb = Loopback("n1", Remote(), lambda: {Tag.PING: relay})
    with pytest.raises(PeerUnavailable) as info:
        await lb.call("n1", Ping(), 1.0)
    assert info.value.details["code"] == "peer_unavailable"


# ---------------------------------------------------------------- the replicator over it


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "lmdb", shard_of=lambda ns, mid: shard_of(ns, mid, 8), sync=False,
              map_size_mb=64)
    s.start()
    try:
        yield s
    finally:
        s.close()


def _replicator(store: RecordStore, liveness: Watch, remote: Remote) -> Replicator:
    box: dict[Tag, Handler] = {}
    rpc = Loopback("n1", remote, lambda: box)
    rep = Replicator("n1", store, rpc, liveness, SpineMetrics(), rpc_timeout=1.0,
                     wall_ms=lambda: 0)
    coordinator: Any = None  # no Forward is sent here
    box.update(build_handlers("n1", store, rep, coordinator, 16, _no_search))
    return rep


async def _no_search(_msg: Any) -> list[Any]:
    raise AssertionError("no search here")


@pytest.mark.asyncio
async def test_send_and_read_one_on_this_node_use_its_store_through_its_handlers(
    store: Store,
) -> None:
    live, remote = Watch(), Remote()
    rep = _replicator(store, live, remote)
    await rep.send("n1", [rec("a", 5)])
    assert store.get("ns", "a") == rec("a", 5)
    assert await rep.read_one("n1", "ns", "a") == rec("a", 5)
    assert await rep.read_one("n1", "ns", "missing") is None
    acks = await rep.write([rec("b", 7)], [["n1"]], 1, hints_count=False, timeout=1.0)
    assert acks == [1] and store.get("ns", "b") == rec("b", 7)
    assert remote.calls == [] and live.failures == []


@pytest.mark.asyncio
async def test_our_own_disk_failing_is_never_reported_as_a_peer_failure(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    live, remote = Watch(), Remote()
    rep = _replicator(store, live, remote)

    async def failed(_records: Any) -> Any:
        raise StorageFailed("fsync failed")

    def unreadable(_keys: Any) -> Any:
        raise StorageFailed("MDB_PANIC")

    monkeypatch.setattr(store, "apply", failed)
    monkeypatch.setattr(store, "get_many", unreadable)
    with pytest.raises(StorageFailed):
        await rep.send("n1", [rec("a", 5)])
    with pytest.raises(StorageFailed):
        await rep.read_one("n1", "ns", "a")
    assert live.failures == [] and remote.dropped == []


@pytest.mark.asyncio
async def test_a_write_through_a_replica_waits_for_its_own_commit_though_peers_answered_first(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CI failure this fixes: PUT, DELETE, PUT through n1 answered 200, not 201, because n2
    # and n3 acknowledged the delete before n1's own commit ended and the next write read n1's
    # store. W=2 is met by the peers here; the write still returns only after n1 has it.
    live, remote = Watch(), Remote()
    rep = _replicator(store, live, remote)
    release = asyncio.Event()
    real_apply = store.apply

    async def slow(records: Any) -> Any:
        await release.wait()
        return await real_apply(records)

    monkeypatch.setattr(store, "apply", slow)
    task = asyncio.ensure_future(
        rep.write([rec("a", 5)], [["n1", "n2", "n3"]], 2, hints_count=False, timeout=5.0)
    )
    for _ in range(50):  # the peers' acks arrive; the write must not end on them alone
        await asyncio.sleep(0)
    assert sorted(n for n, _, _ in remote.calls) == ["n2", "n3"]
    assert not task.done()
    release.set()
    assert await asyncio.wait_for(task, 5.0) == [3]
    assert store.get("ns", "a") == rec("a", 5)


@pytest.mark.asyncio
async def test_a_remote_send_still_goes_out_and_reports_success(store: Store) -> None:
    live, remote = Watch(), Remote()
    rep = _replicator(store, live, remote)
    await rep.send("n2", [rec("a", 5)])
    assert [(n, type(m)) for n, m, _ in remote.calls] == [("n2", Apply)]
    assert live.successes == ["n2"] and store.get("ns", "a") is None


# ---------------------------------------------------------------- the node's wiring


@pytest.mark.asyncio
async def test_a_node_answers_itself_and_sends_the_rest_through_the_injected_transport(
    tmp_path: Path,
) -> None:
    cfg = from_dict({
        "nodes": [{"id": "n1", "host": "127.0.0.1"}, {"id": "n2", "host": "127.0.0.1"}],
        "storage": {"path": str(tmp_path)}, "embedder": {"name": "hash"},
    })
    remote = Remote()
    node = Node(cfg, "n1", transport=remote)
    try:
        assert await node.rpc.call("n1", Ping("n1"), 1.0) == "n1"  # its own PING handler
        assert await node.rpc.call("n2", Read([("ns", "a")]), 1.0) == "remote n2"
        assert [n for n, _, _ in remote.calls] == ["n2"]
    finally:
        node.store.close()
