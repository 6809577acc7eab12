"""Typed shapes of the API's replies (DESIGN §11): TypedDicts, so a reply is still a plain dict;
a record reply is a `Reply` (a dict that also carries the ETag), a lease a `Lease` value."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NotRequired, TypedDict


class Reply(dict[str, Any]):
    """A single-record reply (put, get, delete): the JSON object as a dict, plus `etag` (the
    reply's `ETag` header) and `version` (the bare version, what `if_match=` takes), so that
    `client.put(ns, id, text, if_match=client.get(ns, id))` reads naturally."""

    def __init__(self, body: dict[str, Any], *, etag: str | None = None) -> None:
        super().__init__(body)
        version = body.get("version")
        self.etag: str | None = etag or (f'"{version}"' if isinstance(version, str) else None)

    @property
    def version(self) -> str | None:
        """The record's version: the body's, else the ETag without its quotes."""
        v = self.get("version")
        if isinstance(v, str):
            return v
        if self.etag is None:
            return None
        tag = self.etag.removeprefix("W/")
        return tag[1:-1] if len(tag) >= 2 and tag[0] == tag[-1] == '"' else tag

    @property
    def deduplicated(self) -> bool:
        """True when a create with `dedup` was answered with an existing memory (DESIGN §13)."""
        return self.get("deduplicated") is True


class Record(TypedDict):
    """A memory as the API returns it (`vector` only when asked for)."""

    namespace: str
    id: str
    content: str
    tags: list[str]
    metadata: dict[str, Any]
    agent_id: str | None
    created_at: str
    updated_at: str
    version: str
    deleted: bool
    expires_at: str | None  # RFC 3339; None: never (DESIGN §13)
    vector: NotRequired[list[float]]
    deduplicated: NotRequired[bool]  # a create with dedup: an existing memory was answered


class Deleted(TypedDict):
    """The reply to a delete."""

    id: str
    version: str
    deleted: bool


class History(TypedDict):
    """Versions kept for a key, newest first (concurrent losers included)."""

    versions: list[Record]


class Page(TypedDict):
    """One page of a list; `next_cursor` is None on the last page."""

    items: list[Record]
    next_cursor: str | None


class SearchHit(TypedDict):
    """One search result; `scores` holds the vector and keyword scores of the rankings that
    found it (DESIGN §14)."""

    id: str
    score: float
    scores: NotRequired[dict[str, float]]
    record: Record


class SearchResult(TypedDict):
    """A search reply; `partial` when some shards had no answering replica."""

    results: list[SearchHit]
    partial: bool
    missing_shards: list[int]


class BatchItemResult(TypedDict):
    """The outcome of one batch item, in the order sent."""

    id: str
    status: int
    version: NotRequired[str]
    error: NotRequired[dict[str, Any]]


class BatchResult(TypedDict):
    """A batch reply: one result per item."""

    results: list[BatchItemResult]


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease as the API answers it (DESIGN §12). `holder` is None when it is free (released
    or expired); `token` is the fencing token of the last grant; `remaining_ms` the time left by
    the answering node's clock (a holder must not rely on it: see `Client.lease`)."""

    name: str
    holder: str | None
    token: int
    ttl_ms: int
    remaining_ms: int

    @property
    def fence(self) -> tuple[str, int]:
        """`(name, token)`: what `fence=` takes (sent as `Spine-Fence: name=token`)."""
        return self.name, self.token

    @classmethod
    def from_body(cls, body: Any, name: str) -> Lease:
        """The lease in a reply body (`name` when the body has none). ValueError if the body is
        not a lease."""
        if not isinstance(body, dict):
            raise ValueError(f"not a lease reply: {body!r}")
        holder = body.get("holder")
        try:
            return cls(str(body.get("name") or name), None if holder is None else str(holder),
                       _int(body["token"]), _int(body.get("ttl_ms", 0)),
                       _int(body.get("remaining_ms", 0)))
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a lease reply: {body!r}") from e

    def public(self) -> dict[str, Any]:
        """The JSON shape (as the server sends it)."""
        return asdict(self)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r} is not an integer")
    return value
