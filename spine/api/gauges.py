"""The node's state as `/metrics` gauges: pending hints and replication lag per replica, index
lag, records stored, ring members by state, peers down, group commits, the disk's verdict and
failures, and HTTP requests in flight. Each gauge is read when `/metrics` is scraped."""

from __future__ import annotations

from typing import TYPE_CHECKING

from spine.core.disk_health import DiskState
from spine.core.ringmap import STATES

if TYPE_CHECKING:
    from spine.node import Node


def register_gauges(node: Node) -> None:
    """Register `node`'s state gauges in its metrics registry."""
    m = node.metrics.registry
    store = node.store

    def hints() -> dict[tuple[str, ...], float]:
        return {(k,): float(v) for k, v in store.hint_counts().items()}

    m.gauge("spine_hints_pending", "hints waiting for their replica", ("target",), hints)

    def lag() -> dict[tuple[str, ...], float]:
        # The age of the oldest write a replica has not acknowledged (its oldest hint):
        # how far behind that replica is, as far as this node knows.
        now = node.rt.wall_ms()
        out: dict[tuple[str, ...], float] = {}
        for target in store.hint_counts():
            oldest = store.hints_for(target, 1)
            if oldest:
                out[(target,)] = max(0.0, (now - oldest[0].created_ms) / 1000)
        return out

    m.gauge("spine_replication_lag_seconds",
            "estimated replication lag per replica: age of its oldest pending hint",
            ("target",), lag)
    m.gauge("spine_index_lag_changes", "committed changes the vector index has not applied",
            (), lambda: {(): float(max(0, store.seq - node.indexer.indexed_seq))})
    m.gauge("spine_records_stored", "records (tombstones included) this node stores", (),
            lambda: {(): float(store.count())})

    def members() -> dict[tuple[str, ...], float]:
        counts: dict[tuple[str, ...], float] = {(s,): 0.0 for s in STATES}
        for e in node.keeper.map.entries.values():
            counts[(e.state,)] += 1
        return counts

    m.gauge("spine_ring_members", "nodes in this node's ring map, by ring state",
            ("state",), members)
    m.gauge("spine_peers_down", "peers this node believes down", (),
            lambda: {(): float(len(node.liveness.down()))})
    m.gauge("spine_store_commits", "LMDB group commits since start", (),
            lambda: {(): float(store.commits)})
    m.gauge("spine_storage_state", "disk verdict: 0 ok, 1 full (507 until space is freed),"
            " 2 failed (503 until restart)", (),
            lambda: {(): float(list(DiskState).index(store.disk.state))})
    m.gauge("spine_storage_write_failures", "write transactions the disk failed since start,"
            " by kind", ("kind",),
            lambda: {(k,): float(v) for k, v in store.disk.failures.items()})
    m.gauge("spine_inflight_requests", "HTTP requests in flight", (),
            lambda: {(): float(node.services.inflight)})
