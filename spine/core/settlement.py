"""Settled versions: held by every replica of their key, so a session token need not carry them.

A session token carries, per key, the newest version its client wrote or read, so that a read
answered by one replica (R=1) is never older (read-your-writes, monotonic reads; DESIGN §4). A
version that *every* owner of its key already holds needs no such care: any owner's answer is at
least as new. So a token need only carry versions that are not yet settled, and most are settled
milliseconds after they are written. Without this, a client that reads many keys fills its token
(`session.max_keys`), the token overflows, and from then on every read of a key it dropped goes
to a quorum. (Cosmos DB carries one log position per partition instead; a leaderless store has no
such position, and CockroachDB's closed timestamps need a leaseholder.)

A node knows a version of a key settled in two ways, both conservative:

- **a notice**: the coordinator of a write saw every node of the key's write set (owners, pending
  and trailing owners) acknowledge the version; it tells those nodes (on the next `Apply` it sends
  them, or on an empty one). A node keeps the newest noticed version per key, for the last
  `max_keys` keys noticed.
- **anti-entropy**: in a round, the hash tree of a shard matched the tree of every other owner,
  at a moment when this node's tree reflected every commit up to change seq `seq`. Then every
  owner held each record that this node stored then, so a record whose change seq is still
  ≤ `seq` is settled — as long as the owners are the same and no ring change is under way.

Anything else (nothing known, a restart: these facts are kept in memory only) is not settled,
and the token carries the version as before. Settledness is only ever used to leave a version
out of a token or to drop a token's entry; reads and writes decide nothing else from it.

Pure: no I/O and no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from spine.core.clock import Version
from spine.core.session import SessionToken

# A notice names (namespace, id, hlc, node); a peer's list of them is bounded as every decoder is.
MAX_NOTICES = 4096
_MAX_NS = 64
_MAX_ID = 512
_MAX_NODE = 256

Notice = tuple[str, str, Version]


class Settlement:
    """What this node knows is held by every owner: per key the newest noticed version (the last
    `max_keys` keys), per shard the change seq its last matching anti-entropy round covered."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self.max_keys = max_keys
        self._noticed: dict[str, Version] = {}  # insertion order = age; the oldest goes first
        self._shards: dict[int, tuple[tuple[str, ...], int]] = {}

    def __len__(self) -> int:
        return len(self._noticed)

    def note(self, key: str, version: Version) -> None:
        """Every node of the key's write set acknowledged `version` (a coordinator's notice)."""
        old = self._noticed.pop(key, None)
        self._noticed[key] = version if old is None or version > old else old
        if len(self._noticed) > self.max_keys:
            del self._noticed[next(iter(self._noticed))]

    def note_shard(self, shard: int, owners: Sequence[str], seq: int) -> None:
        """Every other of `owners` matched this node's tree of `shard` when it reflected every
        commit up to change seq `seq`."""
        owners = tuple(owners)
        kept = self._shards.get(shard)
        if kept is not None and kept[0] == owners:
            seq = max(seq, kept[1])
        self._shards[shard] = (owners, seq)

    def noticed(self, key: str, version: Version) -> bool:
        """Whether a notice says every node of the write set holds `version` or newer."""
        known = self._noticed.get(key)
        return known is not None and known >= version

    def matched(self, shard: int, owners: Sequence[str], write_set: Sequence[str]) -> int:
        """The change seq up to which anti-entropy found every owner holding this node's records
        of `shard` (0: none). `owners` and `write_set` are a key's route now: a write set larger
        than the owners (a ring change under way) or other owners than the match's rule it
        out."""
        kept = self._shards.get(shard)
        owners = tuple(owners)
        if kept is None or tuple(write_set) != owners or kept[0] != owners:
            return 0
        return kept[1]

    def settled(
        self, key: str, version: Version, shard: int, owners: Sequence[str],
        write_set: Sequence[str], seq_of: Callable[[], int],
    ) -> bool:
        """Whether this node's stored `version` of `key` is held by every owner: by a notice
        (which counted pending owners too, so it holds through a ring change), or by a match
        (`matched`) up to at least the key's change seq, which `seq_of` reads only then. (A
        version stored meanwhile has a later seq: it can only say no, or yes for a version
        newer than `version`, which every owner then holds.)"""
        if self.noticed(key, version):
            return True
        upto = self.matched(shard, owners, write_set)
        return upto > 0 and 0 < seq_of() <= upto

    def prune(self, token: SessionToken) -> SessionToken:
        """Drop the token's entries whose version is settled by a notice (they need no floor:
        every owner holds them). Returns the token."""
        for key, version in list(token.entries.items()):
            if self.noticed(key, version):
                token.forget(key, version)
        return token


def notices_to_wire(notices: Sequence[Notice]) -> list[Any]:
    """Notices as wire lists."""
    return [[ns, mid, v.hlc, v.node] for ns, mid, v in notices]


def notices_from_wire(w: Any) -> list[Notice]:
    """Inverse of `notices_to_wire`; ValueError on anything else (a peer's bytes are hostile)."""
    if not isinstance(w, list) or len(w) > MAX_NOTICES:
        raise ValueError(f"notices must be a list of at most {MAX_NOTICES}")
    out: list[Notice] = []
    for x in w:
        if not isinstance(x, list) or len(x) != 4:
            raise ValueError("a notice is [namespace, id, hlc, node]")
        ns, mid, hlc, node = x
        if (not isinstance(ns, str) or not 0 < len(ns) <= _MAX_NS
                or not isinstance(mid, str) or not 0 < len(mid) <= _MAX_ID
                or not isinstance(hlc, int) or not 0 <= hlc < 2**64
                or not isinstance(node, str) or len(node) > _MAX_NODE):
            raise ValueError("a notice's fields are out of range")
        out.append((ns, mid, Version(hlc, node)))
    return out
