"""Hinted handoff's storage: writes kept for a replica that did not acknowledge them (Dynamo §4.6).

A hint is (target node, created_ms, record) under the target's prefix and a hint seq, so one
target's hints read oldest first; handoff replays them when the target is back and deletes them
once delivered or past the handoff window.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from spine.core.model import Record
from spine.storage.changelog import BeginRead
from spine.storage.layout import Hint, hint_key, hint_prefix, hint_target


class Hints:
    """The `hints` table."""

    def __init__(self, env: Any, begin_read: BeginRead) -> None:
        self.db = env.open_db(b"hints")
        self._begin_read = begin_read

    def counts(self) -> dict[str, int]:
        """Pending hints per target node."""
        counts: dict[str, int] = {}
        with self._begin_read(self.db) as txn:
            for k in txn.cursor().iternext(keys=True, values=False):
                target = hint_target(bytes(k))
                counts[target] = counts.get(target, 0) + 1
        return counts

    def oldest(self, target: str, limit: int) -> list[Hint]:
        """The oldest `limit` hints kept for `target`."""
        prefix = hint_prefix(target)
        out: list[Hint] = []
        with self._begin_read(self.db) as txn:
            cur = txn.cursor()
            if cur.set_range(prefix):
                for k, v in cur:
                    if not k.startswith(prefix) or len(out) >= limit:
                        break
                    created, wire = msgpack.unpackb(v, raw=False)
                    out.append(Hint(bytes(k), target, created, Record.from_wire(wire)))
        return out

    def add(self, txn: Any, hint_seq: int, target: str, created_ms: int, rec: Record) -> None:
        """In a write transaction: keep one hint under the next hint seq."""
        v = msgpack.packb([created_ms, rec.to_wire()], use_bin_type=True)
        txn.put(hint_key(target, hint_seq), v, db=self.db)

    def delete(self, txn: Any, keys: Sequence[bytes]) -> None:
        """In a write transaction: drop hints by key (absent keys are ignored)."""
        for k in keys:
            txn.delete(k, db=self.db)
