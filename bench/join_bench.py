#!/usr/bin/env python3
"""Join benchmark: how long a 4th node takes to join a loaded 3-node cluster, and what the join
costs the clients. Prints figures; asserts nothing.

    .venv/bin/python bench/join_bench.py [--records 30000] [--concurrency 16]
        [--before 15] [--transfer-rate 5000] [--json OUT]

1. Starts a 3-node cluster of real `spine serve` processes (the integration harness,
   tests/integration/cluster.py, with one spare port set) and ingests --records memories with
   `_batch` (hash embedder).
2. Runs --concurrency asyncio clients (aiohttp, keep-alive) round-robin over the three nodes:
   90% session gets of preloaded keys, 10% session puts of fresh keys. After a warm-up it counts
   completed requests per second for --before seconds.
3. Starts n4 with `serve --join` while the load runs, and measures the join: from the spawn to
   the moment every node holds the same settled ring map with n4 active. Throughput during that
   window, and over --before seconds after it, is compared with the window before (a ratio).
4. Reports the records n4 pulled, its transfer rate, and the errors clients saw.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.integration.cluster import LocalCluster  # noqa: E402

NS = "joinbench"


def preload(c: LocalCluster, n: int) -> None:
    client = c.client()
    for start in range(0, n, 1000):
        items = [{"id": f"k{i}", "content": f"preloaded memory number {i} about topic {i % 97}"}
                 for i in range(start, min(n, start + 1000))]
        client.batch(NS, items)


class Load:
    """Clients on a thread of their own, counting completions per wall second."""

    def __init__(self, urls: list[str], records: int, concurrency: int) -> None:
        self.urls = urls
        self.records = records
        self.concurrency = concurrency
        self.done: dict[int, int] = {}
        self.errors: dict[int, int] = {}
        self.lat: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    async def _main(self) -> None:
        async with aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=10),
            connector=aiohttp.TCPConnector(limit=self.concurrency * 2),
        ) as http:
            await asyncio.gather(*(self._worker(http, i) for i in range(self.concurrency)))

    async def _worker(self, http: aiohttp.ClientSession, w: int) -> None:
        rng = random.Random(w)
        token: str | None = None
        n = 0
        while not self._stop.is_set():
            url = self.urls[(w + n) % len(self.urls)]
            n += 1
            headers = {"Spine-Session": token} if token else {}
            t0 = time.monotonic()
            try:
                if rng.random() < 0.9:
                    mid = f"k{rng.randrange(self.records)}"
                    resp = await http.get(f"{url}/v1/ns/{NS}/memories/{mid}", headers=headers)
                else:
                    mid = f"w{w}-{n}"
                    resp = await http.put(f"{url}/v1/ns/{NS}/memories/{mid}", headers=headers,
                                          json={"content": f"written during the bench {n}"})
                async with resp:
                    await resp.read()
                    token = resp.headers.get("Spine-Session", token)
                    ok = resp.status < 300
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            sec = int(time.time())
            if ok:
                self.done[sec] = self.done.get(sec, 0) + 1
                self.lat.append((time.time(), time.monotonic() - t0))
            else:
                self.errors[sec] = self.errors.get(sec, 0) + 1

    def rate(self, t0: float, t1: float) -> float:
        secs = [s for s in range(int(t0) + 1, int(t1))]
        return statistics.mean(self.done.get(s, 0) for s in secs) if secs else 0.0

    def p99(self, t0: float, t1: float) -> float:
        xs = sorted(d for t, d in self.lat if t0 <= t < t1)
        return xs[int(0.99 * (len(xs) - 1))] * 1000 if xs else float("nan")

    def errors_in(self, t0: float, t1: float) -> int:
        return sum(v for s, v in self.errors.items() if t0 <= s <= t1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--records", type=int, default=30000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--before", type=float, default=15.0)
    ap.add_argument("--transfer-rate", type=int, default=5000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="spine-join-bench-"))
    ring = {"transfer_max_keys_per_s": args.transfer_rate, "drop_grace_s": 10}
    with LocalCluster(tmp, 3, spare=1, ring=ring) as c:
        t = time.monotonic()
        preload(c, args.records)
        print(f"preloaded {args.records} records in {time.monotonic() - t:.1f}s", flush=True)
        c.wait_until(lambda: all(c.metric(n, "spine_index_lag_changes") == 0 for n in c.names),
                     600, 0.5, "the indexes to catch up")
        print(f"indexes caught up after {time.monotonic() - t:.1f}s", flush=True)
        load = Load([c.url(n) for n in c.names], args.records, args.concurrency)
        load.start()
        time.sleep(3)  # warm-up
        before0 = time.time()
        time.sleep(args.before)
        join0 = time.time()
        n4 = c.add_node(wait=False)

        def settled() -> bool:
            try:
                views = [c.http(n, "GET", "/v1/cluster/shards", timeout=2).json()["ring"]
                         for n in c.names]
                members = {m["id"]: m["state"] for m in c.cluster_view("n1")["members"]}
            except Exception:
                return False
            return (len({v["digest"] for v in views}) == 1
                    and not any(v["changing"] for v in views) and members.get(n4) == "active")

        c.wait_until(settled, 600, 0.1, "the join to settle")
        join1 = time.time()
        time.sleep(args.before)
        after1 = time.time()
        load.stop()
        pulled = c.metric(n4, "spine_transfer_records_total")
        copy_s = c.metric(n4, "spine_transfer_last_seconds")
    before = load.rate(before0, join0)
    during = load.rate(join0, join1)
    after = load.rate(join1, after1)
    res: dict[str, Any] = {
        "records": args.records, "concurrency": args.concurrency,
        "transfer_max_keys_per_s": args.transfer_rate,
        "join_seconds": round(join1 - join0, 2), "copy_seconds": round(copy_s, 2),
        "records_pulled": int(pulled),
        "pull_rate_per_s": round(pulled / copy_s, 1) if copy_s else None,
        "ops_before": round(before, 1), "ops_during": round(during, 1),
        "ops_after": round(after, 1),
        "ratio_during_before": round(during / before, 3) if before else None,
        "p99_ms_before": round(load.p99(before0, join0), 1),
        "p99_ms_during": round(load.p99(join0, join1), 1),
        "errors_during": load.errors_in(int(join0), int(join1)),
    }
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
