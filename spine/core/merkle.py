"""Per-shard hash trees for anti-entropy (DESIGN §10; Dynamo §4.7, Cassandra's Merkle trees).

Each replica keeps one :class:`ShardTree` per shard over the ``(key, version)`` pairs it holds.
Two replicas compare roots; when they differ they walk down only the differing subtrees, one
level per round trip, and end with the leaf buckets whose contents differ. Only the keys in those
buckets are then exchanged, so a converged shard costs one root comparison and a shard with a few
stale keys costs ``depth`` round trips plus those keys.

Unlike Cassandra, which rebuilds its tree from a full scan before each repair, the tree here has a
fixed shape and is updated on every write. A leaf holds the XOR of the digests of its pairs and a
count, so adding or removing a pair touches one leaf and the ``depth`` nodes above it. XOR cancels
a pair added twice; that is fine here because a replica holds a given ``(key, version)`` pair at
most once (a key has one current version per replica, and the store replaces the old pair with
the new one), so a cancellation could only come from a caller bug, which the count makes visible.

Interior nodes hash their children (not XOR them), so the root is a commitment to every leaf; an
empty subtree is ``0`` so that equal sets of pairs give equal trees however they were built.
Nothing here does I/O: the descent is a small state machine whose requests and replies are plain
lists of ints, ready for a msgpack message.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

import xxhash

# Distinct seeds keep pair digests, leaf placement and node hashes in separate domains. The leaf
# seed also decorrelates leaf placement from the shard hash (``hash64(key) mod Q``): with the same
# hash, every key of one shard would land in only ``4096 / Q`` of its leaves.
_DIGEST_SEED = 0x5350_494E_4531  # "SPINE1"
_LEAF_SEED = 0x5350_494E_4532
_NODE_SEED = 0x5350_494E_4533

_FORMAT_VERSION = 1
_HEADER = struct.Struct("<BHH")  # format version, fanout, depth
_LEAF = struct.Struct("<QQ")  # xor of digests, count
_MAX_LEAVES = 1 << 22


def digest(key: bytes, version: bytes) -> int:
    """A stable 64-bit digest of one ``(key, version)`` pair; the key is length-prefixed."""
    return xxhash.xxh3_64_intdigest(
        len(key).to_bytes(4, "little") + key + version, seed=_DIGEST_SEED
    )


def differing_children(index: int, mine: Sequence[int], theirs: Sequence[int]) -> list[int]:
    """Indices, one level down, of the children of node ``index`` whose values differ.

    ``mine`` and ``theirs`` are the two replicas' child values of that node, in order.
    """
    if len(mine) != len(theirs):
        raise ValueError(f"child lists differ in length: {len(mine)} != {len(theirs)}")
    base = index * len(mine)
    return [base + j for j, (a, b) in enumerate(zip(mine, theirs, strict=True)) if a != b]


class ShardTree:
    """A fixed-shape hash tree over one shard's ``(key, version)`` pairs.

    Level 0 is the root; level ``depth`` holds the ``fanout ** depth`` leaf buckets. Two trees can
    only be compared when their shapes match, so the shape belongs in the anti-entropy handshake.
    """

    __slots__ = ("_count", "_depth", "_fanout", "_levels", "_size", "_xor")

    def __init__(self, fanout: int = 16, depth: int = 3) -> None:
        if not 2 <= fanout <= 0xFFFF or not 0 <= depth <= 0xFFFF or fanout**depth > _MAX_LEAVES:
            raise ValueError(f"bad tree shape: fanout={fanout} depth={depth}")
        self._fanout = fanout
        self._depth = depth
        self._xor = [0] * fanout**depth
        self._count = [0] * fanout**depth
        self._size = 0
        # Invariant: _levels[l][i] is the value of node i at level l, kept current on every update.
        self._levels = [[0] * fanout**level for level in range(depth + 1)]

    @classmethod
    def build(
        cls, pairs: Iterable[tuple[bytes, bytes]], fanout: int = 16, depth: int = 3
    ) -> ShardTree:
        """Build a tree from a scan of ``(key, version)`` pairs, hashing each node once."""
        tree = cls(fanout, depth)
        for key, version in pairs:
            leaf = tree.leaf_of(key)
            tree._xor[leaf] ^= digest(key, version)
            tree._count[leaf] += 1
            tree._size += 1
        tree._rehash_all()
        return tree

    @property
    def fanout(self) -> int:
        """Children per interior node."""
        return self._fanout

    @property
    def depth(self) -> int:
        """Number of levels below the root; the leaves are at level ``depth``."""
        return self._depth

    @property
    def leaves(self) -> int:
        """Number of leaf buckets, ``fanout ** depth``."""
        return len(self._xor)

    def __len__(self) -> int:
        """Number of pairs in the tree."""
        return self._size

    def __eq__(self, other: object) -> bool:
        """Same shape and same leaves (hence same interior nodes)."""
        if not isinstance(other, ShardTree):
            return NotImplemented
        return self.shape == other.shape and self._xor == other._xor and self._count == other._count

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"ShardTree(fanout={self._fanout}, depth={self._depth}, pairs={self._size})"

    @property
    def shape(self) -> tuple[int, int]:
        """``(fanout, depth)``: what two replicas must agree on before comparing."""
        return (self._fanout, self._depth)

    def leaf_of(self, key: bytes) -> int:
        """The leaf bucket of ``key``: a stable hash of the key alone, never of its version."""
        return xxhash.xxh3_64_intdigest(key, seed=_LEAF_SEED) % len(self._xor)

    def add(self, key: bytes, version: bytes) -> None:
        """Add a pair the replica did not hold before."""
        leaf = self.leaf_of(key)
        self._xor[leaf] ^= digest(key, version)
        self._count[leaf] += 1
        self._size += 1
        self._rehash_path(leaf)

    def remove(self, key: bytes, version: bytes) -> None:
        """Remove a pair the replica holds; the caller must know it is held (XOR can't tell)."""
        leaf = self.leaf_of(key)
        if self._count[leaf] == 0:
            raise ValueError(f"remove from empty leaf {leaf}: the pair was never added")
        self._xor[leaf] ^= digest(key, version)
        self._count[leaf] -= 1
        self._size -= 1
        self._rehash_path(leaf)

    def replace(self, key: bytes, old_version: bytes | None, new_version: bytes) -> None:
        """Swap the key's pair ``old_version`` (``None`` when new) for ``new_version``."""
        if old_version is None:
            self.add(key, new_version)
            return
        leaf = self.leaf_of(key)
        if self._count[leaf] == 0:
            raise ValueError(f"replace in empty leaf {leaf}: the old pair was never added")
        self._xor[leaf] ^= digest(key, old_version) ^ digest(key, new_version)
        self._rehash_path(leaf)

    def root(self) -> int:
        """The root value; ``0`` for an empty tree."""
        return self._levels[0][0]

    def level(self, level: int) -> list[int]:
        """A copy of every node value at ``level`` (0 is the root)."""
        return list(self._levels[level])

    def node(self, level: int, index: int) -> int:
        """The value of node ``index`` at ``level``."""
        return self._levels[level][index]

    def children(self, level: int, index: int) -> list[int]:
        """The values of the children of node ``index`` at ``level`` (< depth), in order."""
        if not 0 <= level < self._depth or not 0 <= index < len(self._levels[level]):
            raise ValueError(f"no interior node {index} at level {level}")
        start = index * self._fanout
        return self._levels[level + 1][start : start + self._fanout]

    def frontier_children(self, level: int, indices: Sequence[int]) -> list[int]:
        """Answer a :class:`Descent` request: the children of each node, concatenated in order."""
        out: list[int] = []
        for index in indices:
            out.extend(self.children(level, index))
        return out

    def leaf_count(self, leaf: int) -> int:
        """How many pairs fall in bucket ``leaf``."""
        return self._count[leaf]

    def to_bytes(self) -> bytes:
        """Persist the shape and leaves; interior nodes are recomputed on load."""
        parts = [_HEADER.pack(_FORMAT_VERSION, self._fanout, self._depth)]
        parts.extend(_LEAF.pack(x, c) for x, c in zip(self._xor, self._count, strict=True))
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> ShardTree:
        """Load what :meth:`to_bytes` wrote; raises ``ValueError`` on anything malformed."""
        if len(data) < _HEADER.size:
            raise ValueError("merkle blob too short")
        version, fanout, depth = _HEADER.unpack_from(data)
        if version != _FORMAT_VERSION:
            raise ValueError(f"unknown merkle format version {version}")
        tree = cls(fanout, depth)
        if len(data) != _HEADER.size + tree.leaves * _LEAF.size:
            raise ValueError(f"merkle blob is {len(data)} bytes, wrong for its shape")
        for i, (xor, count) in enumerate(_LEAF.iter_unpack(data[_HEADER.size :])):
            if count == 0 and xor != 0:
                raise ValueError(f"leaf {i} is empty but has a non-zero digest")
            tree._xor[i] = xor
            tree._count[i] = count
            tree._size += count
        tree._rehash_all()
        return tree

    def _leaf_value(self, leaf: int) -> int:
        count = self._count[leaf]
        if count == 0:
            return 0
        return xxhash.xxh3_64_intdigest(_LEAF.pack(self._xor[leaf], count), seed=_LEAF_SEED)

    def _combine(self, children: Sequence[int]) -> int:
        if not any(children):
            return 0  # empty subtrees are 0 however they got empty
        return xxhash.xxh3_64_intdigest(
            struct.pack(f"<{len(children)}Q", *children), seed=_NODE_SEED
        )

    def _rehash_path(self, leaf: int) -> None:
        self._levels[self._depth][leaf] = self._leaf_value(leaf)
        index = leaf
        for level in range(self._depth - 1, -1, -1):
            index //= self._fanout
            self._levels[level][index] = self._combine(self.children(level, index))

    def _rehash_all(self) -> None:
        self._levels[self._depth] = [self._leaf_value(i) for i in range(len(self._xor))]
        f = self._fanout
        for level in range(self._depth - 1, -1, -1):
            below = self._levels[level + 1]
            self._levels[level] = [self._combine(below[i : i + f]) for i in range(0, len(below), f)]


class Descent:
    """One replica's side of a tree comparison, stepped one round trip at a time.

    Start from the remote root. While not :attr:`done`, send :meth:`request` ``(level, parents)``
    to the remote, which answers ``tree.frontier_children(level, parents)``; feed that list to
    :meth:`step`. At the end :attr:`differing_leaves` lists the buckets to reconcile, ascending.
    At most ``depth`` round trips, each carrying only the children of differing nodes.
    """

    __slots__ = ("_differing", "_level", "_parents", "_tree")

    def __init__(self, tree: ShardTree, their_root: int) -> None:
        self._tree = tree
        self._level = 0
        self._parents: list[int] = [0] if tree.root() != their_root else []
        self._differing: list[int] | None = None
        if not self._parents:
            self._differing = []
        elif tree.depth == 0:
            self._differing = [0]  # the root is the only leaf

    @property
    def done(self) -> bool:
        """True once the differing leaves are known."""
        return self._differing is not None

    def request(self) -> tuple[int, list[int]]:
        """``(level, parents)``: whose children to fetch from the remote next; empty when done."""
        if self.done:
            return (self._level, [])
        return (self._level, list(self._parents))

    def step(self, theirs: Sequence[int]) -> tuple[int, list[int]]:
        """Consume the remote's answer to :meth:`request` and return the next request."""
        if self.done:
            raise ValueError("descent already finished")
        fanout = self._tree.fanout
        if len(theirs) != len(self._parents) * fanout:
            raise ValueError(f"expected {len(self._parents) * fanout} values, got {len(theirs)}")
        nxt: list[int] = []
        for n, parent in enumerate(self._parents):
            mine = self._tree.children(self._level, parent)
            nxt.extend(differing_children(parent, mine, theirs[n * fanout : (n + 1) * fanout]))
        self._level += 1
        self._parents = nxt
        if self._level == self._tree.depth or not nxt:  # empty nxt: collision or bad reply
            self._differing = nxt
        return self.request()

    @property
    def differing_leaves(self) -> list[int]:
        """The leaf buckets whose contents differ; only valid once :attr:`done`."""
        if self._differing is None:
            raise ValueError("descent not finished")
        return list(self._differing)


def diff_trees(a: ShardTree, b: ShardTree) -> list[int]:
    """Run a :class:`Descent` of ``a`` against ``b`` in-process; the differing leaves, ascending."""
    if a.shape != b.shape:
        raise ValueError(f"tree shapes differ: {a.shape} != {b.shape}")
    descent = Descent(a, b.root())
    while not descent.done:
        level, parents = descent.request()
        descent.step(b.frontier_children(level, parents))
    return descent.differing_leaves
