"""Minting a key's next version: pure, so checked without a node."""

from __future__ import annotations

from spine.core.clock import Version
from spine.core.model import Record
from spine.core.requests import WriteOp
from spine.core.validation import WriteBody
from spine.core.versioning import mint, seen_hlc


def _body(content: str, tags: tuple[str, ...] = ()) -> WriteBody:
    return WriteBody(content=content, tags=tags, metadata={"k": 1}, agent_id=None, vector=None)


OLD = Record(namespace="ns", id="a", version=Version(100, "n2"), clock={"n2": 3},
             content="old", tags=("keep",), agent_id="bot", created_hlc=50)


def test_an_upsert_builds_on_the_old_clock_and_keeps_its_creation_time() -> None:
    rec = mint("ns", WriteOp("a", _body("new", ("t",))), OLD, b"\x00" * 4, hlc=200,
               node_id="n1", agent=None)
    assert rec.version == Version(200, "n1") and rec.clock == {"n2": 3, "n1": 1}
    assert rec.content == "new" and rec.tags == ("t",) and rec.metadata == {"k": 1}
    assert rec.created_hlc == 50 and not rec.deleted and rec.vector == b"\x00" * 4


def test_a_delete_is_a_tombstone_that_keeps_the_tags_and_agent() -> None:
    rec = mint("ns", WriteOp("a", None), OLD, None, hlc=201, node_id="n1", agent=None)
    assert rec.deleted and rec.content == "" and rec.tags == ("keep",) and rec.agent_id == "bot"
    assert rec.clock == {"n2": 3, "n1": 1}


def test_a_write_over_a_tombstone_or_nothing_is_created_now() -> None:
    tomb = mint("ns", WriteOp("a", None), OLD, None, hlc=201, node_id="n1", agent=None)
    again = mint("ns", WriteOp("a", _body("back")), tomb, None, hlc=300, node_id="n3",
                 agent="me")
    assert again.created_hlc == 300 and again.agent_id == "me"
    fresh = mint("ns", WriteOp("b", _body("x")), None, None, hlc=7, node_id="n1", agent=None)
    assert fresh.created_hlc == 7 and fresh.clock == {"n1": 1}


def test_a_given_clock_replaces_the_old_one() -> None:
    rec = mint("ns", WriteOp("a", _body("s")), OLD, None, hlc=9, node_id="n1", agent=None,
               clock={"n2": 5, "n3": 2})
    assert rec.clock == {"n2": 5, "n3": 2, "n1": 1}


def test_seen_hlc_is_the_newer_of_the_stored_version_and_the_session_floor() -> None:
    assert seen_hlc(None, None) == 0
    assert seen_hlc(OLD, None) == 100
    assert seen_hlc(OLD, Version(150, "n9")) == 150
    assert seen_hlc(None, Version(20, "n9")) == 20
