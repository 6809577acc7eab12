"""Routing a key's request (Dynamo §4.3–§4.5): which replicas, and who coordinates it. Pure.

Given a placement (the ring map's current, pending and trailing owners) and who is alive, a key's
`Route` says everything the coordinator needs before it sends anything:

- the **owners** (the current preference list) answer reads and count toward a quorum;
- the **write set** adds the pending owners (a ring change under way) and the trailing owners
  (just after a settle), one extra acknowledgement each (Cassandra's `blockFor + pending`; see
  `spine.core.ringmap`);
- the **coordinators**, best first: this node when it is an owner (no hop), else the live owners.
  A node that is not an owner forwards to the first of them that answers; when none is alive it
  coordinates itself (a sloppy quorum for eventual writes, else a quorum error).

`Liveness` is a fact passed in as a predicate, so the same route comes out for the same facts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from spine.core.ringmap import Placement

IsAlive = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class Route:
    """Where one key's request goes."""

    shard: int
    owners: tuple[str, ...]
    write_to: tuple[str, ...]
    extra: int  # acknowledgements a write needs beyond the level's W (pending + trailing owners)
    coordinators: tuple[str, ...]

    def forwards(self, self_id: str) -> bool:
        """Whether the request goes to another node (a live owner) rather than running here."""
        return bool(self.coordinators) and self.coordinators[0] != self_id


def coordinators(owners: Sequence[str], self_id: str, is_alive: IsAlive) -> tuple[str, ...]:
    """Replicas that may coordinate, best first: this node if it is one, else the live ones."""
    if self_id in owners:
        return (self_id,)
    return tuple(p for p in owners if is_alive(p))


def route(
    placement: Placement, namespace: str, mid: str, self_id: str, is_alive: IsAlive
) -> Route:
    """The route of key `namespace/mid` under `placement`, seen from `self_id`."""
    shard = placement.shard(namespace, mid)
    owners = placement.owners(shard)
    write_to, extra = placement.write_set(shard)
    return Route(shard, owners, write_to, extra, coordinators(owners, self_id, is_alive))


def localized(
    rt: Route, in_region: Callable[[Sequence[str]], tuple[str, ...]], self_id: str,
    is_alive: IsAlive,
) -> Route | None:
    """The route of a region-local level (issue 17): the key's owners, write set and coordinators
    in the coordinator's region (`in_region` keeps a list's nodes of that region, in order).
    None when the region holds no owner of the key: the level then acts as its global form."""
    owners = in_region(rt.owners)
    if not owners:
        return None
    more = in_region(rt.write_to[len(rt.owners):])
    return Route(rt.shard, owners, owners + more, len(more),
                 coordinators(owners, self_id, is_alive))


def live(nodes: Sequence[str], is_alive: IsAlive) -> list[str]:
    """The nodes of `nodes` thought alive, in order: whom a read asks."""
    return [p for p in nodes if is_alive(p)]


def catch_up_peers(owners: Sequence[str], self_id: str, is_alive: IsAlive) -> list[str]:
    """Whom a coordinator asks for a version newer than its own (the other live owners)."""
    return [p for p in owners if p != self_id and is_alive(p)]


@dataclass(frozen=True, slots=True)
class WritePlan:
    """A batch split by coordinator: op indexes to run here, and per target those to forward."""

    local: tuple[int, ...]
    forward: dict[str, tuple[int, ...]]


def split_writes(routes: Sequence[Route], self_id: str, *, forwarded: bool) -> WritePlan:
    """Which ops of a batch run here and which go to which owner (in op order).

    A forwarded request runs here whatever the routes say (the forwarding node chose us; we do not
    forward again). An op whose key has no live owner runs here too: as a sloppy quorum for an
    eventual write, or to fail with a quorum error.
    """
    local: list[int] = []
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(routes):
        if forwarded or not r.forwards(self_id):
            local.append(i)
        else:
            groups.setdefault(r.coordinators[0], []).append(i)
    return WritePlan(tuple(local), {t: tuple(ix) for t, ix in groups.items()})
