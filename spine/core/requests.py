"""Requests and results of the write path, and their forms on the internal wire (pure values)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spine.core.consistency import Level
from spine.core.errors import ERRORS_BY_CODE, PeerUnavailable, SpineError
from spine.core.model import Record
from spine.core.validation import WriteBody


@dataclass(frozen=True, slots=True)
class WriteOp:
    """One write of a batch (or a single request): an upsert body, or a delete when None."""

    id: str
    body: WriteBody | None


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What a write did: the stored version, whether it created the key, at which level."""

    record: Record
    created: bool
    level: Level
    coordinator: str = ""


@dataclass(frozen=True, slots=True)
class ItemResult:
    """One item of a batch: a result or the error that stopped it."""

    id: str
    result: WriteResult | None = None
    error: SpineError | None = None


def body_to_wire(body: WriteBody) -> list[Any]:
    """A write body on the internal wire (positional: append-only)."""
    return [body.content, list(body.tags), dict(body.metadata), body.agent_id, body.vector,
            body.ttl_s]


def body_from_wire(w: list[Any]) -> WriteBody:
    """Inverse of `body_to_wire` (a forwarded body was validated by the receiving node; one
    from a node of an older release has no ttl_s)."""
    return WriteBody(w[0], tuple(w[1]), w[2], w[3], w[4], w[5] if len(w) > 5 else None)


def item_to_wire(item: ItemResult) -> list[Any]:
    """A batch item result for a Forward reply."""
    if item.result is not None:
        r = item.result
        return [item.id, r.record.to_wire(), r.created, r.level.code, None, r.coordinator]
    err = item.error
    assert err is not None
    return [item.id, None, False, 0, [err.code, err.message, err.field, err.details]]


def item_from_wire(w: list[Any]) -> ItemResult:
    """Inverse of `item_to_wire`."""
    if w[1] is not None:
        return ItemResult(
            w[0], WriteResult(Record.from_wire(w[1]), bool(w[2]), Level.from_code(w[3]), w[5])
        )
    code, message, field, details = w[4]
    cls = ERRORS_BY_CODE.get(code, PeerUnavailable)
    return ItemResult(w[0], error=cls(message, field=field, **details))
