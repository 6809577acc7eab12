"""The HTTP half of conditional writes and leases (spine.api.coordination, DESIGN §12): the
condition headers parsed or refused with a 400 naming the header, `_batch` refusing conditions,
lease bodies and release tokens, and the handlers' replies (ETag, 412/409 bodies) over a fake
coordinator and lease service, in process (no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any
from unittest import mock

import orjson
import pytest
from aiohttp import web
from aiohttp.streams import StreamReader
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from spine.api import coordination as coord
from spine.api.auth import Authenticator
from spine.api.http import Services, build_app
from spine.api.openapi import openapi_document
from spine.cluster.reads import Got
from spine.core.clock import Version
from spine.core.conditions import (
    Condition,
    Fence,
    condition_from_wire,
    condition_to_wire,
    etag,
)
from spine.core.consistency import Level
from spine.core.errors import (
    Conflict,
    Fenced,
    InvalidInput,
    LeaseHeld,
    NotFound,
    PreconditionFailed,
)
from spine.core.leases import LeaseView
from spine.core.metrics import SpineMetrics
from spine.core.model import Record
from spine.core.requests import ItemResult, WriteOp, WriteResult
from spine.core.session import SessionToken, WriteSeq
from spine.core.validation import Limits

# The handlers keep per-request facts under string keys (as every route of spine.api.http does).
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")

V1 = Version(0x01A236127B620000, "n1")
V2 = Version(0x01A236127B630000, "n2")


def _field(exc: pytest.ExceptionInfo[InvalidInput]) -> str | None:
    return exc.value.field


# ------------------------------------------------------------------ condition headers


def test_no_header_is_no_condition() -> None:
    for method in ("PUT", "DELETE", "POST"):
        assert not coord.condition_of({}, method)


def test_if_match_takes_the_etag_a_reply_gave() -> None:
    cond = coord.condition_of({"If-Match": etag(V1)}, "PUT")
    assert cond == Condition(if_match=V1)
    assert coord.condition_of({"If-Match": f"W/{etag(V2)}"}, "DELETE") == Condition(if_match=V2)


@pytest.mark.parametrize("raw", [
    V1.encode(),  # unquoted
    "*",
    f"{etag(V1)}, {etag(V2)}",  # a list
    '"01a236127b62000.n1"',  # 15 hex digits
    '"01A236127B620000.n1"',  # upper case is not what ETag gives
    '"01a236127b620000."',  # no node
    '"01a236127b620000"',
    '""',
    '"01a236127b620000.n\u00e91"',  # not ASCII
])
def test_a_malformed_if_match_is_a_400_naming_it(raw: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        coord.condition_of({"If-Match": raw}, "PUT")
    assert _field(exc) == "If-Match"


def test_if_none_match_is_star_on_put_only() -> None:
    assert coord.condition_of({"If-None-Match": "*"}, "PUT") == Condition(if_none_match=True)
    with pytest.raises(InvalidInput) as exc:
        coord.condition_of({"If-None-Match": etag(V1)}, "PUT")
    assert _field(exc) == "If-None-Match"
    with pytest.raises(InvalidInput) as exc:
        coord.condition_of({"If-None-Match": "*"}, "DELETE")
    assert _field(exc) == "If-None-Match"


def test_spine_fence_is_a_lease_name_and_a_positive_token() -> None:
    cond = coord.condition_of({"Spine-Fence": "task-42=7", "If-Match": etag(V1)}, "PUT")
    assert cond == Condition(if_match=V1, fence=Fence("task-42", 7))
    assert coord.condition_of({"Spine-Fence": "a=" + "9" * 18}, "DELETE").fence == Fence(
        "a", 10**18 - 1)


@pytest.mark.parametrize("raw", [
    "task-42", "task-42=", "=3", "task-42=0", "task-42=-1", "task-42=+3", "task-42=03",
    "task-42=1.5", "task 42=3", "-task=3", "a=" + "1" * 19, "task-42=3=4", "a=\u0663",
])
def test_a_malformed_spine_fence_is_a_400_naming_it(raw: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        coord.condition_of({"Spine-Fence": raw}, "PUT")
    assert _field(exc) == "Spine-Fence"


@pytest.mark.parametrize("header", coord.CONDITION_HEADERS)
def test_a_condition_header_sent_twice_is_a_400(header: str) -> None:
    value = {"If-Match": etag(V1), "If-None-Match": "*", "Spine-Fence": "a=1"}[header]
    twice = CIMultiDictProxy(CIMultiDict([(header, value), (header.lower(), value)]))
    with pytest.raises(InvalidInput) as exc:
        coord.condition_of(twice, "PUT")
    assert _field(exc) == header


@pytest.mark.parametrize("header", coord.CONDITION_HEADERS)
def test_post_takes_no_condition(header: str) -> None:
    value = {"If-Match": etag(V1), "If-None-Match": "*", "Spine-Fence": "a=1"}[header]
    with pytest.raises(InvalidInput) as exc:
        coord.condition_of({header: value}, "POST")
    assert _field(exc) == header


def _pattern(doc: dict[str, Any], path: str, method: str, name: str) -> str:
    for p in doc["paths"][path][method]["parameters"]:
        if p["name"] == name:
            pattern: str = p["schema"]["pattern"]
            return pattern
    raise AssertionError(f"{name} not declared on {method} {path}")


DOC = openapi_document(8, Limits())
MEMORY = "/v1/ns/{ns}/memories/{id}"


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_every_header_the_document_allows_is_accepted(data: st.DataObject) -> None:
    """The document's patterns and the parser agree: what schemathesis sends as a valid header
    is never a 400 (the other direction is the parametrized tests above)."""
    if_match = data.draw(st.from_regex(_pattern(DOC, MEMORY, "put", "If-Match"), fullmatch=True))
    fence = data.draw(st.from_regex(_pattern(DOC, MEMORY, "delete", "Spine-Fence"),
                                    fullmatch=True))
    cond = coord.condition_of({"If-Match": if_match, "Spine-Fence": fence}, "DELETE")
    assert cond.if_match is not None and cond.fence is not None
    assert etag(cond.if_match).strip('"') in if_match


# ------------------------------------------------------------------ batch, bodies, tokens


@pytest.mark.parametrize("header", coord.CONDITION_HEADERS)
def test_batch_refuses_condition_headers(header: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        coord.refuse_batch_conditions({header: "x"}, [{"id": "a", "content": "c"}])
    assert _field(exc) == header


@pytest.mark.parametrize("key", ["if_match", "if_none_match", "fence"])
def test_batch_refuses_items_with_conditions(key: str) -> None:
    items = [{"id": "a", "content": "c"}, "not an object", {"id": "b", "delete": True, key: 1}]
    with pytest.raises(InvalidInput) as exc:
        coord.refuse_batch_conditions({}, items)
    assert _field(exc) == f"items[2].{key}"
    coord.refuse_batch_conditions({}, items[:2])  # none: no error


@pytest.mark.parametrize("raw", [None, "", "abc", "0", "-1", "+5", "1_0", " 5", "05", "1.0",
                                 "\u0663", "1" * 19])
def test_a_release_token_must_be_a_positive_integer(raw: str | None) -> None:
    query = {} if raw is None else {"token": raw}
    with pytest.raises(InvalidInput) as exc:
        coord.release_token(query)
    assert _field(exc) == "token"


def test_a_release_token_parses() -> None:
    assert coord.release_token({"token": "7"}) == 7


@pytest.mark.parametrize(("body", "field"), [
    ([], "body"),
    ({"holder": "a", "ttl_ms": 5, "extra": 1}, "extra"),
    ({"ttl_ms": 5}, "holder"),
    ({"holder": "", "ttl_ms": 5}, "holder"),
    ({"holder": 3, "ttl_ms": 5}, "holder"),
    ({"holder": "agent\u00e9", "ttl_ms": 5}, "holder"),
    ({"holder": "a\nb", "ttl_ms": 5}, "holder"),
    ({"holder": "a" * 129, "ttl_ms": 5}, "holder"),
    ({"holder": "a"}, "ttl_ms"),
    ({"holder": "a", "ttl_ms": 0}, "ttl_ms"),
    ({"holder": "a", "ttl_ms": -5}, "ttl_ms"),
    ({"holder": "a", "ttl_ms": 1001}, "ttl_ms"),
    ({"holder": "a", "ttl_ms": True}, "ttl_ms"),
    ({"holder": "a", "ttl_ms": 5.5}, "ttl_ms"),
    ({"holder": "a", "ttl_ms": 1e300}, "ttl_ms"),
    ({"holder": "a", "ttl_ms": "5"}, "ttl_ms"),
])
def test_a_bad_lease_body_is_a_400_naming_the_field(body: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        coord.lease_request(body, 1000)
    assert _field(exc) == field


def test_a_lease_body_parses() -> None:
    assert coord.lease_request({"holder": "agent 7", "ttl_ms": 1000}, 1000) == ("agent 7", 1000)
    assert coord.lease_request({"holder": "a", "ttl_ms": 5.0}, 1000) == ("a", 5)  # JSON: 5.0 is 5


# ------------------------------------------------------------------ handlers, in process


def _record(mid: str, version: Version, deleted: bool = False) -> Record:
    return Record("demo", mid, version, content="" if deleted else "c", deleted=deleted)


class FakeCoordinator:
    """Records what the handlers asked for and answers what the test set."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, WriteOp, Condition | None]] = []
        self.answer: ItemResult | None = None
        self.stored: Record | None = None

    def _answer(self, op: WriteOp) -> ItemResult:
        if self.answer is not None:
            return self.answer
        return ItemResult(op.id, WriteResult(_record(op.id, V2, op.body is None), True,
                                             Level.STRONG, "n1"))

    async def write(self, ns: str, ops: list[WriteOp], requested: Level | None,
                    token: SessionToken | None, agent: str | None,
                    by: WriteSeq | None = None) -> list[ItemResult]:
        self.calls += [("write", op, None) for op in ops]
        return [self._answer(op) for op in ops]

    async def conditional(self, ns: str, op: WriteOp, cond: Condition,
                          token: SessionToken | None, agent: str | None,
                          by: WriteSeq | None = None) -> ItemResult:
        self.calls.append(("conditional", op, cond))
        return self._answer(op)

    async def get(self, ns: str, mid: str, requested: Level | None,
                  token: SessionToken | None) -> tuple[Record | None, Level, str]:
        return self.stored, Level.STRONG, "n1"

    async def read(self, ns: str, mid: str, requested: Level | None,
                   token: SessionToken | None) -> Got:
        return Got(self.stored, Level.STRONG, "n1")


class FakeLeases:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.error: Exception | None = None

    def _view(self, name: str, holder: str | None, token: int) -> LeaseView:
        if self.error is not None:
            raise self.error
        return LeaseView(name, holder, token, 1000, 1000 if holder else 0)

    async def acquire(self, ns: str, name: str, holder: str, ttl_ms: int) -> LeaseView:
        self.calls.append(("acquire", ns, name, holder, ttl_ms))
        return self._view(name, holder, 3)

    async def get(self, ns: str, name: str) -> LeaseView:
        self.calls.append(("get", ns, name))
        return self._view(name, "a", 3)

    async def release(self, ns: str, name: str, token: int) -> LeaseView:
        self.calls.append(("release", ns, name, token))
        return self._view(name, None, token)


class Api:
    def __init__(self) -> None:
        self.coordinator = FakeCoordinator()
        self.leases = FakeLeases()
        nothing: Any = None
        ticks = iter(float(t) for t in range(10**6))
        svc = Services(node_id="n1", coordinator=self.coordinator,  # type: ignore[arg-type]
                       fanout=nothing, metrics=SpineMetrics(), auth=Authenticator([]),
                       limits=Limits(), dim=8, session_max_keys=32, body_bytes=1 << 20,
                       max_inflight=4, cluster_view=dict, shards_view=dict,
                       readiness=lambda: None, mint_id=lambda: "minted",
                       clock=lambda: next(ticks), leases=self.leases,  # type: ignore[arg-type]
                       max_lease_ttl_ms=1000)
        self.app = build_app(svc)
        self.app.freeze()

    async def call(self, method: str, path: str, body: Any = None,
                   headers: Mapping[str, str] | None = None) -> tuple[int, Any, Mapping[str, str]]:
        hdrs = dict(headers or {})
        kw: dict[str, Any] = {}
        if body is not None:
            raw = orjson.dumps(body)
            reader = StreamReader(mock.Mock(_reading_paused=False), 2**16,
                                  loop=asyncio.get_running_loop())
            reader.feed_data(raw)
            reader.feed_eof()
            hdrs.update({"Content-Type": "application/json", "Content-Length": str(len(raw))})
            kw["payload"] = reader
        request = make_mocked_request(method, path, hdrs, app=self.app, **kw)
        resp = await self.app._handle(request)
        assert isinstance(resp, web.Response) and isinstance(resp.body, bytes)
        return resp.status, orjson.loads(resp.body), resp.headers


BODY = {"content": "c"}


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_a_plain_put_takes_the_quorum_path_and_answers_an_etag() -> None:
    api = Api()
    status, body, headers = await api.call("PUT", "/v1/ns/demo/memories/m1", BODY)
    assert status == 201, body
    assert headers["ETag"] == etag(V2) == f'"{body["version"]}"'
    assert [c[0] for c in api.coordinator.calls] == ["write"]


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_a_conditional_put_is_a_round_and_its_version_joins_the_session() -> None:
    api = Api()
    status, body, headers = await api.call(
        "PUT", "/v1/ns/demo/memories/m1", BODY,
        {"If-Match": etag(V1), "Spine-Fence": "task=2", "Spine-Consistency": "eventual"})
    assert status == 201, body
    assert headers["ETag"] == etag(V2)
    kind, op, cond = api.coordinator.calls[0]
    assert (kind, op.id, cond) == ("conditional", "m1",
                                   Condition(if_match=V1, fence=Fence("task", 2)))
    token = SessionToken.decode(headers["Spine-Session"], 32)
    assert token.floor("demo/m1") == V2


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_a_conditional_delete_and_its_refusals() -> None:
    api = Api()
    status, body, headers = await api.call("DELETE", "/v1/ns/demo/memories/m1",
                                           headers={"If-Match": etag(V1)})
    assert status == 200 and body["deleted"] is True, body
    assert headers["ETag"] == etag(V2)
    kind, op, cond = api.coordinator.calls[0]
    assert (kind, op.body, cond) == ("conditional", None, Condition(if_match=V1))
    status, body, _ = await api.call("DELETE", "/v1/ns/demo/memories/m1",
                                     headers={"If-None-Match": "*"})
    assert (status, body["error"]["field"]) == (400, "If-None-Match")
    assert len(api.coordinator.calls) == 1  # bad input never reaches the coordinator


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_412_and_409_fenced_bodies() -> None:
    api = Api()
    api.coordinator.answer = ItemResult("m1", error=PreconditionFailed("no", current=None))
    status, body, headers = await api.call("PUT", "/v1/ns/demo/memories/m1", BODY,
                                           {"If-None-Match": "*"})
    assert status == 412 and "ETag" not in headers
    assert body["error"] == {"code": "precondition_failed", "message": "no", "current": None}
    api.coordinator.answer = ItemResult("m1", error=PreconditionFailed("no", current="v"))
    status, body, _ = await api.call("PUT", "/v1/ns/demo/memories/m1", BODY,
                                     {"If-None-Match": "*"})
    assert (status, body["error"]["current"]) == (412, "v")
    api.coordinator.answer = ItemResult("m1", error=Fenced("low", lease="t", token=1, highest=2))
    status, body, _ = await api.call("PUT", "/v1/ns/demo/memories/m1", BODY,
                                     {"Spine-Fence": "t=1"})
    assert status == 409
    assert body["error"] == {"code": "fenced", "message": "low", "lease": "t", "token": 1,
                             "highest": 2}


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_get_and_create_answer_etags() -> None:
    api = Api()
    status, body, headers = await api.call("GET", "/v1/ns/demo/memories/m1")
    assert status == 404 and "ETag" not in headers, body
    api.coordinator.stored = _record("m1", V1)
    status, body, headers = await api.call("GET", "/v1/ns/demo/memories/m1")
    assert (status, headers["ETag"]) == (200, etag(V1)), body
    status, body, headers = await api.call("POST", "/v1/ns/demo/memories", BODY)
    assert (status, body["id"], headers["ETag"]) == (201, "minted", etag(V2))
    status, body, _ = await api.call("POST", "/v1/ns/demo/memories", BODY, {"If-None-Match": "*"})
    assert (status, body["error"]["field"]) == (400, "If-None-Match")


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_batch_with_a_condition_is_a_400_before_any_write() -> None:
    api = Api()
    items = {"items": [{"id": "a", "content": "c", "if_match": etag(V1)}]}
    status, body, _ = await api.call("POST", "/v1/ns/demo/memories/_batch", items)
    assert (status, body["error"]["field"]) == (400, "items[0].if_match")
    status, body, _ = await api.call("POST", "/v1/ns/demo/memories/_batch",
                                     {"items": [{"id": "a", "content": "c"}]},
                                     {"Spine-Fence": "t=1"})
    assert (status, body["error"]["field"]) == (400, "Spine-Fence")
    assert api.coordinator.calls == []


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_lease_routes() -> None:
    api = Api()
    status, body, _ = await api.call("POST", "/v1/ns/demo/leases/task-42",
                                     {"holder": "a", "ttl_ms": 1000})
    assert status == 200
    assert body == {"name": "task-42", "holder": "a", "token": 3, "ttl_ms": 1000,
                    "remaining_ms": 1000}
    status, body, _ = await api.call("GET", "/v1/ns/demo/leases/task-42")
    assert (status, body["holder"]) == (200, "a")
    status, body, _ = await api.call("DELETE", "/v1/ns/demo/leases/task-42?token=3")
    assert (status, body["holder"], body["token"]) == (200, None, 3)
    assert api.leases.calls == [("acquire", "demo", "task-42", "a", 1000),
                                ("get", "demo", "task-42"), ("release", "demo", "task-42", 3)]


@pytest.mark.asyncio
@pytest.mark.timeout(10)
async def test_lease_refusals() -> None:
    api = Api()
    for method, path, body, field in [
        ("POST", "/v1/ns/demo/leases/task-42", {"holder": "a", "ttl_ms": 1001}, "ttl_ms"),
        ("POST", "/v1/ns/demo/leases/task-42", {"ttl_ms": 5}, "holder"),
        ("POST", "/v1/ns/demo/leases/-bad", {"holder": "a", "ttl_ms": 5}, "name"),
        ("GET", "/v1/ns/demo/leases/-bad", None, "name"),
        ("DELETE", "/v1/ns/demo/leases/task-42", None, "token"),
        ("DELETE", "/v1/ns/demo/leases/task-42?token=x", None, "token"),
        ("POST", "/v1/ns/Demo/leases/task-42", {"holder": "a", "ttl_ms": 5}, "namespace"),
    ]:
        status, reply, _ = await api.call(method, path, body)
        assert (status, reply["error"].get("field")) == (400, field), (method, path, reply)
    assert api.leases.calls == []
    api.leases.error = LeaseHeld("held", holder="b", remaining_ms=900, token=4)
    status, reply, _ = await api.call("POST", "/v1/ns/demo/leases/t",
                                      {"holder": "a", "ttl_ms": 5})
    assert status == 409
    assert reply["error"] == {"code": "lease_held", "message": "held", "holder": "b",
                              "remaining_ms": 900, "token": 4}
    api.leases.error = Conflict("stale", field="token", token=4)
    status, reply, _ = await api.call("DELETE", "/v1/ns/demo/leases/t?token=3")
    assert (status, reply["error"]["code"], reply["error"]["field"]) == (409, "conflict", "token")
    api.leases.error = NotFound("no such lease")
    status, reply, _ = await api.call("GET", "/v1/ns/demo/leases/t")
    assert (status, reply["error"]["code"]) == (404, "not_found")


@pytest.mark.parametrize("cond", [
    Condition(if_match=Version(7, "n2")),
    Condition(if_none_match=True),
    Condition(if_match=Version(2**63, "n1"), fence=Fence("deploy.lock", 2**63 - 1)),
])
def test_a_condition_crosses_the_internal_wire_unchanged(cond: Condition) -> None:
    assert condition_from_wire(orjson.loads(orjson.dumps(condition_to_wire(cond)))) == cond


@pytest.mark.parametrize("wire", [
    None, [], [None, False, None],  # no condition at all is not a conditional write
    [None, "yes", None], ["not a version", False, None], ["0" * 16 + "." + "n" * 300, False, None],
    [7, False, None], [None, False, ["lock", 0]], [None, False, ["lock", 2**63]],
    [None, False, ["bad name!", 3]], [None, False, ["lock", True]], [None, False, ["lock"]],
    [None, True, None, "extra"],
])
def test_a_malformed_forwarded_condition_is_invalid_input_naming_it(wire: Any) -> None:
    with pytest.raises(InvalidInput) as e:
        condition_from_wire(wire)
    assert e.value.field == "condition"
