#!/usr/bin/env python3
"""Spine beside etcd, Redis and chromadb on this box, the same shapes in one invocation.
Prints figures and Spine ÷ peer ratios; asserts nothing.

    .venv/bin/python bench/peers.py [--quick] [--records 100000] [--duration 15]
        [--only put,get,mix,batch,search] [--json OUT] [--no-install]

1. Installs what is missing (unless --no-install): Debian's etcd-server, redis-server,
   redis-tools and wrk with apt-get; chromadb with pip into /tmp/spine-peers-venv (outside the
   repo); matplotlib into the project venv.
2. Starts, on 127.0.0.1 and ports of --ports (41000-41999), each in a temp dir: a 3-node Spine
   (`spine up --nodes 3`, fsync on, --embedder hash unless told otherwise), a 3-member etcd
   (its WAL fsynced), one redis-server (AOF on, appendfsync --redis-fsync, everysec by
   default) and one chroma server (`chroma run`).
3. Shapes, each system one after the other in the same run:
   - put: Spine session and strong PUT (wrk + bench/lua/put.lua), etcd /v3/kv/put (wrk +
     bench/lua/peer_etcd.lua), Redis SET (redis-benchmark: another generator); c=63, ~200 B.
   - get: Spine session GET with a token (R=1) and without (quorum), etcd linearizable range,
     Redis GET.
   - mix: 90/10 GET/PUT, Spine with the token updated from every reply (bench/lua/mix.lua),
     etcd 90/10 range/put; Redis skipped (redis-benchmark cannot mix).
   - batch: --records vectors of 384 dims, Spine `_batch` of 1,000 items with vectors vs chroma
     `add` of 1,000, --ingest-concurrency calls in flight; records/s. Two datasets: clustered
     (near a 32-d subspace) and i.i.d. random unit vectors.
   - search: k=10, the same query vectors from the same aiohttp client (--concurrency in flight)
     against Spine `POST /v1/ns/{ns}/search {"vector"}` and chroma's query, once Spine's indexes
     have caught up (every node finds the last records by their own vectors, then the nodes are
     idle); QPS, p50/p99 and recall@10 against numpy brute force.
   CPU µs/op of the server processes (utime+stime from /proc) for every shape; RSS of every
   server process and disk per 100k vector records (Spine: all 3 nodes, N=3 replicas) beside
   chroma's.
4. One table with a `Spine ÷ peer` column; JSON to bench/results/peers-<timestamp>.json (or
   --json); PNG charts beside it (throughput per shape, latency CDF of search and ingest).

Every process started is stopped by its pid at the end, also on Ctrl-C, SIGTERM or an error.
The load generators run on the same 2 cores as the servers; other work on the box shows as
`other` busy cores in the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
from cas_bench import CpuWindow, Stop, cpu_model  # noqa: E402
from cas_bench import settle as settle_any  # noqa: E402
from peers_kv import KvBench, fmt, line  # noqa: E402
from peers_procs import (  # noqa: E402
    Chroma,
    PeerEtcd,
    Ports,
    Redis,
    Spine,
    du_mb,
    ensure_installed,
    server_rss,
    temp_root,
    version_of,
)
from peers_vectors import (  # noqa: E402
    ChromaTarget,
    SpineTarget,
    Target,
    brute_force,
    dataset,
    ingest,
    percentile_ms,
    recall,
    search_load,
    wait_spine_indexed,
)
from run_bench import settle  # noqa: E402

SHAPES = ("put", "get", "mix", "batch", "search")
K = 10
# Spine row -> the peer rows it is compared with (shape, system label prefix)
PAIRS = {
    ("put", "spine session"): ["etcd put", "redis SET"],
    ("put", "spine strong"): ["etcd put"],
    ("get", "spine session+token"): ["etcd range", "redis GET"],
    ("get", "spine quorum"): ["etcd range"],
    ("mix", "spine session, tokens updated"): ["etcd 90/10"],
}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="5 s per shape and 10k records: the whole run takes a few minutes")
    ap.add_argument("--records", type=int, default=100_000, help="vectors per dataset")
    ap.add_argument("--queries", type=int, default=500, help="distinct query vectors")
    ap.add_argument("--duration", type=int, default=15, help="measured seconds per shape")
    ap.add_argument("--warmup", type=int, default=2, help="uncounted seconds before each")
    ap.add_argument("--only", default=",".join(SHAPES), help="comma-separated shapes")
    ap.add_argument("--datasets", default="clustered,random")
    ap.add_argument("--keys", type=int, default=20_000, help="keys preloaded for get and mix")
    ap.add_argument("--put-keys", type=int, default=100_000, help="id space of the puts")
    ap.add_argument("--connections", type=int, default=63, help="wrk/redis-benchmark clients")
    ap.add_argument("--concurrency", type=int, default=16, help="search clients in flight")
    ap.add_argument("--ingest-concurrency", type=int, default=3, help="batches in flight")
    ap.add_argument("--embedder", default="hash", help="Spine's embedder (puts embed content)")
    ap.add_argument("--redis-fsync", default="everysec", choices=("everysec", "always", "no"))
    ap.add_argument("--ports", default="41000-41999", help="port range of every server")
    ap.add_argument("--index-timeout", type=float, default=900,
                    help="seconds to wait for Spine's indexes after an ingest")
    ap.add_argument("--json", default="", help="default bench/results/peers-<timestamp>.json")
    ap.add_argument("--no-install", action="store_true", help="install nothing")
    ap.add_argument("--no-charts", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (data and logs)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.quick:
        args.duration, args.records = 5, 10_000
    args.only = [s for s in args.only.split(",") if s]
    bad = set(args.only) - set(SHAPES)
    if bad:
        ap.error(f"unknown shapes {sorted(bad)}; choose from {','.join(SHAPES)}")
    args.datasets = [d for d in args.datasets.split(",") if d]
    return args


# ---------------------------------------------------------------------------------- vectors

class VectorBench:
    """Batch ingest and search of each dataset, Spine then chroma."""

    def __init__(self, args: argparse.Namespace, spine: Spine | None,
                 chroma: Chroma | None) -> None:
        self.args = args
        self.spine = spine
        self.chroma = chroma
        self.cdf: dict[str, list[float]] = {}  # "search clustered spine" -> latencies (s)
        self.extra: dict[str, Any] = {"index": {}, "chroma_hnsw": None}
        self.last_ingest_end = 0.0

    def groups(self) -> dict[str, list[int]]:
        g = {}
        if self.spine:
            g["spine"] = self.spine.pids
        if self.chroma:
            g["chroma"] = self.chroma.pids
        return g

    def run(self, kind: str, rows: list[dict[str, Any]]) -> None:
        """Appends each row as it is measured (an interrupted run keeps what it measured)."""
        a = self.args
        t0 = time.monotonic()
        data, queries = dataset(kind, a.records, a.queries, a.seed)
        truth = brute_force(data, queries, K)
        print(f"# {kind}: {a.records} × {data.shape[1]} vectors, {a.queries} queries, exact "
              f"top-{K} by numpy in {time.monotonic() - t0:.1f}s", flush=True)
        targets: list[tuple[Target, list[int]]] = []
        if self.spine:
            targets.append((SpineTarget(self.spine.urls, f"vec-{kind}"), self.spine.pids))
        if self.chroma:
            ct = ChromaTarget(self.chroma.api, f"vec-{kind}")
            self.extra["chroma_hnsw"] = ct.settings
            targets.append((ct, self.chroma.pids))
        for t, pids in targets:
            rows.append(self.ingest(kind, t, pids, data))
        if "search" in a.only:
            for t, pids in targets:
                rows.append(self.search(kind, t, pids, queries, truth))

    def ingest(self, kind: str, target: Target, pids: list[int],
               data: np.ndarray) -> dict[str, Any]:
        a = self.args
        waited = settle(self.spine.pids) if self.spine else 0.0
        cpu = CpuWindow({target.name: pids})
        cpu.start()
        r = asyncio.run(ingest(target, data, 1000, a.ingest_concurrency))
        cpu.stop()
        self.last_ingest_end = time.monotonic()
        lat = r.pop("latencies_s")
        self.cdf[f"batch {kind} {target.name}"] = lat
        row = {"shape": f"batch {kind}", "system": target.name,
               "generator": f"aiohttp, {a.ingest_concurrency} batches of 1000 in flight",
               "ops_per_s": r["ops_per_s"], "p50_ms": percentile_ms(lat, 0.5),
               "p99_ms": percentile_ms(lat, 0.99),
               "cpu_us_per_op": round(cpu.result[f"{target.name}_cpu_s"] / len(data) * 1e6, 1),
               "recall": None, "errors": r["failed_tries"],
               "other_cores": round(cpu.result["other_cores"], 2),
               "raw": {**r, "settle_before_s": round(waited, 1),
                       "busy_cores": round(cpu.result["busy_cores"], 2),
                       "other_cores": round(cpu.result["other_cores"], 2),
                       "latency_unit": "one batch call"}}
        print(line(row) + "  (latency of one batch call)", flush=True)
        if r["failed_tries"]:
            print(f"# {target.name} {kind}: {r['failed_tries']} batch calls failed and were sent "
                  f"again ({r['lost_batches']} batches never applied); first: {r['errors'][:2]}",
                  flush=True)
        if isinstance(target, SpineTarget):
            assert self.spine is not None
            found = wait_spine_indexed(target, data, 5, a.index_timeout)
            idle = settle(self.spine.pids, deadline_s=a.index_timeout)
            after = time.monotonic() - self.last_ingest_end
            row["raw"].update(findable_after_s=None if found is None else round(found, 1),
                              nodes_idle_after_s=round(after, 1), idle_wait_s=round(idle, 1))
            self.extra["index"][kind] = row["raw"]
            print(f"# spine {kind}: the last records found by their vectors on every node "
                  f"{fmt(found, '.1f')} s after the last _batch answered; nodes idle "
                  f"{after:.1f} s after it", flush=True)
        else:
            idle = settle_any(pids, idle_cores=0.1, deadline_s=a.index_timeout)
            row["raw"]["idle_after_s"] = round(time.monotonic() - self.last_ingest_end, 1)
            print(f"# {target.name} {kind}: idle {row['raw']['idle_after_s']} s after the last "
                  f"add answered", flush=True)
        return row

    def search(self, kind: str, target: Target, pids: list[int], queries: np.ndarray,
               truth: list[set[int]]) -> dict[str, Any]:
        a = self.args
        for g in self.groups().values():
            settle_any(g, idle_cores=0.15, deadline_s=120)
        cpu = CpuWindow({target.name: pids})
        run = asyncio.run(search_load(target, queries, K, a.concurrency, a.warmup, a.duration,
                                      cpu.start, cpu.stop))
        n = len(run.latencies_s)
        rec = recall(run.answers, truth, K)
        self.cdf[f"search {kind} {target.name}"] = run.latencies_s
        server = cpu.result[f"{target.name}_cpu_s"]
        row = {"shape": f"search {kind}", "system": target.name,
               "generator": f"aiohttp, {a.concurrency} in flight",
               "ops_per_s": round(n / run.wall_s, 1) if run.wall_s else None,
               "p50_ms": percentile_ms(run.latencies_s, 0.5),
               "p99_ms": percentile_ms(run.latencies_s, 0.99),
               "cpu_us_per_op": round(server / n * 1e6, 1) if n else None,
               "recall": rec, "errors": sum(run.errors.values()),
               "other_cores": round(cpu.result["other_cores"], 2),
               "raw": {"queries_answered": len(run.answers), "requests": n,
                       "wall_s": round(run.wall_s, 2), "errors": run.errors,
                       "gen_cpu_s": round(cpu.result["gen_cpu_s"], 2),
                       "busy_cores": round(cpu.result["busy_cores"], 2),
                       "other_cores": round(cpu.result["other_cores"], 2)}}
        print(line(row), flush=True)
        return row


# ---------------------------------------------------------------------------------- table

def ratios(rows: list[dict[str, Any]]) -> None:
    """Each Spine row gets `vs`: ops/s and CPU µs/op ratios to its peers in the same run."""
    for r in rows:
        peers: list[str] = PAIRS.get((r["shape"], r["system"]), [])
        if r["system"] == "spine" and r["shape"].startswith(("batch", "search")):
            peers = ["chroma"]
        r["vs"] = {}
        for p in rows:
            if p["shape"] != r["shape"] or not any(p["system"].startswith(x) for x in peers):
                continue
            v: dict[str, float | None] = {"ops_ratio": None, "cpu_ratio": None}
            if r["ops_per_s"] and p["ops_per_s"]:
                v["ops_ratio"] = round(r["ops_per_s"] / p["ops_per_s"], 3)
            if r["cpu_us_per_op"] and p["cpu_us_per_op"]:
                # peer CPU per op over Spine's: > 1 means Spine spends less
                v["cpu_ratio"] = round(p["cpu_us_per_op"] / r["cpu_us_per_op"], 3)
            r["vs"][p["system"]] = v


def table(rows: list[dict[str, Any]]) -> str:
    hdr = ["shape", "system", "ops/s", "p50 ms", "p99 ms", "CPU µs/op", "recall@10",
           "Spine ÷ peer (ops/s)", "errors", "other work"]
    out = [hdr]
    for r in rows:
        vs = "; ".join(f"{v['ops_ratio']:.2f}× {p.split(' (')[0]}"
                       for p, v in r.get("vs", {}).items() if v["ops_ratio"] is not None)
        gen = " *" if "redis-benchmark" in r["generator"] else ""
        out.append([r["shape"], r["system"] + gen, fmt(r["ops_per_s"], ".0f"),
                    fmt(r["p50_ms"], ".2f"), fmt(r["p99_ms"], ".2f"),
                    fmt(r["cpu_us_per_op"], ".0f"), fmt(r["recall"], ".3f"), vs or "",
                    str(r["errors"]), fmt(r.get("other_cores"), ".2f") + " cores"])
    widths = [max(len(x[i]) for x in out) for i in range(len(hdr))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(x, widths, strict=True))
                     for x in out)
    text += ("\nother work: busy cores of processes other than these servers and the load "
             "generator during the measurement (this box is shared)")
    return text + ("\n* another load generator: redis-benchmark (one C process), not wrk + Lua"
                   if any("redis-benchmark" in r["generator"] for r in rows) else "")


def spine_code() -> dict[str, Any]:
    """The commit the nodes run, and the files of spine/ changed in the work tree beside it
    (the nodes import the work tree as it is when they start)."""
    def git(*a: str) -> str:
        r = subprocess.run(["git", *a], cwd=HERE.parent, capture_output=True, text=True)
        return r.stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dirty": git("status", "--porcelain", "--", "spine").splitlines()}


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 15's targets that this run measures, each with the figure and ok / MISS."""
    by = {(r["shape"], r["system"]): r for r in rows}
    out: list[dict[str, Any]] = []

    def check(what: str, value: float | None, ok: bool | None) -> None:
        out.append({"target": what, "value": value,
                    "verdict": "-" if ok is None or value is None else ("ok" if ok else "MISS")})

    def ratio(shape: str, system: str, peer: str) -> float | None:
        r = by.get((shape, system))
        v = (r or {}).get("vs", {})
        return next((x["ops_ratio"] for p, x in v.items() if p.startswith(peer)), None)

    put, strong = by.get(("put", "spine session")), by.get(("put", "spine strong"))
    if put:
        check("session put >= 3,000/s", put["ops_per_s"], put["ops_per_s"] >= 3000)
        x = ratio("put", "spine session", "etcd")
        check("session put >= 0.65x etcd put", x, x is not None and x >= 0.65)
    if strong:
        x = ratio("put", "spine strong", "etcd")
        check("strong put >= 0.5x etcd put", x, x is not None and x >= 0.5)
    for r in (put, strong):
        if r:
            check(f"{r['system']} put p99 <= 50 ms", r["p99_ms"], r["p99_ms"] <= 50)
    mix = by.get(("mix", "spine session, tokens updated"))
    if mix:
        check("90/10 mix, tokens updated >= 8,000/s", mix["ops_per_s"], mix["ops_per_s"] >= 8000)
    get = by.get(("get", "spine session+token"))
    if get:
        check("session get p99 <= 10 ms", get["p99_ms"], get["p99_ms"] <= 10)
    for r in rows:
        if r["system"] != "spine":
            continue
        if r["shape"].startswith("batch"):
            check(f"{r['shape']}: _batch (vectors given) >= 10,000 records/s", r["ops_per_s"],
                  r["ops_per_s"] >= 10_000)
            idle = r["raw"].get("nodes_idle_after_s")
            check(f"{r['shape']}: index caught up (nodes idle) <= 30 s after the ingest",
                  idle, idle is not None and idle <= 30)
        if r["shape"].startswith("search"):
            check(f"{r['shape']}: recall@10 >= 0.95", r["recall"],
                  r["recall"] is not None and r["recall"] >= 0.95)
            x = ratio(r["shape"], "spine", "chroma")
            check(f"{r['shape']}: QPS >= 2x chroma", x, x is not None and x >= 2)
    return out


# ---------------------------------------------------------------------------------- main

def main() -> int:
    args = parse_args()
    started = dt.datetime.now(dt.UTC)
    t_start = time.monotonic()
    code = spine_code()
    tools = ensure_installed(not args.no_install)
    if not tools["wrk"]:
        sys.exit("wrk is missing: apt-get install -y wrk")
    missing = [k for k, v in tools.items() if not v]
    if missing:
        print(f"# missing, so their systems are left out: {missing}", file=sys.stderr)

    def on_term(signum: int, frame: object) -> None:
        raise Stop()

    signal.signal(signal.SIGTERM, on_term)
    lo, hi = (int(x) for x in args.ports.split("-"))
    ports = Ports(lo, hi)
    root = temp_root()
    want_kv = any(s in args.only for s in ("put", "get", "mix"))
    want_vec = any(s in args.only for s in ("batch", "search"))
    spine = etcd = redis = chroma = None
    rows: list[dict[str, Any]] = []
    meta: dict[str, Any] = {}
    cdf: dict[str, list[float]] = {}
    resources: dict[str, Any] = {}
    rc = 0
    try:
        print(f"# {started:%Y-%m-%d %H:%M} UTC; temp dir {root}; {os.cpu_count()} CPUs, shared "
              "with the load generators (and with any other work on this box); spine at "
              f"{code['commit']}" + (f" with {len(code['dirty'])} files of spine/ changed"
                                     if code["dirty"] else ""), flush=True)
        spine = Spine(root, ports, args.embedder)
        spine.start()
        print(f"# spine: {spine.urls} (node pids {spine.pids}), fsync on, embedder "
              f"{args.embedder}", flush=True)
        if want_kv and tools["etcd"]:
            etcd = PeerEtcd(str(tools["etcd"]), root, ports)
            etcd.start()
            print(f"# etcd: {etcd.version}, 3 members {etcd.urls} (pids {etcd.pids})",
                  flush=True)
        if want_kv and tools["redis-server"]:
            redis = Redis(str(tools["redis-server"]), root, ports, args.redis_fsync)
            redis.start()
            print(f"# redis: {redis.version}, port {redis.port} (pid {redis.pids}), appendonly "
                  f"yes, appendfsync {redis.fsync}", flush=True)
        if want_vec and tools["chroma"]:
            chroma = Chroma(str(tools["chroma"]), root, ports)
            chroma.start()
            print(f"# chroma: {chroma.version}, {chroma.url} (pid {chroma.pids})", flush=True)
        meta = {"etcd": etcd.version if etcd else None,
                "redis": redis.version if redis else None,
                "redis_appendfsync": redis.fsync if redis else None,
                "chroma": chroma.version if chroma else None,
                "wrk": version_of([str(tools["wrk"]), "-v"])}
        if want_kv:
            kv = KvBench(str(tools["wrk"]), spine, etcd, redis, tools["redis-benchmark"],
                         keys=args.keys, put_keys=args.put_keys, duration=args.duration,
                         warmup=args.warmup, connections=args.connections)
            kv.preload()
            for shape in ("put", "get", "mix"):
                if shape in args.only:
                    rows += kv.run(shape)
        if want_vec:
            disk0 = {"spine": du_mb(spine.data), "chroma": du_mb(chroma.data) if chroma else 0.0}
            vb = VectorBench(args, spine, chroma)
            for kind in args.datasets:
                vb.run(kind, rows)
            cdf = vb.cdf
            meta["chroma_hnsw"] = vb.extra["chroma_hnsw"]
            # Spine saves each namespace's graph every index.persist_interval_s (30 s): let
            # one save happen after the last ingest before measuring disk.
            time.sleep(max(0.0, 35 - (time.monotonic() - vb.last_ingest_end)))
            records = args.records * len(args.datasets)
            disk = {"spine_all_nodes_mb": du_mb(spine.data) - disk0["spine"]}
            if chroma:
                disk["chroma_mb"] = du_mb(chroma.data) - disk0["chroma"]
            resources["disk_per_100k_records_mb"] = {
                k: round(v / records * 100_000, 1) for k, v in disk.items()}
            resources["vector_records"] = records
        groups = {"spine": spine.pids, **({"etcd": etcd.pids} if etcd else {}),
                  **({"redis": redis.pids} if redis else {}),
                  **({"chroma": chroma.pids} if chroma else {})}
        resources["rss_mb"] = {k: [fmt(x, ".0f") for x in v]
                               for k, v in server_rss(groups).items()}
    except (KeyboardInterrupt, Stop):
        print("# interrupted: stopping every process started", file=sys.stderr, flush=True)
        rc = 130
    except Exception as e:
        print(f"# error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        rc = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut cleanup
        problems: list[str] = []
        for server in (chroma, redis, etcd, spine):
            if server is not None:
                try:
                    problems += server.stop()
                except Exception as e:  # keep stopping the others
                    problems.append(f"{type(server).__name__}.stop: {e}")
        for p in problems:
            print(f"# WARNING: {p}", file=sys.stderr)
        print("# stopped every server started (spine, etcd, redis, chroma); ports free"
              if not problems else "# stopped with problems (above)", flush=True)
        if args.keep or rc == 1:
            print(f"# logs and data kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        rc = rc or (1 if problems else 0)

    if not rows:
        return rc or 1
    ratios(rows)
    wall = time.monotonic() - t_start
    print()
    print(table(rows))
    checks = targets(rows)
    if checks:
        print("\nissue 15 targets, as measured in this run:")
        for c in checks:
            v = c["value"]
            print(f"  {c['verdict']:<4} {c['target']}: "
                  f"{fmt(v, '.0f' if v is not None and v >= 100 else '.3g')}")
    if resources:
        print(f"\nRSS MiB per server process: {resources.get('rss_mb')}")
        if "disk_per_100k_records_mb" in resources:
            print(f"disk MiB per 100k vector records (du of the data dirs, growth over the "
                  f"vector ingests): {resources['disk_per_100k_records_mb']} (Spine: 3 nodes, "
                  "each holding a replica)")
    print(f"\nwall time {wall / 60:.1f} min; this box has {os.cpu_count()} cores shared by the "
          "servers, the load generators and any other work (see busy/other cores in the JSON)")
    stamp = started.strftime("%Y%m%d-%H%M%S")
    out = Path(args.json) if args.json else \
        HERE / "results" / f"peers-{stamp}{'-quick' if args.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta.update({
        "date": started.isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/peers.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "kernel": platform.release(),
                    "python": platform.python_version()},
        "duration_s": args.duration, "warmup_s": args.warmup, "records": args.records,
        "queries": args.queries, "k": K, "connections": args.connections,
        "search_concurrency": args.concurrency, "embedder": args.embedder, "fsync": True,
        "spine_code": code,
        "wall_s": round(wall, 1)})
    out.write_text(json.dumps({"meta": meta, "results": rows, "targets": checks,
                               "resources": resources},
                              indent=2))
    print(f"# figures written to {out}")
    if not args.no_charts:
        from peers_charts import draw
        for png in draw(rows, cdf, out.with_suffix("")):
            print(f"# chart {png}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
