"""spine.api.dedup: the exact-dedup id and its normalisation, `dedup` validation, and the create
flows over a fake handler host (no sockets): a 412 answers the record read at strong level, an
unknown outcome is retried, a record gone since the round is created again, a semantic hit
writes nothing."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from spine.api import dedup
from spine.core import validation as v
from spine.core.clock import Version
from spine.core.conditions import Condition
from spine.core.consistency import Level
from spine.core.errors import Conflict, InvalidInput, PreconditionFailed, Timeout, TooLarge
from spine.core.model import Record
from spine.core.requests import ItemResult, WriteOp, WriteResult
from spine.core.session import HEADER as SESSION
from spine.core.session import SessionToken

# Per-request notes (level, coordinator) use str keys, as in spine.api.http.
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")

LIMITS = v.Limits()

# ------------------------------------------------------------------ the id


def test_normalisation_collapses_whitespace_and_composes_but_keeps_case() -> None:
    assert dedup.normalise_content("  a\tb \n\n c  ") == "a b c"
    assert dedup.normalise_content("a\u00a0\u2003b") == "a b"  # Unicode spaces are whitespace
    assert dedup.normalise_content("cafe\u0301") == "caf\u00e9"  # NFC: one text, two encodings
    assert dedup.normalise_content("US") != dedup.normalise_content("us")
    assert dedup.normalise_content("x\u00b2") == "x\u00b2"  # not NFKC: x² is not x2
    assert dedup.normalise_content("") == ""


def test_exact_id_is_a_valid_stable_content_hash() -> None:
    mid = dedup.exact_id("team", "Deploy freeze starts Friday")
    assert mid.startswith("sha256-") and len(mid) == len("sha256-") + 32
    assert v.ID_RE.fullmatch(mid)
    assert v.memory_id(mid) == mid
    # pinned: nodes of every release must derive the same id for the same fact
    assert mid == "sha256-" + hashlib.sha256(
        b"spine-dedup-exact-v1\x00team\x00Deploy freeze starts Friday").hexdigest()[:32]
    assert dedup.exact_id("team", " Deploy  freeze\nstarts Friday\t") == mid
    assert dedup.exact_id("team", "deploy freeze starts friday") != mid  # case kept
    assert dedup.exact_id("other", "Deploy freeze starts Friday") != mid  # per namespace
    assert dedup.exact_id("team", "caf\u00e9") == dedup.exact_id("team", "cafe\u0301")


def test_namespace_and_content_do_not_run_together() -> None:
    assert dedup.exact_id("ab", "c") != dedup.exact_id("a", "bc")


# ------------------------------------------------------------------ validation


def test_parse_exact_and_semantic() -> None:
    assert dedup.parse("exact", LIMITS) == dedup.Exact()
    assert dedup.parse({"min_score": 1}, LIMITS) == dedup.Semantic(1.0)
    assert dedup.parse({"min_score": 0}, LIMITS) == dedup.Semantic(0.0)
    got = dedup.parse({"min_score": 0.8, "tags_all": ["b", "a", "b"], "agent_id": "x@y"}, LIMITS)
    assert got == dedup.Semantic(0.8, ("a", "b"), "x@y")
    assert dedup.parse({"min_score": 0.5, "agent_id": None}, LIMITS) == dedup.Semantic(0.5)


@pytest.mark.parametrize(("value", "field"), [
    ("fuzzy", "dedup"), ("EXACT", "dedup"), (None, "dedup"), (True, "dedup"), (0.9, "dedup"),
    (["exact"], "dedup"),
    ({}, "dedup.min_score"), ({"min_score": None}, "dedup.min_score"),
    ({"min_score": "0.9"}, "dedup.min_score"), ({"min_score": True}, "dedup.min_score"),
    ({"min_score": 1.0000001}, "dedup.min_score"), ({"min_score": -0.01}, "dedup.min_score"),
    ({"min_score": float("nan")}, "dedup.min_score"),
    ({"min_score": float("inf")}, "dedup.min_score"),
    ({"min_score": 0.5, "k": 2}, "dedup.k"),
    ({"min_score": 0.5, "tags_all": "a"}, "dedup.tags_all"),
    ({"min_score": 0.5, "tags_all": ["Bad Tag"]}, "dedup.tags_all[0]"),
    ({"min_score": 0.5, "agent_id": "-bad"}, "dedup.agent_id"),
])
def test_parse_refuses_naming_the_field(value: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as e:
        dedup.parse(value, LIMITS)
    assert e.value.field == field


def test_too_many_scope_tags_is_too_large() -> None:
    with pytest.raises(TooLarge) as e:
        dedup.parse({"min_score": 0.5, "tags_all": [f"t{i}" for i in range(33)]}, LIMITS)
    assert e.value.field == "dedup.tags_all"


def test_take_leaves_the_body_for_write_body() -> None:
    body = {"content": "x", "dedup": "exact"}
    spec, rest = dedup.take(body, LIMITS)
    assert spec == dedup.Exact() and rest == {"content": "x"}
    assert body == {"content": "x", "dedup": "exact"}  # the caller's object is not changed
    assert dedup.take({"content": "x"}, LIMITS) == (None, {"content": "x"})
    assert dedup.take([1], LIMITS) == (None, [1])  # not an object: write_body refuses it


def test_dedup_on_put_is_refused() -> None:
    assert dedup.refuse_on_put({"content": "x"}) == {"content": "x"}
    with pytest.raises(InvalidInput) as e:
        dedup.refuse_on_put({"content": "x", "dedup": "exact"})
    assert e.value.field == "dedup"


def _body(content: str = "some fact", vector: list[float] | None = None) -> v.WriteBody:
    return v.WriteBody(content, (), {}, None, vector)


def test_search_request_uses_the_vector_else_the_content() -> None:
    spec = dedup.Semantic(0.7, ("a",), "bot")
    assert dedup.search_request(_body(), spec) == {
        "mode": "vector", "k": 1, "min_score": 0.7, "query": "some fact", "tags_all": ["a"],
        "agent_id": "bot"}
    got = dedup.search_request(_body(vector=[1.0, 0.0]), dedup.Semantic(0.7))
    assert got == {"mode": "vector", "k": 1, "min_score": 0.7, "vector": [1.0, 0.0]}
    assert dedup.search_request(_body("  \n"), spec) is None  # nothing to compare


def test_best_hit_needs_a_live_record_at_the_score() -> None:
    rec = {"id": "m1", "deleted": False, "version": "0" * 16 + ".n1"}
    assert dedup.best_hit({"results": [{"score": 0.9, "record": rec}]}, 0.9) == rec
    assert dedup.best_hit({"results": [{"score": 0.89, "record": rec}]}, 0.9) is None
    assert dedup.best_hit({"results": [{"score": 1.0, "record": {**rec, "deleted": True}}]},
                          0.5) is None
    assert dedup.best_hit({"results": [], "partial": True}, 0.5) is None


# ------------------------------------------------------------------ the flows


def _record(mid: str, content: str, hlc: int = 1 << 20) -> Record:
    return Record("ns", mid, Version(hlc, "n2"), content=content, created_hlc=hlc)


class FakeCoordinator:
    def __init__(self, reads: list[Record | None]) -> None:
        self.reads = reads
        self.got: list[tuple[str, str, Level | None]] = []

    async def get(self, ns: str, mid: str, level: Level | None,
                  token: SessionToken | None) -> tuple[Record | None, Level, str]:
        self.got.append((ns, mid, level))
        return self.reads.pop(0), Level.STRONG, "n3"


class FakeServices:
    session_max_keys = 64

    def __init__(self, search_answer: Any = None, search_error: Exception | None = None) -> None:
        self.search_answer = search_answer
        self.search_error = search_error
        self.searched: list[dict[str, Any]] = []
        self.search = self._search

    async def _search(self, ns: str, body: dict[str, Any], token: SessionToken | None,
                      level: Level | None) -> Any:
        self.searched.append(body)
        if self.search_error is not None:
            raise self.search_error
        return self.search_answer

    def mint_id(self) -> str:
        return "minted-1"


class FakeHost:
    """The create handler's side of `dedup.CreateHost`: writes answer from a script."""

    def __init__(self, outcomes: list[Record | Exception], reads: list[Record | None],
                 svc: FakeServices | None = None) -> None:
        self.outcomes = outcomes
        self.writes: list[tuple[WriteOp, Condition | None]] = []
        self.c = FakeCoordinator(reads)
        self.svc = svc or FakeServices()

    async def _write_one(self, request: web.Request, ns: str, op: WriteOp,
                         cond: Condition | None = None) -> tuple[ItemResult, SessionToken]:
        self.writes.append((op, cond))
        out = self.outcomes.pop(0)
        if isinstance(out, Exception):
            raise out
        return (ItemResult(op.id, WriteResult(out, True, Level.STRONG)),
                SessionToken(self.svc.session_max_keys))

    def _reply(self, request: web.Request, data: Any, token: SessionToken, status: int = 200,
               record: Record | None = None) -> web.Response:
        headers = {SESSION: token.encode()}
        if record is not None:
            headers["ETag"] = f'"{record.version.encode()}"'
        return web.Response(status=status, body=orjson.dumps(data), headers=headers)

    def _session(self, token: SessionToken | None) -> SessionToken:
        return token if token is not None else SessionToken(self.svc.session_max_keys)


def _request() -> web.Request:
    return make_mocked_request("POST", "/v1/ns/ns/memories")


def _json(resp: web.Response) -> Any:
    assert isinstance(resp.body, bytes)
    return orjson.loads(resp.body)


CREATE_ONLY = Condition(if_none_match=True)


@pytest.mark.asyncio
async def test_exact_creates_only_if_absent() -> None:
    mid = dedup.exact_id("ns", "some fact")
    host = FakeHost([_record(mid, "some fact")], [])
    resp = await dedup.create(host, _request(), "ns", _body(), dedup.Exact())
    assert resp.status == 201
    assert _json(resp)["id"] == mid and _json(resp)["deduplicated"] is False
    assert [(op.id, cond) for op, cond in host.writes] == [(mid, CREATE_ONLY)]


@pytest.mark.asyncio
async def test_exact_answers_the_existing_record_read_strong() -> None:
    mid = dedup.exact_id("ns", "some fact")
    existing = _record(mid, "Some  fact", hlc=7 << 20)
    host = FakeHost([PreconditionFailed("exists", current=existing.version.encode())],
                    [existing])
    req = _request()
    resp = await dedup.create(host, req, "ns", _body(), dedup.Exact())
    assert resp.status == 200
    data = _json(resp)
    assert data["deduplicated"] is True and data["version"] == existing.version.encode()
    assert data["content"] == "Some  fact"  # the stored one, not the caller's
    assert host.c.got == [("ns", mid, Level.STRONG)]
    assert resp.headers["ETag"] == f'"{existing.version.encode()}"'
    token = SessionToken.decode(resp.headers[SESSION], 64)
    assert token.floor(f"ns/{mid}") == existing.version  # the session saw what it was answered
    assert req["level"] == "strong"


@pytest.mark.asyncio
async def test_exact_retries_an_unknown_outcome_and_a_vanished_record() -> None:
    mid = dedup.exact_id("ns", "some fact")
    winner = _record(mid, "some fact", hlc=9 << 20)
    # 504 (fate unknown), then 412 whose record was deleted by the read, then 412 with a record
    host = FakeHost([Timeout("unknown"), PreconditionFailed("exists"),
                     PreconditionFailed("exists")],
                    [Record("ns", mid, Version(8 << 20, "n1"), deleted=True), winner])
    resp = await dedup.create(host, _request(), "ns", _body(), dedup.Exact())
    assert resp.status == 200 and _json(resp)["version"] == winner.version.encode()
    assert len(host.writes) == 3 and all(c == CREATE_ONLY for _, c in host.writes)


@pytest.mark.asyncio
async def test_exact_gives_up_after_bounded_attempts() -> None:
    host = FakeHost([Timeout("unknown")] * dedup.ATTEMPTS, [])
    with pytest.raises(Timeout):  # still unknown: a 504, as one round's would be
        await dedup.create(host, _request(), "ns", _body(), dedup.Exact())
    assert len(host.writes) == dedup.ATTEMPTS
    gone = Record("ns", "x", Version(1 << 20, "n1"), deleted=True)
    host = FakeHost([PreconditionFailed("exists")] * dedup.ATTEMPTS, [gone] * dedup.ATTEMPTS)
    with pytest.raises(Conflict):  # deleted under it every time
        await dedup.create(host, _request(), "ns", _body(), dedup.Exact())
    assert len(host.writes) == dedup.ATTEMPTS


@pytest.mark.asyncio
async def test_semantic_hit_writes_nothing() -> None:
    rec = _record("m-old", "Some fact.").public()
    svc = FakeServices({"results": [{"id": "m-old", "score": 0.93, "record": rec}],
                        "partial": False, "missing_shards": []})
    host = FakeHost([], [], svc)
    resp = await dedup.create(host, _request(), "ns", _body(),
                              dedup.Semantic(0.9, ("a",), "bot"))
    assert resp.status == 200 and host.writes == []
    assert _json(resp) == {**rec, "deduplicated": True}
    assert resp.headers["ETag"] == f'"{rec["version"]}"'
    assert svc.searched == [{"mode": "vector", "k": 1, "min_score": 0.9, "query": "some fact",
                             "tags_all": ["a"], "agent_id": "bot"}]


@pytest.mark.asyncio
async def test_semantic_miss_creates_with_a_minted_id() -> None:
    rec = _record("m-old", "other").public()
    svc = FakeServices({"results": [{"id": "m-old", "score": 0.5, "record": rec}]})
    host = FakeHost([_record("minted-1", "some fact")], [], svc)
    resp = await dedup.create(host, _request(), "ns", _body(), dedup.Semantic(0.9))
    assert resp.status == 201 and _json(resp)["deduplicated"] is False
    assert [(op.id, cond) for op, cond in host.writes] == [("minted-1", None)]


@pytest.mark.asyncio
async def test_semantic_content_without_words_is_created() -> None:
    svc = FakeServices(search_error=InvalidInput("no words", field="query"))
    host = FakeHost([_record("minted-1", "!!!")], [], svc)
    resp = await dedup.create(host, _request(), "ns", _body("!!!"), dedup.Semantic(0.9))
    assert resp.status == 201
    svc.search_error = InvalidInput("bad filter", field="tags_all")
    with pytest.raises(InvalidInput):  # any other refusal of the search is the caller's to see
        await dedup.create(host, _request(), "ns", _body("!!!"), dedup.Semantic(0.9))
