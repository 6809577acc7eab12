"""Placement: Q fixed shards on a consistent-hash ring of virtual nodes (Dynamo §4.2, Riak core).

The ring is a pure function of the active members: any node that agrees on membership computes the
same preference lists, with no coordinator. The hash is injected so tests can reason about owners
with arithmetic (groupcache's `consistenthash` does the same).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import xxhash
from sortedcontainers import SortedDict

Hash64 = Callable[[bytes], int]


def hash64(data: bytes) -> int:
    """The stable 64-bit hash used for shards and tokens (xxh3; never Python's `hash()`)."""
    h: int = xxhash.xxh3_64_intdigest(data)
    return h


def shard_of(namespace: str, mid: str, shards: int, h: Hash64 = hash64) -> int:
    """The shard a key lives in: hash64(namespace + "/" + id) mod Q."""
    return h(f"{namespace}/{mid}".encode()) % shards


class Ring:
    """Tokens of every member on a 64-bit ring and, per shard, its preference list of N nodes.

    `members` maps node id → zone (empty string when zones are not configured). Preference lists
    are computed once at construction: a ring is immutable, a membership change builds a new one.
    """

    def __init__(
        self,
        members: Mapping[str, str],
        *,
        shards: int,
        vnodes: int,
        n: int,
        h: Hash64 = hash64,
    ) -> None:
        self.members = dict(members)
        self.shards = shards
        self.vnodes = vnodes
        self.n = n
        self._hash = h
        self._tokens: SortedDict = SortedDict()
        for node in sorted(self.members):
            for i in range(vnodes):
                self._tokens[h(f"{node}#{i}".encode())] = node
        self._prefs: list[tuple[str, ...]] = [self._walk(s) for s in range(shards)]

    def shard(self, namespace: str, mid: str) -> int:
        """The shard of a key."""
        return shard_of(namespace, mid, self.shards, self._hash)

    def preference_list(self, shard: int) -> tuple[str, ...]:
        """The N distinct nodes (fewer in a smaller cluster) that own `shard`, in ring order."""
        return self._prefs[shard]

    def walk_order(self, shard: int) -> list[str]:
        """Every member clockwise from the shard's point: preference list, then fallbacks."""
        return self._distinct_clockwise(self._hash(f"shard#{shard}".encode()))

    def shards_of(self, node: str) -> list[int]:
        """The shards whose preference list holds `node`."""
        return [s for s, pref in enumerate(self._prefs) if node in pref]

    def _distinct_clockwise(self, start: int) -> list[str]:
        order: list[str] = []
        seen: set[str] = set()
        if not self._tokens:
            return order
        keys = self._tokens.keys()
        i = self._tokens.bisect_left(start)
        total = len(keys)
        for step in range(total):
            node = self._tokens[keys[(i + step) % total]]
            if node not in seen:
                seen.add(node)
                order.append(node)
                if len(order) == len(self.members):
                    break
        return order

    def _walk(self, shard: int) -> tuple[str, ...]:
        order = self.walk_order(shard)
        zones = {self.members[m] for m in order}
        if len(zones) <= 1:
            return tuple(order[: self.n])
        # Distinct zones first (in ring order), then the rest in ring order: as Cassandra's
        # NetworkTopologyStrategy does, a zone holds a second replica only when zones run out.
        picked: list[str] = []
        used: set[str] = set()
        for node in order:
            if len(picked) == self.n:
                break
            if self.members[node] not in used:
                used.add(self.members[node])
                picked.append(node)
        for node in order:
            if len(picked) == self.n:
                break
            if node not in picked:
                picked.append(node)
        return tuple(picked)


def covering_set(ring: Ring, live: Iterable[str], prefer: str | None = None) -> list[str]:
    """A small set of live nodes that together hold every shard that has a live replica.

    Greedy set cover, starting from `prefer` (the coordinator itself, whose answer costs no
    network hop). With N replicas on N nodes one node covers everything.
    """
    alive = set(live)
    uncovered = {s for s in range(ring.shards) if alive.intersection(ring.preference_list(s))}
    holds = {n: set(ring.shards_of(n)) for n in alive}
    chosen: list[str] = []
    if prefer is not None and prefer in alive:
        chosen.append(prefer)
        uncovered -= holds[prefer]
    while uncovered:
        best = max(sorted(holds), key=lambda n: len(holds[n] & uncovered))
        gain = holds[best] & uncovered
        if not gain:
            break
        chosen.append(best)
        uncovered -= gain
    return chosen
