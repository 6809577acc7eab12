"""The coordinator reads a session token and never changes it (issue 18 §2): what a call saw comes
back in its results, and the caller merges it. A one-node Node in process, no listener started."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from spine.core.clock import Version
from spine.core.config import from_dict
from spine.core.consistency import Level
from spine.core.messages import Forward, Tag
from spine.core.model import Record
from spine.core.requests import WriteOp, body_to_wire
from spine.core.session import SessionToken
from spine.core.validation import WriteBody
from spine.node import Node

pytestmark = pytest.mark.timeout(30)


class NoPeers:
    async def call(self, node: str, msg: Any, timeout: float) -> Any:
        raise AssertionError(f"a one-node cluster called {node}")

    def drop(self, node: str) -> None:
        pass

    async def close(self) -> None:
        pass


@contextlib.asynccontextmanager
async def one_node(path: Path) -> AsyncIterator[Node]:
    """A one-node cluster's Node on a store under `path`; stopped and closed on the way out."""
    cfg = from_dict({
        "nodes": [{"id": "n1", "host": "127.0.0.1"}], "replication": {"n": 1},
        "storage": {"path": str(path)}, "embedder": {"name": "hash"},
    })
    n = Node(cfg, "n1", transport=NoPeers())
    n.store.start()
    try:
        yield n
    finally:
        await n.replicator.stop()
        n.store.close()


@pytest_asyncio.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with one_node(tmp_path) as n:
        yield n


def body(text: str) -> WriteBody:
    return WriteBody(text, (), {}, None, None)


def frozen(tok: SessionToken) -> tuple[dict[str, Version], bool]:
    return dict(tok.entries), tok.overflowed


@pytest.mark.asyncio
@pytest.mark.parametrize("level", [Level.SESSION, Level.STRONG], ids=lambda lv: lv.label)
async def test_write_and_read_leave_the_token_as_it_was(node: Node, level: Level) -> None:
    tok = SessionToken(4)
    tok.observe("ns/other", Version(1, "n0"))
    before = frozen(tok)
    items = await node.coordinator.write("ns", [WriteOp("a", body("x")), WriteOp("b", None)],
                                         level, tok, None)
    assert frozen(tok) == before
    assert [i.error for i in items] == [None, None]
    written = {i.id: i.result.record.version for i in items if i.result is not None}
    rec, used, coordinator = await node.coordinator.get("ns", "a", level, tok)
    assert frozen(tok) == before
    assert rec is not None and rec.version == written["a"]
    assert used is level and coordinator == "n1"


@pytest.mark.asyncio
async def test_the_forward_handler_answers_with_the_token_and_what_it_saw(node: Node) -> None:
    tok = SessionToken(8)
    tok.observe("ns/other", Version(1, "n0"))
    forward = node.handlers[Tag.FORWARD]
    wire = [["a", body_to_wire(body("x"))], ["b", None]]
    reply = await forward("n2", Forward("write", "ns", "", wire, None, tok.encode(), None, None))
    versions = {f"ns/{w[0]}": Record.from_wire(w[1]).version for w in reply["results"]}
    back = SessionToken.decode(reply["token"], 8)
    assert back.entries == {"ns/other": Version(1, "n0"), **versions}
    got = await forward("n2", Forward("get", "ns", "a", None, None, back.encode()))
    # Every replica (this one node) took "a": the read says so, and its entry leaves the token.
    assert got["settled"] is True
    after = SessionToken.decode(got["token"], 8)
    assert after.entries == {k: v for k, v in back.entries.items() if k != "ns/a"}
    assert after.forgotten == {"ns/a": back.entries["ns/a"]}
    assert got["record"] is not None
