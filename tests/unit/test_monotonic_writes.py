"""Monotonic writes (DESIGN §4): a client numbers its writes (Spine-Write-Seq), each version keeps
its writer's number, one session's later write outranks its earlier ones wherever they meet, a
coordinator refuses a write the session has already followed with a later one, and a read never
answers a session with its own earlier write. The record merge itself is in test_model.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from spine.core.clock import Version
from spine.core.consistency import Level
from spine.core.errors import InvalidInput, SessionUnavailable, Superseded
from spine.core.model import Record
from spine.core.requests import WriteOp
from spine.core.session import SessionToken, WriteSeq
from spine.core.validation import WriteBody
from spine.node import Node
from tests.unit.test_coordinator_session import one_node

pytestmark = pytest.mark.timeout(30)


# --- the header and the token -------------------------------------------------------------------


@pytest.mark.parametrize("text", ["a:1", "agent-7.x~y_z:42", " s:9007199254740991 "])
def test_write_seq_parses_writer_and_number(text: str) -> None:
    ws = WriteSeq.parse(text)
    assert WriteSeq.parse(ws.encode()) == ws
    assert ws.writer == text.strip().rpartition(":")[0]


@pytest.mark.parametrize("text", ["", "a", ":1", "a:0", "a:-1", "a:x", "a:9007199254740992",
                                  "a b:1", "x" * 65 + ":1", "a:1e3", 7])
def test_a_malformed_write_seq_is_a_400_naming_the_header(text: object) -> None:
    with pytest.raises(InvalidInput) as e:
        WriteSeq.parse(text)
    assert e.value.field == "Spine-Write-Seq"


def test_the_token_keeps_its_writer_and_numbers_through_the_header() -> None:
    tok = SessionToken(8)
    tok.observe("ns/read", Version(5, "n1"))
    tok.wrote("ns/a", Version(10, "n2"), WriteSeq("s1", 3))
    back = SessionToken.decode(tok.encode(), 8)
    assert back.writer == "s1" and back.own_seq == {"ns/a": 3}
    assert back.entries == tok.entries
    plain = SessionToken(8)
    plain.observe("ns/a", Version(1, "n1"))
    assert SessionToken.decode(plain.encode(), 8).writer is None  # a token of before still reads


def test_a_new_writer_forgets_the_old_writers_numbers() -> None:
    tok = SessionToken(8)
    tok.wrote("ns/a", Version(10, "n2"), WriteSeq("s1", 3))
    tok.wrote("ns/b", Version(11, "n2"), WriteSeq("s2", 1))
    assert tok.writer == "s2" and tok.own_seq == {"ns/b": 1}


def test_stale_for_names_only_the_sessions_own_earlier_write() -> None:
    tok = SessionToken(8)
    tok.wrote("ns/a", Version(10, "n2"), WriteSeq("s1", 3))
    base = Record("ns", "a", Version(99, "n1"))
    assert tok.stale_for("ns/a", replace(base, writer="s1", writer_seq=2))
    assert not tok.stale_for("ns/a", replace(base, writer="s1", writer_seq=3))
    assert not tok.stale_for("ns/a", replace(base, writer="s2", writer_seq=1))
    assert not tok.stale_for("ns/a", base)
    assert not tok.stale_for("ns/b", replace(base, writer="s1", writer_seq=1))


def test_merging_reply_tokens_keeps_the_highest_number_and_settled_keys_drop_it() -> None:
    mine = SessionToken(8)
    mine.wrote("ns/a", Version(10, "n2"), WriteSeq("s1", 3))
    reply = SessionToken(8)
    reply.wrote("ns/a", Version(20, "n1"), WriteSeq("s1", 4))
    mine.merge(reply)
    assert mine.own_seq == {"ns/a": 4}
    mine.forget("ns/a", Version(20, "n1"))
    assert mine.own_seq == {} and "ns/a" not in mine.entries


@pytest.mark.parametrize("body", [
    [1, False, [["ns/a", 1, "n1", 3]]],  # a number without a writer
    [1, False, [["ns/a", 1, "n1", 0]], [], "s1"],  # a number out of range
    [1, False, [], [], "bad writer!"],
    [1, False, [], [], 7],
])
def test_a_token_with_a_bad_writer_or_number_is_refused(body: list[Any]) -> None:
    import base64

    import msgpack

    text = base64.urlsafe_b64encode(msgpack.packb(body)).decode().rstrip("=")
    with pytest.raises(InvalidInput) as e:
        SessionToken.decode(text, 8)
    assert e.value.field == "Spine-Session"


# --- one node, real store -----------------------------------------------------------------------


@pytest_asyncio.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with one_node(tmp_path) as n:  # the coordinator's session tests' one-node Node
        yield n


def put(text: str, mid: str = "a") -> WriteOp:
    return WriteOp(mid, WriteBody(text, (), {}, None, None))


@pytest.mark.asyncio
@pytest.mark.parametrize("level", [Level.SESSION, Level.STRONG], ids=lambda lv: lv.label)
async def test_a_write_the_session_already_followed_is_refused(node: Node, level: Level) -> None:
    c = node.coordinator
    [second] = await c.write("ns", [put("two")], level, None, None, by=WriteSeq("s1", 2))
    assert second.error is None and second.result is not None
    assert second.result.record.writer == "s1" and second.result.record.writer_seq == 2
    [late, other] = await c.write("ns", [put("one"), put("b", "b")], level, None, None,
                                  by=WriteSeq("s1", 1))
    assert isinstance(late.error, Superseded)
    assert other.error is None  # the batch's other key is written
    [again] = await c.write("ns", [put("two again")], level, None, None, by=WriteSeq("s1", 2))
    assert again.error is None  # a retry with the same number is the same write: allowed
    [foreign] = await c.write("ns", [put("x")], level, None, None, by=WriteSeq("s2", 1))
    assert foreign.error is None
    rec, _, _ = await c.get("ns", "a", Level.SESSION, None)
    assert rec is not None and rec.content == "x"


@pytest.mark.asyncio
async def test_replicas_keep_the_later_write_whichever_arrives_first(node: Node) -> None:
    early = Record("ns", "a", Version(5_000, "n2"), content="one", writer="s1", writer_seq=1)
    late = Record("ns", "a", Version(1_000, "n3"), content="two", writer="s1", writer_seq=2)
    await node.replicator.apply_local([late])
    [applied] = await node.replicator.apply_local([early])
    stored = node.store.get("ns", "a")
    assert stored is not None and stored.content == "two"
    assert stored.version == Version(5_001, "n3") and applied.new == stored
    await node.replicator.apply_local([early, late])  # again, either way round: nothing moves
    assert node.store.get("ns", "a") == stored


@pytest.mark.asyncio
async def test_a_read_never_answers_the_session_with_its_own_earlier_write(node: Node) -> None:
    tok = SessionToken(8)
    tok.wrote("ns/a", Version(1_000, "n3"), WriteSeq("s1", 2))  # acknowledged elsewhere
    early = Record("ns", "a", Version(5_000, "n2"), content="one", writer="s1", writer_seq=1)
    await node.replicator.apply_local([early])  # the only owner holds only the earlier write
    with pytest.raises(SessionUnavailable):
        await node.coordinator.get("ns", "a", Level.SESSION, tok)
    other = SessionToken(8)
    other.observe("ns/a", Version(1_000, "n3"))  # a session that did not write it reads it
    rec, _, _ = await node.coordinator.get("ns", "a", Level.SESSION, other)
    assert rec is not None and rec.content == "one"


@pytest.mark.asyncio
async def test_writes_follow_reads_a_write_is_ordered_after_what_the_session_read(
        node: Node) -> None:
    """Writes-follow-reads (Terry et al. 1994), per key: a session that read version v of a key
    (from another replica, stamped by a clock ahead of this coordinator's, within
    clock.max_offset) and then writes that key through a coordinator whose own copy is older
    gets a version after v: the token's floor is observed before the new version is minted."""
    now = node.hlc.now()
    await node.replicator.apply_local([Record("ns", "a", Version(now - 1, "n1"),
                                              content="older")])
    seen = Version(now + (400 << 16), "n9")  # what the session read elsewhere
    tok = SessionToken(8)
    tok.observe("ns/a", seen)
    [item] = await node.coordinator.write("ns", [put("after")], Level.SESSION, tok, None,
                                          by=WriteSeq("s1", 1))
    assert item.result is not None and item.result.record.version > seen


@pytest.mark.asyncio
async def test_two_records_of_one_version_end_the_same_whichever_came_first(
        node: Node) -> None:
    """Only restamps make two records of one version (two later writes of a session moved
    above the same earlier one by one node); replicas must keep the same one whatever the order
    of arrival, and a copy of the stored record arriving again changes nothing."""
    v = Version(9_000, "n3")
    three = Record("ns", "t", v, content="three", writer="s1", writer_seq=3)
    two = Record("ns", "t", v, content="two", writer="s1", writer_seq=2)
    await node.replicator.apply_local([two])
    [first] = await node.replicator.apply_local([three])
    assert first.outcome.name == "APPLIED" and node.store.get("ns", "t") == three
    [again] = await node.replicator.apply_local([three])
    assert again.outcome.name == "STALE"  # the same record again: nothing rewritten
    [lost] = await node.replicator.apply_local([two])
    assert lost.outcome.name == "STALE" and node.store.get("ns", "t") == three
