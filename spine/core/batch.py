"""A batch of writes, before any is sent (DESIGN §4–§5): which ops create their key, and at which
consistency level each runs. Pure: the stored versions come in as arguments.

A batch may name one key more than once; its ops apply in order, so whether an op creates its
key depends on the ops before it in the batch as well as on what was stored.
"""

from __future__ import annotations

from collections.abc import Sequence

from spine.core.consistency import Level, Policy
from spine.core.model import Record
from spine.core.requests import WriteOp


def creates(ops: Sequence[WriteOp], olds: Sequence[Record | None]) -> list[bool]:
    """Per op, whether it creates its key (an HTTP 201): an upsert of a key that was absent or
    deleted before it — stored so, or left so by an earlier op of the batch. A delete never
    creates."""
    live: dict[str, bool] = {}
    out: list[bool] = []
    for op, old in zip(ops, olds, strict=True):
        before = live.get(op.id, old is not None and not old.deleted)
        out.append(op.body is not None and not before)
        live[op.id] = op.body is not None
    return out


def by_level(
    policy: Policy, ops: Sequence[WriteOp], olds: Sequence[Record | None],
    requested: Level | None,
) -> dict[Level, list[int]]:
    """The ops' indexes grouped by the level each write runs at: the strongest of its old and
    new tags' levels, then the request's header (`Policy.write_level`); in first-seen order."""
    out: dict[Level, list[int]] = {}
    for i, (op, old) in enumerate(zip(ops, olds, strict=True)):
        new_tags = op.body.tags if op.body is not None else ()
        old_tags = old.tags if old is not None and not old.deleted else None
        out.setdefault(policy.write_level(old_tags, new_tags, requested), []).append(i)
    return out
