"""spine.cluster.coordinator: what the mutants that survived the unit tests and the simulation
seeds changed (bench/mutation.py --sample 0.1, 2026-12-03). Each test names the mutants it
kills. A one-node Node in process (test_coordinator_session's), no listener started."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from spine.core.consistency import Level
from spine.core.requests import WriteOp
from spine.core.session import SessionToken
from spine.node import Node
from tests.unit.test_coordinator_session import body, one_node

pytestmark = pytest.mark.timeout(30)


@pytest_asyncio.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with one_node(tmp_path) as n:
        yield n


@pytest.mark.asyncio
async def test_a_keys_history_holds_its_versions_from_its_live_replicas(node: Node) -> None:
    """`history` asks the key's live owners for the key (history__mutmut_4: `live` without the
    owners; _10: no nodes; _12: no namespace), which no selected test reached."""
    c = node.coordinator
    first = await c.write("ns", [WriteOp("a", body("one"))], Level.SESSION, SessionToken(4), None)
    second = await c.write("ns", [WriteOp("a", body("two"))], Level.SESSION, SessionToken(4), None)
    versions = [i.result.record.version for i in (*first, *second) if i.result is not None]
    got = await c.history("ns", "a")
    assert [r.version for r, _ in got][:1] == [max(versions)]
    assert all(not concurrent for _, concurrent in got)


@pytest.mark.asyncio
@pytest.mark.parametrize("level", [Level.SESSION, Level.STRONG], ids=lambda lv: lv.label)
async def test_a_forwarded_write_past_its_deadline_is_refused_as_expired(
    node: Node, level: Level
) -> None:
    """A forwarded write whose deadline (an HLC value) has passed mints nothing and answers
    EXPIRED, at a quorum level (_write_local__mutmut_75: the answer None; _79: no error) and at
    the strong level (_write_local__mutmut_62: the deadline not passed to the Paxos round)."""
    c = node.coordinator
    items = await c.write("ns", [WriteOp("a", body("late")), WriteOp("b", body("late"))], level,
                          SessionToken(4), None, forwarded=True, deadline=1)
    assert [(i.id, i.result) for i in items] == [("a", None), ("b", None)]
    assert all(i.error is not None and "after its deadline" in str(i.error) for i in items)
    assert node.store.get("ns", "a") is None and node.store.get("ns", "b") is None
