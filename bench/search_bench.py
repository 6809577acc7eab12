#!/usr/bin/env python3
"""Spine search benchmark: `_batch` ingest rate and cluster search QPS / latency on a local
3-node cluster. Prints figures beside the targets; asserts nothing.

    .venv/bin/python bench/search_bench.py [--records 100000] [--base-port 38788]
        [--duration 20] [--concurrency 32] [--ingest-concurrency 3] [--k 10]
        [--profile] [--keep] [--data DIR]

1. Starts `.venv/bin/spine up --nodes 3 --base-port P --data DIR --no-sync` (a temporary DIR
   unless --data) and waits for /readyz on every node.
2. Ingests --records synthetic memories (6–20 words drawn from a fixed 4,000-word vocabulary,
   Zipf-weighted, 0–2 tags) with `POST /v1/ns/bench/memories/_batch`, 1,000 items per call,
   --ingest-concurrency calls in flight spread over the nodes, embedded by the cluster's `hash`
   embedder. Reports records/s over the ingest wall time (every item must answer 200/201).
3. Waits until every node's index has caught up (the last records of the last complete
   batches are found by their own text through every node) and reports how long that took.
4. Runs --concurrency asyncio workers (one aiohttp session) for --duration seconds after a
   2-second warm-up, each sending random 2–6-word text queries with k=10, round-robin over the
   three nodes. Reports QPS, p50/p90/p99/max latency, errors, the load generator's own CPU time
   and the node processes' CPU time (from /proc).
5. With --profile, samples every node with py-spy (`record --format raw --nonblocking`) during
   the measured search window and prints the hottest functions (self and inclusive).
6. Stops the cluster with SIGTERM to `spine up` and checks that no `spine serve` of this run is
   left (any survivor is SIGKILLed and reported).

Targets: cluster search >= 500 QPS with p99 <= 50 ms at 100k records; `_batch` ingest >= 5,000
records/s with the hash embedder. A JSON copy of the figures goes to
bench/results/search-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
VENV_BIN = REPO / ".venv" / "bin"
NODES = 3
NS = "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK")

TARGET_QPS = 500.0
TARGET_P99_MS = 50.0
TARGET_INGEST = 5000.0


# ----------------------------------------------------------------------------- synthetic text


def vocabulary(size: int, seed: int) -> list[str]:
    """`size` distinct pronounceable words (deterministic)."""
    rng = random.Random(seed)
    onsets = ["b", "c", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
              "br", "ch", "st", "tr", "pl", "gr", "sh", "th"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ou", "ea"]
    words: set[str] = set()
    while len(words) < size:
        syllables = rng.randint(1, 3)
        words.add("".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(syllables)))
    return sorted(words)


class TextGen:
    """Random texts over a fixed vocabulary, Zipf-weighted like natural language."""

    def __init__(self, seed: int, vocab_size: int = 4000) -> None:
        self.rng = random.Random(seed)
        self.words = vocabulary(vocab_size, 7)
        self.weights = [1.0 / (i + 1) ** 0.9 for i in range(len(self.words))]
        self._cum: list[float] = []
        total = 0.0
        for w in self.weights:
            total += w
            self._cum.append(total)

    def text(self, lo: int, hi: int) -> str:
        n = self.rng.randint(lo, hi)
        return " ".join(self.rng.choices(self.words, cum_weights=self._cum, k=n))


# ----------------------------------------------------------------------------- processes


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_cpu_s() -> float:
    """Busy CPU seconds of the whole machine so far (every core, every process)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


def children_of(pid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            out.append(int(p.name))
    return sorted(out)


def serve_processes(config: Path) -> list[int]:
    """Every live `spine serve` process started with this run's config."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0")
            state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and b"serve" in argv and str(config).encode() in argv:
            out.append(int(p.name))
    return out


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # As the nodes bind: connections of an earlier run in TIME_WAIT do not count.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def http_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None


def wait_ready(urls: list[str], up: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    pending = list(urls)
    while pending:
        if up.poll() is not None:
            raise RuntimeError(f"`spine up` exited with {up.returncode} while starting")
        url = pending[0]
        with contextlib.suppress(OSError):
            if http_json(url + "/readyz", 1.0)[0] == 200:
                pending.pop(0)
                continue
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not ready after {timeout:.0f}s")
        time.sleep(0.1)


class Cluster:
    """`spine up` as a child process; `stop()` SIGTERMs it and checks every node is gone."""

    def __init__(self, data: Path, base_port: int) -> None:
        self.data = data
        self.base_port = base_port
        self.urls = [f"http://127.0.0.1:{base_port + i}" for i in range(NODES)]
        self.config = data.resolve() / "cluster.yaml"
        busy = [p for i in range(NODES) for p in (base_port + i, base_port + 1000 + i,
                                                  base_port + 2000 + i) if not port_free(p)]
        if busy:
            raise SystemExit(f"ports {busy} are in use: pick another --base-port")
        self.log = open(data / "spine-up.log", "ab")  # closed in stop()
        self.up = subprocess.Popen(
            [str(VENV_BIN / "spine"), "up", "--nodes", str(NODES), "--base-port",
             str(base_port), "--data", str(data), "--no-sync"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, cwd=REPO,
        )
        self.nodes: list[int] = []

    def start(self) -> None:
        wait_ready(self.urls, self.up)
        deadline = time.monotonic() + 10
        while len(self.nodes) < NODES and time.monotonic() < deadline:
            self.nodes = [p for p in children_of(self.up.pid)]
            time.sleep(0.05)
        if len(self.nodes) != NODES:
            raise RuntimeError(f"expected {NODES} node processes, found {self.nodes}")

    def cpu_s(self) -> list[float]:
        return [proc_cpu_s(p) for p in self.nodes]

    def stop(self) -> list[str]:
        """SIGTERM `spine up`, wait for it, and report any `spine serve` left (then killed)."""
        problems: list[str] = []
        if self.up.poll() is None:
            self.up.send_signal(signal.SIGTERM)
            try:
                self.up.wait(timeout=40)
            except subprocess.TimeoutExpired:
                problems.append("`spine up` ignored SIGTERM for 40 s: killed")
                self.up.kill()
                self.up.wait()
        left = serve_processes(self.config)
        if left:
            problems.append(f"spine serve processes left after `spine up` exited: {left}")
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.log.close()
        return problems


# ----------------------------------------------------------------------------- ingest


async def ingest(urls: list[str], records: int, batch: int, concurrency: int,
                 gen: TextGen) -> dict[str, Any]:
    tags = ["work", "travel", "health", "code", "family", "music", "food", "ops"]
    batches: list[list[dict[str, Any]]] = []
    for start in range(0, records, batch):
        items = []
        for i in range(start, min(records, start + batch)):
            items.append({"id": f"m{i:07d}", "content": gen.text(6, 20),
                          "tags": gen.rng.sample(tags, gen.rng.randint(0, 2))})
        batches.append(items)
    bodies = [json.dumps({"items": b}).encode() for b in batches]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)
    errors: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    complete: set[int] = set()  # batches every item of which answered 200/201
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as http:

        async def worker(w: int) -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                url = f"{urls[(i + w) % len(urls)]}/v1/ns/{NS}/memories/_batch"
                t0 = time.perf_counter()
                async with http.post(url, data=bodies[i],
                                     headers={"Content-Type": "application/json"}) as r:
                    body = await r.read()
                latencies.append(time.perf_counter() - t0)
                if r.status != 200:
                    errors[f"http {r.status}: {body[:120]!r}"] += len(batches[i])
                    continue
                ok = True
                for res in json.loads(body)["results"]:
                    if res["status"] not in (200, 201):
                        ok = False
                        errors[f"item {res['status']} {res.get('error', {}).get('code')}"] += 1
                if ok:
                    complete.add(i)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.perf_counter() - t0
    latencies.sort()
    return {
        "records": records, "batch": batch, "concurrency": concurrency, "wall_s": wall,
        "records_per_s": records / wall, "errors": dict(errors),
        "batch_p50_ms": 1000 * latencies[len(latencies) // 2],
        "batch_max_ms": 1000 * latencies[-1],
        "failed_items": sum(errors.values()),
        "last_ids": [batches[i][-1]["id"] for i in sorted(complete)[-6:]],
        "last_texts": [batches[i][-1]["content"] for i in sorted(complete)[-6:]],
    }


def wait_indexed(urls: list[str], ids: list[str], texts: list[str],
                 timeout: float) -> float | None:
    """Seconds until every node finds each of the last records by its own text (k=10)."""
    t0 = time.monotonic()
    pending = [(u, mid, text) for u in urls for mid, text in zip(ids, texts, strict=True)]
    while pending:
        url, mid, text = pending[0]
        req = urllib.request.Request(
            f"{url}/v1/ns/{NS}/search", data=json.dumps({"query": text, "k": 10, "mode": "vector"}).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        with contextlib.suppress(OSError, ValueError, KeyError, IndexError), \
                urllib.request.urlopen(req, timeout=5) as r:
            if any(hit["id"] == mid for hit in json.loads(r.read())["results"]):
                pending.pop(0)
                continue
        if time.monotonic() - t0 > timeout:
            return None
        time.sleep(0.2)
    return time.monotonic() - t0


# ----------------------------------------------------------------------------- search load


async def search_load(urls: list[str], concurrency: int, duration: float, warmup: float,
                      k: int, gen: TextGen, on_measure: Any = None) -> dict[str, Any]:
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    partial = 0
    hits = 0
    measuring = False
    stop_at = 0.0
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=30)
    bodies = [json.dumps({"query": gen.text(2, 6), "k": k, "mode": "vector"}).encode() for _ in range(20000)]
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as http:

        async def worker(w: int) -> None:
            nonlocal partial, hits
            i = w
            while time.perf_counter() < stop_at:
                url = f"{urls[i % len(urls)]}/v1/ns/{NS}/search"
                body = bodies[(i * 7919) % len(bodies)]
                i += concurrency
                t0 = time.perf_counter()
                try:
                    async with http.post(url, data=body,
                                         headers={"Content-Type": "application/json"}) as r:
                        raw = await r.read()
                        status = r.status
                except (aiohttp.ClientError, TimeoutError) as e:
                    if measuring:
                        errors[type(e).__name__] += 1
                    continue
                dt_s = time.perf_counter() - t0
                if not measuring:
                    continue
                if status != 200:
                    errors[f"http {status}"] += 1
                    continue
                latencies.append(dt_s)
                out = json.loads(raw)
                partial += bool(out["partial"])
                hits += len(out["results"])

        stop_at = time.perf_counter() + warmup + duration
        tasks = [asyncio.create_task(worker(w)) for w in range(concurrency)]
        await asyncio.sleep(warmup)
        measuring = True
        if on_measure is not None:
            on_measure()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        m0 = machine_cpu_s()
        t0 = time.perf_counter()
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
        m1 = machine_cpu_s()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
    latencies.sort()

    def pct(p: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))]

    n = len(latencies)
    return {
        "concurrency": concurrency, "duration_s": wall, "requests": n,
        "qps": n / wall if wall else 0.0,
        "p50_ms": pct(0.50) if n else None, "p90_ms": pct(0.90) if n else None,
        "p99_ms": pct(0.99) if n else None, "max_ms": 1000 * latencies[-1] if n else None,
        "errors": dict(errors), "partial_replies": partial,
        "mean_results": hits / n if n else 0.0,
        "loadgen_cpu_s": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
        "machine_busy_cpu_s": m1 - m0,
    }


# ----------------------------------------------------------------------------- profiling


def start_profiles(pids: list[int], seconds: int, out_dir: Path) -> list[
    tuple[int, Path, subprocess.Popen[bytes]]
]:
    spy = shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")
    if spy is None:
        print("py-spy not found: `.venv/bin/pip install py-spy` for --profile", file=sys.stderr)
        return []
    out = []
    for pid in pids:
        path = out_dir / f"py-spy-{pid}.txt"
        proc = subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
             "--format", "raw", "--nonblocking", "--threads", "--output", str(path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        out.append((pid, path, proc))
    return out


def summarise_profile(path: Path, top: int = 12) -> dict[str, Any]:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks.

    `self` counts the innermost Python frame (time in C code called from it included: a
    sample in uvloop's own C loop shows as `Runner.run`); `inclusive` lists Spine's own
    functions only, so that asyncio and threading plumbing does not fill the table.
    """
    self_counts: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = stack.split(";")
        total += count
        threads[frames[0].split(": ", 1)[-1]] += count
        funcs = [_short(f) for f in frames[1:]] or [_short(frames[0])]
        self_counts[funcs[-1]] += count
        for f in set(funcs):
            if "(spine/" in f and not f.startswith(("main ", "cmd_serve ", "<module> ")):
                incl[f] += count

    def share(c: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(f, 100.0 * n / total) for f, n in c.most_common(top)] if total else []

    return {"samples": total, "self": share(self_counts), "inclusive": share(incl),
            "threads": share(threads)}


def _short(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    file = where.rsplit(":", 1)[0]
    if "site-packages/" in file:
        file = file.split("site-packages/", 1)[1]
    elif "/spine/" in file:
        file = "spine/" + file.rsplit("/spine/", 1)[1]
    elif "/lib/python" in file:
        file = file.split("/lib/python", 1)[1].split("/", 1)[-1]
    return f"{name} ({file})" if file else name


# ----------------------------------------------------------------------------- main


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--records", type=int, default=100_000)
    p.add_argument("--base-port", type=int, default=38788)
    p.add_argument("--duration", type=float, default=20.0, help="measured search seconds")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--concurrency", type=int, default=32, help="concurrent search clients")
    p.add_argument("--ingest-concurrency", type=int, default=3, help="_batch calls in flight")
    p.add_argument("--batch", type=int, default=1000, help="items per _batch call")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--index-timeout", type=float, default=900.0,
                   help="seconds to wait for the indexes to catch up after ingest")
    p.add_argument("--profile", action="store_true", help="py-spy every node while searching")
    p.add_argument("--data", help="data directory (default: a temporary one, removed)")
    p.add_argument("--keep", action="store_true", help="keep the data directory")
    p.add_argument("--seed", type=int, default=1)
    return p.parse_args(argv)


def _fmt(v: float | None, unit: str = "", digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:,.{digits}f}{unit}"


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    tmp = None
    if args.data:
        data = Path(args.data)
        data.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="spine-search-bench-")
        data = Path(tmp)
    cluster = Cluster(data, args.base_port)
    report: dict[str, Any] = {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "args": vars(args),
    }
    problems: list[str] = []
    try:
        cluster.start()
        print(f"cluster up: {', '.join(cluster.urls)} (node pids {cluster.nodes}); "
              f"{os.cpu_count()} CPUs on this machine", flush=True)

        gen = TextGen(args.seed)
        cpu0, m0 = cluster.cpu_s(), machine_cpu_s()
        ing = asyncio.run(ingest(cluster.urls, args.records, args.batch,
                                 args.ingest_concurrency, gen))
        cpu1, m1 = cluster.cpu_s(), machine_cpu_s()
        ing["node_cpu_s"] = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
        ing["machine_busy_cpu_s"] = m1 - m0
        print(f"ingest: {args.records:,} records in {ing['wall_s']:.1f} s = "
              f"{ing['records_per_s']:,.0f} records/s (target >= {TARGET_INGEST:,.0f}); "
              f"batch p50 {ing['batch_p50_ms']:.0f} ms, max {ing['batch_max_ms']:.0f} ms; "
              f"errors {ing['errors'] or 0}; node CPU "
              f"{', '.join(f'{c:.1f}' for c in ing['node_cpu_s'])} s; machine busy "
              f"{ing['machine_busy_cpu_s']:.1f} of "
              f"{(os.cpu_count() or 1) * ing['wall_s']:.1f} CPU-s", flush=True)

        lag = wait_indexed(cluster.urls, ing.pop("last_ids"), ing.pop("last_texts"),
                           args.index_timeout)
        cpu2 = cluster.cpu_s()
        ing["index_catch_up_s"] = lag
        ing["catch_up_node_cpu_s"] = [b - a for a, b in zip(cpu1, cpu2, strict=True)]
        report["ingest"] = ing
        print(f"indexes caught up {_fmt(lag, ' s')} after the last _batch answered "
              f"(node CPU meanwhile {', '.join(f'{c:.1f}' for c in ing['catch_up_node_cpu_s'])}"
              " s)", flush=True)

        profiles: list[tuple[int, Path, subprocess.Popen[bytes]]] = []
        prof_seconds = max(1, min(10, int(args.duration) - 1))

        cpu_at_measure: list[list[float]] = []

        def on_measure() -> None:
            cpu_at_measure.append(cluster.cpu_s())
            if args.profile:
                profiles.extend(start_profiles(cluster.nodes, prof_seconds, data))

        res = asyncio.run(search_load(cluster.urls, args.concurrency, args.duration,
                                      args.warmup, args.k, gen, on_measure))
        cpu4 = cluster.cpu_s()
        res["node_cpu_s"] = [b - a for a, b in zip(cpu_at_measure[0], cpu4, strict=True)]
        report["search"] = res
        node_cpu = sum(res["node_cpu_s"])
        per_req = 1e6 * node_cpu / res["requests"] if res["requests"] else None
        print(
            f"search: {res['requests']:,} queries in {res['duration_s']:.1f} s = "
            f"{res['qps']:,.0f} QPS (target >= {TARGET_QPS:.0f}); latency p50 "
            f"{_fmt(res['p50_ms'], ' ms')}, p90 {_fmt(res['p90_ms'], ' ms')}, p99 "
            f"{_fmt(res['p99_ms'], ' ms')} (target <= {TARGET_P99_MS:.0f} ms), max "
            f"{_fmt(res['max_ms'], ' ms')}; errors {res['errors'] or 0}; partial replies "
            f"{res['partial_replies']}; mean results {res['mean_results']:.1f}",
            flush=True,
        )
        print(f"        load generator CPU {res['loadgen_cpu_s']:.1f} s "
              f"({100 * res['loadgen_cpu_s'] / res['duration_s']:.0f}% of one core); node CPU "
              f"{', '.join(f'{c:.1f}' for c in res['node_cpu_s'])} s "
              f"({_fmt(per_req, ' µs', 0)} of node CPU per query)", flush=True)
        others = res["machine_busy_cpu_s"] - node_cpu - res["loadgen_cpu_s"]
        print(f"        machine: {res['machine_busy_cpu_s']:.1f} busy CPU-s of "
              f"{(os.cpu_count() or 1) * res['duration_s']:.1f} available; other processes "
              f"(py-spy included) {max(0.0, others):.1f} CPU-s", flush=True)

        if profiles:
            report["profiles"] = {}
            for pid, path, proc in profiles:
                _, err = proc.communicate(timeout=prof_seconds + 60)
                if proc.returncode != 0 or not path.exists():
                    print(f"py-spy on {pid} failed: {err.decode(errors='replace')[-300:]}")
                    continue
                summary = summarise_profile(path)
                report["profiles"][str(pid)] = summary
                print(f"\npy-spy, node pid {pid}: {summary['samples']} samples "
                      f"(every thread, idle included)")
                print("  threads:   " + "; ".join(f"{t} {s:.0f}%" for t, s in
                                                   summary["threads"][:6]))
                print("  self:")
                for f, s in summary["self"]:
                    print(f"    {s:5.1f}%  {f}")
                print("  inclusive (Spine functions):")
                for f, s in summary["inclusive"]:
                    print(f"    {s:5.1f}%  {f}")
    finally:
        problems = cluster.stop()
        for p in problems:
            print(f"WARNING: {p}", file=sys.stderr)
        if not problems:
            print("cluster stopped; no spine serve process left", flush=True)
        report["stop_problems"] = problems
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"search-{stamp}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"figures written to {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
