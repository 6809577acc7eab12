"""The API's routes as Call values (shared by the sync and async clients), batch chunking, and
the headers of conditional and fenced writes (DESIGN §12)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from spine.client.base import BATCH_LIMIT, Call, ns_path
from spine.client.errors import BatchFailed

# What `if_match=` takes: a version string (bare, or quoted as ETag gives it), or anything
# carrying one: a record reply (`.version`, or a plain dict's "version"), a PreconditionFailed's
# `.current`.
VersionLike = Any
# What `fence=` takes: `(lease name, token)`, "name=token", or anything with `.name` and
# `.token` (a Lease, a held lease from Client.lease).
FenceLike = Any
# What `dedup=` takes (DESIGN §13): "exact", a score s in [0, 1], or {"min_score": s,
# "tags_all"?: [...], "agent_id"?: str}.
DedupLike = Any


def if_match_value(version: VersionLike) -> str:
    """The `If-Match` header for `version`: one quoted version. ValueError when it holds no
    usable version (what the server would refuse anyway, caught before sending)."""
    if not isinstance(version, str):
        v = getattr(version, "version", None)
        if v is None and isinstance(version, Mapping):
            v = version.get("version")
        if not isinstance(v, str):
            raise ValueError(f"if_match: {version!r} carries no version string")
        version = v
    text = version.strip()
    if len(text) >= 2 and text[0] == text[-1] == '"':
        text = text[1:-1]
    if not text or not text.isprintable() or '"' in text or not text.isascii():
        raise ValueError(f"if_match: {version!r} is not a version (as a record's version or"
                         " its ETag gives it)")
    return f'"{text}"'


def fence_value(fence: FenceLike) -> str:
    """The `Spine-Fence` header for `fence`: `name=token`. ValueError when it is not a lease
    name and a positive integer token."""
    if isinstance(fence, str):
        name, sep, tok = fence.strip().partition("=")
        if not sep or not tok.isdigit():
            raise ValueError(f"fence: {fence!r} is not name=token (e.g. task:42=7)")
        token: Any = int(tok)
    elif isinstance(fence, tuple) and len(fence) == 2:
        name, token = fence
    elif hasattr(fence, "name") and hasattr(fence, "token"):
        name, token = fence.name, fence.token
    else:
        raise ValueError(f"fence: {fence!r} is not (name, token), name=token or a lease")
    if not isinstance(name, str) or not name or "=" in name or not name.isprintable() or (
            any(c.isspace() for c in name)):
        raise ValueError(f"fence: {name!r} is not a lease name")
    if isinstance(token, bool) or not isinstance(token, int) or token <= 0:
        raise ValueError(f"fence: the token must be a positive integer, not {token!r}")
    return f"{name}={token}"


def condition_headers(if_match: VersionLike = None, if_none_match: bool = False,
                      fence: FenceLike = None) -> dict[str, str]:
    """The headers of a conditional and/or fenced write (empty for a plain one)."""
    headers: dict[str, str] = {}
    if if_match is not None:
        headers["If-Match"] = if_match_value(if_match)
    if if_none_match:
        headers["If-None-Match"] = "*"
    if fence is not None:
        headers["Spine-Fence"] = fence_value(fence)
    return headers


def _write(method: str, path: str, body: Any, headers: dict[str, str]) -> Call:
    # A conditional write is one consensus round whose outcome a 503/504 leaves unknown: it is
    # never repeated blindly (a repeat could fail its own condition, or apply twice), only
    # after a refusal that came before any work (Call.may_retry).
    if headers:
        return Call(method, path, body, idempotent=False, headers=headers)
    return Call(method, path, body)


def put(ns: str, mid: str, content: str, fields: Mapping[str, Any],
        headers: Mapping[str, str] | None = None) -> Call:
    """PUT a memory (create or replace), conditional or fenced when `headers` say so."""
    return _write("PUT", ns_path(ns, "memories", mid), {"content": content, **fields},
                  dict(headers or {}))


def dedup_value(dedup: DedupLike) -> str | dict[str, Any]:
    """The `dedup` field of a create (DESIGN §13): "exact", or `{"min_score": s, ...}` from such
    a dict or from a bare score `s` (the server checks s is in [0, 1] and names the field)."""
    if dedup == "exact":
        return "exact"
    if isinstance(dedup, int | float) and not isinstance(dedup, bool):
        return {"min_score": float(dedup)}
    if isinstance(dedup, Mapping):
        return dict(dedup)
    raise ValueError(f'dedup: {dedup!r} is not "exact", a score in [0, 1] or {{"min_score": s}}')


def post_create(ns: str, content: str, fields: Mapping[str, Any], dedup: DedupLike = None,
                mid: str | None = None) -> Call:
    """POST: the server mints the id (never retried: a retry could create it twice), or with
    `dedup` derives it from the content ("exact": create-only on that id, so a retry is safe
    and is made) or first looks for a near-duplicate (a score: not retried)."""
    body: dict[str, Any] = {"content": content, **fields}
    if dedup is None:
        return Call("POST", ns_path(ns, "memories"), body, idempotent=False)
    if mid is not None:
        raise ValueError("dedup chooses the id (exact derives it, a score may answer another"
                         " memory): pass no id")
    body["dedup"] = dedup_value(dedup)
    return Call("POST", ns_path(ns, "memories"), body, idempotent=body["dedup"] == "exact")


def get(ns: str, mid: str, include_vector: bool) -> Call:
    """GET a memory."""
    return Call("GET", ns_path(ns, "memories", mid), params={"include_vector": include_vector})


def delete(ns: str, mid: str, headers: Mapping[str, str] | None = None) -> Call:
    """DELETE a memory (a tombstone), conditional or fenced when `headers` say so."""
    return _write("DELETE", ns_path(ns, "memories", mid), None, dict(headers or {}))


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


def search(ns: str, query: str | None, body: Mapping[str, Any], mode: str | None = None,
           recency: Mapping[str, float] | None = None) -> Call:
    """POST a search (reads only: safe to retry)."""
    payload = dict(body)
    if query is not None:
        payload["query"] = query
    if mode is not None:
        payload["mode"] = mode
    if recency is not None:
        payload["recency"] = dict(recency)
    return Call("POST", ns_path(ns, "search"), payload, idempotent=True)


def changes(ns: str, cursor: str | None, from_now: bool, limit: int, wait_s: float) -> Call:
    """GET one page of the change feed (DESIGN §15): after `cursor`, else from now with
    `from_now`, else from the beginning. A read: safe to retry, at any node (a cursor is valid
    at every one). ValueError for a cursor and from_now together (they contradict)."""
    if cursor is not None and from_now:
        raise ValueError("changes: give a cursor or from_now, not both")
    params: dict[str, Any] = {"limit": limit, "wait_s": wait_s}
    if cursor is not None:
        params["cursor"] = cursor
    elif from_now:
        params["from"] = "now"
    return Call("GET", ns_path(ns, "changes"), params=params)


def lease_acquire(ns: str, name: str, holder: str, ttl_ms: int) -> Call:
    """POST a lease: grant or renew. Safe to repeat: by the same holder it renews (or, once
    lapsed, grants anew with a new token, which the reply carries)."""
    return Call("POST", ns_path(ns, "leases", name), {"holder": holder, "ttl_ms": ttl_ms},
                idempotent=True)


def lease_get(ns: str, name: str) -> Call:
    """GET a lease."""
    return Call("GET", ns_path(ns, "leases", name))


def lease_release(ns: str, name: str, token: int) -> Call:
    """DELETE a lease (release) if `token` is current."""
    return Call("DELETE", ns_path(ns, "leases", name), params={"token": token})


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
