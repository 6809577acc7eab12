"""Reads that route around a paused replica before the failure detector notices (issue 17 item
3): the coordinator asks the replicas that answer fastest lately and hedges one that has not
answered within its recent p95, so a SIGSTOPped replica costs a quorum read a few ms, not the
RPC timeout."""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness.ports import bindable
from tests.harness.wait import wait_until
from tests.integration.cluster import LocalCluster
from tests.integration.conftest import WEAK_OK

pytestmark = pytest.mark.integration

# Every port of this test in 27000-27399 (bench/slow_replica.py uses 27400-27999): HTTP
# base + i, RPC base + 130 + i, gossip base + 260 + i, for a base in [LOW, HIGH).
LOW, HIGH = 27000, 27130
RPC, GOSSIP = 130, 260
READS = 200


class PortRangeCluster(LocalCluster):
    """A LocalCluster whose listeners all lie in 27000-27399."""

    def _spots(self, base: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for i in range(self.port_slots()):
            out += [(base + i, socket.SOCK_STREAM), (base + RPC + i, socket.SOCK_STREAM),
                    (base + GOSSIP + i, socket.SOCK_STREAM), (base + GOSSIP + i, socket.SOCK_DGRAM)]
        return out

    def _free_base(self) -> int:
        bases = list(range(LOW, HIGH - self.port_slots()))
        random.Random().shuffle(bases)
        for base in bases:
            if all(bindable(p, k) for p, k in self._spots(base)):
                return base
        raise RuntimeError("no free ports in 27000-27399")

    def rpc_port(self, node: str) -> int:
        return self.base + RPC + self.index(node)

    def gossip_port(self, node: str) -> int:
        return self.base + GOSSIP + self.index(node)

    def base_config(self) -> dict[str, Any]:
        cfg = super().base_config()
        for i, node in enumerate(cfg["nodes"]):
            node["rpc_port"] = self.base + RPC + i
            node["gossip_port"] = self.base + GOSSIP + i
        cfg["seeds"] = [f"127.0.0.1:{self.base + GOSSIP}"]
        return cfg

    def _released(self) -> None:
        if not self.base:
            return
        wait_until(lambda: all(bindable(p, k, reuse=True) for p, k in self._spots(self.base)),
                   10.0, 0.05, "the cluster's ports to be released")


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.99 * len(xs)))]


@pytest.mark.timeout(120)
def test_quorum_reads_route_around_a_paused_replica_before_it_is_declared_down(
    tmp_path: Path,
) -> None:
    c = PortRangeCluster(tmp_path / "c", 3, start=False, **WEAK_OK)
    ns = "slow-replica"
    try:
        c.start_all()
        c.wait_peers_alive()
        keys = [f"k{i}" for i in range(READS)]
        for mid in keys:  # N = 3 on 3 nodes: n3 owns every key
            r = c.http("n1", "PUT", f"/v1/ns/{ns}/memories/{mid}", {"content": mid})
            assert r.status in (200, 201), r.body
        for mid in keys[:50]:  # the coordinators learn how fast their peers answer
            for node in ("n1", "n2"):
                assert c.read(node, ns, mid, "session").status == 200
        c.pause("n3")
        paused_at = time.monotonic()
        took: list[float] = []
        for i, mid in enumerate(keys):
            t0 = time.monotonic()
            r = c.read(("n1", "n2")[i % 2], ns, mid, "session")  # quorum: R = 2 of 3
            took.append(time.monotonic() - t0)
            assert r.status == 200 and r.json()["content"] == mid, (mid, r.status, r.body)
        reads_for = time.monotonic() - paused_at
        still_alive = "n3" in c.alive_seen_by("n1")
        print(f"n3 paused: {READS} quorum reads in {reads_for:.2f} s, p50 "
              f"{sorted(took)[len(took) // 2] * 1000:.1f} ms, p99 {p99(took) * 1000:.1f} ms, "
              f"max {max(took) * 1000:.1f} ms; n1 holds n3 alive after: {still_alive}")
        assert p99(took) < 0.050, (
            f"quorum-read p99 {p99(took) * 1000:.1f} ms with n3 paused (reads took "
            f"{reads_for:.2f} s; n1 still holds n3 alive: {still_alive}); "
            f"slowest {sorted(took)[-5:]}")
        # Whether a hedge was needed is not asserted: once read repair's asks to the paused n3
        # hang, they count as calls in flight and rank n3 last, so a coordinator may never ask it
        # first (a CI run counted no hedge at all, with every read fast). The latency above is
        # the property; tests/unit/test_speculative_read.py covers the hedge itself.
        hedges = c.metric("n1", "spine_read_speculative_total") + c.metric(
            "n2", "spine_read_speculative_total")
        print(f"hedged reads: {hedges:.0f}")
    finally:
        if c.is_running("n3"):
            c.resume("n3")
        c.close()
