"""Placement: Q fixed shards on a consistent-hash ring of virtual nodes (Dynamo §4.2, Riak core).

The ring is a pure function of the active members: any node that agrees on membership computes the
same preference lists, with no coordinator. The hash is injected so tests can reason about owners
with arithmetic (groupcache's `consistenthash` does the same).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

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


Replicas = int | Mapping[str, int]
"""`replication.n`: a count over the whole ring, or region → count (NetworkTopologyStrategy)."""


def total_replicas(n: Replicas) -> int:
    """N: the replicas of every shard, summed over the regions when `n` is a map."""
    return n if isinstance(n, int) else sum(n.values())


def spread(order: Sequence[str], n: int, tiers: Sequence[Callable[[str], object]]) -> list[str]:
    """Up to `n` of `order`'s nodes: for each tier in turn (coarse to fine, e.g. region then
    zone), the nodes whose tier value no pick holds yet, in `order`; then the rest in `order`.
    A failure domain takes a second replica only when the domains of that tier run out."""
    picked: list[str] = []
    chosen: set[str] = set()
    for tier in tiers:
        used = {tier(p) for p in picked}
        for node in order:
            if len(picked) >= n:
                return picked
            if node not in chosen and tier(node) not in used:
                used.add(tier(node))
                chosen.add(node)
                picked.append(node)
    for node in order:
        if len(picked) >= n:
            break
        if node not in chosen:
            chosen.add(node)
            picked.append(node)
    return picked


def place(
    order: Sequence[str], zones: Mapping[str, str], regions: Mapping[str, str], n: Replicas
) -> tuple[str, ...]:
    """A preference list from the ring walk `order` (every member, clockwise from the shard's
    point). Pure: the placement rule in one place.

    - `n` an int: N nodes, distinct regions first, then distinct zones, then ring order. With
      one region (none configured) this is the zone rule Spine always had.
    - `n` a map region → N_r (Cassandra's NetworkTopologyStrategy): N_r nodes of each region r
      (all of them when it has fewer), distinct zones of that region first, then ring order;
      nodes of a region the map does not name hold no replica. The list is in ring order.
    """

    def region(node: str) -> str:
        return regions.get(node, "")

    def site(node: str) -> tuple[str, str]:
        return region(node), zones.get(node, "")

    if isinstance(n, int):
        if len({site(m) for m in order}) <= 1:
            return tuple(order[:n])
        return tuple(spread(order, n, (region, site)))
    picked: set[str] = set()
    for r in sorted(n):
        local = [m for m in order if region(m) == r]
        picked.update(spread(local, n[r], (site,)))
    return tuple(m for m in order if m in picked)


def shortfall(regions: Iterable[str], n: Replicas) -> str | None:
    """Why a ring of nodes in `regions` (one item per node) cannot hold `n` replicas of every
    shard, or None when it can: too few nodes, or with a region map too few in some region."""
    have = list(regions)
    if isinstance(n, int):
        return None if len(have) >= n else f"{len(have)} nodes for replication.n={n}"
    for region in sorted(n):
        count = have.count(region)
        if count < n[region]:
            return (f"{count} nodes in region {region!r} for"
                    f" replication.n.{region}={n[region]}")
    return None


def owners_in_region(owners: Sequence[str], region: str,
                     regions: Mapping[str, str]) -> tuple[str, ...]:
    """The nodes of `owners` (a preference list) in `region`, in the list's order;
    `regions` maps node → region (a node it does not name is in region "")."""
    return tuple(o for o in owners if regions.get(o, "") == region)


class Ring:
    """Tokens of every member on a 64-bit ring and, per shard, its preference list.

    `members` maps node id → zone (empty string when zones are not configured), `regions` node
    id → region (a member it does not name is in region "", the one implicit region). `n` is
    `replication.n`: an int, or a map region → replicas in that region (see `place`). Preference
    lists are computed once at construction: a ring is immutable, a membership change builds a
    new one.
    """

    def __init__(
        self,
        members: Mapping[str, str],
        *,
        shards: int,
        vnodes: int,
        n: Replicas,
        h: Hash64 = hash64,
        regions: Mapping[str, str] | None = None,
    ) -> None:
        self.members = dict(members)
        self.regions = {m: r for m, r in (regions or {}).items() if m in self.members and r}
        self.shards = shards
        self.vnodes = vnodes
        self.replicas: Replicas = n if isinstance(n, int) else dict(n)
        self.n = total_replicas(n)  # quorum sizes are computed on the total N
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
        """The nodes that own `shard`: N distinct nodes (fewer in a smaller cluster), or with
        a region map N_r of each region; see `place` for the order."""
        return self._prefs[shard]

    def walk_order(self, shard: int) -> list[str]:
        """Every member clockwise from the shard's point: preference list, then fallbacks."""
        return self._distinct_clockwise(self._hash(f"shard#{shard}".encode()))

    def shards_of(self, node: str) -> list[int]:
        """The shards whose preference list holds `node`."""
        return [s for s, pref in enumerate(self._prefs) if node in pref]

    def region_of(self, node: str) -> str:
        """The region of a member ("" when regions are not configured)."""
        return self.regions.get(node, "")

    def owners_in_region(self, owners: Sequence[str], region: str) -> tuple[str, ...]:
        """The nodes of `owners` in `region`, in the list's order."""
        return owners_in_region(owners, region, self.regions)

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
        return place(self.walk_order(shard), self.members, self.regions, self.replicas)


def covering_set(
    ring: Ring,
    live: Iterable[str],
    prefer: str | None = None,
    *,
    rank: Callable[[list[str]], list[str]] | None = None,
    shards: Iterable[int] | None = None,
) -> list[str]:
    """A small set of live nodes that together hold every shard that has a live replica.

    Greedy set cover, starting from `prefer` (the coordinator itself, whose answer costs no
    network hop). With N replicas on N nodes one node covers everything. `rank` orders nodes
    fastest first (`spine.core.peer_stats.PeerStats.rank`): among nodes that would cover as many
    shards, the faster is chosen. `shards`: cover only these (default: every shard).
    """
    alive = set(live)
    wanted = range(ring.shards) if shards is None else shards
    uncovered = {s for s in wanted if alive.intersection(ring.preference_list(s))}
    holds = {n: set(ring.shards_of(n)) for n in alive}
    order = sorted(holds) if rank is None else rank(sorted(holds))
    chosen: list[str] = []
    if prefer is not None and prefer in alive:
        chosen.append(prefer)
        uncovered -= holds[prefer]
    while uncovered:
        # max() keeps the first of equals: the fastest (or smallest id) of the best covers.
        best = max(order, key=lambda n: len(holds[n] & uncovered))
        gain = holds[best] & uncovered
        if not gain:
            break
        chosen.append(best)
        uncovered -= gain
    return chosen
