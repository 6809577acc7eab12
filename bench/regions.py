#!/usr/bin/env python3
"""Regions benchmark (issue 17): what a write pays for crossing regions, what a read pays for a
paused replica, and how far behind the other regions are. Prints figures; asserts nothing.

    .venv/bin/python bench/regions.py [--delay-ms 60] [--seconds 8] [--concurrency 8]
        [--json OUT]

1. Starts 6 real `spine serve` processes in 2 regions of 3 (zones one per node),
   `replication.n: {a: 3, b: 3}` (N = 6), every link between the regions delayed
   --delay-ms each way by the nodes' test-only link layer (`SPINE_TEST_LINK_FILE`), gossip timed
   for such links.
2. Writes: --concurrency clients through region a's two nodes for --seconds at each of
   `local_session`, `session`, `local_strong`, `strong`: writes/s, p50, p99. A local level's
   quorum is a majority of region a's replicas (2 of 3); a global one's a majority of all six
   (4 of 6), which must cross to region b.
3. Replication lag: `spine_replication_lag_seconds{region}` on region a's nodes over the
   `local_session` put run (mean and the histogram's p99 bucket), per region.
4. Reads: quorum reads (`session`, no token) and token reads through region a for --seconds,
   p50/p99; then with one replica of region a paused (SIGSTOP) — right after the pause, before
   the failure detector notices (the first 2 s) and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.slow_replica import run_load, summary  # noqa: E402  (the same load generator)
from tests.harness.cluster import ProcessCluster  # noqa: E402
from tests.harness.http_client import parse_metrics  # noqa: E402

REGIONS = ("a", "b")
NODES = [f"n{i + 1}" for i in range(6)]
REGION = {n: REGIONS[i % 2] for i, n in enumerate(NODES)}  # n1, n3, n5 in a; n2, n4, n6 in b
LEVELS = ("local_session", "session", "local_strong", "strong")


class RegionsCluster(ProcessCluster):
    def base_config(self) -> dict[str, Any]:
        cfg = super().base_config()
        for node in cfg["nodes"]:
            node["region"] = REGION[node["id"]]
            node["zone"] = f"{REGION[node['id']]}-{node['id']}"
        cfg["replication"] = {"n": {r: 3 for r in REGIONS}}
        cfg["gossip"] = {"protocol_period_ms": 1000, "ping_timeout_ms": 300}
        cfg.setdefault("embedder", {})["name"] = "hash"
        return cfg


def lag(c: RegionsCluster, nodes: list[str]) -> dict[str, dict[str, float]]:
    """Per region: sends counted, mean lag, and the p99 bucket bound of the lag histogram."""
    out: dict[str, dict[str, float]] = {}
    for region in REGIONS:
        count = total = 0.0
        buckets: dict[float, float] = {}
        for node in nodes:
            for name, lbl, v in parse_metrics(c.request(node, "GET", "/metrics").body.decode()):
                if lbl.get("region") != region:
                    continue
                if name == "spine_replication_lag_seconds_count":
                    count += v
                elif name == "spine_replication_lag_seconds_sum":
                    total += v
                elif name == "spine_replication_lag_seconds_bucket":
                    le = float(lbl["le"])
                    buckets[le] = buckets.get(le, 0.0) + v
        if count:
            p99 = next((le for le, n in sorted(buckets.items()) if n >= 0.99 * count),
                       float("inf"))
            out[region] = {"sends": count, "mean_ms": round(total / count * 1000, 1),
                           "p99_bucket_ms": round(p99 * 1000, 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--delay-ms", type=float, default=60.0)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    out: dict[str, Any] = {"delay_ms": args.delay_ms, "seconds": args.seconds,
                           "concurrency": args.concurrency, "regions": REGION}
    with tempfile.TemporaryDirectory(prefix="spine-regions-") as tmp:
        c = RegionsCluster(Path(tmp), len(NODES), rng=random.Random())
        try:
            groups = [[n for n in NODES if REGION[n] == r] for r in REGIONS]
            c.regions(groups, args.delay_ms)
            c.start_all()
            c.wait_links()
            c.wait_peers_alive(timeout=60.0)
            home = [n for n in NODES if REGION[n] == "a"]
            urls = [c.url(n) for n in home]
            print(f"# 6 nodes, regions {groups}, {args.delay_ms:g} ms between regions (one-way),"
                  f" clients through region a ({', '.join(home)})", flush=True)
            writes: dict[str, Any] = {}
            for level in LEVELS:
                asyncio.run(run_load(urls, 1.0, 2, "PUT",  # warm-up: connections, embedder
                                     lambda k, i: f"/v1/ns/warm/memories/w{k}-{i}",
                                     lambda k, i, lv=level: {"Spine-Consistency": lv},
                                     lambda k, i: {"content": "warm"}))
                before = lag(c, home) if level == "local_session" else {}
                lat, err = asyncio.run(run_load(
                    urls, args.seconds, args.concurrency, "PUT",
                    lambda k, i, lv=level: f"/v1/ns/{lv}/memories/k{k}-{i}",
                    lambda k, i, lv=level: {"Spine-Consistency": lv},
                    lambda k, i: {"content": f"memory {k} {i} about regions"}))
                writes[level] = summary(lat, err, args.seconds)
                print(f"write {level:>13}: {writes[level]}", flush=True)
                if level == "local_session":
                    after = lag(c, home)
                    out["replication_lag"] = {
                        r: {"sends": v["sends"] - before.get(r, {}).get("sends", 0.0),
                            "mean_ms_cumulative": v["mean_ms"], "p99_bucket_ms": v["p99_bucket_ms"]}
                        for r, v in after.items()}
                    print(f"replication lag from region a during the local_session puts: "
                          f"{out['replication_lag']}", flush=True)
            out["writes"] = writes
            keys = [f"/v1/ns/local_session/memories/k{k}-0" for k in range(args.concurrency)]
            reads: dict[str, Any] = {}

            def read_run(label: str, hdrs: dict[str, str], seconds: float) -> None:
                lat, err = asyncio.run(run_load(urls, seconds, args.concurrency, "GET",
                                                lambda k, i: keys[(k + i) % len(keys)],
                                                lambda k, i: hdrs))
                reads[label] = summary(lat, err, seconds)
                print(f"read {label:>34}: {reads[label]}", flush=True)

            read_run("session quorum (no token)", {"Spine-Consistency": "session"}, args.seconds)
            read_run("local_session quorum (no token)", {"Spine-Consistency": "local_session"},
                     args.seconds)
            paused = home[1]
            urls = [c.url(home[0])]  # the clients' balancer stops sending to the paused node
            c.pause(paused)
            try:
                read_run(f"session quorum, {paused} paused, 0-2 s", {"Spine-Consistency":
                                                                    "session"}, 2.0)
                read_run(f"session quorum, {paused} paused, 2 s+",
                         {"Spine-Consistency": "session"}, args.seconds)
                read_run(f"local_session, {paused} paused", {"Spine-Consistency":
                                                             "local_session"}, args.seconds)
            finally:
                c.resume(paused)
            out["reads"] = reads
            base = reads["session quorum (no token)"]["p99_ms"]
            worst = max(v["p99_ms"] for k, v in reads.items() if k.startswith("session quorum,"))
            out["paused_p99_ratio"] = round(worst / base, 2) if base else None
            print(f"read p99 with one replica paused / unpaused (session quorum): "
                  f"{out['paused_p99_ratio']}x", flush=True)
            ls, gs = writes["local_session"], writes["session"]
            print(f"local_session / session write p50: {ls['p50_ms']} / {gs['p50_ms']} ms; "
                  f"p99: {ls['p99_ms']} / {gs['p99_ms']} ms", flush=True)
        finally:
            c.close()
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({"summary": {k: out[k] for k in ("writes", "paused_p99_ratio")}}))


if __name__ == "__main__":
    main()
