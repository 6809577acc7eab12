"""spine.cluster.paxos.Acceptor on a real LMDB store: answers only once durable, decides each
message on the newest state even while an earlier one is being written, and keeps its state
across a reopen."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgpack

from spine.cluster.paxos import Acceptor
from spine.core.clock import Version
from spine.core.messages import PaxosAccept, PaxosCommit, PaxosPrepare
from spine.core.model import Record
from spine.core.paxos import AcceptorState, Promise
from spine.storage.lmdb_store import Store


def open_store(path: Path) -> Store:
    s = Store(path, shard_of=lambda ns, mid: 0, sync=False, writer="loop")
    s.start()
    return s


def rec(content: str, hlc: int) -> Record:
    return Record("ns", "k", Version(hlc, "n1"), {"n1": hlc}, content)


def test_a_round_then_a_reopen(tmp_path: Path) -> None:
    async def run() -> None:
        store = open_store(tmp_path)
        a = Acceptor(store, store.apply)
        b1 = Version(10, "p")
        p = Promise.from_wire(await a.prepare(PaxosPrepare("ns", "k", b1)))
        assert p.ok and p.record is None
        assert await a.accept(PaxosAccept("ns", "k", b1, rec("v", 11))) == [True, [10, "p"]]
        assert await a.commit(PaxosCommit("ns", "k", b1, rec("v", 11)))
        got = store.get("ns", "k")
        assert got is not None and got.content == "v"
        store.close()
        again = open_store(tmp_path)
        raw = again.ballots_get("ns", "k")
        assert raw is not None
        st = AcceptorState.from_wire(msgpack.unpackb(raw, raw=False))
        assert (st.promised, st.accepted, st.committed) == (b1, b1, b1)
        stale = Promise.from_wire(await Acceptor(again, again.apply).prepare(
            PaxosPrepare("ns", "k", Version(5, "q"))))
        assert not stale.ok and stale.promised == b1  # the promise outlived the process
        again.close()

    asyncio.run(run())


def test_a_prepare_arriving_during_a_commit_is_not_undone_by_it(tmp_path: Path) -> None:
    """The commit's state is written beside its record; a higher prepare decided while that
    write is under way must still be what is promised afterwards."""
    async def run() -> None:
        store = open_store(tmp_path)
        a = Acceptor(store, store.apply)
        b1, b2 = Version(10, "p"), Version(20, "q")
        await a.prepare(PaxosPrepare("ns", "k", b1))
        await a.accept(PaxosAccept("ns", "k", b1, rec("v", 11)))
        commit = asyncio.ensure_future(a.commit(PaxosCommit("ns", "k", b1, rec("v", 11))))
        await asyncio.sleep(0)  # the commit has decided and submitted its writes
        promise = Promise.from_wire(await a.prepare(PaxosPrepare("ns", "k", b2)))
        await commit
        assert promise.ok
        st = a.state("ns", "k")
        assert (st.promised, st.committed) == (b2, b1)
        assert not Promise.from_wire(await a.prepare(PaxosPrepare("ns", "k", b1))).ok
        store.close()

    asyncio.run(run())
