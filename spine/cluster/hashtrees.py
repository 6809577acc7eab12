"""This node's per-shard hash trees, kept current with the store (DESIGN §10).

One :class:`~spine.core.antientropy.ShardDigest` (hash tree + key → version map + tombstone keys)
per shard the store holds data of, created on the first pair. They are built once from a store
scan on an executor thread, and kept current from the store's commit hook on the LMDB writer
thread, in commit order. The writer thread, the build thread and the event loop share them under
one ``threading.Lock``; every critical section is short (one commit batch, one scan chunk, one
tree query or leaf listing), so the writer never waits long. (Handing updates to the event loop
with ``call_soon_threadsafe`` instead would let the loop see a tree behind the store it reads.)

The scan and the hook race: a chunk may be read before a commit whose hook has already run.
That is harmless because digests only move a key forward and drop it only at the exact version
purged; the one update that is not a "max" is a purge, so purges seen while building are kept
until the build ends and a scanned pair they cover is skipped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from spine.core.antientropy import Held, ShardDigest, expired, pack_version
from spine.core.merkle import ShardTree
from spine.ports import RecordStore
from spine.storage.lmdb_store import Applied, Outcome

SCAN_CHUNK = 1000


def shard_of_key(rk: bytes) -> int:
    """The shard of a records key (its first two bytes, big-endian: see lmdb_store)."""
    return int.from_bytes(rk[:2], "big")


class HashTrees:
    """Every shard digest of this node, thread-safe; ``lock`` guards them all."""

    def __init__(self, store: RecordStore, fanout: int = 16, depth: int = 3) -> None:
        self.store = store
        self.shape = (fanout, depth)
        self.lock = threading.Lock()
        # Guarded by `lock`: the digests, the purges seen while building, `ready`.
        self._digests: dict[int, ShardDigest] = {}
        self._purged_while_building: dict[bytes, bytes] = {}
        self._ready = False
        self._seq = 0  # every commit up to this change seq is in the digests (once ready)
        self._empty = ShardTree(fanout, depth)  # stands in for a shard we hold nothing of

    def __len__(self) -> int:
        return len(self._digests)

    @property
    def ready(self) -> bool:
        """True once the digests reflect the whole store."""
        return self._ready

    @property
    def seq(self) -> int:
        """The change seq up to which every commit is in the digests (0 before the build ends);
        read with ``lock`` held, beside the tree it vouches for."""
        return self._seq if self._ready else 0

    def tree(self, shard: int) -> ShardTree:
        """The shard's tree (an empty one when nothing is held); call with ``lock`` held."""
        d = self._digests.get(shard)
        return self._empty if d is None else d.tree

    def _digest(self, shard: int) -> ShardDigest:
        d = self._digests.get(shard)
        if d is None:
            d = self._digests[shard] = ShardDigest(*self.shape)
        return d

    # ------------------------------------------------------------ keeping them current

    def on_commit(self, applied: list[Applied]) -> None:
        """Commit hook (LMDB writer thread): move each committed key's pair in its tree."""
        with self.lock:
            if applied:
                self._seq = max(self._seq, max(a.seq for a in applied))
            for a in applied:
                if a.outcome is not Outcome.APPLIED:
                    continue
                rec = a.new
                rk = self.store.key_of(rec.namespace, rec.id)
                version = pack_version(rec.version)
                # The store reports a purge as APPLIED at the purged record's own version; a
                # real apply is always to a strictly newer version.
                if a.old is not None and a.old.version == rec.version:
                    d = self._digests.get(shard_of_key(rk))
                    if d is not None:
                        d.drop(rk, version)
                    if not self._ready:
                        self._purged_while_building[rk] = version
                else:
                    self._digest(shard_of_key(rk)).put(rk, version, rec.deleted)
                    self._purged_while_building.pop(rk, None)

    def build(self, shards: int, stopping: Callable[[], bool]) -> None:
        """Scan the store shard by shard into the digests (blocking: an executor thread)."""
        with self.lock:  # every commit so far is in what the scan reads; later ones, the hook's
            self._seq = max(self._seq, self.store.seq)
        for shard in range(shards):
            after: bytes | None = None
            while not stopping():
                chunk = self.store.scan_shard(shard, after, SCAN_CHUNK)
                if not chunk:
                    break
                with self.lock:
                    for rk, rec in chunk:
                        version = pack_version(rec.version)
                        gone = self._purged_while_building.get(rk)
                        if gone is None or gone < version:
                            self._digest(shard).put(rk, version, rec.deleted)
                after = chunk[-1][0]
        with self.lock:
            self._ready = not stopping()
            self._purged_while_building.clear()

    # ------------------------------------------------------------ reading them

    def root(self, shard: int) -> int | None:
        """The shard's root (0 when nothing is held), None before the build ends."""
        with self.lock:
            return self.tree(shard).root() if self._ready else None

    def answer(self, queries: Sequence[tuple[int, int, list[int]]]) -> list[list[int] | None]:
        """A ``SHARD_TREE`` reply: per ``(shard, level, parents)``, the root when ``parents`` is
        empty, else the children of ``parents``; None before the build ends.

        Raises ``ValueError`` for a node that does not exist.
        """
        with self.lock:
            if not self._ready:
                return [None] * len(queries)
            out: list[list[int] | None] = []
            for shard, level, parents in queries:
                tree = self.tree(shard)
                out.append(tree.frontier_children(level, parents) if parents else [tree.root()])
            return out

    def listing(self, shard: int, leaves: Sequence[int]) -> dict[bytes, Held]:
        """Every pair held in the given leaves of ``shard``."""
        with self.lock:
            d = self._digests.get(shard)
            return {} if d is None else d.listing(leaves)

    def leaf_counts(self, shard: int, leaves: Sequence[int]) -> dict[int, int]:
        """Pairs held per leaf."""
        with self.lock:
            tree = self.tree(shard)
            return {leaf: tree.leaf_count(leaf) for leaf in leaves}

    def expired_tombstones(self, shard: int, now_ms: int, grace_ms: int) -> dict[bytes, bytes]:
        """key → packed version of the shard's tombstones past their grace."""
        with self.lock:
            d = self._digests.get(shard)
            if d is None or not d.tombstones:
                return {}
            return {k: v for k, v in d.tombstone_versions().items()
                    if expired(Held(v, True), now_ms, grace_ms)}

    def still_held(self, shard: int, tombstones: dict[bytes, bytes]) -> list[bytes]:
        """Those of ``tombstones`` (key → packed version) still held at exactly that version."""
        with self.lock:
            d = self._digests.get(shard)
            if d is None:
                return []
            return [k for k, v in tombstones.items() if d.held(k) == Held(v, True)]
