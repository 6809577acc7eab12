"""Who is in the ring, and what a ring change moves (DESIGN §2, §9). Pure: no I/O, no clock.

The **ring map** holds one entry per node that was ever a member: its ring state
(`joining | active | leaving | left`), its addresses, zone and region, and the version (an HLC
value) of its last change. Maps merge entry by entry, the larger `(version, state rank)`
winning, so they form a join-semilattice: nodes exchange maps in any order, any number of
times, and agree once every change has reached everyone (Riak core gossips its ring the same
way).

Placement is a pure function of the map:

- the **current** ring holds the `active` and `leaving` nodes: it answers reads, its preference
  lists are a shard's owners, and a write needs its usual quorum there;
- the **next** ring holds the `active` and `joining` nodes: where the data goes;
- a shard's **pending** owners are in the next preference list but not the current one. Every
  write is also sent to them, and needs one more acknowledgement per pending owner (Cassandra's
  `blockFor + pending`): of the N + P nodes written, at most N − W missed the write, so the N
  owners of the next ring still hold it on at least W, whichever way the change ends.

A change settles (joining → active, leaving → left, in one step) once every pending owner has
copied its shards and then synced them with every live owner after the change was known
everywhere; see :class:`~spine.cluster.rebalance.Rebalancer`, which drives it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import xxhash

from spine.core.ring import Hash64, Replicas, Ring, hash64, owners_in_region

JOINING, ACTIVE, LEAVING, LEFT = "joining", "active", "leaving", "left"
STATES = (JOINING, ACTIVE, LEAVING, LEFT)
_RANK = {s: i for i, s in enumerate(STATES)}
_CURRENT = (ACTIVE, LEAVING)
_NEXT = (ACTIVE, JOINING)
# The longest zone or region name an entry from the wire may carry: gossip bounds a member's meta
# values (its zone among them) the same way (`swim_messages.MAX_META_VALUE`).
MAX_SITE = 512


@dataclass(frozen=True, slots=True)
class Entry:
    """One node in the ring map."""

    node: str
    state: str
    version: int
    zone: str = ""
    host: str = ""
    port: int = 0
    rpc_port: int = 0
    gossip_port: int = 0
    # Taken out by the operator (`remove`: it was down) rather than decommissioned: the only
    # member a ring change may settle without, and never a trailing owner.
    removed: bool = False
    # Last, so that entries built positionally before regions existed still mean the same.
    region: str = ""

    def __post_init__(self) -> None:
        if self.state not in _RANK:
            raise ValueError(f"unknown ring state {self.state!r}")

    def newer_than(self, other: Entry) -> bool:
        """Whether this entry wins a merge against `other` (same node): the larger version,
        then the later state, then the larger wire tuple — a total order, so that maps holding
        different addresses for one node at one version still converge."""
        return (self.version, _RANK[self.state], self._tail()) > (
            other.version, _RANK[other.state], other._tail())

    def _tail(self) -> tuple[str, str, int, int, int, bool, str]:
        return (self.zone, self.host, self.port, self.rpc_port, self.gossip_port, self.removed,
                self.region)

    def to_wire(self) -> list[Any]:
        """9 fields, and a 10th (the region) only when the node has one: a map without regions
        reads the same on nodes that predate them, and keeps its digest."""
        w = [self.node, self.state, self.version, self.zone, self.host, self.port,
             self.rpc_port, self.gossip_port, self.removed]
        return [*w, self.region] if self.region else w

    @classmethod
    def from_wire(cls, w: list[Any]) -> Entry:
        """From 10 fields; 9: no region (""); 8: a map stored before `removed` existed, read as
        not removed."""
        if not isinstance(w, list | tuple) or len(w) not in (8, 9, 10):
            raise ValueError("a ring entry is a list of 8 to 10 fields")
        try:
            removed = len(w) >= 9 and w[8]
            if not isinstance(removed, bool):
                raise TypeError("removed is not a boolean")
            region = w[9] if len(w) == 10 else ""
            for name, site in (("zone", w[3]), ("region", region)):
                if not isinstance(site, str) or len(site) > MAX_SITE:
                    raise TypeError(f"{name} is not a string of at most {MAX_SITE} characters")
            return cls(str(w[0]), str(w[1]), int(w[2]), w[3], str(w[4]), int(w[5]),
                       int(w[6]), int(w[7]), removed, region)
        except TypeError as e:
            raise ValueError(f"bad ring entry {w!r}: {e}") from None


class RingMap:
    """node id → Entry; immutable, merged with `merge`."""

    __slots__ = ("_digest", "entries")

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self.entries: dict[str, Entry] = {e.node: e for e in entries}
        self._digest: str | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RingMap) and self.entries == other.entries

    def __hash__(self) -> int:
        return hash(self.digest())

    def get(self, node: str) -> Entry | None:
        return self.entries.get(node)

    def state(self, node: str) -> str | None:
        e = self.entries.get(node)
        return None if e is None else e.state

    def merge(self, others: Iterable[Entry]) -> RingMap:
        """The join of this map and `others` (self when nothing in `others` is newer)."""
        merged = dict(self.entries)
        changed = False
        for e in others:
            mine = merged.get(e.node)
            if mine is None or e.newer_than(mine):
                merged[e.node] = e
                changed = True
        return RingMap(merged.values()) if changed else self

    def with_state(self, node: str, state: str, version: int,
                   removed: bool | None = None) -> RingMap:
        """This map with `node` moved to `state` at a version newer than its entry's (at least
        `version`); `removed` sets or clears the operator's mark (None: as it was)."""
        e = self.entries[node]
        mark = e.removed if removed is None else removed
        return self.merge([replace(e, state=state, version=max(version, e.version + 1),
                                   removed=mark)])

    def removed(self, node: str) -> bool:
        """Whether the operator removed `node` (see `Entry.removed`)."""
        e = self.entries.get(node)
        return e is not None and e.removed

    def to_wire(self) -> list[list[Any]]:
        return [self.entries[n].to_wire() for n in sorted(self.entries)]

    @classmethod
    def from_wire(cls, w: Iterable[list[Any]]) -> RingMap:
        return cls(Entry.from_wire(x) for x in w)

    def digest(self) -> str:
        """A short fingerprint: equal maps, equal digests."""
        if self._digest is None:
            h = xxhash.xxh3_64()
            for wire in self.to_wire():
                h.update(repr(wire).encode())
            self._digest = h.hexdigest()
        return self._digest

    def members(self, states: Iterable[str]) -> dict[str, str]:
        """node → zone of the nodes in `states`."""
        want = set(states)
        return {n: e.zone for n, e in self.entries.items() if e.state in want}

    def regions(self) -> dict[str, str]:
        """node → region of every node in the map that has one."""
        return {n: e.region for n, e in self.entries.items() if e.region}

    @property
    def changing(self) -> bool:
        """Whether a join, decommission or remove is under way."""
        return any(e.state in (JOINING, LEAVING) for e in self.entries.values())

    def settled(self, version: int) -> RingMap:
        """Every joining node active and every leaving node left, at `version`."""
        out = self
        for n, e in self.entries.items():
            if e.state == JOINING:
                out = out.with_state(n, ACTIVE, version)
            elif e.state == LEAVING:
                out = out.with_state(n, LEFT, version)
        return out


def genesis(nodes: Iterable[Mapping[str, Any]]) -> RingMap:
    """The map of a cluster first started from its config: every configured node active, at
    version 0 (so any later change, made at an HLC value, wins over it)."""
    return RingMap(
        Entry(str(n["id"]), ACTIVE, 0, str(n.get("zone", "")), str(n.get("host", "")),
              int(n.get("port", 0)), int(n.get("rpc_port", 0)), int(n.get("gossip_port", 0)),
              region=str(n.get("region", "")))
        for n in nodes
    )


@dataclass(frozen=True, slots=True)
class Move:
    """A shard copy a ring change needs: `target` must come to hold `shard`; `sources` are
    the shard's current owners (the leaving ones first: their data is the data that moves)."""

    shard: int
    target: str
    sources: tuple[str, ...]


class Placement:
    """The current and next rings of a ring map, and the moves between them."""

    def __init__(
        self, ringmap: RingMap, *, shards: int, vnodes: int, n: Replicas, h: Hash64 = hash64,
        trailing: Ring | None = None,
    ) -> None:
        """`n`: `replication.n`, an int or a map region → N (see `spine.core.ring.place`).
        `trailing`: the current ring before the change that just settled. For a while after
        a settle some nodes may still read with the old owners, so writes keep going to them
        too (see `write_set`)."""
        self.map = ringmap
        self.trailing = trailing
        self.shards = shards
        self.regions = ringmap.regions()
        self.current = Ring(ringmap.members(_CURRENT), shards=shards, vnodes=vnodes, n=n, h=h,
                            regions=self.regions)
        if ringmap.changing:
            self.next = Ring(ringmap.members(_NEXT), shards=shards, vnodes=vnodes, n=n, h=h,
                             regions=self.regions)
        else:
            self.next = self.current
        self._pending: list[tuple[str, ...]] = [
            tuple(x for x in self.next.preference_list(s)
                  if x not in self.current.preference_list(s))
            for s in range(shards)
        ]
        # A removed node is gone: it neither reads nor needs the writes a trailing owner takes.
        self._trailing: list[tuple[str, ...]] = [
            tuple(x for x in trailing.preference_list(s)
                  if x not in self.current.preference_list(s) and x not in self._pending[s]
                  and not ringmap.removed(x))
            if trailing is not None else ()
            for s in range(shards)
        ]

    def shard(self, namespace: str, mid: str) -> int:
        return self.current.shard(namespace, mid)

    def owners(self, shard: int) -> tuple[str, ...]:
        """The current preference list: who answers reads and counts toward a quorum."""
        return self.current.preference_list(shard)

    def region_of(self, node: str) -> str:
        """The region of any node in the map ("" when it has none, or is not in the map)."""
        return self.regions.get(node, "")

    def owners_in_region(self, owners: Sequence[str], region: str) -> tuple[str, ...]:
        """The nodes of `owners` (e.g. `owners(shard)` or a write set) in `region`, in order:
        what a region-local quorum counts."""
        return owners_in_region(owners, region, self.regions)

    def pending(self, shard: int) -> tuple[str, ...]:
        """Nodes that will own `shard` once the change settles: they take writes already."""
        return self._pending[shard]

    def write_set(self, shard: int) -> tuple[tuple[str, ...], int]:
        """(nodes a write goes to, acknowledgements needed beyond the level's W): the owners,
        the pending owners and, just after a settle, the trailing (previous) owners — one more
        acknowledgement each, so that a quorum of either the old or the new owners holds it."""
        more = self._pending[shard] + self._trailing[shard]
        return self.owners(shard) + more, len(more)

    def trailing_owners(self, shard: int) -> tuple[str, ...]:
        """Previous owners of `shard` that still take writes after the last settle."""
        return self._trailing[shard]

    def future_owners(self, shard: int) -> tuple[str, ...]:
        """The preference list once the change settles."""
        return self.next.preference_list(shard)

    def moves(self) -> list[Move]:
        """Every (shard, target) copy the change needs, in shard order."""
        out: list[Move] = []
        for s in range(self.shards):
            if not self._pending[s]:
                continue
            owners = self.owners(s)
            leaving = [o for o in owners if self.map.state(o) == LEAVING]
            sources = tuple(leaving + [o for o in owners if o not in leaving])
            out.extend(Move(s, t, sources) for t in self._pending[s])
        return out

    def holds(self, node: str, shard: int) -> bool:
        """Whether `node` should keep `shard`'s data: an owner now, or one to be."""
        return node in self.owners(shard) or node in self._pending[shard]

    def members(self) -> list[str]:
        """Every node that holds or will hold data (active, joining, leaving), sorted."""
        return sorted(self.map.members((JOINING, ACTIVE, LEAVING)))


def claimant(ringmap: RingMap, alive: Iterable[str]) -> str | None:
    """The node that settles ring changes: the live `active` node with the smallest id (Riak's
    claimant). Two nodes that disagree would both make the same settled map."""
    live = set(alive)
    active = sorted(n for n, e in ringmap.entries.items() if e.state == ACTIVE and n in live)
    return active[0] if active else None
