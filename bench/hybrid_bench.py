#!/usr/bin/env python3
"""Hybrid search beside vector-only (DESIGN §14), and the write cost of the full-text index.

    .venv/bin/python bench/hybrid_bench.py [--records 20000] [--duration 15] [--concurrency 32]
        [--write-records 20000] [--base-port 39788]

Part 1, cluster: `spine up --nodes 3 --no-sync` with the `hash` embedder (bench/search_bench.py's
cluster, text generator and `_batch` ingest), --records memories; then, one after the other on
the same data, --duration seconds of random 2-6-word text queries (k=10, --concurrency clients,
round-robin over the nodes) in `vector`, `keyword` and `hybrid` mode: QPS, p50/p99, and node CPU
per query.

Part 2, in one process (no HTTP): the storage write path a replica runs, LMDB `Store.apply` and
the Indexer (hnswlib + tantivy), for --write-records memories in batches of 100, once with the
text index and once with it replaced by a no-op; the process CPU per record of each, so their
difference is the full-text index's cost per write on each replica. Then the start-up rebuild of
the text index from LMDB (the text index lives in RAM), per record and for 100k records.

Asserts nothing; prints the figures and writes them to bench/results/hybrid-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (str(HERE), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

import search_bench as sb  # noqa: E402

from spine.core.clock import Version  # noqa: E402
from spine.core.model import Record  # noqa: E402
from spine.core.ring import shard_of  # noqa: E402
from spine.storage.embedders import HashEmbedder  # noqa: E402
from spine.storage.indexer import Indexer  # noqa: E402
from spine.storage.lmdb_store import Store  # noqa: E402
from spine.storage.text_index import TextIndexSet, record_tokens  # noqa: E402

RESULTS = HERE / "results"
MODES = ("vector", "keyword", "hybrid")


# ----------------------------------------------------------------------------- part 1


async def mode_load(urls: list[str], mode: str, concurrency: int, duration: float,
                    warmup: float, gen: sb.TextGen, on_measure: Any = None) -> dict[str, Any]:
    """search_bench's closed-loop search load, with `mode` in every body."""
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    measuring = False
    stop_at = 0.0
    bodies = [json.dumps({"query": gen.text(2, 6), "k": 10, "mode": mode}).encode()
              for _ in range(5000)]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=30)) as http:

        async def worker(w: int) -> None:
            i = w
            while time.perf_counter() < stop_at:
                url = f"{urls[i % len(urls)]}/v1/ns/{sb.NS}/search"
                body = bodies[(i * 7919) % len(bodies)]
                i += concurrency
                t0 = time.perf_counter()
                try:
                    async with http.post(url, data=body,
                                         headers={"Content-Type": "application/json"}) as r:
                        await r.read()
                        status = r.status
                except (aiohttp.ClientError, TimeoutError) as e:
                    if measuring:
                        errors[type(e).__name__] += 1
                    continue
                if measuring:
                    if status == 200:
                        latencies.append(time.perf_counter() - t0)
                    else:
                        errors[f"http {status}"] += 1

        stop_at = time.perf_counter() + warmup + duration
        tasks = [asyncio.create_task(worker(w)) for w in range(concurrency)]
        await asyncio.sleep(warmup)
        measuring = True
        if on_measure is not None:
            on_measure()
        t0 = time.perf_counter()
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    latencies.sort()
    n = len(latencies)

    def pct(q: float) -> float | None:
        return 1000 * latencies[min(n - 1, int(q * n))] if n else None

    return {"mode": mode, "requests": n, "duration_s": wall, "qps": n / wall if wall else 0.0,
            "p50_ms": pct(0.5), "p99_ms": pct(0.99), "errors": dict(errors)}


def cluster_part(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    """Ingest, wait for the indexes, then each mode's search load on the same data."""
    # A cluster.yaml naming the embedder makes `spine up` keep it (the hash embedder: the
    # figures are about the indexes, not about MiniLM's 11 ms per text).
    (data / "cluster.yaml").write_text("embedder:\n  name: hash\n")
    cluster = sb.Cluster(data, args.base_port)
    out: dict[str, Any] = {"records": args.records}
    try:
        cluster.start()
        gen = sb.TextGen(args.seed)
        cpu0 = cluster.cpu_s()
        ing = asyncio.run(sb.ingest(cluster.urls, args.records, 1000, 3, gen))
        lag = sb.wait_indexed(cluster.urls, ing.pop("last_ids"), ing.pop("last_texts"), 600)
        cpu1 = cluster.cpu_s()
        out["ingest"] = {"records_per_s": ing["records_per_s"], "failed": ing["failed_items"],
                         "index_catch_up_s": lag,
                         "node_cpu_us_per_record": 1e6 * (sum(cpu1) - sum(cpu0)) / args.records}
        print(f"ingest: {args.records:,} records, {ing['records_per_s']:,.0f} records/s, "
              f"indexes caught up {sb._fmt(lag, ' s')} later; node CPU (3 replicas, all "
              f"included) {out['ingest']['node_cpu_us_per_record']:,.0f} µs per record",
              flush=True)
        for mode in MODES:
            at_measure: list[list[float]] = []
            res = asyncio.run(mode_load(cluster.urls, mode, args.concurrency, args.duration,
                                        2.0, gen, lambda m=at_measure: m.append(cluster.cpu_s())))
            c0, c1 = at_measure[0], cluster.cpu_s()
            res["node_cpu_us_per_query"] = (1e6 * (sum(c1) - sum(c0)) / res["requests"]
                                            if res["requests"] else None)
            out[mode] = res
            print(f"{mode:>7}: {res['qps']:,.0f} QPS, p50 {sb._fmt(res['p50_ms'], ' ms')}, "
                  f"p99 {sb._fmt(res['p99_ms'], ' ms')}, node CPU "
                  f"{sb._fmt(res['node_cpu_us_per_query'], ' µs', 0)} per query, errors "
                  f"{res['errors'] or 0}", flush=True)
    finally:
        problems = cluster.stop()
        for p in problems:
            print(f"WARNING: {p}", file=sys.stderr)
        out["stop_problems"] = problems
    return out


# ----------------------------------------------------------------------------- part 2


class NoText(TextIndexSet):
    """The text index switched off (the 'before' of the write cost)."""

    def upsert(self, namespace: str, key: str, terms: Sequence[str]) -> None:
        """Index nothing."""

    def delete(self, namespace: str, key: str) -> None:
        """Nothing to remove."""


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _records(n: int, seed: int) -> list[Record]:
    gen = sb.TextGen(seed)
    texts = [gen.text(6, 20) for _ in range(n)]
    vecs = HashEmbedder(384).embed(texts)
    return [Record(namespace=sb.NS, id=f"m{i:07d}", version=Version(1000 + i, "n1"),
                   clock={"n1": 1}, content=t, tags=("work",), vector=vecs[i].tobytes(),
                   created_hlc=1000 + i)
            for i, t in enumerate(texts)]


async def _write_cost(records: list[Record], root: Path, text: bool) -> dict[str, Any]:
    store = Store(root / "lmdb", shard_of=lambda ns, mid: shard_of(ns, mid, 256), sync=False,
                  map_size_mb=4096)
    indexer = Indexer(store, root / "index", dim=384, m=16, ef_construction=200, ef_search=64,
                      fingerprint="bench", persist_interval=3600, sleep=asyncio.sleep)
    if not text:
        indexer.texts = NoText()
    store.subscribe(indexer.on_commit)
    indexer.recover()
    store.start()
    try:
        c0, t0 = _cpu(), time.perf_counter()
        for i in range(0, len(records), 100):
            await store.apply(records[i:i + 100])
        while indexer.indexed_seq != store.seq:
            await asyncio.sleep(0.005)
        c1, t1 = _cpu(), time.perf_counter()
        out: dict[str, Any] = {"text_index": text, "records": len(records),
                               "cpu_us_per_record": 1e6 * (c1 - c0) / len(records),
                               "wall_s": t1 - t0}
        if text:
            scan = list(store.iter_all())
            r0 = time.perf_counter()
            indexer._rebuild_text(scan)
            out["rebuild_us_per_record"] = 1e6 * (time.perf_counter() - r0) / len(scan)
        return out
    finally:
        await indexer.stop()
        store.close()


def write_part(args: argparse.Namespace, data: Path) -> dict[str, Any]:
    """The storage write path's CPU per record with and without the text index."""
    records = _records(args.write_records, args.seed)
    out: dict[str, Any] = {}
    for text in (False, True, False, True):  # twice each, interleaved: the box is shared
        root = data / f"write-{len(out)}"
        res = asyncio.run(_write_cost(records, root, text))
        shutil.rmtree(root, ignore_errors=True)
        out[f"{'with' if text else 'without'}-{len(out) // 2}"] = res
        print(f"write path, {'with' if text else 'without'} the text index: "
              f"{res['cpu_us_per_record']:,.0f} µs of CPU per record ({len(records):,} records"
              f", {res['wall_s']:.1f} s)", flush=True)
    with_ = min(v["cpu_us_per_record"] for k, v in out.items() if k.startswith("with-"))
    without = min(v["cpu_us_per_record"] for k, v in out.items() if k.startswith("without-"))
    rebuild = min(v["rebuild_us_per_record"] for k, v in out.items() if k.startswith("with-"))
    # the text index's own work, isolated: tokenise, upsert and one commit per 100 records
    # (the worst case: under load one commit covers many batches)
    direct = TextIndexSet()
    c0 = _cpu()
    for i in range(0, len(records), 100):
        for rec in records[i:i + 100]:
            direct.upsert(rec.namespace, rec.id, record_tokens(rec.content, rec.tags))
        direct.commit()
    direct_us = 1e6 * (_cpu() - c0) / len(records)
    direct.close()
    # the rebuild at 100k, in one go (what a node's start does for a namespace that size)
    big = TextIndexSet()
    gen = sb.TextGen(args.seed + 1)
    texts = [gen.text(6, 20) for _ in range(100_000)]
    r0 = time.perf_counter()
    for i, t in enumerate(texts):
        big.upsert(sb.NS, f"m{i}", record_tokens(t, ("work",)))
    big.commit()
    rebuild_100k = time.perf_counter() - r0
    big.close()
    out["summary"] = {"with_us": with_, "without_us": without, "added_us": with_ - without,
                      "text_alone_us": direct_us,
                      "rebuild_us_per_record": rebuild, "rebuild_100k_s": rebuild_100k}
    print(f"full-text index write cost: +{with_ - without:,.0f} µs of CPU per record per "
          f"replica ({without:,.0f} -> {with_:,.0f}, best of two each); the text index alone "
          f"{direct_us:,.0f} µs per record (commit per 100); rebuild from LMDB at "
          f"start {rebuild:,.1f} µs per record, 100k records in {rebuild_100k:.1f} s", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run both parts and write the figures."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--write-records", type=int, default=20_000)
    ap.add_argument("--base-port", type=int, default=39788)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip-cluster", action="store_true", help="part 2 only")
    args = ap.parse_args(argv)
    random.seed(args.seed)
    np.random.seed(args.seed)
    data = Path(tempfile.mkdtemp(prefix="spine-hybrid-bench-"))
    report: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(), "args": vars(args)}
    try:
        if not args.skip_cluster:
            report["cluster"] = cluster_part(args, data)
        report["write"] = write_part(args, data)
    finally:
        shutil.rmtree(data, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"hybrid-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"figures written to {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
