"""The JSON replies of the HTTP API (DESIGN §11) as msgspec structs: `/openapi.json` takes their
schemas from here (`spine.core.bodies.schemas`), and tests/unit/test_bodies.py checks that what
the handlers answer converts into them. The requests are `spine.core.bodies`.
"""

from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

DateTime = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]


class Reply(Struct, kw_only=True):
    """A reply body: clients must ignore fields they do not know (the schemas stay open)."""


class ErrorDetail(Reply, kw_only=True):
    """What went wrong: a code clients branch on, a message, the field at fault, and the
    details of some codes (`current` of a 412, `holder` of a 409 lease_held, ...)."""

    code: str
    message: str
    field: str | UnsetType = UNSET


class Error(Reply, kw_only=True):
    """Every 4xx and 5xx body."""

    error: ErrorDetail


class Record(Reply, kw_only=True):
    """A memory as GET answers it (the vector only with include_vector)."""

    namespace: str
    id: str
    content: str
    tags: list[str]
    metadata: dict[str, Any]
    agent_id: str | None
    created_at: DateTime
    updated_at: DateTime
    version: str
    deleted: bool
    expires_at: Annotated[DateTime | None, Meta(extra_json_schema={"type": ["string", "null"]})]
    vector: list[float] | None = None


class Created(Record, kw_only=True):
    """A create's record; `deduplicated` says whether dedup answered an existing one."""

    deduplicated: bool | UnsetType = UNSET


class Deleted(Reply, forbid_unknown_fields=True, kw_only=True):
    """A delete: the tombstone's version."""

    id: str
    version: str
    deleted: Literal[True]


class HistoryEntry(Record, kw_only=True):
    """One version of a key; `concurrent` when another version is neither older nor newer."""

    concurrent: bool


class History(Reply, forbid_unknown_fields=True, kw_only=True):
    """Versions kept, newest first."""

    versions: list[HistoryEntry]


class Page(Reply, kw_only=True):
    """A page of a listing; `partial` when some shards did not answer (`missing_shards`)."""

    items: list[Record]
    next_cursor: str | None
    partial: bool | UnsetType = UNSET
    missing_shards: list[int] | UnsetType = UNSET


class BatchResult(Reply, kw_only=True):
    """One `_batch` item's outcome: its status and version, or its error."""

    id: str
    status: int
    version: str | UnsetType = UNSET
    error: ErrorDetail | UnsetType = UNSET


class BatchResults(Reply, forbid_unknown_fields=True, kw_only=True):
    """One result per `_batch` item, in order."""

    results: list[BatchResult]


class Scores(Reply, forbid_unknown_fields=True, kw_only=True):
    """The scores a result's rank came from: vector similarity, BM25 (keyword)."""

    vector: float | UnsetType = UNSET
    keyword: float | UnsetType = UNSET


class SearchResult(Reply, kw_only=True):
    """One hit: its fused (or single) score, the scores behind it, the record."""

    id: str
    score: float
    scores: Scores | UnsetType = UNSET
    record: Record


class SearchResults(Reply, kw_only=True):
    """Hits, best first; `partial` when some shards did not answer."""

    results: list[SearchResult]
    partial: bool | UnsetType = UNSET
    missing_shards: list[int] | UnsetType = UNSET


CURSOR_FORMAT = "spine-cursor"
"""The `format` of a change-feed cursor: opaque base64url text this API returned; a random string
of that alphabet is not one (400). No pattern or length is given, for the same reason; the format
lets a test generator draw real ones."""
Cursor = Annotated[str, Meta(extra_json_schema={
    "format": CURSOR_FORMAT, "description": "opaque base64url text this API returned (at most"
                                            " 4 KiB)"})]


class Change(Reply, kw_only=True):
    """One change of the feed (DESIGN §15): `record` is what GET answers for the key, null for
    a delete or an expiry."""

    id: str
    version: str
    deleted: bool
    record: Record | None


class Changes(Reply, kw_only=True):
    """The changes after a cursor (maybe none), and the cursor to send next."""

    items: list[Change]
    cursor: Cursor


class Status(Reply, kw_only=True):
    """/healthz and /readyz."""

    status: str
    node: str | UnsetType = UNSET


class Lease(Reply, forbid_unknown_fields=True, kw_only=True):
    """A lease: its holder (null when free), fencing token, ttl and time left."""

    name: str
    holder: Annotated[str | None, Meta(extra_json_schema={"type": ["string", "null"]})]
    token: int
    ttl_ms: int
    remaining_ms: int


REPLIES: tuple[type[Reply], ...] = (
    Error, Record, Created, Deleted, History, Page, BatchResults, SearchResults, Changes, Status,
    Lease)
