"""Typed shapes of the API's replies (DESIGN §11): TypedDicts, so a reply is still a plain dict."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


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
    vector: NotRequired[list[float]]


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
    """One search result."""

    id: str
    score: float
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
