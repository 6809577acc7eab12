"""The node-state gauges on /metrics (spine.api.gauges), read from a stand-in node."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

from spine.api.gauges import register_gauges
from spine.core.disk_health import DiskState
from spine.core.metrics import SpineMetrics
from spine.core.ringmap import ACTIVE, JOINING
from tests.harness.http_client import parse_metrics

if TYPE_CHECKING:
    from spine.node import Node


def test_gauges_read_the_node_state_when_scraped() -> None:
    hints = {"n2": 3, "n3": 1}
    oldest = {"n2": 1_000, "n3": 9_000}
    store = SimpleNamespace(
        hint_counts=lambda: dict(hints),
        hints_for=lambda target, n: [SimpleNamespace(created_ms=oldest[target])],
        seq=50, count=lambda: 7, commits=4,
        disk=SimpleNamespace(state=DiskState.FULL, failures={"enospc": 2}),
    )
    entries = {"n1": SimpleNamespace(state=ACTIVE), "n2": SimpleNamespace(state=ACTIVE),
               "n4": SimpleNamespace(state=JOINING)}
    node: Any = SimpleNamespace(
        metrics=SpineMetrics(), store=store, rt=SimpleNamespace(wall_ms=lambda: 10_000),
        indexer=SimpleNamespace(indexed_seq=45),
        keeper=SimpleNamespace(map=SimpleNamespace(entries=entries)),
        liveness=SimpleNamespace(down=lambda: ["n3"]),
        services=SimpleNamespace(inflight=2),
    )
    register_gauges(cast("Node", node))

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        text = node.metrics.registry.render()
        return {(n, tuple(sorted(lbl.items()))): v for n, lbl, v in parse_metrics(text)}

    got = scrape()
    assert got[("spine_hints_pending", (("target", "n2"),))] == 3
    assert got[("spine_replication_lag_seconds", (("target", "n2"),))] == 9.0
    assert got[("spine_replication_lag_seconds", (("target", "n3"),))] == 1.0
    assert got[("spine_index_lag_changes", ())] == 5
    assert got[("spine_records_stored", ())] == 7
    assert got[("spine_ring_members", (("state", "active"),))] == 2
    assert got[("spine_ring_members", (("state", "joining"),))] == 1
    assert got[("spine_ring_members", (("state", "left"),))] == 0
    assert got[("spine_peers_down", ())] == 1
    assert got[("spine_store_commits", ())] == 4
    assert got[("spine_storage_state", ())] == 1  # full
    assert got[("spine_storage_write_failures", (("kind", "enospc"),))] == 2
    assert got[("spine_inflight_requests", ())] == 2
    hints.pop("n2")
    node.services.inflight = 0
    got = scrape()  # read again at each scrape, not at registration
    assert ("spine_hints_pending", (("target", "n2"),)) not in got
    assert got[("spine_inflight_requests", ())] == 0
