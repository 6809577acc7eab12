#!/usr/bin/env python3
"""Change feed throughput while the put benchmark runs (DESIGN §15, issue 11's acceptance).

    .venv/bin/python bench/feed_bench.py [--duration 30] [--concurrency 32] [--put-keys 100000]
        [--phases off,on,off] [--consumer-node rr|0|1|2] [--wait-s 5] [--limit 1000]
        [--drain-s 30] [--no-replay] [--base-port 40788]

1. A 3-node `spine up --no-sync` cluster with the `hash` embedder (bench/search_bench.py's
   `Cluster`, as bench/hybrid_bench.py starts it).
2. Each phase: --concurrency writers, one asyncio process, PUT ~200 B of text to a random id of
   --put-keys (run_bench's `put_session`: session level, each client carrying its session
   token) through a random node per request, closed loop at full speed: 2 s uncounted warm-up,
   then --duration seconds measured. Each phase writes a namespace of its own (feedbench-1, -2,
   ...), so both start alike: a new namespace, inserts with some overwrites.
   Phase `off`: no consumer. Phase `on`: ONE consumer, in a process of its own (its clock
   readings are not delayed by the writers' event loop; CLOCK_MONOTONIC is shared by the
   processes), takes a cursor with `from=now` before the writers start and follows
   `GET /v1/ns/{ns}/changes?cursor=C&limit=--limit&wait_s=--wait-s`, round-robin over the nodes
   (or on one node), through the writers' warm-up, window, and then a drain.
   Before each phase the nodes are let go idle (bounded 20 s): HNSW inserts of the previous
   phase would otherwise be charged to the next. The default order off,on,off brackets the
   consumer's phase, so a drift of the shared box's load shows (and is averaged over).
3. Drain: after the writers stop, the consumer keeps following (wait_s 1) until every
   acknowledged (id, version) is delivered, or superseded by a newer version of its id that was
   delivered (the feed is compacted by key: that is its promise), or --drain-s passes.
4. Replay (unless --no-replay): with no writers, a fresh consumer reads the `on` phase's
   namespace from the beginning (no cursor, wait_s 0) to the end: changes/s and node CPU per
   change with nothing else running, the feed's own cost without an estimate.

Printed and written to bench/results/feed-<timestamp>.json: per phase, put ops/s and p50/p99
(measured window); for `on`, changes/s delivered to the consumer in the window (distinct
(id, version)), delivery lag p50/p99/max (a put's ack to the consumer first seeing that version
of the id or a newer one; negative when the consumer saw it before the writer's ack arrived),
duplicates delivered, per-key order violations, acknowledged changes never delivered (must be 0),
the drain time, and node CPU per delivered change estimated as (node CPU of the `on` window -
puts x the `off` phase's node CPU per put) / changes delivered, and the nodes' `spine_feed_*`
counters over the phase (items delivered as logged on a quorum or settled by a strong read
first; repeats not sent; keys held). Asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import json
import multiprocessing as mp
import os
import queue
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for p in (str(HERE), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

import search_bench as sb  # noqa: E402

RESULTS = HERE / "results"
NS_PREFIX = "feedbench"
WARMUP_S = 2.0

VersionKey = tuple[int, str]


def vkey(version: str) -> VersionKey:
    """A record's version string ("<16 hex hlc>.<node>") as the pair it is ordered by."""
    hlc, _, node = version.partition(".")
    return int(hlc, 16), node


def pct(xs: list[float], q: float) -> float | None:
    """The q-quantile of sorted `xs` (None when empty)."""
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None


def ms(xs: list[float], q: float) -> float | None:
    """The q-quantile of sorted seconds `xs`, in milliseconds."""
    v = pct(xs, q)
    return None if v is None else 1000 * v


def fmt(v: float | None, unit: str = "", digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}{unit}"


# ----------------------------------------------------------------------------- writers


async def put_load(urls: list[str], ns: str, concurrency: int, duration: float, put_keys: int,
                   seed: int, marks: dict[str, float],
                   on_measure: Any = None) -> tuple[dict[str, Any], list[tuple[str, str, float]]]:
    """Closed-loop PUTs; the phase figures and every acknowledged (id, version, ack time)."""
    rng = random.Random(seed)
    gen = sb.TextGen(seed)
    bodies = [json.dumps({"content": gen.text(26, 34)}).encode() for _ in range(256)]
    acked: list[tuple[str, str, float]] = []
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    measuring = False
    stop_at = 0.0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=30)) as http:

        async def worker(w: int) -> None:
            token = ""
            while time.monotonic() < stop_at:
                mid = f"p-{rng.randrange(put_keys)}"
                url = f"{rng.choice(urls)}/v1/ns/{ns}/memories/{mid}"
                headers = {"Content-Type": "application/json"}
                if token:
                    headers["Spine-Session"] = token
                t0 = time.monotonic()
                try:
                    async with http.put(url, data=rng.choice(bodies), headers=headers) as r:
                        raw = await r.read()
                        status = r.status
                        token = r.headers.get("Spine-Session", token)
                except (aiohttp.ClientError, TimeoutError) as e:
                    if measuring:
                        errors[type(e).__name__] += 1
                    continue
                t1 = time.monotonic()
                if status in (200, 201):
                    acked.append((mid, json.loads(raw)["version"], t1))
                    if measuring and t1 <= stop_at:
                        latencies.append(t1 - t0)
                elif measuring:
                    errors[f"http {status}"] += 1

        stop_at = time.monotonic() + WARMUP_S + duration
        tasks = [asyncio.create_task(worker(w)) for w in range(concurrency)]
        await asyncio.sleep(WARMUP_S)
        measuring = True
        marks["window_start"] = time.monotonic()
        if on_measure is not None:
            on_measure()
        await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
        marks["window_end"] = time.monotonic()
        if on_measure is not None:
            on_measure()
        await asyncio.gather(*tasks)
        marks["writers_done"] = time.monotonic()
    wall = marks["window_end"] - marks["window_start"]
    latencies.sort()
    n = len(latencies)
    return {"puts": n, "duration_s": wall, "ops_per_s": n / wall if wall else 0.0,
            "p50_ms": ms(latencies, 0.5),
            "p99_ms": ms(latencies, 0.99),
            "errors": dict(errors), "acked_total": len(acked)}, acked


# ----------------------------------------------------------------------------- the consumer


def _changes_url(base: str, ns: str, **params: Any) -> str:
    return f"{base}/v1/ns/{ns}/changes?{urllib.parse.urlencode(params)}"


async def follow(urls: list[str], ns: str, node: str, limit: int, wait_s: float,
                 out: Any, ready: Any, drain: Any, stop: Any) -> None:
    """Take a cursor at `from=now`, then follow it until `stop`; each non-empty page goes to
    `out` as (items [(id, version, deleted)], seen-at monotonic time); a final dict of
    counters ends the stream."""
    stats: collections.Counter[str] = collections.Counter()
    order = list(range(len(urls))) if node == "rr" else [int(node)]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=wait_s + 30)) as http:
        cursor = None
        i = 0
        while cursor is None:
            try:
                async with http.get(_changes_url(urls[order[0]], ns, **{"from": "now"})) as r:
                    if r.status == 200:
                        cursor = (await r.json())["cursor"]
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.1)
        ready.set()
        while not stop.is_set():
            base = urls[order[i % len(order)]]
            i += 1
            wait = 1.0 if drain.is_set() else wait_s
            try:
                async with http.get(_changes_url(base, ns, cursor=cursor, limit=limit,
                                                 wait_s=wait)) as r:
                    raw = await r.read()
                    status = r.status
            except (aiohttp.ClientError, TimeoutError) as e:
                stats[type(e).__name__] += 1
                await asyncio.sleep(0.1)
                continue
            seen = time.monotonic()
            stats["polls"] += 1
            if status != 200:
                stats[f"http {status}"] += 1
                await asyncio.sleep(0.1)
                continue
            page = json.loads(raw)
            cursor = page["cursor"]
            items = [(c["id"], c["version"], c["deleted"]) for c in page["items"]]
            if items:
                out.put((items, seen))
            else:
                stats["empty_polls"] += 1
    out.put(dict(stats))


def consumer_main(urls: list[str], ns: str, node: str, limit: int, wait_s: float,
                  out: Any, ready: Any, drain: Any, stop: Any) -> None:
    """The consumer process's body."""
    asyncio.run(follow(urls, ns, node, limit, wait_s, out, ready, drain, stop))


class Deliveries:
    """What the consumer was given: first-seen times per (id, version), duplicates, and per-key
    order (the promise: per key, delivered versions only increase)."""

    def __init__(self) -> None:
        self.first_seen: dict[tuple[str, str], float] = {}
        self.by_id: dict[str, list[tuple[VersionKey, float]]] = collections.defaultdict(list)
        self.newest: dict[str, VersionKey] = {}
        self.items = 0
        self.duplicates = 0
        self.order_violations = 0
        self.deleted = 0
        self.consumer_stats: dict[str, int] | None = None

    def take(self, msg: Any) -> None:
        if isinstance(msg, dict):
            self.consumer_stats = msg
            return
        items, seen = msg
        for mid, version, deleted in items:
            self.items += 1
            self.deleted += bool(deleted)
            if (mid, version) in self.first_seen:
                self.duplicates += 1
                continue
            self.first_seen[(mid, version)] = seen
            k = vkey(version)
            prev = self.newest.get(mid)
            if prev is not None and k < prev:
                self.order_violations += 1
            else:
                self.newest[mid] = k
            self.by_id[mid].append((k, seen))

    def covered(self, mid: str, k: VersionKey) -> bool:
        newest = self.newest.get(mid)
        return newest is not None and newest >= k

    def seen_at(self, mid: str, k: VersionKey) -> float | None:
        """When the consumer first saw this version of `mid` or a newer one."""
        times = [t for v, t in self.by_id.get(mid, ()) if v >= k]
        return min(times) if times else None


def pump(q: Any, deliveries: Deliveries, timeout: float) -> bool:
    """Move what the consumer sent into `deliveries`; True once its final counters came."""
    try:
        msg = q.get(timeout=timeout)
    except queue.Empty:
        return False
    deliveries.take(msg)
    while True:
        if isinstance(msg, dict):
            return True
        try:
            msg = q.get_nowait()
        except queue.Empty:
            return False
        deliveries.take(msg)


def acked_newest(acked: list[tuple[str, str, float]]) -> dict[str, VersionKey]:
    newest: dict[str, VersionKey] = {}
    for mid, version, _ in acked:
        k = vkey(version)
        if newest.get(mid, (-1, "")) < k:
            newest[mid] = k
    return newest


# ----------------------------------------------------------------------------- replay


async def replay(urls: list[str], ns: str, limit: int, deadline_s: float) -> dict[str, Any]:
    """Read `ns` from the beginning to the end (a poll with no items), round-robin."""
    cursor: str | None = None
    items = polls = 0
    complete = False
    t0 = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        while time.monotonic() - t0 < deadline_s:
            params: dict[str, Any] = {"limit": limit}
            if cursor is not None:
                params["cursor"] = cursor
            async with http.get(_changes_url(urls[polls % len(urls)], ns, **params)) as r:
                page = await r.json()
                if r.status != 200:
                    return {"error": f"http {r.status}: {page}"}
            polls += 1
            cursor = page["cursor"]
            if not page["items"]:
                complete = True
                break
            items += len(page["items"])
    wall = time.monotonic() - t0
    return {"changes": items, "polls": polls, "wall_s": wall,
            "changes_per_s": items / wall if wall else 0.0,
            "complete": complete}


# ----------------------------------------------------------------------------- node metrics


def feed_counters(urls: list[str]) -> dict[str, float]:
    """The nodes' `spine_feed_*` counters (from /metrics), summed over the nodes, by series."""
    out: dict[str, float] = collections.defaultdict(float)
    for url in urls:
        with contextlib.suppress(OSError, ValueError), \
                urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("spine_feed_") and not line.startswith("#"):
                    name, _, value = line.rpartition(" ")
                    out[name] += float(value)
    return dict(out)


def counter_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0.0) for k, v in sorted(after.items())
            if v - before.get(k, 0.0)}


# ----------------------------------------------------------------------------- phases


def settle(cluster: sb.Cluster, idle_cores: float = 0.15, deadline_s: float = 20.0) -> float:
    """Wait (bounded) until the nodes are idle; seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline_s:
        a = sum(cluster.cpu_s())
        time.sleep(0.5)
        if (sum(cluster.cpu_s()) - a) / 0.5 < idle_cores:
            break
    return time.monotonic() - t0


def run_phase(args: argparse.Namespace, cluster: sb.Cluster, n: int,
              consumer: bool) -> tuple[dict[str, Any], list[tuple[str, str, float]]]:
    """One phase of writers, with or without the consumer; its figures."""
    ns = f"{NS_PREFIX}-{n}"
    out: dict[str, Any] = {"phase": "on" if consumer else "off", "namespace": ns,
                           "settle_s": settle(cluster)}
    ctx = mp.get_context("fork")  # no event loop runs in this process between phases
    q: Any = ctx.Queue()
    ready, drain, stop = ctx.Event(), ctx.Event(), ctx.Event()
    proc = None
    counters0 = feed_counters(cluster.urls) if consumer else {}
    if consumer:
        proc = ctx.Process(target=consumer_main, name="feed-consumer", daemon=True,
                           args=(cluster.urls, ns, args.consumer_node, args.limit, args.wait_s,
                                 q, ready, drain, stop))
        proc.start()
        if not ready.wait(30):
            stop.set()
            proc.join(5)
            if proc.is_alive():
                proc.kill()
            raise RuntimeError("the consumer got no from=now cursor in 30 s")
    cpu: list[list[float]] = []
    marks: dict[str, float] = {}
    deliveries = Deliveries()
    try:
        load, acked = asyncio.run(put_load(cluster.urls, ns, args.concurrency, args.duration,
                                           args.put_keys, args.seed + n, marks,
                                           lambda: cpu.append(cluster.cpu_s())))
        out.update(load)
        node_cpu_s = sum(cpu[1]) - sum(cpu[0])
        out["node_cpu_s"] = node_cpu_s
        out["node_cpu_us_per_put"] = 1e6 * node_cpu_s / load["puts"] if load["puts"] else None
        if proc is None:
            return out, acked
        # drain: until every acknowledged change is covered by a delivery, or the deadline
        drain.set()
        want = acked_newest(acked)
        t0 = time.monotonic()
        done = False
        while time.monotonic() - t0 < args.drain_s and proc.is_alive():
            done = pump(q, deliveries, 0.2)
            if all(deliveries.covered(m, k) for m, k in want.items()):
                break
        drained = all(deliveries.covered(m, k) for m, k in want.items())
        out["drain_s"] = time.monotonic() - t0
        out["drained"] = drained
        stop.set()
        deadline = time.monotonic() + args.wait_s + 35
        while not done and time.monotonic() < deadline:
            done = pump(q, deliveries, 0.5)
        proc.join(10)
    finally:
        stop.set()
        if proc is not None and proc.is_alive():
            proc.kill()
            proc.join(5)
    out.update(feed_figures(deliveries, acked, marks))
    # how the nodes made each delivered item safe (logged on a quorum, or settled by a strong
    # read), repeats suppressed and keys held: the counters' change over the phase
    out["node_feed_counters"] = counter_delta(counters0, feed_counters(cluster.urls))
    return out, acked


def feed_figures(d: Deliveries, acked: list[tuple[str, str, float]],
                 marks: dict[str, float]) -> dict[str, Any]:
    """The consumer's side of a phase."""
    lags: list[float] = []
    missing: list[tuple[str, str]] = []
    superseded = 0
    for mid, version, t_ack in acked:
        k = vkey(version)
        seen = d.seen_at(mid, k)
        if seen is None:
            missing.append((mid, version))
            continue
        if (mid, version) not in d.first_seen:
            superseded += 1
        lags.append(seen - t_ack)
    lags.sort()
    w0, w1 = marks["window_start"], marks["window_end"]
    in_window = sum(1 for t in d.first_seen.values() if w0 <= t < w1)
    return {
        "delivered_items": d.items,
        "delivered_distinct": len(d.first_seen),
        "changes_per_s_in_window": in_window / (w1 - w0),
        "duplicates": d.duplicates,
        "order_violations": d.order_violations,
        "deleted_items": d.deleted,
        "acked": len(acked),
        "acked_not_delivered": len(missing),
        "acked_not_delivered_sample": missing[:10],
        "acked_superseded": superseded,
        "lag_p50_ms": ms(lags, 0.5),
        "lag_p99_ms": ms(lags, 0.99),
        "lag_max_ms": 1000 * lags[-1] if lags else None,
        "seen_before_ack": sum(1 for x in lags if x < 0),
        "consumer": d.consumer_stats,
    }


def report_phase(r: dict[str, Any]) -> None:
    print(f"phase {r['phase']:>3} ({r['namespace']}, settled {r['settle_s']:.1f} s): "
          f"{r['ops_per_s']:,.0f} puts/s, p50 {fmt(r['p50_ms'], ' ms')}, "
          f"p99 {fmt(r['p99_ms'], ' ms')}, node CPU {fmt(r['node_cpu_us_per_put'], ' µs', 0)}"
          f" per put, errors {r['errors'] or 0}", flush=True)
    if r["phase"] != "on":
        return
    print(f"   consumer: {r['changes_per_s_in_window']:,.0f} changes/s delivered in the window;"
          f" {r['delivered_distinct']:,} distinct (id, version) of {r['delivered_items']:,} "
          f"items; lag p50 {fmt(r['lag_p50_ms'], ' ms')}, p99 {fmt(r['lag_p99_ms'], ' ms')}, "
          f"max {fmt(r['lag_max_ms'], ' ms')} ({r['seen_before_ack']} seen before the ack); "
          f"duplicates {r['duplicates']} ({fmt(100 * r['duplicates'] / max(1, r['delivered_items']))}"
          f" % of items), order violations {r['order_violations']}", flush=True)
    print(f"   acknowledged {r['acked']:,}, not delivered after the drain "
          f"({r['drain_s']:.1f} s): {r['acked_not_delivered']} (superseded by a delivered newer "
          f"version: {r['acked_superseded']}); consumer {r['consumer']}", flush=True)
    print(f"   node feed counters over the phase: {r['node_feed_counters'] or 'none'}", flush=True)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Start the cluster, run the phases (and the replay), stop it, write the figures."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=float, default=30.0, help="measured seconds per phase")
    ap.add_argument("--concurrency", type=int, default=32, help="concurrent writers")
    ap.add_argument("--put-keys", type=int, default=100_000, help="id space of the writers")
    ap.add_argument("--phases", default="off,on,off",
                    help="comma-separated, in order: off (no consumer) and on (one consumer)")
    ap.add_argument("--consumer-node", default="rr", choices=["rr", "0", "1", "2"],
                    help="rr: round-robin over the nodes, else the index of one node")
    ap.add_argument("--wait-s", type=float, default=5.0)
    ap.add_argument("--limit", type=int, default=1000)
    ap.add_argument("--drain-s", type=float, default=30.0)
    ap.add_argument("--no-replay", action="store_true")
    ap.add_argument("--base-port", type=int, default=40788)
    ap.add_argument("--ready-s", type=float, default=180.0,
                    help="how long the nodes may take to answer /readyz")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    args = ap.parse_args(argv)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    if not phases or any(p not in ("off", "on") for p in phases):
        ap.error("--phases: a list of off and on")
    data = Path(tempfile.mkdtemp(prefix="spine-feed-bench-"))
    (data / "cluster.yaml").write_text("embedder:\n  name: hash\n")
    report: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                 capture_output=True, text=True).stdout.strip(),
        "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "args": vars(args),
        "phases": []}
    cluster = sb.Cluster(data, args.base_port)
    try:
        # a longer wait than Cluster.start's 60 s: on the shared box three nodes can take longer
        sb.wait_ready(cluster.urls, cluster.up, args.ready_s)
        cluster.start()
        on_ns = None
        for n, phase in enumerate(phases, 1):
            res, _ = run_phase(args, cluster, n, phase == "on")
            report["phases"].append(res)
            report_phase(res)
            if phase == "on":
                on_ns = res["namespace"]
        report["summary"] = summary(report["phases"])
        if on_ns is not None and not args.no_replay:
            settle(cluster)
            c0 = sum(cluster.cpu_s())
            rep = asyncio.run(replay(cluster.urls, on_ns, args.limit, 60.0))
            if "changes" in rep:
                rep["node_cpu_us_per_change"] = (1e6 * (sum(cluster.cpu_s()) - c0)
                                                 / rep["changes"] if rep["changes"] else None)
                print(f"replay of {on_ns} from the beginning, no writers: {rep['changes']:,} "
                      f"changes in {rep['wall_s']:.1f} s ({rep['changes_per_s']:,.0f}/s, "
                      f"{rep['polls']} polls), node CPU "
                      f"{fmt(rep['node_cpu_us_per_change'], ' µs', 1)} per change", flush=True)
            else:
                print(f"replay failed: {rep['error']}", flush=True)
            report["replay"] = rep
    finally:
        problems = cluster.stop()
        for p in problems:
            print(f"WARNING: {p}", file=sys.stderr)
        report["stop_problems"] = problems
        report["loadavg_end"] = os.getloadavg()
        if args.keep:
            print(f"data kept in {data}")
        else:
            shutil.rmtree(data, ignore_errors=True)
    s = report["summary"]
    if s:
        print(f"summary: puts/s with the consumer {fmt(s.get('put_ops_ratio'), '', 2)} × without;"
              f" p99 {fmt(s.get('put_p99_ratio'), '', 2)} ×; feed node CPU per delivered change"
              f" (estimate) {fmt(s.get('node_cpu_us_per_change_est'), ' µs', 0)}", flush=True)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"feed-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"figures written to {out.relative_to(REPO)}")
    return 0


def summary(phases: list[dict[str, Any]]) -> dict[str, Any]:
    """Ratios of the `on` phases to the `off` ones (means when a kind ran twice), and the node
    CPU a delivered change added: the `on` window's node CPU beyond what its puts cost in the
    `off` phases."""
    off = [p for p in phases if p["phase"] == "off" and p["puts"]]
    on = [p for p in phases if p["phase"] == "on" and p["puts"]]
    if not off or not on:
        return {}

    def mean(rows: list[dict[str, Any]], key: str) -> float | None:
        xs = [r[key] for r in rows if r[key] is not None]
        return sum(xs) / len(xs) if xs else None

    off_ops, on_ops = mean(off, "ops_per_s"), mean(on, "ops_per_s")
    off_p99, on_p99 = mean(off, "p99_ms"), mean(on, "p99_ms")
    per_put = sum(p["node_cpu_s"] for p in off) / sum(p["puts"] for p in off)
    extra = sum(p["node_cpu_s"] - per_put * p["puts"] for p in on)
    window_changes = sum(p["changes_per_s_in_window"] * p["duration_s"] for p in on)
    return {
        "put_ops_ratio": on_ops / off_ops if on_ops and off_ops else None,
        "put_p99_ratio": on_p99 / off_p99 if on_p99 and off_p99 else None,
        "node_cpu_us_per_put_off": 1e6 * per_put,
        "node_cpu_us_per_change_est": 1e6 * extra / window_changes if window_changes else None,
    }


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
