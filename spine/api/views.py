"""What `GET /v1/cluster` and `GET /v1/cluster/shards` show of a node: its members (ring map
and gossip), the ring, the embedder, and each shard's owners, pending owners and transfers."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spine.node import Node


def cluster_view(node: Node) -> dict[str, Any]:
    """GET /v1/cluster."""
    emb = node.cfg.embedder
    return {
        "node": node.id,
        "cluster": node.cfg.cluster.name,
        "liveness": "probe" if node.gossip is None else "gossip",
        "members": members_view(node),
        "ring": {"shards": node.cfg.ring.shards, "vnodes": node.cfg.ring.vnodes,
                 "n": node.cfg.replication.n, "n_by_region": dict(node.cfg.replication.regions)},
        "embedder": {"name": emb.name, "dim": emb.dim,
                     "fingerprint": node.embedder.fingerprint,
                     "threads": node.embed_threads},
    }


def members_view(node: Node) -> list[dict[str, Any]]:
    """Each node of the ring map (and any other node gossip knows of): its `zone` and `region`
    ("" when none), ring `state`
    (joining | active | leaving | left, or standby outside the map), whether the operator
    `removed` it (ring map members only), `alive` verdict, and
    with gossip SWIM's `gossip` state (alive | suspect | dead | left | unknown) and
    incarnation."""
    out: list[dict[str, Any]] = []
    for member, e in sorted(node.keeper.map.entries.items()):
        out.append({"id": member, "address": f"{e.host}:{e.port}", "zone": e.zone,
                    "region": e.region, "state": e.state, "removed": e.removed,
                    "alive": node.liveness.is_alive(member)})
    if node.gossip is None:
        return out
    by_id = {m.node_id: m for m in node.gossip.members()}
    for extra in sorted(set(by_id) - set(node.keeper.map.entries)):
        meta = by_id[extra].meta_dict()
        out.append({"id": extra, "address": "", "zone": meta.get("zone", ""),
                    "region": meta.get("region", ""),
                    "state": meta.get("ring", "standby"),
                    "alive": node.liveness.is_alive(extra)})
    for entry in out:
        m = by_id.get(entry["id"])
        entry["gossip"] = "unknown" if m is None else m.state.name.lower()
        entry["incarnation"] = None if m is None else m.incarnation
        entry["gossip_address"] = None if m is None else m.address
    return out


def shards_view(node: Node) -> dict[str, Any]:
    """GET /v1/cluster/shards: per shard its owners (`preference_list`), `pending` owners,
    the owners once the change settles (`next`) and, where this node is a pending owner, its
    `transfer` progress; where it holds the shard, its anti-entropy `root`."""
    p = node.keeper.placement
    shards: list[dict[str, Any]] = []
    for s in range(p.shards):
        entry: dict[str, Any] = {
            "shard": s, "preference_list": list(p.owners(s)), "pending": list(p.pending(s)),
            "next": list(p.future_owners(s)), "transfer": node.rebalancer.copy_view(s),
        }
        if p.holds(node.id, s):
            entry["root"] = node.antientropy.root_hex(s)
        shards.append(entry)
    m = node.keeper.map
    return {"node": node.id, "ring": {"digest": m.digest(), "changing": m.changing,
                                      "moves": len(p.moves())},
            "transfers": node.rebalancer.status(), "shards": shards}
