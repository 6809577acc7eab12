"""The OpenAPI 3.1 document served at /openapi.json (DESIGN §11).

The document is built from the node's limits and vector dimension, so every schema is exactly as
strict as the server's validation (`spine.core.validation`): a request the schema allows is one
the server accepts, and one it forbids the server refuses with a 4xx. schemathesis checks both
directions in `make test` (tests/integration/test_schemathesis.py); a change to validation that
is not mirrored here fails that test.
"""

from __future__ import annotations

from typing import Any

from spine.api import coordination as coord
from spine.core import validation as v
from spine.core.conditions import LEASE_NAME_RE
from spine.core.config import FeedSection

SESSION_FORMAT = "spine-session"
"""The `format` of the Spine-Session header: an opaque token this API handed out earlier."""
ETAG_FORMAT = "spine-etag"
"""The `format` of the If-Match header: a quoted version, as ETag gives it (the pattern says it
too; the format lets a generator that keeps header values to letters and digits draw one)."""
FENCE_FORMAT = "spine-fence"
"""The `format` of the Spine-Fence header: `<lease>=<token>` (with its pattern, as for ETags)."""

CURSOR_FORMAT = "spine-cursor"
"""The `format` of a change-feed cursor (query `cursor`, header `Last-Event-ID`): opaque
base64url text this API returned; a random string of that alphabet is not one (400)."""

FLOAT32_MAX = 3.4e38
_TINY = 1e-30  # a component this large survives float32 and normalisation (validation.vector)

_ERR = {"$ref": "#/components/schemas/Error"}
_REC = {"$ref": "#/components/schemas/Record"}
_WRITE = {"$ref": "#/components/schemas/WriteBody"}


def _pattern(regex: str) -> str:
    return f"^{regex}$"


_NS = {"name": "ns", "in": "path", "required": True,
       "schema": {"type": "string", "pattern": _pattern(v.NAMESPACE_RE.pattern)}}
_ID = {"name": "id", "in": "path", "required": True,
       "schema": {"type": "string", "pattern": _pattern(v.ID_RE.pattern)}}
_CONSISTENCY = {"name": "Spine-Consistency", "in": "header", "required": False,
                "schema": {"type": "string", "enum": ["eventual", "session", "strong"]}}
_SESSION = {"name": "Spine-Session", "in": "header", "required": False,
            "description": "a token from an earlier reply's Spine-Session header",
            "schema": {"type": "string", "format": SESSION_FORMAT}}
_HEADERS = [_CONSISTENCY, _SESSION]
_INCLUDE_VECTOR = {"name": "include_vector", "in": "query", "required": False,
                   "schema": {"type": "string", "enum": ["true", "false", "1", "0"]}}
_TAG = {"type": "string", "pattern": _pattern(v.TAG_RE.pattern)}
_AGENT = {"type": "string", "pattern": _pattern(v.AGENT_RE.pattern)}
_SECURED: list[dict[str, list[str]]] = [{"bearer": []}]
# DESIGN §12: the conditions of a single-key write, and the ETag every single-key reply carries.
_IF_MATCH = {"name": "If-Match", "in": "header", "required": False,
             "description": "write only if the key's current version is this ETag (else 412)",
             "schema": {"type": "string", "format": ETAG_FORMAT,
                        "pattern": _pattern(coord.IF_MATCH_RE.pattern)}}
_IF_NONE_MATCH = {"name": "If-None-Match", "in": "header", "required": False,
                  "description": "*: create only (412 when a live record exists)",
                  "schema": {"type": "string", "enum": ["*"]}}
_FENCE = {"name": "Spine-Fence", "in": "header", "required": False,
          "description": "<lease>=<token>: refused (409 fenced) once the key has accepted a"
                         " higher token of that lease",
          "schema": {"type": "string", "format": FENCE_FORMAT,
                     "pattern": _pattern(coord.FENCE_RE.pattern)}}
_ETAG = {"ETag": {"description": "the record's version, quoted", "required": True,
                  "schema": {"type": "string", "pattern": r'^"[0-9a-f]{16}\.[^"]+"$'}}}
_LEASE_NAME = {"name": "name", "in": "path", "required": True,
               "schema": {"type": "string", "pattern": _pattern(LEASE_NAME_RE.pattern)}}
_RELEASE_TOKEN = {"name": "token", "in": "query", "required": True,
                  "description": "the lease's current fencing token",
                  "schema": {"type": "integer", "minimum": 1, "maximum": coord.MAX_API_TOKEN}}

# A cursor is opaque: no pattern or length is given, since text of the right alphabet and size
# is still not a cursor (400); the format lets a test generator draw real ones.
_CURSOR_SCHEMA = {"type": "string", "format": CURSOR_FORMAT,
                  "description": "opaque base64url text this API returned (at most 4 KiB)"}


def _feed_params(feed: FeedSection) -> list[dict[str, Any]]:
    """The change feed's query (DESIGN §15) as this node's `feed` settings bound it. The query
    is one form-exploded object so that the schema can say `cursor` and `from` exclude each
    other; consistency and session headers are ignored there, so not declared."""
    query = {
        "cursor": {**_CURSOR_SCHEMA,
                   "description": "resume after this cursor (a reply's `cursor`, an event's"
                                  " `id`); absent: from the beginning (every key's latest"
                                  " change)"},
        "from": {"type": "string", "enum": ["now"],
                 "description": "now: only changes made after this request (not with cursor)"},
        "limit": {"type": "integer", "minimum": 1, "maximum": feed.max_limit,
                  "description": "changes per reply (default 100)"},
        "wait_s": {"type": "number", "minimum": 0, "maximum": feed.max_wait_s,
                   "description": "when nothing is new, wait up to this many seconds for a"
                                  " change (default 0)"},
    }
    return [
        {"name": "feed", "in": "query", "required": False, "style": "form", "explode": True,
         "description": "the query parameters cursor, from, limit and wait_s",
         "schema": {"type": "object", "properties": query, "additionalProperties": False,
                    "not": {"required": ["cursor", "from"]}}},
        {"name": "Last-Event-ID", "in": "header", "required": False,
         "description": "server-sent events: resume after this event id (a cursor), as an"
                        " EventSource sends it on reconnecting",
         "schema": _CURSOR_SCHEMA},
    ]


_SSE = {"type": "string",
        "description": "with Accept: text/event-stream: events `change` whose data is one item"
                       " (JSON) and whose last of each batch carries `id: <cursor>`;"
                       " `: keep-alive` comments between batches"}


def _resp(desc: str, schema: dict[str, Any] | None = None,
          media: str = "application/json", headers: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    out: dict[str, Any] = {"description": desc}
    if schema is not None:
        out["content"] = {media: {"schema": schema}}
    if headers is not None:
        out["headers"] = headers
    return out


_AUTH = {
    "401": _resp("missing or unknown API key", _ERR),
    "403": _resp("the key may not use this namespace or route", _ERR),
    "429": _resp("overloaded or rate-limited; retry after Retry-After seconds", _ERR),
}
_READ_ERRORS = {
    "400": _resp("invalid input (the field is named)", _ERR),
    **_AUTH,
    "503": _resp("quorum_unavailable, session_unavailable or storage_failed", _ERR),
    "504": _resp("timeout", _ERR),
}
_WRITE_ERRORS = {
    **_READ_ERRORS,
    "408": _resp("the request body did not arrive in time", _ERR),
    "413": _resp("a field or the body is past its limit", _ERR),
    "507": _resp("insufficient_storage, or too_many_namespaces", _ERR),
}
_CONDITION_ERRORS = {
    "409": _resp("fenced: a Spine-Fence token below one the key accepted", _ERR),
    "412": _resp("precondition_failed: If-Match / If-None-Match does not hold; `current` is"
                 " the key's version (null: no live record)", _ERR),
}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _obj(props: dict[str, Any], required: list[str] | None = None,
         closed: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        out["required"] = required
    if closed:
        out["additionalProperties"] = False
    return out


def _vector(dim: int) -> dict[str, Any]:
    """`dim` finite float32 numbers, not all (float32) zero: what validation.vector accepts."""
    return {"type": "array", "minItems": dim, "maxItems": dim,
            "items": {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX},
            "contains": {"anyOf": [{"type": "number", "minimum": _TINY},
                                   {"type": "number", "maximum": -_TINY}]}}


def _schemas(dim: int, limits: v.Limits, max_lease_ttl_ms: int) -> dict[str, Any]:
    # Content is bounded in UTF-8 bytes and JSON Schema counts characters: the two agree on
    # ASCII, and non-ASCII text reaches the byte limit (413) sooner.
    content = {"type": "string", "maxLength": limits.content_bytes,
               "description": f"<= {limits.content_bytes} bytes of UTF-8"}
    tags = {"type": "array", "maxItems": limits.max_tags, "items": _TAG}
    metadata = {"type": "object",
                "description": f"<= {limits.metadata_bytes} bytes encoded, "
                               f"<= {v.MAX_METADATA_DEPTH} levels deep"}
    write_props = {"content": content, "tags": tags, "metadata": metadata,
                   "vector": {"anyOf": [_vector(dim), {"type": "null"}]},
                   "agent_id": {"anyOf": [_AGENT, {"type": "null"}]},
                   # DESIGN §13: whole seconds (5.0 is 5); null: the tags' default, else never
                   "ttl_s": {"anyOf": [{"type": "integer", "minimum": 1,
                                        "maximum": limits.max_ttl_s}, {"type": "null"}]}}
    record_props = {
        "namespace": {"type": "string"}, "id": {"type": "string"}, "content": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string"}}, "metadata": {"type": "object"},
        "agent_id": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "version": {"type": "string"}, "deleted": {"type": "boolean"},
        "expires_at": {"type": ["string", "null"], "format": "date-time"},
        "vector": {"type": ["array", "null"], "items": {"type": "number"}},
    }
    missing = {"type": "array", "items": {"type": "integer"}}
    dedup = {"description": "DESIGN §13: \"exact\" (content-derived id, create only) or"
                            " {min_score, tags_all?, agent_id?} (semantic, best effort)",
             "oneOf": [{"type": "string", "enum": ["exact"]}, _obj({
                 "min_score": {"type": "number", "minimum": 0, "maximum": 1},
                 "tags_all": tags, "agent_id": {"anyOf": [_AGENT, {"type": "null"}]}},
                 ["min_score"])]}
    return {
        "Error": _obj({"error": _obj({"code": {"type": "string"}, "message": {"type": "string"},
                                      "field": {"type": "string"}},
                                     ["code", "message"], closed=False)},
                      ["error"], closed=False),
        "WriteBody": _obj(write_props, ["content"]),
        # POST only: a PUT names its id, which dedup would contradict (400 there)
        "CreateBody": _obj({**write_props, "dedup": dedup}, ["content"]),
        "Created": {"allOf": [_REC, _obj({"deduplicated": {"type": "boolean"}}, closed=False)]},
        "BatchItem": {"oneOf": [
            _obj({"id": _ID["schema"], **write_props}, ["id", "content"]),
            _obj({"id": _ID["schema"], "delete": {"const": True}}, ["id", "delete"]),
        ]},
        "Record": _obj(record_props, list(record_props)[:-1], closed=False),
        "Deleted": _obj({"id": {"type": "string"}, "version": {"type": "string"},
                         "deleted": {"const": True}}, ["id", "version", "deleted"]),
        "History": _obj({"versions": {"type": "array", "items": {"allOf": [_REC, _obj(
            {"concurrent": {"type": "boolean"}}, ["concurrent"], closed=False)]}}},
            ["versions"]),
        "Page": _obj({"items": {"type": "array", "items": _REC},
                      "next_cursor": {"type": ["string", "null"]},
                      "partial": {"type": "boolean"}, "missing_shards": missing},
                     ["items", "next_cursor"], closed=False),
        "BatchResults": _obj({"results": {"type": "array", "items": _obj(
            {"id": {"type": "string"}, "status": {"type": "integer"},
             "version": {"type": "string"}, "error": {"type": "object"}},
            ["id", "status"], closed=False)}}, ["results"]),
        "SearchBody": {**_obj({
            # a letter or digit: the hash embedder finds no word in punctuation alone (minilm
            # would take any non-blank query; the document keeps the stricter rule for both)
            "query": {"anyOf": [{"type": "string", "pattern": r"[^\W_]",
                                 "maxLength": limits.content_bytes}, {"type": "null"}]},
            "vector": {"anyOf": [_vector(dim), {"type": "null"}]},
            "k": {"type": "integer", "minimum": 1, "maximum": limits.max_k},
            "tags_all": tags, "tags_any": tags,
            "agent_id": {"anyOf": [_AGENT, {"type": "null"}]},
            "metadata": {"anyOf": [metadata, {"type": "null"}]},
            "min_score": {"type": ["number", "null"]},
            # DESIGN §14: the default is hybrid for text (vector with min_score), vector for a
            # vector; keyword takes text only and no min_score (it bounds a similarity)
            "mode": {"enum": ["vector", "keyword", "hybrid", None]},
            # DESIGN §13: score = (1 - weight) * score + weight * 0.5 ** (age_s / half_life_s)
            "recency": {"anyOf": [_obj({
                "half_life_s": {"type": "number", "exclusiveMinimum": 0},
                "weight": {"type": "number", "minimum": 0, "maximum": 1}},
                ["half_life_s", "weight"]), {"type": "null"}]}}),
            # query, vector or both (hybrid only), a null counting as absent
            "anyOf": [
                {"required": ["query"], "properties": {
                    "query": {"type": "string"}, "vector": {"type": "null"},
                    "mode": {"enum": ["vector", "hybrid", None]}}},
                {"required": ["query", "mode"], "properties": {
                    "query": {"type": "string"}, "vector": {"type": "null"},
                    "mode": {"const": "keyword"}, "min_score": {"type": "null"}}},
                {"required": ["vector"], "properties": {
                    "vector": {"type": "array"}, "query": {"type": "null"},
                    "mode": {"enum": ["vector", None]}}},
                {"required": ["query", "vector"], "properties": {
                    "query": {"type": "string"}, "vector": {"type": "array"},
                    "mode": {"enum": ["hybrid", None]}}}]},
        "SearchResults": _obj({"results": {"type": "array", "items": _obj(
            {"id": {"type": "string"}, "score": {"type": "number"},
             "scores": _obj({"vector": {"type": "number"}, "keyword": {"type": "number"}}),
             "record": _REC},
            ["id", "score", "record"], closed=False)},
            "partial": {"type": "boolean"}, "missing_shards": missing},
            ["results"], closed=False),
        # DESIGN §15: `record` is what GET answers for the key, null for a delete or expiry
        "Change": _obj({"id": {"type": "string"}, "version": {"type": "string"},
                        "deleted": {"type": "boolean"},
                        "record": {"anyOf": [_REC, {"type": "null"}]}},
                       ["id", "version", "deleted", "record"], closed=False),
        "Changes": _obj({"items": {"type": "array", "items": _ref("Change")},
                         "cursor": _CURSOR_SCHEMA}, ["items", "cursor"], closed=False),
        "Status": _obj({"status": {"type": "string"}, "node": {"type": "string"}},
                       ["status"], closed=False),
        "LeaseRequest": _obj({
            "holder": {"type": "string", "pattern": _pattern(coord.HOLDER_RE.pattern)},
            "ttl_ms": {"type": "integer", "minimum": 1, "maximum": max_lease_ttl_ms}},
            ["holder", "ttl_ms"]),
        "Lease": _obj({"name": {"type": "string"}, "holder": {"type": ["string", "null"]},
                       "token": {"type": "integer"}, "ttl_ms": {"type": "integer"},
                       "remaining_ms": {"type": "integer"}},
                      ["name", "holder", "token", "ttl_ms", "remaining_ms"]),
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _paths(limits: v.Limits, feed: FeedSection) -> dict[str, Any]:
    query = [
        {"name": "tag", "in": "query", "schema": _TAG},
        {"name": "agent_id", "in": "query", "schema": _AGENT},
        {"name": "limit", "in": "query",
         "schema": {"type": "integer", "minimum": 1, "maximum": limits.list_limit}},
        {"name": "cursor", "in": "query", "schema": _ID["schema"]},
    ]
    found = _resp("not found (or deleted)", _ERR)
    return {
        "/v1/ns/{ns}/memories/{id}": {
            "parameters": [_NS, _ID],
            "put": {"summary": "Create or replace a memory (conditionally with If-Match,"
                               " If-None-Match or Spine-Fence)", "requestBody": _body(_WRITE),
                    "parameters": [*_HEADERS, _INCLUDE_VECTOR, _IF_MATCH, _IF_NONE_MATCH, _FENCE],
                    "responses": {"200": _resp("replaced", _REC, headers=_ETAG),
                                  "201": _resp("created", _REC, headers=_ETAG),
                                  **_WRITE_ERRORS, **_CONDITION_ERRORS}},
            "get": {"summary": "Read a memory", "parameters": [*_HEADERS, _INCLUDE_VECTOR],
                    "responses": {"200": _resp("the record", _REC, headers=_ETAG),
                                  "404": found, **_READ_ERRORS}},
            "delete": {"summary": "Delete a memory (tombstone; conditionally with If-Match or"
                                  " Spine-Fence)", "parameters": [*_HEADERS, _IF_MATCH, _FENCE],
                       "responses": {"200": _resp("deleted", _ref("Deleted"), headers=_ETAG),
                                     **_WRITE_ERRORS, **_CONDITION_ERRORS}},
        },
        "/v1/ns/{ns}/memories/{id}/history": {
            "parameters": [_NS, _ID],
            "get": {"summary": "Versions kept, newest first, concurrent losers included",
                    "responses": {"200": _resp("versions", _ref("History")),
                                  "404": _resp("no version of this key", _ERR),
                                  **_READ_ERRORS}},
        },
        "/v1/ns/{ns}/memories": {
            "parameters": [_NS],
            "post": {"summary": "Create a memory with a minted id, or with dedup a content-derived"
                                " id (exact) or none when a near-duplicate exists (semantic)",
                     "requestBody": _body(_ref("CreateBody")), "parameters": _HEADERS,
                     "responses": {"201": _resp("created", _ref("Created"), headers=_ETAG),
                                   "200": _resp("dedup: the existing memory, deduplicated: true",
                                                _ref("Created"), headers=_ETAG),
                                   "409": _resp("conflict: an exact-dedup id kept changing under"
                                                " the create; retry", _ERR),
                                   **_WRITE_ERRORS}},
            "get": {"summary": "List live records, paged", "parameters": query,
                    "responses": {"200": _resp("a page", _ref("Page")), **_READ_ERRORS}},
        },
        "/v1/ns/{ns}/memories/_batch": {
            "parameters": [_NS, *_HEADERS],
            "post": {"summary": "Up to limits.batch_items upserts/deletes in one call",
                     "requestBody": _body(_obj({"items": {
                         "type": "array", "minItems": 1, "maxItems": limits.batch_items,
                         "items": _ref("BatchItem")}}, ["items"])),
                     "responses": {"200": _resp("one result per item", _ref("BatchResults")),
                                   **_WRITE_ERRORS}},
        },
        "/v1/ns/{ns}/search": {
            "parameters": [_NS, *_HEADERS],
            "post": {"summary": "Vector, keyword (BM25) or hybrid search with filters",
                     "requestBody": _body(_ref("SearchBody")),
                     "responses": {"200": _resp("results", _ref("SearchResults")),
                                   "408": _WRITE_ERRORS["408"], "413": _WRITE_ERRORS["413"],
                                   **_READ_ERRORS}},
        },
        "/v1/ns/{ns}/changes": {
            "parameters": [_NS],
            "get": {"summary": "The change feed: writes, deletes and expiries after a cursor,"
                               " long-polled (wait_s) or as server-sent events",
                    "description": "Every acknowledged write and delete after the cursor is"
                                   " delivered at least once, unless a newer version of the"
                                   " same key is delivered after it; per key, delivered"
                                   " versions only increase. The cursor is valid at any node;"
                                   " (id, version) identifies a change (duplicates possible).",
                    "parameters": _feed_params(feed),
                    "responses": {
                        "200": {"description": "the changes after the cursor (maybe none) and"
                                               " the cursor to send next",
                                "content": {"application/json": {"schema": _ref("Changes")},
                                            "text/event-stream": {"schema": _SSE}}},
                        **_READ_ERRORS,
                        "400": _resp("invalid: `cursor` (or Last-Event-ID) malformed, `limit`,"
                                     " `wait_s`, or a cursor with from=now", _ERR),
                        "410": _resp("cursor_expired: older than the tombstone grace (deletes"
                                     " after it may be purged); start again", _ERR),
                        "503": _resp("this node cannot serve the feed now; another may", _ERR)}},
        },
        "/v1/ns/{ns}/leases/{name}": {
            "parameters": [_NS, _LEASE_NAME],
            "post": {"summary": "Acquire or renew a lease with a fencing token",
                     "requestBody": _body(_ref("LeaseRequest")),
                     "responses": {"200": _resp("granted or renewed", _ref("Lease")),
                                   "409": _resp("lease_held: another holder has it (`holder`,"
                                                " `remaining_ms`, `token`)", _ERR),
                                   **_WRITE_ERRORS}},
            "get": {"summary": "Read a lease (holder null when free)",
                    "responses": {"200": _resp("the lease", _ref("Lease")),
                                  "404": _resp("never granted", _ERR), **_READ_ERRORS}},
            "delete": {"summary": "Release a lease if the token is current",
                       "parameters": [_RELEASE_TOKEN],
                       "responses": {"200": _resp("released (holder null)", _ref("Lease")),
                                     "404": _resp("never granted", _ERR),
                                     "409": _resp("conflict: the token is not current", _ERR),
                                     **_READ_ERRORS}},
        },
        "/v1/cluster": {"get": {"summary": "This node's view of the cluster",
                                "responses": {"200": _resp("view", {"type": "object"}),
                                              **_AUTH}}},
        "/v1/cluster/shards": {"get": {"summary": "Every shard's owners and transfers",
                                       "responses": {"200": _resp("shards", {"type": "object"}),
                                                     **_AUTH}}},
        "/v1/cluster/nodes/{node}/{action}": {
            "post": {"summary": "decommission or remove a node (admin)",
                     "parameters": [
                         {"name": "node", "in": "path", "required": True,
                          "schema": {"type": "string"}},
                         {"name": "action", "in": "path", "required": True,
                          "schema": {"type": "string", "enum": ["decommission", "remove"]}},
                     ],
                     "responses": {"202": _resp("accepted", {"type": "object"}),
                                   "400": _READ_ERRORS["400"], "404": found,
                                   "409": _resp("the ring cannot change that way now", _ERR),
                                   **_AUTH, "503": _READ_ERRORS["503"]}},
        },
        "/healthz": {"get": {"summary": "Liveness", "security": [],
                             "responses": {"200": _resp("ok", _ref("Status")),
                                           "429": _AUTH["429"]}}},
        "/readyz": {"get": {"summary": "Readiness", "security": [],
                            "responses": {"200": _resp("ready", _ref("Status")),
                                          "429": _AUTH["429"],
                                          "503": _resp("not ready", _ERR)}}},
        "/metrics": {"get": {"summary": "Prometheus metrics",
                             "responses": {"200": _resp("text exposition format",
                                                        {"type": "string"}, "text/plain"),
                                           **_AUTH}}},
        "/openapi.json": {"get": {"summary": "This document",
                                  "responses": {"200": _resp("OpenAPI 3.1", {"type": "object"}),
                                                **_AUTH}}},
    }


def openapi_document(dim: int, limits: v.Limits, max_lease_ttl_ms: int = 600_000,
                     feed: FeedSection | None = None) -> dict[str, Any]:
    """The API document for a node with vectors of `dim`, these validation limits, this
    longest lease (`paxos.max_lease_ttl_ms`) and these change-feed bounds (`feed`)."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "Spine", "version": "1",
                 "description": "A clustered memory store for fleets of AI agents."},
        "security": _SECURED,
        "paths": _paths(limits, feed or FeedSection()),
        "components": {
            "schemas": _schemas(dim, limits, max_lease_ttl_ms),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


OPENAPI: dict[str, Any] = openapi_document(384, v.Limits())
"""The document with the default settings (embedder.dim 384, default limits)."""
