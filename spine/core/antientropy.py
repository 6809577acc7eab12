"""The pure half of anti-entropy (DESIGN §10; Dynamo §4.7, Cassandra repair): no I/O, no clock.

- :class:`ShardDigest` is what a replica knows about one shard: the :class:`ShardTree` over its
  ``(key, version)`` pairs, a map key → version beside it (to list a leaf's keys), and which keys
  are tombstones.
- :func:`reconcile` decides, from two replicas' listings of the same leaves, which keys each must
  send the other. Newer versions win (LWW, DESIGN §3). One exception keeps purged tombstones
  purged: a tombstone past its grace is never copied to a replica that holds nothing for the key
  (it would only be purged there again; holding nothing, that replica has nothing to resurrect).
- :func:`purgeable` decides which tombstones may be dropped: past the grace, and confirmed on
  every other replica of the shard in the same round (the peer's leaf is identical to ours, or its
  listing shows the same tombstone or nothing at all for the key). One replica not heard from, or
  a descent that ended without naming a leaf, confirms nothing.
- :class:`TokenBucket` paces the records exchanged per second, so repair never starves clients.

Versions are kept packed (:func:`pack_version`): 8 big-endian bytes of HLC, then the node id in
UTF-8. Byte order then equals the ``(hlc, node)`` order of :class:`Version`, so packed versions
compare directly and double as the version bytes of the tree's digests.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from spine.core.clock import Version, hlc_ms
from spine.core.merkle import ShardTree

_HLC = struct.Struct(">Q")


def pack_version(v: Version) -> bytes:
    """A version as bytes that sort like the ``(hlc, node)`` pair."""
    return _HLC.pack(v.hlc) + v.node.encode()


def unpack_version(b: bytes) -> Version:
    """Inverse of :func:`pack_version`."""
    if len(b) < _HLC.size:
        raise ValueError(f"packed version too short: {b!r}")
    return Version(_HLC.unpack_from(b)[0], b[_HLC.size :].decode())


@dataclass(frozen=True, slots=True)
class Held:
    """What one replica holds for a key: the packed version and whether it is a tombstone."""

    version: bytes
    deleted: bool


Listing = Mapping[bytes, Held]


def listing_to_wire(listing: Listing) -> list[list[Any]]:
    """A listing as msgpack-ready ``[key, version, deleted]`` triples, in key order."""
    return [[k, h.version, h.deleted] for k, h in sorted(listing.items())]


def listing_from_wire(w: Iterable[Sequence[Any]]) -> dict[bytes, Held]:
    """Inverse of :func:`listing_to_wire`."""
    return {bytes(k): Held(bytes(v), bool(d)) for k, v, d in w}


def expired(held: Held, now_ms: int, grace_ms: int) -> bool:
    """A tombstone whose version's wall time is at least ``grace_ms`` old."""
    return held.deleted and hlc_ms(unpack_version(held.version).hlc) + grace_ms <= now_ms


@dataclass(frozen=True, slots=True)
class Plan:
    """What to exchange for a set of leaves: keys to take from the peer, keys to give it."""

    pull: list[bytes] = field(default_factory=list)
    push: list[bytes] = field(default_factory=list)


def reconcile(local: Listing, remote: Listing, now_ms: int, grace_ms: int) -> Plan:
    """Which keys each side must send the other so both end up with the newer versions."""
    pull: list[bytes] = []
    push: list[bytes] = []
    for key in sorted(local.keys() | remote.keys()):
        mine, theirs = local.get(key), remote.get(key)
        if theirs is None:
            if mine is not None and not expired(mine, now_ms, grace_ms):
                push.append(key)
        elif mine is None:
            if not expired(theirs, now_ms, grace_ms):
                pull.append(key)
        elif theirs.version > mine.version:
            pull.append(key)
        elif mine.version > theirs.version:
            push.append(key)
    return Plan(pull, push)


class ShardDigest:
    """One shard as this replica holds it: hash tree, key → version map, tombstone keys.

    Invariant: the tree holds exactly the pairs ``(key, versions[key])``. Updates only move a key
    forward (:meth:`put` ignores an older or equal version) and :meth:`drop` removes a key only at
    the exact version purged, so updates that arrive out of order (a store scan racing the commit
    hook) still end in the store's state.
    """

    __slots__ = ("tombstones", "tree", "versions")

    def __init__(self, fanout: int = 16, depth: int = 3) -> None:
        self.tree = ShardTree(fanout, depth)
        self.versions: dict[bytes, bytes] = {}
        self.tombstones: set[bytes] = set()

    def __len__(self) -> int:
        return len(self.versions)

    def put(self, key: bytes, version: bytes, deleted: bool) -> bool:
        """Record that the replica now holds ``version`` of ``key``; False if it was not newer."""
        old = self.versions.get(key)
        if old is not None and old >= version:
            return False
        self.tree.replace(key, old, version)
        self.versions[key] = version
        if deleted:
            self.tombstones.add(key)
        else:
            self.tombstones.discard(key)
        return True

    def drop(self, key: bytes, version: bytes) -> bool:
        """Forget ``key`` if it is held at ``version`` (a purge); False otherwise."""
        if self.versions.get(key) != version:
            return False
        self.tree.remove(key, version)
        del self.versions[key]
        self.tombstones.discard(key)
        return True

    def held(self, key: bytes) -> Held | None:
        """What is held for ``key``."""
        v = self.versions.get(key)
        return None if v is None else Held(v, key in self.tombstones)

    def listing(self, leaves: Collection[int]) -> dict[bytes, Held]:
        """Every pair held in the given leaf buckets."""
        want = set(leaves)
        leaf_of = self.tree.leaf_of
        return {
            k: Held(v, k in self.tombstones)
            for k, v in self.versions.items()
            if leaf_of(k) in want
        }

    def tombstone_versions(self) -> dict[bytes, bytes]:
        """key → packed version of every tombstone held (a round's purge candidates)."""
        return {k: self.versions[k] for k in self.tombstones}


@dataclass(frozen=True, slots=True)
class PeerView:
    """What one round learned about one peer replica of a shard.

    ``equal``: the roots matched, when this node's tree held every commit up to change seq
    ``seq``. Otherwise ``differing`` names the leaves the descent found
    (``None`` when it could not tell), ``exchanged`` the leaves whose listings were compared and
    ``listed`` the peer's pairs in those leaves.
    """

    equal: bool
    differing: frozenset[int] | None = None
    exchanged: frozenset[int] = frozenset()
    listed: Listing = field(default_factory=dict)
    seq: int = 0


def purgeable(
    candidates: Mapping[bytes, bytes],
    leaf_of: Callable[[bytes], int],
    views: Sequence[PeerView | None],
    now_ms: int,
    grace_ms: int,
) -> list[bytes]:
    """Tombstones (key → packed version) that every peer replica confirmed and are past grace.

    ``views`` has one entry per other replica of the shard; ``None`` for one not reached this
    round, which blocks every purge in the shard.
    """
    if any(v is None for v in views):
        return []
    out: list[bytes] = []
    for key, version in sorted(candidates.items()):
        if not expired(Held(version, True), now_ms, grace_ms):
            continue
        leaf = leaf_of(key)
        if all(_confirms(v, key, version, leaf) for v in views if v is not None):
            out.append(key)
    return out


def _confirms(view: PeerView, key: bytes, version: bytes, leaf: int) -> bool:
    if view.equal:
        return True
    if view.differing is None:
        return False
    if leaf not in view.differing:
        return True  # the peer's leaf is identical to ours, so it holds this very tombstone
    if leaf not in view.exchanged:
        return False
    theirs = view.listed.get(key)
    return theirs is None or (theirs.deleted and theirs.version == version)


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved; spending may go into debt.

    :meth:`take` spends ``n`` and returns how long to wait before the balance is back to zero,
    so a caller that waits that long never exceeds ``rate`` on average, whatever the batch size.
    """

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError(f"bad token bucket: rate={rate} burst={burst}")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self._at = now

    def take(self, n: int, now: float) -> float:
        """Spend ``n`` tokens at time ``now``; seconds to wait before spending more."""
        if now > self._at:
            self.tokens = min(self.burst, self.tokens + (now - self._at) * self.rate)
            self._at = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


def next_shards(held: Sequence[int], cursor: int, k: int) -> tuple[list[int], int]:
    """Round-robin: up to ``k`` of ``held`` starting at position ``cursor``; the next cursor."""
    if not held:
        return [], 0
    start = cursor % len(held)
    take = min(k, len(held))
    picked = [held[(start + i) % len(held)] for i in range(take)]
    return picked, (start + take) % len(held)


def chunk_leaves(
    leaves: Sequence[int], counts: Mapping[int, int], max_keys: int, max_leaves: int
) -> list[list[int]]:
    """Split leaves into exchanges of at most ``max_leaves`` leaves and about ``max_keys`` keys.

    ``counts`` are this replica's pairs per leaf; a single leaf over ``max_keys`` goes alone.
    """
    chunks: list[list[int]] = []
    cur: list[int] = []
    keys = 0
    for leaf in leaves:
        n = counts.get(leaf, 0)
        if cur and (len(cur) >= max_leaves or keys + n > max_keys):
            chunks.append(cur)
            cur, keys = [], 0
        cur.append(leaf)
        keys += n
    if cur:
        chunks.append(cur)
    return chunks
