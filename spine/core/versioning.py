"""Minting a key's next version (DESIGN §5): pure, given the HLC reading to stamp it with.

A new version must be newer than everything the writing client or the coordinating replica has
seen of the key, so the caller observes both on its HLC first (``seen_hlc``) and passes the
reading it got. The version vector builds on the base clock (the previous version's, or, for a
strong write, the merge of what a quorum held) with one tick for the coordinator.
"""

from __future__ import annotations

from spine.core.clock import Version, vv_increment
from spine.core.expiry import expires_hlc
from spine.core.model import Record
from spine.core.requests import WriteOp


def seen_hlc(old: Record | None, floor: Version | None) -> int:
    """The newest HLC the new version must follow: the stored one's or the session's floor."""
    return max(old.version.hlc if old is not None else 0, floor.hlc if floor is not None else 0)


def mint(
    namespace: str,
    op: WriteOp,
    old: Record | None,
    vector: bytes | None,
    *,
    hlc: int,
    node_id: str,
    agent: str | None,
    clock: dict[str, int] | None = None,
    ttl_s: int | None = None,
) -> Record:
    """The record ``op`` writes over ``old``: a tombstone for a delete (keeping the old tags so
    tag-based policies still apply), else the new body. ``clock`` overrides the base clock.
    ``ttl_s`` (the write's, or its tags' default: ``Lifecycle.ttl_s``) sets when the new
    version expires; a delete carries no expiry, and a write without one replaces any."""
    base = clock if clock is not None else (dict(old.clock) if old is not None else {})
    version = Version(hlc, node_id)
    created = old.created_hlc if old is not None and not old.deleted else hlc
    fences = dict(old.fences) if old is not None else {}  # a fence is never forgotten (§12)
    if op.body is None:
        return Record(
            namespace=namespace, id=op.id, version=version,
            clock=vv_increment(base, node_id),
            tags=old.tags if old is not None else (),
            agent_id=agent or (old.agent_id if old is not None else None),
            created_hlc=created, deleted=True, fences=fences,
        )
    body = op.body
    return Record(
        namespace=namespace, id=op.id, version=version,
        clock=vv_increment(base, node_id),
        content=body.content, tags=body.tags, metadata=dict(body.metadata),
        agent_id=agent or body.agent_id, vector=vector, created_hlc=created, fences=fences,
        expires_hlc=expires_hlc(hlc, ttl_s),
    )
