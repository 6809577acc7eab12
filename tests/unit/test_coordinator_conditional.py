"""Conditional writes forwarded to the node that led their key's last round: the `cas` Forward
handler, and what a forwarding node does when the leader is of an older release. A one-node
Node in process (tests/unit/test_coordinator_session.py's `one_node`), no listener started."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from spine.core.clock import Version
from spine.core.conditions import Condition, condition_to_wire
from spine.core.errors import InvalidInput
from spine.core.messages import Forward, Tag
from spine.core.model import Record
from spine.core.requests import WriteOp, body_to_wire
from spine.core.session import SessionToken
from spine.core.validation import WriteBody
from spine.node import Node
from tests.unit.test_coordinator_session import one_node

pytestmark = pytest.mark.timeout(30)


@pytest_asyncio.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with one_node(tmp_path) as n:
        yield n


def body(text: str) -> WriteBody:
    return WriteBody(text, (), {}, None, None)


def cas(mid: str, text: str, cond: Condition, token: str | None = None) -> Forward:
    return Forward("cas", "ns", mid, [body_to_wire(body(text)), condition_to_wire(cond)], None,
                   token, None, None)


@pytest.mark.asyncio
async def test_a_forwarded_conditional_write_is_judged_and_answered_with_the_token(
    node: Node,
) -> None:
    forward = node.handlers[Tag.FORWARD]
    tok = SessionToken(8)
    made = await forward("n2", cas("job", "claimed", Condition(if_none_match=True),
                                   tok.encode()))
    [(mid, wire, created, _level, err, coordinator)] = made["results"]
    assert (mid, err, created, coordinator) == ("job", None, True, "n1")
    version = Record.from_wire(wire).version
    assert SessionToken.decode(made["token"], 8).entries == {"ns/job": version}
    again = await forward("n2", cas("job", "second", Condition(if_none_match=True)))
    code, _msg, _field, details = again["results"][0][4]
    assert (code, details["current"]) == ("precondition_failed", version.encode())
    moved = await forward("n2", cas("job", "next", Condition(if_match=version)))
    assert moved["results"][0][4] is None
    with pytest.raises(InvalidInput) as e:
        await forward("n2", Forward("cas", "ns", "job", [None, [None, False, None]]))
    assert e.value.field == "condition"


class OlderLeader:
    """A leader that answers a forwarded `cas` as a node of an older release does."""

    def __init__(self, field: str) -> None:
        self.field = field
        self.asked: list[str] = []

    async def call(self, node: str, msg: Any, timeout: float) -> Any:
        assert isinstance(msg, Forward)
        self.asked.append(node)
        raise InvalidInput(f"unknown forwarded op {msg.op!r}", field=self.field)

    def drop(self, node: str) -> None:
        pass


@pytest.mark.asyncio
async def test_a_leader_that_takes_no_forwarded_cas_leaves_the_write_here(node: Node) -> None:
    c = node.coordinator
    c.leader = lambda *_: "n2"
    c.rpc = older = OlderLeader("op")
    item = await c.conditional("ns", WriteOp("gate", body("open")),
                               Condition(if_none_match=True), None, None)
    assert older.asked == ["n2"]
    assert item.error is None and item.result is not None
    assert item.result.coordinator == "n1" and item.result.record.content == "open"
    c.rpc = OlderLeader("condition")  # any other refusal is the answer
    with pytest.raises(InvalidInput):
        await c.conditional("ns", WriteOp("gate", body("x")),
                            Condition(if_match=Version(1, "n9")), None, None)
