"""spine.cluster.replication: what the mutants that survived the unit tests and the simulation
seeds changed (bench/mutation.py --sample 0.1, 2026-12-03; in the simulation anti-entropy repairs
whatever read repair, or a failure report, leaves undone). Each test names the mutants it kills.
Fake transports; no sockets."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from spine.cluster.replication import Replicator
from spine.core.clock import Version
from spine.core.errors import PeerUnavailable
from spine.core.messages import Apply, Message, Read, records_to_wire
from spine.core.metrics import SpineMetrics
from spine.core.model import Record
from spine.storage.layout import Applied, Outcome
from tests.unit.test_speculative_read import SLOW, Setup, rec

pytestmark = pytest.mark.timeout(30)


@pytest.mark.asyncio
async def test_a_failed_call_is_counted_against_its_peer() -> None:
    """`rpc_errors.inc(node)` -> `inc(None)` (_failed__mutmut_1): the failures were counted
    under no peer, so spine_rpc_errors_total{peer=...} could not say which peer fails."""
    s = Setup({"n1": rec(3), "n2": rec(3), "n3": rec(3)}, None)
    s.peers.fail.add("n2")
    got = await s.rep.read("ns", "k", ["n1", "n2", "n3"], 3, timeout=SLOW, repair=False)
    assert sorted(got) == ["n1", "n3"]
    assert s.metrics.rpc_errors.get("n2") == 1 and s.metrics.rpc_errors.get("n1") == 0
    await s.rep.stop()


class Net:
    """Replicas that hold one version each, take Apply, or fail; and a failure detector."""

    def __init__(self, held: dict[str, Record | None]) -> None:
        self.held = held
        self.fail: set[str] = set()
        self.applied: list[tuple[str, list[Record]]] = []
        self.failures: list[str] = []
        self.dropped: list[str] = []

    async def call(self, node: str, msg: Message, timeout: float) -> Any:
        if node in self.fail:
            raise PeerUnavailable(f"{node} reset the connection", node=node)
        if isinstance(msg, Read):
            return records_to_wire([self.held.get(node)])
        assert isinstance(msg, Apply)
        self.applied.append((node, list(msg.records)))
        return [True] * len(msg.records)

    def drop(self, node: str) -> None:
        self.dropped.append(node)

    async def close(self) -> None:
        pass

    def is_alive(self, node: str) -> bool:
        return True

    def report_failure(self, node: str) -> None:
        self.failures.append(node)

    def report_success(self, node: str) -> None:
        pass


def replicator(net: Net, store: Any = None, **kw: Any) -> Replicator:
    return Replicator("n0", store, net, net, SpineMetrics(),  # type: ignore[arg-type]
                      rpc_timeout=1.0, wall_ms=lambda: 0, **kw)


@pytest.mark.asyncio
async def test_read_repair_sends_the_newest_answer_to_the_stale_replicas() -> None:
    """`newest = outcome.newest` -> `None` (repair__mutmut_6): read repair sent nothing usable
    (the send failed, and nothing counted it)."""
    net = Net({})
    rep = replicator(net)
    await rep.repair({"n1": rec(5), "n2": rec(3), "n3": None})
    assert sorted(net.applied) == [("n2", [rec(5)]), ("n3", [rec(5)])]
    assert rep.metrics.read_repairs.get() == 2


@pytest.mark.asyncio
async def test_a_peer_that_fails_a_call_is_reported_and_its_connection_dropped() -> None:
    """`_failed(node, e)` -> `_failed(None, e)` in send (send__mutmut_19) and read_one
    (read_one__mutmut_18): the failure detector heard of no node, the broken connection to
    the peer was kept."""
    net = Net({"n2": rec(1)})
    net.fail.add("n2")
    rep = replicator(net)
    with pytest.raises(PeerUnavailable):
        await rep.send("n2", [rec(4)])
    with pytest.raises(PeerUnavailable):
        await rep.read_one("n2", "ns", "k")
    assert net.failures == ["n2", "n2"] and net.dropped == ["n2", "n2"]
    assert rep.metrics.rpc_errors.get("n2") == 2


@pytest.mark.asyncio
async def test_each_acknowledgement_reports_how_long_the_write_took_to_reach_its_node() -> None:
    """`self.replicated is not None` -> `is None` (write__mutmut_57): the cross-region lag
    (issue 17) was never reported."""
    net = Net({})
    lags: list[tuple[str, float]] = []
    clock = iter(float(i) for i in range(100))
    rep = replicator(net, monotonic=lambda: next(clock),
                     replicated=lambda node, s: lags.append((node, s)))
    acks = await rep.write([rec(2)], [["n1", "n2"]], 2, hints_count=False, timeout=1.0)
    assert acks == [2]
    assert sorted(n for n, _ in lags) == ["n1", "n2"] and all(s > 0 for _, s in lags)


@pytest.mark.asyncio
async def test_a_peers_settle_notice_is_noted_under_its_key() -> None:
    """`settlement.note(f"{namespace}/{mid}", version)` -> `note(None, ...)`
    (noticed__mutmut_1): a version every replica holds was not known settled here."""
    rep = replicator(Net({}))
    v = Version(7, "n1")
    rep.noticed([("ns", "k", v)])
    assert rep.settlement.noticed("ns/k", v)


class ConflictStore:
    """A store whose every apply meets a concurrent version."""

    async def apply(self, records: Sequence[Record]) -> list[Applied]:
        return [Applied(Outcome.APPLIED, r, r, True, i) for i, r in enumerate(records)]


@pytest.mark.asyncio
async def test_each_conflicting_apply_counts_once() -> None:
    """`sum(1 for a in applied if a.conflict)` -> `sum(2 ...)` (apply_local__mutmut_5)."""
    rep = replicator(Net({}), store=ConflictStore())
    await rep.apply_local([rec(1), rec(2)])
    assert rep.metrics.conflicts.get() == 2


@pytest.mark.asyncio
async def test_every_settle_notice_waiting_for_a_peer_goes_out_with_its_next_apply() -> None:
    """`box = self._outbox.get(node)` -> `None` (_settled__mutmut_8): each settled write
    replaced the peer's waiting notices, so only the last reached it."""
    net = Net({})
    rep = replicator(net)
    a = Record("ns", "a", Version(3, "n0"), {"n0": 3}, content="a")
    b = Record("ns", "b", Version(4, "n0"), {"n0": 4}, content="b")
    acks = await rep.write([a, b], [["n1", "n2"], ["n1", "n2"]], 2, hints_count=False,
                           timeout=1.0)
    assert acks == [2, 2]  # both settled at once: two notices wait for n1
    sent: list[Apply] = []
    answer = net.call

    async def keep(node: str, msg: Message, timeout: float) -> Any:
        if isinstance(msg, Apply) and node == "n1":
            sent.append(msg)
        return await answer(node, msg, timeout)

    net.call = keep  # type: ignore[method-assign]
    await rep.send("n1", [])
    assert sorted(n[1] for n in sent[0].notices) == ["a", "b"]
    await rep.stop()
