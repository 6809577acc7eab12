"""spine.cluster.acceptor.Acceptor on a real LMDB store: answers only once durable, decides each
message on the newest state even while an earlier one is being written, keeps its state across a
reopen, and keeps promises in memory under a durable bound that outlives the process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgpack
import pytest

from spine.cluster.acceptor import BOUND_KEY, Acceptor
from spine.core.clock import HLC, Version, hlc_from_ms
from spine.core.errors import ClockSkew, InvalidInput
from spine.core.messages import PaxosAccept, PaxosCommit, PaxosPrepare, Tag, decode
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
        # the promise outlived the process (as the bound above it: see test_the_promise_bound...)
        assert not stale.ok and stale.promised >= b1
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


def test_a_promise_is_kept_in_memory_under_a_bound_that_outlives_the_process(
    tmp_path: Path,
) -> None:
    """A prepare writes the bound, not the promise; after a restart (the in-memory promise
    gone) nothing at or below the promised ballot is promised or accepted, and a ballot above the
    bound is."""
    async def run() -> None:
        store = open_store(tmp_path)
        a = Acceptor(store, store.apply, bound_margin=hlc_from_ms(250))
        b1, b2 = Version(hlc_from_ms(1000), "p"), Version(hlc_from_ms(1000) + 5, "q")
        assert Promise.from_wire(await a.prepare(PaxosPrepare("ns", "k", b1))).ok
        assert Promise.from_wire(await a.prepare(PaxosPrepare("ns", "k", b2))).ok
        assert store.ballots_get("ns", "k") is None  # the promises are in memory only
        bound = store.ballots_get(*BOUND_KEY)
        assert bound is not None
        assert msgpack.unpackb(bound) == b1.hlc + hlc_from_ms(250)  # one write covered both
        assert a.state("ns", "k").promised == b2
        assert await a.accept(PaxosAccept("ns", "k", b1, rec("v", 11))) == [False, [b2.hlc, "q"]]
        store.close()  # the process ends: the promise of b2 was never written

        again = open_store(tmp_path)
        b = Acceptor(again, again.apply)
        for lower in (b1, b2):
            assert not Promise.from_wire(await b.prepare(PaxosPrepare("ns", "k", lower))).ok
            assert (await b.accept(PaxosAccept("ns", "k", lower, rec("v", 11))))[0] is False
        above = Version(hlc_from_ms(1250) + 1, "p")
        assert Promise.from_wire(await b.prepare(PaxosPrepare("ns", "k", above))).ok
        assert (await b.accept(PaxosAccept("ns", "k", above, rec("w", 12))))[0] is True
        again.close()

    asyncio.run(run())


def test_the_bound_is_raised_once_per_margin_and_before_the_answer(tmp_path: Path) -> None:
    async def run() -> None:
        store = open_store(tmp_path)
        writes: list[bytes] = []
        put = store.ballots_put

        async def counting_put(namespace: str, mid: str, value: bytes) -> None:
            if (namespace, mid) == BOUND_KEY:
                writes.append(value)
            await put(namespace, mid, value)

        store.ballots_put = counting_put  # type: ignore[method-assign]
        a = Acceptor(store, store.apply, bound_margin=100)
        answers = await asyncio.gather(*(
            a.prepare(PaxosPrepare("ns", f"k{i}", Version(1000 + i, "p"))) for i in range(50)))
        assert all(Promise.from_wire(w).ok for w in answers)
        assert len(writes) == 1 and msgpack.unpackb(writes[0]) == 1100
        await a.prepare(PaxosPrepare("ns", "k", Version(1100, "p")))  # at the bound: raised
        assert len(writes) == 2 and msgpack.unpackb(store.ballots_get(*BOUND_KEY)) == 1200
        store.close()

    asyncio.run(run())


def test_a_promise_held_in_memory_is_written_out_before_it_leaves(tmp_path: Path) -> None:
    async def run() -> None:
        store = open_store(tmp_path)
        a = Acceptor(store, store.apply, max_held=4)
        for i in range(12):
            await a.prepare(PaxosPrepare("ns", f"k{i}", Version(1000 + i, "p")))
            await asyncio.sleep(0)
        for _ in range(3):  # the spills' writes land
            await asyncio.sleep(0)
        assert len(a._held) < 12  # some left memory (after being written out)
        for i in range(12):  # each promise is in memory or in the store, never lost
            assert a.state("ns", f"k{i}").promised == Version(1000 + i, "p")
        spilled = [i for i in range(12) if store.ballots_get("ns", f"k{i}") is not None]
        assert spilled, "nothing was written out"
        store.close()

    asyncio.run(run())


def test_a_ballot_from_far_in_the_future_is_refused_and_moves_nothing(tmp_path: Path) -> None:
    """A forged ballot hours ahead would, through the durable bound, leave every key refusing
    after a restart: it is checked against the clock like an RPC frame and refused."""
    now_ms = 1_700_000_000_000
    hlc = HLC(lambda: now_ms, max_offset_ms=500)

    async def run() -> None:
        store = open_store(tmp_path)
        a = Acceptor(store, store.apply, clock_check=hlc.check)
        far = Version(hlc_from_ms(now_ms + 3_600_000), "evil")
        with pytest.raises(ClockSkew):
            await a.prepare(PaxosPrepare("ns", "k", far))
        with pytest.raises(ClockSkew):
            await a.accept(PaxosAccept("ns", "k", far, rec("v", far.hlc)))
        assert store.ballots_get(*BOUND_KEY) is None  # the bound did not move
        store.close()
        again = open_store(tmp_path)
        b = Acceptor(again, again.apply, clock_check=hlc.check)
        near = Version(hlc_from_ms(now_ms + 100), "p")  # within the offset: served as ever
        assert Promise.from_wire(await b.prepare(PaxosPrepare("ns", "other", near))).ok
        again.close()

    asyncio.run(run())


async def _settle(a: Acceptor, ballot: Version, record: Record) -> None:
    """One full round of `ballot` on the key: prepared, accepted and committed here."""
    assert Promise.from_wire(await a.prepare(PaxosPrepare("ns", "k", ballot))).ok
    assert (await a.accept(PaxosAccept("ns", "k", ballot, record)))[0]
    assert await a.commit(PaxosCommit("ns", "k", ballot, record))


def test_a_warm_accept_is_taken_only_where_the_key_stands_as_the_last_round_left_it(
    tmp_path: Path,
) -> None:
    """A warm round's accept stands for its prepare too: taken while the key is settled at the
    proposer's last ballot and the store holds that round's record, refused once anything moved
    (another proposer's promise, a write of another level), and never below the last ballot."""
    async def run() -> None:
        store = open_store(tmp_path)
        a = Acceptor(store, store.apply)
        b1, first = Version(10, "p"), rec("v", 11)
        await _settle(a, b1, first)
        warm = {"after": b1, "expect": first.version}
        assert (await a.accept(PaxosAccept("ns", "k", Version(10, "o"), rec("w", 12),
                                           **warm)))[0] is False  # not above the last ballot
        b2 = Version(20, "p")
        assert (await a.accept(PaxosAccept("ns", "k", b2, rec("w", 21), **warm)))[0] is True
        st = a.state("ns", "k")
        assert (st.promised, st.accepted, st.committed) == (b2, b2, b1)
        assert await a.commit(PaxosCommit("ns", "k", b2, rec("w", 21)))
        # the same guard again: the key has moved past it
        assert (await a.accept(PaxosAccept("ns", "k", Version(30, "p"), rec("x", 31),
                                           **warm)))[0] is False
        warm = {"after": b2, "expect": Version(21, "n1")}
        # a plain write landed here since: the stored version is not the round's
        await store.apply([rec("session", 25)])
        assert (await a.accept(PaxosAccept("ns", "k", Version(30, "p"), rec("x", 31),
                                           **warm)))[0] is False
        st = a.state("ns", "k")
        assert (st.promised, st.accepted) == (b2, b2)  # nothing taken, nothing promised
        store.close()

    asyncio.run(run())


def test_a_warm_round_commits_the_last_round_when_its_commit_has_not_arrived(
    tmp_path: Path,
) -> None:
    """The partner accepted the proposer's last round, whose commit is still on its way: the
    next warm accept (its proposer saw that round chosen) commits it first and is taken, where it
    would otherwise be refused and cost a full round. A guard naming another round commits
    nothing."""
    async def run() -> None:
        store = open_store(tmp_path)
        a = Acceptor(store, store.apply)
        b1, first = Version(10, "p"), rec("v", 11)
        assert Promise.from_wire(await a.prepare(PaxosPrepare("ns", "k", b1))).ok
        assert (await a.accept(PaxosAccept("ns", "k", b1, first)))[0]
        other = {"after": Version(9, "p"), "expect": first.version}
        assert (await a.accept(PaxosAccept("ns", "k", Version(20, "p"), rec("w", 21),
                                           **other)))[0] is False
        assert store.get("ns", "k") is None and a.state("ns", "k").committed < b1
        warm = {"after": b1, "expect": first.version}
        b2 = Version(20, "p")
        assert (await a.accept(PaxosAccept("ns", "k", b2, rec("w", 21), **warm)))[0] is True
        got = store.get("ns", "k")
        assert got is not None and got.content == "v"  # the last round, committed
        st = a.state("ns", "k")
        assert (st.promised, st.accepted, st.committed) == (b2, b2, b1)
        assert await a.commit(PaxosCommit("ns", "k", b1, first))  # the late commit: harmless
        assert a.state("ns", "k").committed == b1
        store.close()

    asyncio.run(run())


def test_an_accept_delivered_twice_is_answered_accepted_twice(tmp_path: Path) -> None:
    """A second delivery of an accept this acceptor took, plain or warm, answers accepted even
    after a higher promise or once the warm guard no longer holds (its own acceptance moved the
    key): its first answer may have been lost, and a refusal would tell the proposer its change
    was accepted nowhere. A ballot it never accepted is refused as before."""
    async def run() -> None:
        store = open_store(tmp_path)
        a = Acceptor(store, store.apply)
        b1, first = Version(10, "p"), rec("v", 11)
        await _settle(a, b1, first)
        warm = PaxosAccept("ns", "k", Version(20, "p"), rec("w", 21), after=b1,
                           expect=first.version)
        assert (await a.accept(warm))[0] is True
        assert (await a.accept(warm))[0] is True  # the guard no longer holds: still taken
        rival = Version(30, "q")
        assert Promise.from_wire(await a.prepare(PaxosPrepare("ns", "k", rival))).ok
        assert await a.accept(warm) == [True, [30, "q"]]
        st = a.state("ns", "k")
        assert (st.promised, st.accepted) == (rival, Version(20, "p"))
        never = PaxosAccept("ns", "k", Version(25, "p"), rec("x", 26))
        assert (await a.accept(never))[0] is False
        store.close()

    asyncio.run(run())


def test_a_warm_prepare_refused_by_its_guard_promises_nothing(tmp_path: Path) -> None:
    async def run() -> None:
        store = open_store(tmp_path)
        a = Acceptor(store, store.apply)
        b1, first = Version(10, "p"), rec("v", 11)
        await _settle(a, b1, first)
        rival = Version(15, "q")  # another proposer's prepare since
        assert Promise.from_wire(await a.prepare(PaxosPrepare("ns", "k", rival))).ok
        p = Promise.from_wire(await a.prepare(PaxosPrepare(
            "ns", "k", Version(20, "p"), after=b1, expect=first.version)))
        assert not p.ok and p.promised == rival
        assert a.state("ns", "k").promised == rival
        ok = Promise.from_wire(await a.prepare(PaxosPrepare(
            "ns", "k", Version(20, "p"), after=rival, expect=first.version)))
        assert not ok.ok  # settled means accepted and committed there too, not only promised
        store.close()

    asyncio.run(run())


def test_a_warm_guard_travels_and_a_malformed_one_is_refused() -> None:
    b, v = Version(20, "p"), Version(11, "n1")
    for msg in (PaxosPrepare("ns", "k", Version(30, "p"), after=b, expect=v),
                PaxosAccept("ns", "k", Version(30, "p"), rec("w", 31), after=b, expect=v),
                PaxosPrepare("ns", "k", Version(30, "p"))):
        wire = msgpack.unpackb(msgpack.packb(msg.to_wire()), raw=False)
        assert decode(int(msg.TAG), wire) == msg
    wire = PaxosPrepare("ns", "k", Version(30, "p"), after=b, expect=v).to_wire()
    for bad in (wire[:4], [*wire[:4], "x"], [*wire, [1, "p"]], [*wire[:3], [1, "p"], [-1, "q"]]):
        with pytest.raises(InvalidInput):
            decode(int(Tag.PAXOS_PREPARE), bad)
