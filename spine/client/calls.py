"""The API's routes as Call values (shared by the sync and async clients), and batch chunking."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from spine.client.base import BATCH_LIMIT, Call, ns_path
from spine.client.errors import BatchFailed


def put(ns: str, mid: str, content: str, fields: Mapping[str, Any]) -> Call:
    """PUT a memory (create or replace)."""
    return Call("PUT", ns_path(ns, "memories", mid), {"content": content, **fields})


def post_create(ns: str, content: str, fields: Mapping[str, Any]) -> Call:
    """POST: the server mints the id (never retried: a retry could create it twice)."""
    return Call("POST", ns_path(ns, "memories"), {"content": content, **fields}, idempotent=False)


def get(ns: str, mid: str, include_vector: bool) -> Call:
    """GET a memory."""
    return Call("GET", ns_path(ns, "memories", mid), params={"include_vector": include_vector})


def delete(ns: str, mid: str) -> Call:
    """DELETE a memory (a tombstone)."""
    return Call("DELETE", ns_path(ns, "memories", mid))


def history(ns: str, mid: str) -> Call:
    """GET a memory's kept versions."""
    return Call("GET", ns_path(ns, "memories", mid, "history"))


def list_page(ns: str, params: Mapping[str, Any]) -> Call:
    """GET one page of live memories."""
    return Call("GET", ns_path(ns, "memories"), params=dict(params))


def batch(ns: str, items: Sequence[Mapping[str, Any]]) -> Call:
    """POST one _batch (upserts and deletes by id are idempotent, so it may be retried)."""
    return Call("POST", ns_path(ns, "memories", "_batch"), {"items": list(items)},
                idempotent=True)


def search(ns: str, query: str | None, body: Mapping[str, Any]) -> Call:
    """POST a search (reads only: safe to retry)."""
    payload = dict(body)
    if query is not None:
        payload["query"] = query
    return Call("POST", ns_path(ns, "search"), payload, idempotent=True)


def chunks(items: Sequence[Mapping[str, Any]], size: int = BATCH_LIMIT
           ) -> Iterator[Sequence[Mapping[str, Any]]]:
    """`items` in slices the server accepts in one call."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def check(results: list[Any], raise_errors: bool) -> dict[str, Any]:
    """The combined reply; with `raise_errors`, BatchFailed if any item has no 2xx status."""
    if raise_errors:
        failures = [(i, r) for i, r in enumerate(results)
                    if not (isinstance(r, dict) and 200 <= int(r.get("status", 0)) < 300)]
        if failures:
            raise BatchFailed(failures, results)
    return {"results": results}
