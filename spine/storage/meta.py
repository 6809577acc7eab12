"""The store's meta table: named raw values, and the counters every commit advances.

The counters (`Positions`) are the last change seq, the last hint seq and the highest HLC the
store has applied; a commit advances a copy of them and writes it in its own transaction, so
after a restart they resume exactly where the last durable commit left them (a node's HLC starts
above every version it stored).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from spine.storage.changelog import BeginRead
from spine.storage.layout import from_u64, u64

_SEQ, _HINT_SEQ, _HLC = b"seq", b"hint_seq", b"hlc"


@dataclass(slots=True)
class Positions:
    """The counters a commit advances: change seq, hint seq, highest HLC applied."""

    seq: int = 0
    hint_seq: int = 0
    max_hlc: int = 0


class Meta:
    """The `meta` table."""

    def __init__(self, env: Any, begin_read: BeginRead) -> None:
        self.db = env.open_db(b"meta")
        self._begin_read = begin_read

    def get(self, name: bytes) -> bytes | None:
        """A raw value, or None."""
        with self._begin_read(self.db) as txn:
            v = txn.get(name)
        return None if v is None else bytes(v)

    def put(self, txn: Any, name: bytes, value: bytes) -> None:
        """In a write transaction: set a raw value."""
        txn.put(name, value, db=self.db)

    def positions(self) -> Positions:
        """The counters as the last commit left them."""
        with self._begin_read(self.db) as txn:
            raw = [txn.get(name) for name in (_SEQ, _HINT_SEQ, _HLC)]
        seq, hint_seq, hlc = (0 if v is None else from_u64(v) for v in raw)
        return Positions(seq, hint_seq, hlc)

    def seq_in(self, txn: Any) -> int:
        """In a read transaction of the whole environment: the last change seq committed."""
        raw = txn.get(_SEQ, db=self.db)
        return 0 if raw is None else from_u64(raw)

    def save_positions(self, txn: Any, pos: Positions) -> None:
        """In a write transaction: persist the counters."""
        txn.put(_SEQ, u64(pos.seq), db=self.db)
        txn.put(_HINT_SEQ, u64(pos.hint_seq), db=self.db)
        txn.put(_HLC, u64(pos.max_hlc), db=self.db)
