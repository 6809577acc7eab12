"""docs/api.md cannot drift silently: every route of the router, every header the API uses and
every error code with its status is in it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from spine.api.errors import STATUS
from spine.api.http import Services, build_app
from spine.core import errors as e
from spine.core.validation import SEARCH_FIELDS, Limits

DOC = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def _routes() -> set[tuple[str, str]]:
    """(method, path) of every route the public app registers."""
    nothing: Any = None
    svc = Services(node_id="n1", coordinator=nothing, fanout=nothing, metrics=nothing,
                   auth=nothing, limits=Limits(), dim=8, session_max_keys=32, body_bytes=1024,
                   max_inflight=1, cluster_view=dict, shards_view=dict,
                   readiness=lambda: None, mint_id=lambda: "x")
    app = build_app(svc)
    out = set()
    for route in app.router.routes():
        info = route.resource.canonical if route.resource is not None else ""
        if route.method not in ("HEAD", "*"):
            out.add((route.method, info))
    return out


def test_every_route_has_a_section_and_a_curl_example() -> None:
    routes = _routes()
    assert len(routes) >= 15  # the router was read, not an empty app
    headings = set(re.findall(r"^### (GET|PUT|POST|DELETE) (\S+)$", DOC, re.M))
    assert routes <= headings, f"routes missing from docs/api.md: {sorted(routes - headings)}"
    assert headings <= routes, f"docs/api.md has routes the router lacks: {headings - routes}"
    for method, path in routes:
        section = DOC.split(f"### {method} {path}\n", 1)[1].split("\n### ", 1)[0]
        assert "curl " in section, f"no curl example for {method} {path}"


def test_every_error_code_is_listed_with_its_status() -> None:
    for cls, status in STATUS.items():
        assert f"| {status} | `{cls.code}` |" in DOC, (cls.__name__, status)
    assert f"| 413 | `{e.FrameTooLarge.code}` |" in DOC
    assert "| 500 | `internal` |" in DOC


def test_headers_search_fields_and_batch_shapes_are_documented() -> None:
    for header in ("Authorization: Bearer", "Spine-Consistency", "Spine-Session",
                   "Spine-Coordinator", "Retry-After", "ETag"):
        assert header in DOC, header
    search = DOC.split("### POST /v1/ns/{ns}/search", 1)[1]
    for name in SEARCH_FIELDS:
        assert f"| `{name}` |" in search, name
    batch = DOC.split("### POST /v1/ns/{ns}/memories/_batch", 1)[1]
    assert '`{"id", "delete": true}`' in batch and '"results"' in batch


def test_the_readme_links_the_reference() -> None:
    assert "(docs/api.md)" in README


def test_openapi_document_matches_the_router_and_is_valid_openapi() -> None:
    from openapi_spec_validator import validate

    from spine.api.openapi import openapi_document

    doc = openapi_document(384, Limits())
    validate(doc)  # the OpenAPI 3.1 meta-schema
    declared = {(method.upper(), path) for path, ops in doc["paths"].items()
                for method in ops if method in ("get", "put", "post", "delete")}
    assert declared == _routes()
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http",
                                                             "scheme": "bearer"}
