"""A node that was cut off and is back still holds its failure verdicts on the others for a
moment (SWIM needs a protocol period or two to hear them again). A session read through it
whose token asks for a version only they hold must ask them anyway, not answer 503
session_unavailable while both are up (issue 17: ~0.3 s of refusals after a 4 s pause).
On the real node code, on virtual time."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from spine.core.consistency import Level
from spine.core.model import Record
from spine.core.requests import WriteOp
from spine.core.session import SessionToken
from spine.core.validation import WriteBody
from spine.node import Node
from tests.sim.cluster import SimCluster

NS = "verdicts"


@pytest.fixture
def cluster() -> Iterator[SimCluster]:
    with tempfile.TemporaryDirectory(prefix="simverdicts-") as root:
        c = SimCluster(3, Path(root), nodes=3, spare=0)
        c.boot()
        try:
            yield c
        finally:
            c.close()


def test_a_node_back_from_a_cut_reads_from_owners_it_still_believes_down(
    cluster: SimCluster,
) -> None:
    c = cluster
    others = {"n2", "n3"}
    c.net.partition({"n1"}, others)
    c.run(c.loop.create_task(asyncio.sleep(4.0)))  # long enough for n1 to hold both down

    async def write(n: Node) -> Record:
        op = WriteOp("k", WriteBody("while n1 was away", (), {}, None, None))
        item = (await n.coordinator.write(NS, [op], Level.SESSION, None, None))[0]
        assert item.result is not None, item.error
        return item.result.record

    rec = c.call("n2", write)
    assert c.node("n1").store.get(NS, "k") is None  # n1 missed it
    c.net.heal()
    n1 = c.node("n1")
    assert not n1.liveness.is_alive("n2") and not n1.liveness.is_alive("n3"), \
        "n1 should still hold its stale verdicts right after the heal"
    token = SessionToken(32)
    token.observe(f"{NS}/k", rec.version)

    async def read(n: Node) -> Record | None:
        got, _, _ = await n.coordinator.get(NS, "k", Level.SESSION, token)
        return got

    got = c.call("n1", read)
    assert got is not None and got.version == rec.version
