"""Version history: the versions a key's merge superseded or that lost a concurrent write.

Kept under the record's key ordered by HLC, flagged `concurrent` when the version lost a
concurrent merge (a conflict a client may want to see), and trimmed to the newest `keep` per key
in the same transaction that adds one (retention).
"""

from __future__ import annotations

from typing import Any

import msgpack

from spine.core.model import Record
from spine.storage.changelog import BeginRead
from spine.storage.layout import HistoryEntry, history_key, history_prefix


class History:
    """The `history` table and its retention."""

    def __init__(self, env: Any, begin_read: BeginRead, keep: int) -> None:
        self.db = env.open_db(b"history")
        self._begin_read = begin_read
        self.keep = keep

    def entries(self, rk: bytes) -> list[HistoryEntry]:
        """The kept versions of the record at `rk`, newest first."""
        prefix = history_prefix(rk)
        out: list[HistoryEntry] = []
        with self._begin_read(self.db) as txn:
            cur = txn.cursor()
            if cur.set_range(prefix):
                for k, v in cur:
                    if not k.startswith(prefix):
                        break
                    wire, concurrent = msgpack.unpackb(v, raw=False)
                    out.append(HistoryEntry(Record.from_wire(wire), bool(concurrent)))
        out.reverse()
        return out

    def add(self, txn: Any, rk: bytes, rec: Record, concurrent: bool) -> None:
        """In a write transaction: keep `rec`, then drop all but the newest `keep` versions."""
        prefix = history_prefix(rk)
        txn.put(history_key(rk, rec.version),
                msgpack.packb([rec.to_wire(), concurrent], use_bin_type=True), db=self.db)
        cur = txn.cursor(db=self.db)
        keys: list[bytes] = []
        if cur.set_range(prefix):
            for hk in cur.iternext(keys=True, values=False):
                if not hk.startswith(prefix):
                    break
                keys.append(bytes(hk))
        for old_key in keys[: max(0, len(keys) - self.keep)]:
            txn.delete(old_key, db=self.db)
