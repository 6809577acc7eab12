"""The OpenAPI 3.1 document served at /openapi.json (DESIGN §11)."""

from __future__ import annotations

from typing import Any

_ERR = {"$ref": "#/components/schemas/Error"}
_NS = {"name": "ns", "in": "path", "required": True,
       "schema": {"type": "string", "pattern": "^[a-z0-9][a-z0-9_-]{0,63}$"}}
_ID = {"name": "id", "in": "path", "required": True,
       "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"}}
_HEADERS = [
    {"name": "Spine-Consistency", "in": "header", "required": False,
     "schema": {"type": "string", "enum": ["eventual", "session", "strong"]}},
    {"name": "Spine-Session", "in": "header", "required": False, "schema": {"type": "string"}},
]


def _resp(desc: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": desc}
    if schema is not None:
        out["content"] = {"application/json": {"schema": schema}}
    return out


_ERRORS = {
    "400": _resp("invalid input (the field is named)", _ERR),
    "401": _resp("missing or unknown API key", _ERR),
    "403": _resp("the key may not use this namespace", _ERR),
    "413": _resp("a field or the body is past its limit", _ERR),
    "429": _resp("overloaded; retry after Retry-After seconds", _ERR),
    "503": _resp("quorum_unavailable or session_unavailable", _ERR),
    "504": _resp("timeout", _ERR),
}
_REC = {"$ref": "#/components/schemas/Record"}
_WRITE = {"$ref": "#/components/schemas/WriteBody"}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Spine", "version": "1",
             "description": "A clustered memory store for fleets of AI agents."},
    "paths": {
        "/v1/ns/{ns}/memories/{id}": {
            "parameters": [_NS, _ID, *_HEADERS],
            "put": {"summary": "Create or replace a memory", "requestBody": _body(_WRITE),
                    "responses": {"200": _resp("replaced", _REC), "201": _resp("created", _REC),
                                  **_ERRORS}},
            "get": {"summary": "Read a memory",
                    "responses": {"200": _resp("the record", _REC),
                                  "404": _resp("not found (or deleted)", _ERR), **_ERRORS}},
            "delete": {"summary": "Delete a memory (tombstone)",
                       "responses": {"200": _resp("deleted", {"type": "object"}), **_ERRORS}},
        },
        "/v1/ns/{ns}/memories/{id}/history": {
            "parameters": [_NS, _ID],
            "get": {"summary": "Versions kept, newest first, concurrent losers included",
                    "responses": {"200": _resp("versions", {"type": "object"}), **_ERRORS}},
        },
        "/v1/ns/{ns}/memories": {
            "parameters": [_NS, *_HEADERS],
            "post": {"summary": "Create a memory with a minted id", "requestBody": _body(_WRITE),
                     "responses": {"201": _resp("created", _REC), **_ERRORS}},
            "get": {"summary": "List live records, paged",
                    "parameters": [
                        {"name": "tag", "in": "query", "schema": {"type": "string"}},
                        {"name": "agent_id", "in": "query", "schema": {"type": "string"}},
                        {"name": "limit", "in": "query",
                         "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                        {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {"200": _resp("a page", {"type": "object"}), **_ERRORS}},
        },
        "/v1/ns/{ns}/memories/_batch": {
            "parameters": [_NS, *_HEADERS],
            "post": {"summary": "Up to 1,000 upserts/deletes in one call",
                     "requestBody": _body({"type": "object", "required": ["items"],
                                           "properties": {"items": {"type": "array",
                                                                    "maxItems": 1000}}}),
                     "responses": {"200": _resp("one result per item", {"type": "object"}),
                                   **_ERRORS}},
        },
        "/v1/ns/{ns}/search": {
            "parameters": [_NS, *_HEADERS],
            "post": {"summary": "Semantic search with filters",
                     "requestBody": _body({"$ref": "#/components/schemas/SearchBody"}),
                     "responses": {"200": _resp("results", {"type": "object"}), **_ERRORS}},
        },
        "/v1/cluster": {"get": {"summary": "This node's view of the cluster",
                                "responses": {"200": _resp("view", {"type": "object"})}}},
        "/v1/cluster/shards": {"get": {"summary": "Every shard's owners and transfers",
                                       "responses": {"200": _resp("shards", {"type": "object"})}}},
        "/v1/cluster/nodes/{node}/{action}": {
            "post": {"summary": "decommission or remove a node (admin)",
                     "parameters": [
                         {"name": "node", "in": "path", "required": True,
                          "schema": {"type": "string"}},
                         {"name": "action", "in": "path", "required": True,
                          "schema": {"type": "string", "enum": ["decommission", "remove"]}},
                     ],
                     "responses": {"202": _resp("accepted", {"type": "object"}), **_ERRORS}},
        },
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _resp("ok")}}},
        "/readyz": {"get": {"summary": "Readiness",
                            "responses": {"200": _resp("ready"), "503": _resp("not ready")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": _resp("text")}}},
    },
    "components": {
        "schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {
                "type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                               "field": {"type": "string"}}}}},
            "WriteBody": {"type": "object", "additionalProperties": False, "required": ["content"],
                          "properties": {
                              "content": {"type": "string", "description": "<= 64 KiB UTF-8"},
                              "tags": {"type": "array", "maxItems": 32,
                                       "items": {"type": "string",
                                                 "pattern": "^[a-z0-9][a-z0-9:_.-]{0,63}$"}},
                              "metadata": {"type": "object", "description": "<= 16 KiB encoded"},
                              "vector": {"type": "array", "items": {"type": "number"}},
                              "agent_id": {"type": "string"}}},
            "Record": {"type": "object", "properties": {
                "namespace": {"type": "string"}, "id": {"type": "string"},
                "content": {"type": "string"}, "tags": {"type": "array",
                                                        "items": {"type": "string"}},
                "metadata": {"type": "object"}, "agent_id": {"type": ["string", "null"]},
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
                "version": {"type": "string"}, "deleted": {"type": "boolean"}}},
            "SearchBody": {"type": "object", "additionalProperties": False, "properties": {
                "query": {"type": "string"}, "vector": {"type": "array",
                                                        "items": {"type": "number"}},
                "k": {"type": "integer", "minimum": 1, "maximum": 1000},
                "tags_all": {"type": "array", "items": {"type": "string"}},
                "tags_any": {"type": "array", "items": {"type": "string"}},
                "agent_id": {"type": "string"}, "metadata": {"type": "object"},
                "min_score": {"type": "number"}}},
        },
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
    },
}
