"""Gossip (SWIM) as the source of liveness, on real processes (DESIGN §8).

A crash is declared DEAD everywhere within the documented failure-detection bound; a short
SIGSTOP does not leave a node dead (it is not declared, or it refutes); a restarted node's hints
are replayed because gossip sees it come back; a node whose identity differs is refused on both
sides and the cluster runs on without it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from spine.cluster.membership import swim_config
from spine.core.config import GossipSection
from spine.core.swim import failure_detection_bound
from tests.harness.ports import GOSSIP_OFFSET, HOST
from tests.integration.cluster import LocalCluster
from tests.integration.conftest import WEAK_OK, ClusterFactory

pytestmark = pytest.mark.integration

NODES = ("n1", "n2", "n3")
# The settings every cluster here runs with (the defaults), and their documented bound.
BOUND = failure_detection_bound(swim_config(GossipSection()), len(NODES))


def gossip_states(c: LocalCluster, observer: str) -> dict[str, str]:
    """What `observer`'s /v1/cluster says of each member's SWIM state."""
    return {m["id"]: m["gossip"] for m in c.cluster_view(observer)["members"]}


def wait_all_alive(c: LocalCluster, nodes: tuple[str, ...], timeout: float) -> None:
    want = dict.fromkeys(nodes, "alive")
    c.wait_until(lambda: all(gossip_states(c, n) == want for n in nodes), timeout,
                 message=lambda: f"all of {nodes} ALIVE everywhere; views: "
                 f"{ {n: gossip_states(c, n) for n in nodes} }")


def test_the_documented_bound() -> None:
    assert pytest.approx(14.0) == BOUND  # the figure cluster.yaml.example gives


@pytest.mark.timeout(90)
def test_kill_9_is_declared_dead_everywhere_within_the_bound(make_cluster: ClusterFactory) -> None:
    c = make_cluster()
    wait_all_alive(c, NODES, 15)
    c.kill("n3")
    killed = time.monotonic()
    seen: dict[str, float] = {}

    def dead_everywhere() -> bool:
        for n in ("n1", "n2"):
            if n not in seen and gossip_states(c, n)["n3"] == "dead":
                seen[n] = time.monotonic() - killed
        return len(seen) == 2

    c.wait_until(dead_everywhere, BOUND + 5, 0.05, message=lambda: f"n3 DEAD on n1 and n2 "
                 f"(seen so far: {seen})")
    print(f"\nkill -9 → DEAD after {seen} (bound {BOUND:.1f} s)")
    assert max(seen.values()) <= BOUND, (seen, BOUND)
    for n in ("n1", "n2"):
        m = {m["id"]: m for m in c.cluster_view(n)["members"]}["n3"]
        assert m["alive"] is False and m["state"] == "active", m  # still in the ring
        assert c.metric(n, "spine_member_events_total", event="dead") >= 1
        assert c.metric(n, "spine_members", state="dead") == 1
    assert c.http("n1", "GET", "/readyz").status == 200  # 2 of 3: still a quorum


@pytest.mark.timeout(90)
def test_a_two_second_sigstop_ends_with_the_node_alive_everywhere(
    make_cluster: ClusterFactory,
) -> None:
    c = make_cluster()
    wait_all_alive(c, NODES, 15)
    c.pause("n3")
    worst: dict[str, str] = {}
    rank = {"alive": 0, "suspect": 1, "dead": 2, "left": 3}
    until = time.monotonic() + 2.0
    while time.monotonic() < until:  # the fault lasts 2 s; sample what the others think
        for n in ("n1", "n2"):
            s = gossip_states(c, n)["n3"]
            if rank[s] > rank.get(worst.get(n, "alive"), 0):
                worst[n] = s
        time.sleep(0.1)
    c.resume("n3")
    resumed = time.monotonic()
    wait_all_alive(c, NODES, BOUND)
    print(f"\nSIGSTOP 2 s: worst state seen {worst or 'alive'}; alive everywhere "
          f"{time.monotonic() - resumed:.2f} s after SIGCONT")
    # Declared dead or not, it is alive again, at a higher incarnation if it had to refute.
    views = {m["id"]: m for m in c.cluster_view("n1")["members"]}
    if "dead" in worst.values() or "suspect" in worst.values():
        assert views["n3"]["incarnation"] >= 1, views["n3"]


@pytest.mark.timeout(120)
def test_hints_for_a_restarted_node_are_replayed_when_gossip_sees_it_back(
    make_cluster: ClusterFactory,
) -> None:
    # Replay only on a wake-up: the periodic retry is a minute away, so gossip must do it.
    c = make_cluster(**WEAK_OK, handoff={"replay_interval_ms": 60_000})
    ns = "gossip-hints"
    wait_all_alive(c, NODES, 15)
    c.kill("n3")
    c.wait_until(lambda: gossip_states(c, "n1")["n3"] == "dead", BOUND + 5,
                 message="n1 to see n3 DEAD")
    client = c.client(["n1"])
    expected = {f"k{i}": f"hinted {i}" for i in range(10)}
    for mid, content in expected.items():
        client.put(ns, mid, content)
    assert c.metric("n1", "spine_hints_pending", target="n3") >= len(expected)
    c.start("n3", wait_peers=False)
    started = time.monotonic()
    c.wait_until(lambda: (c.local_record("n3", ns, "k0") or {}).get("content") == "hinted 0",
                 15, message="n1's hint for k0 to reach the restarted n3")
    print(f"\nhint replayed {time.monotonic() - started:.2f} s after n3 answered /healthz")
    c.wait_until(lambda: all((c.local_record("n3", ns, m) or {}).get("content") == v
                             for m, v in expected.items()), 15, message="every hint on n3")
    c.wait_until(lambda: c.metric("n1", "spine_hints_pending", target="n3") == 0, 15,
                 message="n1's hints for n3 to be dropped once delivered")


class Stranger(LocalCluster):
    """One node, id `x1`, whose own config joins another cluster's gossip seeds, with that
    cluster's secret (gossip is authenticated: without it x1 would not be heard at all)."""

    def __init__(self, tmp_path: Path, seeds: list[str], secret: str, **overrides: Any) -> None:
        self.join_seeds = seeds
        self.secret = secret
        super().__init__(tmp_path, nodes=1, start=False, **overrides)
        self.names = ["x1"]

    def _write_config(self) -> None:
        super()._write_config()
        self.config["nodes"][0]["id"] = "x1"
        self.config["seeds"] = self.join_seeds
        self.config["cluster"]["secret"] = self.secret
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("overrides", "key"),
    [({"embedder": {"dim": 64}}, "embedder"), ({"ring": {"shards": 128}}, "shards")],
    ids=["embedder-dim", "ring-shards"],
)
def test_a_node_with_another_identity_is_refused_on_both_sides(
    make_cluster: ClusterFactory, tmp_path: Path, overrides: dict[str, Any], key: str
) -> None:
    c = make_cluster()
    wait_all_alive(c, NODES, 15)
    seeds = [f"{HOST}:{c.base + GOSSIP_OFFSET + i}" for i in range(len(NODES))]
    x = Stranger(tmp_path / "stranger", seeds, c.config["cluster"]["secret"], **overrides)
    make_cluster.clusters.append(x)  # closed with the others
    x.start_all()

    def refused_everywhere() -> bool:
        return all("member_refused" in c.log_text(n) for n in NODES) and \
            "member_refused" in x.log_text("x1")

    c.wait_until(refused_everywhere, 15, message="member_refused in every log")
    for n in NODES:
        line = next(ln for ln in c.log_text(n).splitlines() if "member_refused" in ln)
        assert '"level": "error"' in line and '"x1"' in line and key in line, line
    line = next(ln for ln in x.log_text("x1").splitlines() if "member_refused" in ln)
    assert '"level": "error"' in line and '"by_peer": true' in line and key in line, line
    # Both keep running, each without the other.
    assert x.http("x1", "GET", "/healthz").status == 200
    for n in NODES:
        assert set(gossip_states(c, n)) == set(NODES)
        assert c.metric(n, "spine_member_events_total", event="refused") >= 1
    view = {m["id"]: m for m in x.cluster_view("x1")["members"]}
    assert set(view) == {"x1"}
    assert x.metric("x1", "spine_member_events_total", event="refused") >= len(NODES)


@pytest.mark.timeout(60)
def test_with_gossip_off_the_node_falls_back_to_rpc_probes(make_cluster: ClusterFactory) -> None:
    c = make_cluster(gossip={"enabled": False})
    view = c.cluster_view("n1")
    assert view["liveness"] == "probe"
    assert all("gossip" not in m for m in view["members"]), view
    assert "spine_members" not in {name for name, _, _ in c.metrics("n1")}
    c.kill("n3")
    c.wait_until(lambda: not {m["id"]: m for m in c.cluster_view("n1")["members"]}["n3"]["alive"],
                 10, message="n1's probes to find n3 down")
