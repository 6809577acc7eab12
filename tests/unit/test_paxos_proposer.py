"""spine.cluster.paxos.Proposer over three real acceptors (loop-mode LMDB stores) and an
in-memory transport: the accept goes to a quorum of promisers only (this node first), prepare
and commit to every replica, and a refusal, a failure or a silent replica brings the others in."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from spine.cluster.acceptor import Acceptor
from spine.cluster.paxos import Proposer
from spine.core.clock import HLC, Version
from spine.core.errors import PeerUnavailable, SpineError
from spine.core.messages import Message, PaxosAccept, PaxosCommit, PaxosPrepare
from spine.core.metrics import SpineMetrics
from spine.core.model import Record
from spine.core.routing import Route
from spine.storage.lmdb_store import Store
from tests.polling import until

NODES = ("n1", "n2", "n3")


class Net:
    """Calls delivered to the acceptors in process; `down` nodes fail, `silent` never answer."""

    def __init__(self, acceptors: dict[str, Acceptor]) -> None:
        self.acceptors = acceptors
        self.calls: list[tuple[str, str]] = []
        self.down: set[str] = set()
        self.silent: set[str] = set()
        self.overtaken: set[str] = set()  # a higher prepare lands just before our accept

    async def call(self, node: str, msg: Message, timeout: float) -> Any:
        self.calls.append((type(msg).__name__, node))
        if node in self.down:
            raise PeerUnavailable(f"{node} is down", node=node)
        if node in self.silent:
            await asyncio.sleep(timeout)
            raise PeerUnavailable(f"{node} did not answer", node=node)
        a = self.acceptors[node]
        if isinstance(msg, PaxosAccept) and node in self.overtaken:
            self.overtaken.discard(node)
            await a.prepare(PaxosPrepare(msg.namespace, msg.id, Version(2**62, "zz")))
        if isinstance(msg, PaxosPrepare):
            return await a.prepare(msg)
        if isinstance(msg, PaxosAccept):
            return await a.accept(msg)
        assert isinstance(msg, PaxosCommit)
        return await a.commit(msg)

    def drop(self, node: str) -> None:
        pass

    def asked(self, kind: str) -> list[str]:
        return [n for k, n in self.calls if k == kind]


class Alive:
    def is_alive(self, node: str) -> bool:
        return True

    def report_failure(self, node: str) -> None:
        pass

    def report_success(self, node: str) -> None:
        pass


@contextlib.asynccontextmanager
async def setup(
    tmp_path: Path, *, hedge: float = 0.05
) -> AsyncIterator[tuple[Proposer, Net, list[Store]]]:
    """A proposer on n1 over three acceptors; the round's leftover calls are cancelled and the
    stores closed however the test ends."""
    stores = [Store(tmp_path / n, shard_of=lambda ns, mid: 0, sync=False, writer="loop")
              for n in NODES]
    for s in stores:
        s.start()
    net = Net({n: Acceptor(s, s.apply) for n, s in zip(NODES, stores, strict=True)})
    tasks: set[asyncio.Task[Any]] = set()

    def spawn(coro: Any) -> asyncio.Task[Any]:
        t = asyncio.ensure_future(coro)
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        return t

    route = Route(0, NODES, NODES, 0, NODES)
    wall = [1_000_000]
    p = Proposer("n1", lambda ns, mid: route, net, Alive(), HLC(lambda: wall[0], 500),
                 random.Random(1), rpc_timeout=0.5, spawn=spawn, metrics=SpineMetrics(),
                 hedge=hedge)
    try:
        yield p, net, stores
    finally:
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in stores:
            s.close()


def write(content: str) -> Any:
    def decide(current: Record | None, clock: dict[str, int]) -> Record | SpineError:
        n = dict(clock)
        n["n1"] = n.get("n1", 0) + 1
        return Record("ns", "k", Version(10_000 + len(content), "n1"), n, content)
    return decide


def test_the_accept_asks_a_quorum_and_prepare_and_commit_ask_everyone(tmp_path: Path) -> None:
    async def run() -> None:
        async with setup(tmp_path) as (p, net, stores):
            rec = await p.run("ns", "k", write("v"), 2.0)
            await until(lambda: all(s.get("ns", "k") is not None for s in stores))
            assert net.asked("PaxosPrepare") == ["n1", "n2", "n3"]
            assert net.asked("PaxosAccept") == ["n1", "n2"]
            assert sorted(net.asked("PaxosCommit")) == list(NODES)
            got = stores[2].get("ns", "k")  # the replica left out of the round has the record
            assert got is not None and got.version == rec.version

    asyncio.run(run())


def test_a_down_replica_brings_the_third_in(tmp_path: Path) -> None:
    async def run() -> None:
        async with setup(tmp_path) as (p, net, _):
            net.down.add("n2")
            await p.run("ns", "k", write("v"), 2.0)
            assert net.asked("PaxosAccept") == ["n1", "n3"]  # the promisers first

    asyncio.run(run())


def test_a_silent_replica_is_hedged_after_the_hedge_delay(tmp_path: Path) -> None:
    async def run() -> None:
        async with setup(tmp_path, hedge=0.02) as (p, net, _):
            net.silent.add("n2")
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await p.run("ns", "k", write("v"), 2.0)
            took = loop.time() - t0
            assert "n3" in net.asked("PaxosAccept")
            assert took < 0.4, f"the round waited {took:.2f}s, not the 0.02 s hedge"  # rpc 0.5

    asyncio.run(run())


def test_a_refusal_brings_the_third_in_and_a_quorum_decides(tmp_path: Path) -> None:
    """n2 promises our ballot, then a higher one before our accept: it refuses, n3 is asked and
    the round is chosen by n1 and n3."""
    async def run() -> None:
        async with setup(tmp_path) as (p, net, stores):
            net.overtaken.add("n2")
            rec = await p.run("ns", "k", write("v"), 2.0)
            await until(lambda: all(s.get("ns", "k") is not None for s in stores))
            assert net.asked("PaxosAccept") == ["n1", "n2", "n3"]
            for n, s in zip(NODES, stores, strict=True):
                got = s.get("ns", "k")
                assert got is not None and got.version == rec.version, n

    asyncio.run(run())
