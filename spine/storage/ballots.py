"""Paxos acceptor state per key (spine.core.paxos): the `ballots` table.

Keyed by the key's records key (shard first, so a shard's rounds sit in one range beside its
records); the value is the acceptor state's msgpack form. The store only keeps the bytes: what
they mean, and every decision on them, is `spine.core.paxos`'s.
"""

from __future__ import annotations

from typing import Any

from spine.storage.changelog import BeginRead


class Ballots:
    """The `ballots` table."""

    def __init__(self, env: Any, begin_read: BeginRead) -> None:
        self.db = env.open_db(b"ballots")
        self._begin_read = begin_read

    def get(self, rk: bytes) -> bytes | None:
        """The stored acceptor state of the key at records key `rk`, or None."""
        with self._begin_read(self.db) as txn:
            v = txn.get(rk)
        return None if v is None else bytes(v)

    def put(self, txn: Any, rk: bytes, value: bytes) -> None:
        """In a write transaction: replace the acceptor state of `rk`."""
        txn.put(rk, value, db=self.db)
