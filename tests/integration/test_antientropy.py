"""Anti-entropy alone brings a returning replica back (DESIGN §10), on real processes and LMDB.

Hinted handoff is off (`handoff.enabled: false`) and nothing reads the keys before the check, so
neither hints nor read repair can do the work: only the hash-tree rounds can make the roots that
every replica reports in `GET /v1/cluster/shards` agree.
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from tests.integration.cluster import LocalCluster
from tests.integration.conftest import WEAK_OK, ClusterFactory

pytestmark = pytest.mark.integration

KEYS = 1000
SAMPLE = 200
# The repair bound, from the restart of n3 (process start included) to equal roots everywhere:
# at the settings below (a round every 300 ms over all 256 shards, 2,000 records/s per node),
# 1,000 missing keys take a few seconds; 60 s leaves room for a slow or loaded CI host.
CONVERGE_S = 60.0
AE = {"interval_ms": 300, "shards_per_round": 256, "max_keys_per_s": 2000}


def _roots(c: LocalCluster) -> dict[int, dict[str, str | None]]:
    """shard → {node: root} as each running node reports the shards it holds."""
    out: dict[int, dict[str, str | None]] = {}
    for node in c.running():
        r = c.http(node, "GET", "/v1/cluster/shards", timeout=5.0)
        assert r.status == 200, r.body
        for entry in r.json()["shards"]:
            if "root" in entry:
                out.setdefault(entry["shard"], {})[node] = entry["root"]
    return out


def _converged(c: LocalCluster, holders: dict[int, list[str]]) -> list[int]:
    """Shards whose replicas do not all report the same (built) root yet."""
    roots = _roots(c)
    bad = []
    for shard, prefs in holders.items():
        got = roots.get(shard, {})
        values = {got.get(n) for n in prefs}
        if len(values) != 1 or None in values:
            bad.append(shard)
    return bad


def _sum(c: LocalCluster, metric: str) -> float:
    return sum(c.metric(n, metric) for n in c.running())


@pytest.mark.timeout(180)
def test_a_replica_that_missed_1000_writes_is_repaired_by_anti_entropy_alone(
    make_cluster: ClusterFactory,
) -> None:
    overrides: dict[str, Any] = {**WEAK_OK, "handoff": {"enabled": False}, "antientropy": AE}
    c = make_cluster(**overrides)
    ns = "antientropy"
    shards = c.http("n1", "GET", "/v1/cluster/shards").json()["shards"]
    holders = {e["shard"]: e["preference_list"] for e in shards}
    assert all("n3" in prefs for prefs in holders.values())  # n3 holds a replica of everything

    c.stop("n3")
    expected = {f"k{i:04d}": f"memory {i}" for i in range(KEYS)}
    ids = list(expected)
    for i in range(0, KEYS, 200):
        items = [{"id": mid, "content": expected[mid]} for mid in ids[i : i + 200]]
        r = c.http(("n1", "n2")[i // 200 % 2], "POST", f"/v1/ns/{ns}/memories/_batch",
                   {"items": items}, {"Spine-Consistency": "session"})
        assert r.status == 200, r.body
        statuses = {x["status"] for x in r.json()["results"]}
        assert statuses <= {200, 201}, r.body

    # Both survivors acknowledged every write (W=2), so their roots already agree.
    survivors = _roots(c)
    assert all(survivors[s]["n1"] == survivors[s]["n2"] is not None for s in holders)

    started = time.monotonic()
    c.start("n3")
    healthy = time.monotonic() - started
    late: list[int] = []

    def equal() -> bool:
        late[:] = _converged(c, holders)
        return not late

    c.wait_until(equal, CONVERGE_S, 0.1,
                 lambda: f"every replica to report the same roots; {len(late)} shards differ")
    elapsed = time.monotonic() - started
    repaired = _sum(c, "spine_antientropy_keys_repaired_total")
    print(f"\nanti-entropy: {KEYS} keys repaired {elapsed:.2f}s after restarting n3 "
          f"(healthy and seen alive after {healthy:.2f}s); {repaired:.0f} records moved")
    assert repaired >= KEYS  # every key reached n3 through anti-entropy
    assert _sum(c, "spine_hints_written_total") == 0
    assert _sum(c, "spine_antientropy_rounds_total") > 0

    for mid in random.Random(7).sample(ids, SAMPLE):
        rec = c.local_record("n3", ns, mid)  # an R=1 read of n3's own replica
        assert rec is not None and rec["content"] == expected[mid], (mid, rec)
