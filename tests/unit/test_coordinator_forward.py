"""A write forwarded to an owner that then does not answer has an unknown outcome: the
coordinator must not write it again itself. Found by the whole-cluster simulator (tests/sim,
seeds 51 and 172: a strong write forwarded to its owner was applied there, the reply was lost,
and the forwarding node wrote it again 1 s later over a write acknowledged in between, so a
strong read returned the older value after the newer one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from spine.core.consistency import Level
from spine.core.errors import PeerUnavailable
from spine.core.messages import Apply, Forward, Message
from spine.core.requests import WriteOp
from spine.core.validation import WriteBody
from tests.unit.test_coordinator import NS, Peers, started

pytestmark = [pytest.mark.timeout(30), pytest.mark.asyncio]


class LostReply(Peers):
    """Peers whose owner takes the forwarded write and never answers (`sent`), or refuses the
    connection before anything was sent."""

    def __init__(self, sent: bool) -> None:
        super().__init__()
        self.sent = sent

    async def call(self, node: str, msg: Message, timeout: float) -> Any:
        if isinstance(msg, Forward):
            self.calls.append((node, msg))
            raise PeerUnavailable(f"{node} did not answer", node=node,
                                  **({"sent": True} if self.sent else {}))
        return await super().call(node, msg, timeout)


def _not_owned(node: Any) -> str:
    p = node.placement()
    return next(f"k{i}" for i in range(1000) if "n1" not in p.owners(p.shard(NS, f"k{i}")))


@pytest.mark.parametrize("level", [Level.STRONG, Level.SESSION])
async def test_a_forwarded_write_with_a_lost_reply_times_out_and_is_not_written_again(
        tmp_path: Path, level: Level) -> None:
    peers = LostReply(sent=True)
    node = await started(tmp_path, ["n1", "n2", "n3", "n4"], peers)
    try:
        mid = _not_owned(node)
        items = await node.coordinator.write(
            NS, [WriteOp(mid, WriteBody("v", (), {}, None, None))], level, None, None)
        assert items[0].error is not None and items[0].error.code == "timeout"
        assert [type(m) for _, m in peers.calls] == [Forward]  # no Apply: not written again
        assert node.store.get(NS, mid) is None
    finally:
        await node.replicator.stop()
        node.store.close()


async def test_a_forward_refused_before_sending_is_written_here(tmp_path: Path) -> None:
    peers = LostReply(sent=False)
    node = await started(tmp_path, ["n1", "n2", "n3", "n4"], peers)
    try:
        mid = _not_owned(node)
        items = await node.coordinator.write(
            NS, [WriteOp(mid, WriteBody("v", (), {}, None, None))], Level.SESSION, None, None)
        assert items[0].error is None and items[0].result is not None
        assert any(isinstance(m, Apply) for _, m in peers.calls)
    finally:
        await node.replicator.stop()
        node.store.close()


async def test_a_read_is_forwarded_past_an_owner_far_slower_than_the_others(
        tmp_path: Path) -> None:
    """A node that does not own the key forwards a read in preference order, except that an
    owner far slower lately than the best (a paused one: its calls hang) is asked last, not
    waited on first; owners of like speed keep their order, so forwards spread over them."""
    peers = LostReply(sent=False)  # every forward refused: the order of the asks is the point
    node = await started(tmp_path, ["n1", "n2", "n3", "n4"], peers)
    try:
        mid = _not_owned(node)
        p = node.placement()
        owners = list(p.owners(p.shard(NS, mid)))
        stats = node.peer_stats
        for owner, took in zip(owners, (2.0, 0.003, 0.002), strict=True):
            for _ in range(5):
                stats.started(owner)
                stats.finished(owner, took)
        await node.coordinator.read(NS, mid, Level.SESSION, None)
        asked = [n for n, m in peers.calls if isinstance(m, Forward)]
        assert asked == [owners[1], owners[2], owners[0]], (owners, asked)
    finally:
        await node.replicator.stop()
        node.store.close()
