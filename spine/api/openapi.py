"""The OpenAPI 3.1 document served at /openapi.json (DESIGN §11).

Every request and reply body is a `$ref` to a schema generated from the structs of
`spine.core.bodies`, the types the server decodes request bodies with, bound by this node's
limits and vector dimension: a request the document allows is one the server accepts, and one it
forbids the server refuses with a 4xx. Paths, parameters and headers are written here, from the
same patterns the handlers match. schemathesis checks both directions in `make test`
(tests/integration/test_schemathesis.py), and tests/unit/test_cli_api_docs.py checks the paths
against the router.
"""

from __future__ import annotations

from typing import Any

from spine.api import coordination as coord
from spine.core import bodies
from spine.core import validation as v
from spine.core.conditions import LEASE_NAME_RE
from spine.core.config import FeedSection
from spine.core.consistency import Level

SESSION_FORMAT = "spine-session"
"""The `format` of the Spine-Session header: an opaque token this API handed out earlier."""
ETAG_FORMAT = "spine-etag"
"""The `format` of the If-Match header: a quoted version, as ETag gives it (the pattern says it
too; the format lets a generator that keeps header values to letters and digits draw one)."""
FENCE_FORMAT = "spine-fence"
"""The `format` of the Spine-Fence header: `<lease>=<token>` (with its pattern, as for ETags)."""
WRITE_SEQ_FORMAT = "spine-write-seq"
"""The `format` of the Spine-Write-Seq header: `<writer>:<seq>` (with its pattern, as for ETags)."""
WRITE_SEQ_PATTERN = r"^[A-Za-z0-9._~-]{1,64}:[1-9][0-9]{0,14}$"

CURSOR_FORMAT = bodies.CURSOR_FORMAT
"""The `format` of a change-feed cursor (query `cursor`, header `Last-Event-ID`)."""

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
                "schema": {"type": "string", "enum": [lv.label for lv in Level]}}
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
# DESIGN §4: monotonic writes for a client that numbers its writes.
_WRITE_SEQ = {"name": "Spine-Write-Seq", "in": "header", "required": False,
              "description": "<writer>:<seq>: this client's number for the write; a later number"
                             " of the same writer always outranks an earlier one (409 superseded"
                             " when the earlier arrives after it)",
              "schema": {"type": "string", "format": WRITE_SEQ_FORMAT,
                         "pattern": WRITE_SEQ_PATTERN}}
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
    "409": _resp("fenced: a Spine-Fence token below one the key accepted; superseded: a"
                 " later Spine-Write-Seq of this writer is already there", _ERR),
    "412": _resp("precondition_failed: If-Match / If-None-Match does not hold; `current` is"
                 " the key's version (null: no live record)", _ERR),
}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


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
                    "parameters": [*_HEADERS, _INCLUDE_VECTOR, _IF_MATCH, _IF_NONE_MATCH, _FENCE,
                                   _WRITE_SEQ],
                    "responses": {"200": _resp("replaced", _REC, headers=_ETAG),
                                  "201": _resp("created", _REC, headers=_ETAG),
                                  **_WRITE_ERRORS, **_CONDITION_ERRORS}},
            "get": {"summary": "Read a memory", "parameters": [*_HEADERS, _INCLUDE_VECTOR],
                    "responses": {"200": _resp("the record", _REC, headers=_ETAG),
                                  "404": found, **_READ_ERRORS}},
            "delete": {"summary": "Delete a memory (tombstone; conditionally with If-Match or"
                                  " Spine-Fence)",
                       "parameters": [*_HEADERS, _IF_MATCH, _FENCE, _WRITE_SEQ],
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
            "parameters": [_NS, *_HEADERS, _WRITE_SEQ],
            "post": {"summary": "Up to limits.batch_items upserts/deletes in one call",
                     "requestBody": _body(_ref("BatchBody")),
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
            "schemas": bodies.schemas(limits, dim, max_lease_ttl_ms),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


OPENAPI: dict[str, Any] = openapi_document(384, v.Limits())
"""The document with the default settings (embedder.dim 384, default limits)."""
