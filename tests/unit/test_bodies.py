"""spine.core.bodies: one set of types decodes request bodies and gives /openapi.json its schemas.

The document and the server must agree in both directions: a body the document's schema allows
is one the server accepts, and one it forbids the server refuses naming the field. Here a corpus
of bodies is put through both (jsonschema on the served document; the server's own decoding and
second pass), and replies the server builds are converted into the reply structs whose schemas
the document carries. schemathesis does the same against a live cluster
(tests/integration/test_schemathesis.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jsonschema  # a dependency of openapi-spec-validator and schemathesis (dev)
import msgspec
import pytest
from openapi_spec_validator import validate

from spine.api import coordination as coord
from spine.api import decode
from spine.api.errors import error_body
from spine.api.openapi import openapi_document
from spine.cluster.search import Candidate, _result
from spine.core import replies as r
from spine.core import validation as v
from spine.core.clock import Version
from spine.core.errors import (
    InvalidInput,
    LeaseHeld,
    NotFound,
    PreconditionFailed,
    SpineError,
    TooLarge,
)
from spine.core.leases import LeaseView
from spine.core.model import Record

DIM = 4
LIM = v.Limits()
LEASE_TTL = 1000
DOC = openapi_document(DIM, LIM, LEASE_TTL)
VEC = [0.5, 0.0, -1.0, 2.0]


def _checker(component: str) -> jsonschema.Draft202012Validator:
    schema = {"$ref": f"#/components/schemas/{component}", "components": DOC["components"]}
    return jsonschema.Draft202012Validator(schema)


def _raw(body: Any) -> bytes:
    return json.dumps(body).encode()


def _put(raw: bytes) -> object:
    return decode.put_body(raw, LIM, DIM)


def _create(raw: bytes) -> object:
    return decode.create_body(raw, LIM, DIM)


def _batch(raw: bytes) -> object:
    return decode.batch_ops(raw, {}, LIM, DIM)


def _search(raw: bytes) -> object:
    return v.search_body(v.decode_search(raw, LIM, DIM), LIM, DIM)


def _lease(raw: bytes) -> object:
    return coord.lease_request(raw, LEASE_TTL)


WRITES_OK = [
    {"content": "x"},
    {"content": "", "tags": ["b", "a", "b"], "metadata": {"k": [1, None, {"x": 1.5}]}},
    {"content": "x", "vector": VEC, "agent_id": "bot@x", "ttl_s": 60},
    {"content": "x", "vector": None, "agent_id": None, "ttl_s": None},
    {"content": "x", "ttl_s": 5.0},  # JSON has one number type: 5.0 is 5, for both
    {"content": "x", "metadata": {"max": 2**64 - 1, "min": -(2**63)}},
]
WRITES_BAD = [
    [], "x", {}, {"tags": ["a"]}, {"content": 1}, {"content": None},
    {"content": "x", "colour": "blue"},
    {"content": "x", "tags": "a"}, {"content": "x", "tags": None}, {"content": "x", "tags": ["A"]},
    {"content": "x", "tags": [f"t{i}" for i in range(LIM.max_tags + 1)]},
    {"content": "x", "metadata": []}, {"content": "x", "metadata": None},
    {"content": "x", "metadata": {"n": 2**64}},  # past a stored integer
    {"content": "x", "metadata": {"f": 1e20}},  # the same range for every number
    {"content": "x", "vector": [1, 2, 3]}, {"content": "x", "vector": [0, 0, 0, 0]},
    {"content": "x", "vector": [1e39, 1, 1, 1]}, {"content": "x", "vector": [True, 1, 1, 1]},
    {"content": "x", "agent_id": "has space"}, {"content": "x", "agent_id": 5},
    {"content": "x", "ttl_s": 0}, {"content": "x", "ttl_s": 5.5}, {"content": "x", "ttl_s": "5"},
    {"content": "x", "ttl_s": LIM.max_ttl_s + 1},
    {"content": "x", "dedup": "exact"},  # POST only
]
CREATES_OK = [
    {"content": "x", "dedup": "exact"},
    {"content": "x", "dedup": {"min_score": 0.5, "tags_all": ["a"], "agent_id": None}},
]
CREATES_BAD = [
    {"content": "x", "dedup": None}, {"content": "x", "dedup": "fuzzy"},
    {"content": "x", "dedup": {}}, {"content": "x", "dedup": {"min_score": 1.5}},
    {"content": "x", "dedup": {"min_score": 0.5, "k": 1}},
]
BATCHES_OK = [
    {"items": [{"id": "a", "content": "x", "ttl_s": 9}, {"id": "b", "delete": True}]},
]
BATCHES_BAD = [
    {}, {"items": []}, {"items": None}, {"items": ["x"]}, {"items": [{"id": "a"}]},
    {"items": [{"content": "x"}]}, {"items": [{"id": "-a", "content": "x"}]},
    {"items": [{"id": "a", "delete": True, "content": "x"}]},
    {"items": [{"id": "a", "delete": False}]}, {"items": [{"id": "a", "delete": None}]},
    {"items": [{"id": "a", "content": "x", "if_match": "x"}]},
    {"items": [{"id": "a", "content": "x"}], "things": []},
    {"items": [{"id": f"i{i}", "content": "x"} for i in range(LIM.batch_items + 1)]},
]
SEARCHES_OK = [
    {"query": "hello"}, {"vector": VEC}, {"query": "hi", "vector": VEC},
    {"query": "hi", "mode": "keyword"}, {"query": "hi", "mode": "keyword", "min_score": None},
    {"query": "hi", "min_score": 0.5}, {"vector": VEC, "mode": "vector", "k": 5.0},
    {"query": "hi", "mode": "hybrid", "tags_all": ["a"], "tags_any": [], "metadata": {"k": 1}},
    {"query": "hi", "recency": {"half_life_s": 10, "weight": 0.5}, "agent_id": "a"},
    {"query": "hi", "metadata": None, "recency": None, "mode": None},
]
SEARCHES_BAD = [
    [], {}, {"query": None, "vector": None}, {"query": "!!!"}, {"query": "  "},
    {"query": "hi", "zzz": 1}, {"query": "hi", "k": 0}, {"query": "hi", "k": 1.5},
    {"query": "hi", "k": LIM.max_k + 1}, {"query": "hi", "k": None},
    {"query": "hi", "mode": "keyword", "min_score": 0.3},
    {"query": "x", "vector": VEC, "mode": "keyword"},
    {"query": "hi", "vector": VEC, "mode": "vector"}, {"vector": VEC, "mode": "hybrid"},
    {"vector": VEC, "mode": "keyword"}, {"query": "hi", "mode": "semantic"},
    {"query": "hi", "recency": {"half_life_s": 0, "weight": 0.5}},
    {"query": "hi", "recency": {"weight": 0.5}},
    {"query": "hi", "recency": {"half_life_s": 1, "weight": 2}},
    {"vector": [0, 0, 0, 0]}, {"query": "hi", "tags_all": ["UP"]},
]
LEASES_OK = [{"holder": "agent 7", "ttl_ms": 5}, {"holder": "a", "ttl_ms": float(LEASE_TTL)}]
LEASES_BAD = [
    [], {"holder": "a"}, {"ttl_ms": 5}, {"holder": "", "ttl_ms": 5}, {"holder": "é", "ttl_ms": 5},
    {"holder": "a", "ttl_ms": 0}, {"holder": "a", "ttl_ms": LEASE_TTL + 1},
    {"holder": "a", "ttl_ms": 1.5}, {"holder": "a", "ttl_ms": True},
    {"holder": "a", "ttl_ms": 5, "x": 1},
]
CORPUS: list[tuple[str, Callable[[bytes], object], Any, bool]] = [
    *[("WriteBody", _put, body, True) for body in WRITES_OK],
    *[("WriteBody", _put, body, False) for body in WRITES_BAD],
    *[("CreateBody", _create, body, True) for body in [*WRITES_OK, *CREATES_OK]],
    *[("CreateBody", _create, body, False) for body in [*WRITES_BAD[:-1], *CREATES_BAD]],
    *[("BatchBody", _batch, body, True) for body in BATCHES_OK],
    *[("BatchBody", _batch, body, False) for body in BATCHES_BAD],
    *[("SearchBody", _search, body, True) for body in SEARCHES_OK],
    *[("SearchBody", _search, body, False) for body in SEARCHES_BAD],
    *[("LeaseRequest", _lease, body, True) for body in LEASES_OK],
    *[("LeaseRequest", _lease, body, False) for body in LEASES_BAD],
]


@pytest.mark.parametrize(("component", "server", "body", "ok"), CORPUS,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CORPUS)])
def test_the_document_and_the_server_agree(component: str, server: Callable[[bytes], object],
                                           body: Any, ok: bool) -> None:
    errors = list(_checker(component).iter_errors(body))
    assert (not errors) == ok, [e.message for e in errors]
    if ok:
        server(_raw(body))
    else:
        with pytest.raises((InvalidInput, TooLarge)) as refused:
            server(_raw(body))
        assert refused.value.field, refused.value


def test_a_trailing_newline_is_not_a_tag() -> None:
    # Python's `$` matches before a final newline (jsonschema checks patterns with Python's re,
    # so it is checked here instead); the decoder's `\Z` does not, and the document says `$`,
    # which in ECMA 262 is the end of the text.
    with pytest.raises(InvalidInput) as refused:
        _put(_raw({"content": "x", "tags": ["a\n"]}))
    assert refused.value.field == "tags[0]"
    assert "\\Z" not in json.dumps(DOC)


@pytest.mark.parametrize(("raw", "error", "field"), [
    (b'{"content": "x",', InvalidInput, "body"),
    (b'{"content": "x", "vector": [NaN, 1, 1, 1]}', InvalidInput, "body"),
    (b'["content"]', InvalidInput, "body"),
    (b'{"tags": []}', InvalidInput, "content"),
    (b'{"content": "x", "colour": 1}', InvalidInput, "colour"),
    (b'{"content": "x", "tags": ["a", 7]}', InvalidInput, "tags[1]"),
    (b'{"content": "x", "vector": [1, 2, "3", 4]}', InvalidInput, "vector"),
    (b'{"content": "x", "vector": [1, 2, 3, 4, 5]}', InvalidInput, "vector"),
    (b'{"content": "' + b"x" * (LIM.content_bytes + 1) + b'"}', TooLarge, "content"),
    (b'{"content": "x", "tags": [' + b",".join(b'"t%d"' % i for i in range(33)) + b"]}",
     TooLarge, "tags"),
    (b'{"content": "x", "dedup": "exact"}', InvalidInput, "dedup"),
])
def test_a_put_refusal_names_the_field(raw: bytes, error: type[SpineError], field: str) -> None:
    with pytest.raises(error) as refused:
        _put(raw)
    assert type(refused.value) is error
    assert refused.value.field == field
    if field == "dedup":
        assert "POST" in refused.value.message


@pytest.mark.parametrize(("body", "error", "field"), [
    ({"items": [{"id": "a", "content": "ok"}, {"id": "b", "content": 3}]},
     InvalidInput, "items[1].content"),
    ({"items": [{"id": "a", "content": "x", "tags": ["ok", "UP"]}]}, InvalidInput,
     "items[0].tags[1]"),
    ({"items": [{"id": "a", "content": "x", "vector": [1, "x", 1, 1]}]}, InvalidInput,
     "items[0].vector"),
    ({"items": [{"id": "a", "content": "x", "vector": [0, 0, 0, 0]}]}, InvalidInput,
     "items[0].vector"),
    ({"items": [{"id": "a", "content": "x"}, "nope"]}, InvalidInput, "items[1]"),
    ({"items": [{"id": "a", "delete": True, "content": "x"}]}, InvalidInput, "items[0]"),
    ({"items": [{"id": "a", "content": "x", "delete": False}]}, InvalidInput, "items[0].delete"),
    ({"items": [{"id": "-a", "delete": True}]}, InvalidInput, "items[0].id"),
    ({"items": [{"id": "a", "content": "x", "fence": "l=1"}]}, InvalidInput, "items[0].fence"),
    ({"items": [{"id": "a", "delete": True, "if_match": "x"}]}, InvalidInput,
     "items[0].if_match"),
    ({"items": [], "things": []}, InvalidInput, "things"),
    ({"items": []}, InvalidInput, "items"),
    ({"items": [{"id": f"i{i}", "content": "x"} for i in range(1001)]}, TooLarge, "items"),
])
def test_a_batch_refusal_names_the_item_and_field(body: Any, error: type[SpineError],
                                                  field: str) -> None:
    with pytest.raises(error) as refused:
        _batch(_raw(body))
    assert refused.value.field == field
    if field.endswith(("fence", "if_match")):
        assert "one key at a time" in refused.value.message  # the API's own reason


def test_a_batch_decodes_in_order_with_deletes() -> None:
    ops = _batch(_raw({"items": [{"id": "a", "content": "x", "tags": ["b", "a", "b"]},
                                 {"id": "b", "delete": True}]}))
    assert isinstance(ops, list)
    assert [(op.id, op.body is None) for op in ops] == [("a", False), ("b", True)]
    assert ops[0].body.tags == ("a", "b")


def test_a_condition_header_on_a_batch_is_refused_before_the_items() -> None:
    with pytest.raises(InvalidInput) as refused:
        decode.batch_ops(_raw({"items": []}), {"If-Match": '"x"'}, LIM, DIM)
    assert refused.value.field == "If-Match"


@pytest.mark.parametrize(("body", "field"), [
    ({"query": "hi", "recency": {"half_life_s": 1}}, "recency.weight"),
    ({"query": "hi", "recency": {"half_life_s": 1, "weight": 1.5}}, "recency.weight"),
    ({"query": "hi", "tags_any": ["ok", "NO"]}, "tags_any[1]"),
    ({"vector": [1, 2, 3]}, "vector"),
    ({"query": "hi", "mode": "vector", "vector": VEC}, "query"),
    ({"query": "hi", "k": 2.5}, "k"),
])
def test_a_search_refusal_names_the_field(body: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        _search(_raw(body))
    assert refused.value.field == field


def test_whole_numbers_decode_as_ints() -> None:
    assert v.decode_write(_raw({"content": "x", "ttl_s": 5.0}), LIM, DIM).ttl_s == 5
    q = _search(_raw({"query": "hi", "k": 7.0}))
    assert isinstance(q, v.SearchQuery) and q.k == 7 and type(q.k) is int
    assert _lease(_raw({"holder": "a", "ttl_ms": 9.0})) == ("a", 9)


def test_the_bounds_come_from_the_configuration() -> None:
    lim = v.Limits(max_tags=2, content_bytes=10, max_k=7, batch_items=3, max_ttl_s=60)
    doc = openapi_document(3, lim, 500)
    validate(doc)
    s = doc["components"]["schemas"]
    write = s["WriteBody"]["properties"]
    assert write["tags"]["maxItems"] == 2 and write["content"]["maxLength"] == 10
    assert {"type": "integer", "minimum": 1, "maximum": 60} in write["ttl_s"]["anyOf"]
    assert write["vector"]["anyOf"][0]["minItems"] == write["vector"]["anyOf"][0]["maxItems"] == 3
    assert s["SearchBody"]["properties"]["k"]["maximum"] == 7
    assert s["BatchBody"]["properties"]["items"]["maxItems"] == 3
    assert s["LeaseRequest"]["properties"]["ttl_ms"]["maximum"] == 500
    with pytest.raises(TooLarge):
        v.decode_write(_raw({"content": "x", "tags": ["a", "b", "c"]}), lim, 3)
    with pytest.raises(InvalidInput):
        v.decode_write(_raw({"content": "x", "ttl_s": 61}), lim, 3)
    assert v.decode_write(_raw({"content": "x", "vector": [1, 2, 3]}), lim, 3).vector == [1, 2, 3]
    assert v.search_body(v.decode_search(b'{"query": "hi"}', lim, 3), lim, 3).k == 7  # not 10


def test_every_body_is_a_generated_component() -> None:
    schemas = DOC["components"]["schemas"]
    made = {t.__name__ for t in r.REPLIES} | {
        "WriteBody", "CreateBody", "BatchBody", "SearchBody", "LeaseRequest", "DedupSpec",
        "Recency"}
    for name in made:
        assert schemas[name]["title"] == name, name  # msgspec titles what it generates
    for path, ops in DOC["paths"].items():
        for method, op in ops.items():
            if method == "parameters":
                continue
            bodies = [op["requestBody"]] if "requestBody" in op else []
            bodies += list(op["responses"].values())
            for part in bodies:
                for media, content in part.get("content", {}).items():
                    schema = content["schema"]
                    if media == "application/json" and schema.get("type") != "object":
                        assert set(schema) == {"$ref"}, (path, method, schema)
                        assert schema["$ref"].rsplit("/", 1)[1] in schemas


# ------------------------------------------------------------------ replies


def _record(**kw: Any) -> Record:
    return Record("ns", "m1", Version(5 << 20, "n1"), content="c", tags=("a",),
                  metadata={"k": [1]}, agent_id="bot", created_hlc=4 << 20, **kw)


@pytest.mark.parametrize("reply", [
    _record().public(),
    _record(vector=b"\x00\x00\x80?" * 4).public(include_vector=True),
    _record(deleted=True, expires_hlc=9 << 20).public(),
    {**_record().public(), "deduplicated": True},
])
def test_a_record_reply_is_a_record(reply: dict[str, Any]) -> None:
    got = msgspec.convert(reply, r.Created)
    assert set(reply) <= set(r.Created.__struct_fields__)
    _checker("Created").validate(reply)
    _checker("Record").validate(reply)
    assert got.id == "m1"


def test_a_search_result_lease_and_error_are_their_replies() -> None:
    result = _result(Candidate(_record(), vector=0.9, keyword=None), 0.9)
    reply = {"results": [result], "partial": False, "missing_shards": []}
    msgspec.convert(reply, r.SearchResults)
    _checker("SearchResults").validate(reply)
    lease = LeaseView("l", None, 3, 1000, 0).public()
    msgspec.convert(lease, r.Lease)
    _checker("Lease").validate(lease)
    for err in (NotFound("gone", field="id"), LeaseHeld("held", holder="a", remaining_ms=5,
                                                         token=2),
                PreconditionFailed("no", current=None)):
        body = error_body(err)
        msgspec.convert(body, r.Error)
        _checker("Error").validate(body)
