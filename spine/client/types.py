"""Typed shapes of the API's replies (DESIGN §11): TypedDicts, so a reply is still a plain dict;
a record reply is a `Reply` (a dict that also carries the ETag), a lease a `Lease` value."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, NotRequired, TypedDict, cast


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


@dataclass(frozen=True, slots=True)
class Change:
    """One item of the change feed (DESIGN §15): a key's `version` as of a write or a delete.
    `record` is the record as GET answers it, None when `deleted` (a delete or an expiry).
    `(id, version)` identifies a change: the feed may deliver one more than once."""

    id: str
    version: str
    deleted: bool
    record: Record | None

    @classmethod
    def from_body(cls, item: Any) -> Change:
        """The change in one item of a feed reply; ValueError if it is not one."""
        if not isinstance(item, dict):
            raise ValueError(f"not a change: {item!r}")
        mid, version, deleted = item.get("id"), item.get("version"), item.get("deleted")
        record = item.get("record")
        if (not isinstance(mid, str) or not isinstance(version, str)
                or not isinstance(deleted, bool)
                or not (record is None or isinstance(record, dict))):
            raise ValueError(f"not a change: {item!r}")
        return cls(mid, version, deleted, cast(Record, record) if record is not None else None)

    @property
    def key(self) -> tuple[str, str]:
        """`(id, version)`: what tells a redelivered change from a new one."""
        return self.id, self.version

    def public(self) -> dict[str, Any]:
        """The JSON shape (as the server sends it)."""
        return {"id": self.id, "version": self.version, "deleted": self.deleted,
                "record": self.record}


@dataclass(frozen=True, slots=True)
class ChangesPage:
    """One reply of the change feed: the changes after the cursor sent (possibly none) and the
    cursor to send next. The cursor is opaque and valid at any node."""

    items: list[Change]
    cursor: str

    @classmethod
    def from_body(cls, body: Any) -> ChangesPage:
        """The page in a feed reply; ValueError if the body is not one."""
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            raise ValueError(f"not a change feed reply: {body!r}")
        cursor = body.get("cursor")
        if not isinstance(cursor, str) or not cursor:
            raise ValueError(f"change feed reply without a cursor: {body!r}")
        return cls([Change.from_body(i) for i in body["items"]], cursor)

    def public(self) -> dict[str, Any]:
        """The JSON shape (as the server sends it)."""
        return {"items": [c.public() for c in self.items], "cursor": self.cursor}
