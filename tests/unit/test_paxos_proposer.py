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

import pytest

from spine.cluster.acceptor import Acceptor
from spine.cluster.paxos import Proposer
from spine.core.clock import HLC, Version
from spine.core.errors import Overloaded, PeerUnavailable, PreconditionFailed, SpineError
from spine.core.messages import Message, PaxosAccept, PaxosCommit, PaxosPrepare
from spine.core.metrics import SpineMetrics
from spine.core.model import Record
from spine.core.paxos import Promise
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


def if_match(expected: Version, content: str, hlc: int) -> Any:
    """A conditional write: refused (412) unless the key's current version is `expected`."""
    def decide(current: Record | None, clock: dict[str, int]) -> Record | SpineError:
        if current is None or current.version != expected:
            return PreconditionFailed("the key moved", current=None)
        n = dict(clock)
        n["n1"] = n.get("n1", 0) + 1
        return Record("ns", "k", Version(hlc, "n1"), n, content)
    return decide


async def first_round(p: Proposer, stores: list[Store]) -> Record:
    """The key's first change, from n1, once every replica stores it (the next one is warm)."""
    first = await p.run("ns", "k", write("v"), 2.0)
    await until(lambda: all(s.get("ns", "k") is not None for s in stores))
    return first


def test_the_next_round_from_the_same_node_prepares_nothing_over_the_network(
    tmp_path: Path,
) -> None:
    """After a round this node led, the key's next change is a warm round: a guarded promise
    from its own acceptor, one accept that is also the partner's promise, then the commits."""
    async def run() -> None:
        async with setup(tmp_path) as (p, net, stores):
            first = await p.run("ns", "k", write("v"), 2.0)
            net.calls.clear()
            second = await p.run("ns", "k", if_match(first.version, "w", 20_000), 2.0)
            assert net.asked("PaxosPrepare") == ["n1"]
            assert net.asked("PaxosAccept") == ["n2", "n1"]
            await until(lambda: all(s.get("ns", "k") is not None
                                    and s.get("ns", "k").content == "w" for s in stores))
            assert second.version == Version(20_000, "n1")
            assert p.metrics.paxos_rounds.get("warm") == 1

    asyncio.run(run())


def test_a_write_acknowledged_elsewhere_since_is_seen_by_the_next_round(tmp_path: Path) -> None:
    """A plain write acknowledged by the two other replicas after this node's last round (this
    node never saw it): the warm round's guard at the partner refuses before anything is
    accepted, and the full round that follows judges If-Match on what a quorum holds: 412.
    Without the partner's guard the stale If-Match would succeed and overwrite the write."""
    async def run() -> None:
        async with setup(tmp_path) as (p, net, stores):
            first = await first_round(p, stores)
            other = Record("ns", "k", Version(15_000, "n2"), {"n2": 1, "n1": 1}, "session")
            for s in stores[1:]:
                await s.apply([other])
            with pytest.raises(PreconditionFailed):
                await p.run("ns", "k", if_match(first.version, "w", 20_000), 2.0)
            assert p.metrics.paxos_rounds.get("warm_refused") == 1
            for s in stores[1:]:
                got = s.get("ns", "k")
                assert got is not None and got.content == "session"
            st = net.acceptors["n1"].state("ns", "k")
            assert st.accepted_record is not None and st.accepted_record.content == "v"

    asyncio.run(run())


def test_a_write_that_reached_this_node_since_is_seen_before_anything_is_sent(
    tmp_path: Path,
) -> None:
    async def run() -> None:
        async with setup(tmp_path) as (p, net, stores):
            first = await first_round(p, stores)
            other = Record("ns", "k", Version(15_000, "n3"), {"n3": 1, "n1": 1}, "session")
            for s in (stores[0], stores[2]):
                await s.apply([other])
            net.calls.clear()
            with pytest.raises(PreconditionFailed):
                await p.run("ns", "k", if_match(first.version, "w", 20_000), 2.0)
            assert "n2" not in [n for k, n in net.calls if k == "PaxosAccept"]

    asyncio.run(run())


def test_a_failed_condition_on_a_warm_key_costs_one_call_and_leaves_it_warm(
    tmp_path: Path,
) -> None:
    """An If-Match that fails on the warm record: this node's acceptor and the partner confirm
    the key stands where the last round left it (a prepare at that ballot, which changes
    nothing), and the 412 is answered; no replica's state moved, so the next change is warm."""
    async def run() -> None:
        async with setup(tmp_path) as (p, net, stores):
            first = await first_round(p, stores)
            before = {n: a.state("ns", "k") for n, a in net.acceptors.items()}
            net.calls.clear()
            with pytest.raises(PreconditionFailed):
                await p.run("ns", "k", if_match(Version(1, "zz"), "w", 20_000), 2.0)
            assert net.calls == [("PaxosPrepare", "n1"), ("PaxosPrepare", "n2")]
            assert {n: a.state("ns", "k") for n, a in net.acceptors.items()} == before
            assert p.metrics.paxos_rounds.get("refused") == 1
            net.calls.clear()
            rec = await p.run("ns", "k", if_match(first.version, "w", 20_000), 2.0)
            assert rec.content == "w"
            assert net.asked("PaxosPrepare") == ["n1"]
            assert p.metrics.paxos_rounds.get("warm") == 1

    asyncio.run(run())


def test_failed_conditions_waiting_their_turn_share_one_check(tmp_path: Path) -> None:
    """Three stale If-Matches arrive while a change of the warm key runs: the first one's check
    (this node's acceptor and the partner) vouches for a moment inside the other two's requests
    too, so they are answered with no call. A change that arrives after that check is checked
    again."""
    async def run() -> None:
        async with setup(tmp_path) as (p, net, stores):
            await first_round(p, stores)
            net.calls.clear()
            stale = [p.run("ns", "k", if_match(Version(1, "zz"), "w", 20_000), 2.0)
                     for _ in range(3)]
            out = await asyncio.gather(p.run("ns", "k", write("vv"), 2.0), *stale,
                                       return_exceptions=True)
            assert isinstance(out[0], Record)
            assert all(isinstance(o, PreconditionFailed) for o in out[1:]), out
            assert net.asked("PaxosPrepare") == ["n1", "n1", "n2"]  # the warm round, one check
            assert p.metrics.paxos_rounds.get("refused") == 3
            net.calls.clear()
            with pytest.raises(PreconditionFailed):
                await p.run("ns", "k", if_match(Version(1, "zz"), "w", 20_000), 2.0)
            assert net.calls == [("PaxosPrepare", "n1"), ("PaxosPrepare", "n2")]

    asyncio.run(run())


def test_a_check_made_before_the_last_change_vouches_for_nothing(tmp_path: Path) -> None:
    """Stale If-Matches a and c and a change b arrive while a change runs: a is checked; b is
    chosen; c arrived before a's check, but what that check saw is no longer the key's last
    record, so c is checked again."""
    async def run() -> None:
        async with setup(tmp_path) as (p, net, stores):
            await first_round(p, stores)
            net.calls.clear()
            out = await asyncio.gather(
                p.run("ns", "k", write("x"), 2.0),
                p.run("ns", "k", if_match(Version(1, "zz"), "a", 20_000), 2.0),
                p.run("ns", "k", write("bb"), 2.0),
                p.run("ns", "k", if_match(Version(1, "zz"), "c", 21_000), 2.0),
                return_exceptions=True)
            assert [type(o) for o in out] == [Record, PreconditionFailed, Record,
                                              PreconditionFailed], out
            # x's warm round, a's check, b's warm round, c's own check
            assert net.asked("PaxosPrepare") == ["n1", "n1", "n2", "n1", "n1", "n2"]

    asyncio.run(run())


def test_a_condition_failing_on_the_warm_record_but_holding_on_a_quorum_succeeds(
    tmp_path: Path,
) -> None:
    """A plain write acknowledged by the partner and the third replica since this node's last
    round: the If-Match that names it fails on this node's warm record, but the partner's check
    sees the stored version moved, and a full round judges the condition on what a quorum holds
    (it holds). Answering the 412 from the warm record would report a superseded version."""
    async def run() -> None:
        async with setup(tmp_path) as (p, _net, stores):
            await first_round(p, stores)
            other = Record("ns", "k", Version(15_000, "n2"), {"n2": 1, "n1": 1}, "session")
            for s in stores[1:]:
                await s.apply([other])
            rec = await p.run("ns", "k", if_match(other.version, "w", 20_000), 2.0)
            assert rec.content == "w"
            assert p.metrics.paxos_rounds.get("refused") == 0
            assert p.metrics.paxos_rounds.get("chosen") == 2

    asyncio.run(run())


def test_a_rival_promise_at_the_partner_sends_the_change_through_a_full_round(
    tmp_path: Path,
) -> None:
    async def run() -> None:
        async with setup(tmp_path) as (p, net, stores):
            first = await first_round(p, stores)
            rival = Version(p.hlc.now() + 1, "n9")
            assert Promise.from_wire(await net.acceptors["n2"].prepare(
                PaxosPrepare("ns", "k", rival))).ok
            net.calls.clear()
            rec = await p.run("ns", "k", if_match(first.version, "w", 20_000), 2.0)
            assert rec.content == "w"
            assert net.asked("PaxosPrepare") == ["n1", "n1", "n2", "n3"]  # warm, then full
            assert p.metrics.paxos_rounds.get("warm_refused") == 1

    asyncio.run(run())


def test_changes_of_one_key_from_one_node_take_turns_and_the_queue_is_bounded(
    tmp_path: Path,
) -> None:
    """Concurrent changes of a key on this node run one after another (no duel of ballots: no
    contended round), each after the first warm; past `max_waiting` waiting, 429 at once."""
    async def run() -> None:
        async with setup(tmp_path) as (p, _net, _):
            await p.run("ns", "k", write("v"), 2.0)
            got = await asyncio.gather(*(p.run("ns", "k", write("w" * i), 2.0)
                                         for i in range(2, 6)))
            assert [r.content for r in got] == ["w" * i for i in range(2, 6)]
            assert p.metrics.paxos_rounds.get("contended") == 0
            assert p.metrics.paxos_rounds.get("warm") == 4
            assert not p._turns  # nothing left behind
            p.max_waiting = 1
            out = await asyncio.gather(*(p.run("ns", "k", write("x" * i), 2.0)
                                         for i in range(2, 6)), return_exceptions=True)
            refused = [o for o in out if isinstance(o, Overloaded)]
            assert len(refused) == 2 and all(isinstance(o, Record) for o in out[:2])
            assert not p._turns

    asyncio.run(run())
