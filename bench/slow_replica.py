#!/usr/bin/env python3
"""Slow-replica benchmark (issue 17 item 3): read and search latency on a 3-node cluster when
one replica is slowed or paused, against the same cluster with none. Prints figures; asserts
nothing.

    .venv/bin/python bench/slow_replica.py [--nodes 3] [--seconds 5] [--concurrency 4]
        [--delay-ms 50] [--json OUT]

Starts --nodes real `spine serve` processes (N = 3, hash embedder, every port in 27000-27999),
writes one key per client, and then, clients through every node but the last (n3 with three
nodes, the one that is slowed or paused), for --seconds each: quorum reads (`session`, no
token: R = 2 of 3), session reads (a token naming the key: R = 1, from the coordinator's own
replica when it holds the version), and searches (the covering set: one node with N = 3 on 3
nodes). Three cases:

1. unslowed;
2. slowed: every request to and from the last node waits --delay-ms (the nodes' test-only link
   layer, `SPINE_TEST_LINK_FILE`; replies are not delayed);
3. paused: the last node SIGSTOPped; quorum reads first, starting right after the pause (before
   SWIM's suspicion ends: ~2 s with the default gossip timing), then the others.

For each: p50/p99 of every kind, and the spine_read_speculative_total /
spine_search_speculative_total counted on the clients' nodes meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.harness.cluster import ProcessCluster  # noqa: E402
from tests.harness.ports import bindable  # noqa: E402

# Every port in 27400-27999 (the integration test's are in 27000-27399): HTTP base + i, RPC
# base + 200 + i, gossip base + 400 + i, for a base in [LOW, HIGH).
LOW, HIGH = 27400, 27590
RPC, GOSSIP = 200, 400
NS = "slow-replica"


class BenchCluster(ProcessCluster):
    """Every listener in 27400-27999 (the tests use 27000-27399)."""

    def _spots(self, base: int) -> list[tuple[int, int]]:
        out: list[tuple[int, int]] = []
        for i in range(self.count):
            out += [(base + i, socket.SOCK_STREAM), (base + RPC + i, socket.SOCK_STREAM),
                    (base + GOSSIP + i, socket.SOCK_STREAM), (base + GOSSIP + i, socket.SOCK_DGRAM)]
        return out

    def _free_base(self) -> int:
        bases = list(range(LOW, HIGH - self.count))
        random.Random().shuffle(bases)
        for base in bases:
            if all(bindable(p, k) for p, k in self._spots(base)):
                return base
        raise RuntimeError("no free ports in 27400-27999")

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
        cfg["replication"] = {"n": 3}
        cfg["consistency"]["allow_weaker"] = True
        cfg.setdefault("embedder", {})["name"] = "hash"
        return cfg


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def summary(lat: list[float], errors: int, seconds: float) -> dict[str, float]:
    return {"ops_s": round(len(lat) / seconds, 1), "p50_ms": round(pct(lat, 0.5) * 1000, 1),
            "p99_ms": round(pct(lat, 0.99) * 1000, 1), "errors": errors, "n": len(lat)}


async def run_load(urls: list[str], seconds: float, concurrency: int, method: str,
                   path_of: Any, headers_of: Any, body_of: Any = None) -> tuple[list[float], int]:
    """`concurrency` clients round-robin over `urls` for `seconds`: latencies of 2xx, errors."""
    lat: list[float] = []
    errors = 0
    end = time.perf_counter() + seconds

    async def client(k: int, http: aiohttp.ClientSession) -> None:
        nonlocal errors
        i = 0
        while time.perf_counter() < end:
            url = urls[(k + i) % len(urls)]
            t0 = time.perf_counter()
            try:
                async with http.request(method, url + path_of(k, i), headers=headers_of(k, i),
                                        json=None if body_of is None else body_of(k, i)) as r:
                    await r.read()
                    if r.status < 300:
                        lat.append(time.perf_counter() - t0)
                    else:
                        errors += 1
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
            i += 1

    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        await asyncio.gather(*(client(k, http) for k in range(concurrency)))
    return lat, errors


def speculative(c: BenchCluster, nodes: list[str]) -> dict[str, float]:
    return {m: sum(c.metric(n, f"spine_{m}_speculative_total") for n in nodes)
            for m in ("read", "search")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--delay-ms", type=float, default=50.0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    names = [f"n{i + 1}" for i in range(args.nodes)]
    slow, front = names[-1], names[:-1]
    out: dict[str, Any] = {"nodes": args.nodes, "seconds": args.seconds,
                           "concurrency": args.concurrency, "delay_ms": args.delay_ms,
                           "slow_node": slow, "clients_through": front, "cases": {}}
    with tempfile.TemporaryDirectory(prefix="spine-slow-replica-") as tmp:
        c = BenchCluster(Path(tmp), args.nodes, rng=random.Random())
        try:
            c.start_all()
            c.wait_peers_alive(timeout=60.0)
            urls = [c.url(n) for n in front]
            tokens: dict[int, str] = {}
            for k in range(args.concurrency):
                r = c.request(front[k % len(front)], "PUT", f"/v1/ns/{NS}/memories/k{k}",
                              {"content": f"memory {k} about a slow replica and its readers"})
                assert r.status in (200, 201), r.body
                tokens[k] = r.headers["Spine-Session"]
            print(f"# {args.nodes} nodes, N = 3, clients through {front}; {slow} slowed or "
                  f"paused; {args.concurrency} clients, {args.seconds:g} s per figure", flush=True)

            def runs(case: str, first: float | None = None) -> None:
                res: dict[str, Any] = {}
                before = speculative(c, front)
                kinds = [
                    ("quorum read", "GET", lambda k, i: f"/v1/ns/{NS}/memories/k{k}",
                     lambda k, i: {"Spine-Consistency": "session"}, None),
                    ("session read", "GET", lambda k, i: f"/v1/ns/{NS}/memories/k{k}",
                     lambda k, i: {"Spine-Session": tokens[k]}, None),
                    ("search", "POST", lambda k, i: f"/v1/ns/{NS}/search",
                     lambda k, i: {}, lambda k, i: {"query": f"slow replica {k}", "k": 5}),
                ]
                for j, (kind, method, path, hdrs, body) in enumerate(kinds):
                    secs = first if (first is not None and j == 0) else args.seconds
                    lat, err = asyncio.run(run_load(urls, secs, args.concurrency, method, path,
                                                    hdrs, body))
                    res[kind] = summary(lat, err, secs)
                    print(f"{case:>10} {kind:>13}: {res[kind]}", flush=True)
                after = speculative(c, front)
                res["speculative"] = {m: after[m] - before[m] for m in after}
                print(f"{case:>10} speculative asks: {res['speculative']}", flush=True)
                out["cases"][case] = res

            warm = asyncio.run(run_load(urls, 1.0, 2, "GET", lambda k, i: f"/v1/ns/{NS}/memories/k0",
                                        lambda k, i: {"Spine-Consistency": "session"}))
            assert warm[0], "warm-up reads failed"
            warm = asyncio.run(run_load(urls, 1.0, 2, "POST", lambda k, i: f"/v1/ns/{NS}/search",
                                        lambda k, i: {}, lambda k, i: {"query": "warm", "k": 5}))
            assert warm[0], "warm-up searches failed"
            runs("unslowed")
            for n in front:
                c.set_link(n, slow, args.delay_ms)
                c.set_link(slow, n, args.delay_ms)
            c.wait_links()
            runs("slowed")
            c.clear_links()
            c.wait_links()
            asyncio.run(run_load(urls, 1.0, 2, "GET", lambda k, i: f"/v1/ns/{NS}/memories/k0",
                                 lambda k, i: {"Spine-Consistency": "session"}))
            c.pause(slow)
            try:
                runs("paused", first=2.0)
                out["paused_still_alive_to"] = [n for n in front if slow in c.alive_seen_by(n)]
            finally:
                c.resume(slow)
            cases = out["cases"]
            for kind in ("quorum read", "session read", "search"):
                base = cases["unslowed"][kind]["p99_ms"]
                ratios = {case: round(cases[case][kind]["p99_ms"] / base, 2) if base else None
                          for case in ("slowed", "paused")}
                print(f"p99 {kind} / unslowed: {ratios}", flush=True)
                out.setdefault("p99_ratio", {})[kind] = ratios
        finally:
            c.close()
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({"summary": out.get("p99_ratio")}))


if __name__ == "__main__":
    main()
