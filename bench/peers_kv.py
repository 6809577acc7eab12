"""Key-value shapes of bench/peers.py: put, get and the 90/10 mix, the same against Spine,
etcd and Redis where each supports them.

Spine and etcd are driven by one wrk (-t3 -c63, each thread pinned to one node or member) with
bench/lua/{put,get,mix}.lua and bench/lua/peer_etcd.lua, through run_bench.run_wrk; Redis by
`redis-benchmark -c 63` (another generator: one C client process, no Lua; said beside its
figures). Redis has no 90/10 mix in redis-benchmark, so that pair is skipped.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import resource
import subprocess
import time
import urllib.request
from types import SimpleNamespace
from typing import Any

from cas_bench import CpuWindow
from peers_procs import PeerEtcd, Redis, Spine
from run_bench import Scenario, preload, run_wrk, scenarios, session_token, settle

THREADS = 3
VALUE_BYTES = 200
REDIS_KEYSPACE = 100_000

# shape -> Spine scenarios of run_bench, each with the label its row gets
SPINE = {
    "put": [("put_session", "spine session"), ("put_strong", "spine strong")],
    "get": [("get_session", "spine session+token"), ("get_quorum", "spine quorum")],
    "mix": [("mix_90_10", "spine session, tokens updated")],
}


def _row(shape: str, system: str, r: dict[str, Any], generator: str) -> dict[str, Any]:
    return {"shape": shape, "system": system, "generator": generator,
            "ops_per_s": r["ops_per_s"], "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
            "cpu_us_per_op": r["node_us_per_op"], "recall": None,
            "errors": r["non_2xx"] + r["socket_errors"],
            "other_cores": r["other_busy_cores"], "raw": r}


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def preload_etcd(urls: list[str], keys: int, per_txn: int = 128) -> float:
    """Put k-0 .. k-(keys-1) with ~200 B values, `per_txn` puts per txn (etcd's default
    --max-txn-ops is 128). Returns seconds taken."""
    t0 = time.monotonic()
    value = b64("x" * VALUE_BYTES)
    for n, start in enumerate(range(0, keys, per_txn)):
        ops = [{"request_put": {"key": b64(f"k-{i}"), "value": value}}
               for i in range(start, min(keys, start + per_txn))]
        req = urllib.request.Request(f"{urls[n % len(urls)]}/v3/kv/txn", method="POST",
                                     data=json.dumps({"success": ops}).encode())
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
    return time.monotonic() - t0


def etcd_count(url: str, prefix: str) -> int:
    """Keys under `prefix` in etcd (a range with range_end = prefix + 1 on its last byte)."""
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    body = {"key": b64(prefix), "range_end": b64(end), "count_only": True}
    req = urllib.request.Request(f"{url}/v3/kv/range", method="POST",
                                 data=json.dumps(body).encode())
    with urllib.request.urlopen(req, timeout=30) as r:
        return int(json.loads(r.read()).get("count", 0))


class KvBench:
    """Runs the key-value shapes; every result is a row (see _row)."""

    def __init__(self, wrk: str, spine: Spine | None, etcd: PeerEtcd | None,
                 redis: Redis | None, redis_benchmark: str | None, *, keys: int, put_keys: int,
                 duration: int, warmup: int, connections: int) -> None:
        self.wrk = wrk
        self.spine = spine
        self.etcd = etcd
        self.redis = redis
        self.redis_benchmark = redis_benchmark
        self.keys = keys
        self.duration = duration
        self.warmup = warmup
        self.args = SimpleNamespace(threads=THREADS,
                                    connections=max(THREADS, connections // THREADS * THREADS),
                                    keys_dir="")  # run_bench's --owner-routing: not used here
        self.spine_scenarios = {s.name: s for s in scenarios(keys, put_keys)}
        base = {"SPINE_KEYS": str(keys), "SPINE_PUT_KEYS": str(put_keys),
                "SPINE_CONTENT_BYTES": str(VALUE_BYTES)}
        self.etcd_scenarios = {
            op: Scenario(f"etcd_{op}", "peer_etcd.lua", f"etcd {op}", {**base, "PEER_OP": op})
            for op in ("put", "get", "mix")}

    def preload(self) -> None:
        if self.spine:
            took = preload(self.spine.urls, self.keys)
            print(f"# spine: preloaded {self.keys} keys k-N in {took:.1f}s", flush=True)
        if self.etcd:
            took = preload_etcd(self.etcd.urls, self.keys)
            print(f"# etcd: preloaded {self.keys} keys k-N in {took:.1f}s", flush=True)

    def wrk_generator(self) -> str:
        return f"wrk -t{self.args.threads} -c{self.args.connections}"

    def _wrk(self, sc: Scenario, urls: list[str], ports: list[int], pids: list[int],
             token: str | None) -> dict[str, Any]:
        if self.warmup:
            run_wrk(self.wrk, sc, urls, ports, self.args, self.warmup, pids, token)
        return run_wrk(self.wrk, sc, urls, ports, self.args, self.duration, pids, token)

    def run(self, shape: str) -> list[dict[str, Any]]:
        rows = []
        if self.spine:
            for name, label in SPINE[shape]:
                sc = self.spine_scenarios[name]
                waited = settle(self.spine.pids)
                token = session_token(self.spine.urls[0]) if sc.token else None
                r = self._wrk(sc, self.spine.urls, self.spine.ports, self.spine.pids, token)
                r["settle_s"] = round(waited, 1)
                rows.append(_row(shape, label, r, self.wrk_generator()))
                print(line(rows[-1]), flush=True)
        if self.etcd:
            ports = [self.etcd.client_port(i) for i in range(3)]
            r = self._wrk(self.etcd_scenarios[shape], self.etcd.urls, ports, self.etcd.pids,
                          None)
            label = {"put": "etcd put", "get": "etcd range (linearizable)",
                     "mix": "etcd 90/10 range/put"}[shape]
            rows.append(_row(shape, label, r, self.wrk_generator()))
            if shape == "put":  # the keys wrk wrote decode as p-N: the Lua base64 is right
                r["keys_found"] = etcd_count(self.etcd.urls[0], "p-")
            print(line(rows[-1]) + (f"  (keys p-N in etcd: {r['keys_found']})"
                                    if shape == "put" else ""), flush=True)
        if self.redis and self.redis_benchmark:
            if shape == "mix":
                print("# redis: skipped for the mix (redis-benchmark runs one command per test; "
                      "it cannot mix GET and SET)", flush=True)
            else:
                rows.append(self.redis_row(shape))
                print(line(rows[-1]), flush=True)
        return rows

    def _redis_cmd(self, test: str, n: int) -> list[str]:
        assert self.redis is not None and self.redis_benchmark is not None
        return [self.redis_benchmark, "-h", "127.0.0.1", "-p", str(self.redis.port),
                "-c", str(self.args.connections), "-n", str(n), "-d", str(VALUE_BYTES),
                "-r", str(REDIS_KEYSPACE), "-t", test, "--csv"]

    def redis_row(self, shape: str) -> dict[str, Any]:
        """redis-benchmark runs a count of requests, not a time: a warm-up run measures the
        rate, and the measured run asks for rate x duration requests."""
        assert self.redis is not None
        test = "set" if shape == "put" else "get"
        if test == "get":  # fill the key space the GETs draw from
            subprocess.run(self._redis_cmd("set", REDIS_KEYSPACE * 3), capture_output=True,
                           check=True)
        warm = parse_redis_csv(subprocess.run(self._redis_cmd(test, 20_000),
                                              capture_output=True, text=True, check=True).stdout)
        n = max(20_000, int(warm["rps"] * self.duration))
        cpu = CpuWindow({"redis": self.redis.pids})
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.start()
        out = subprocess.run(self._redis_cmd(test, n), capture_output=True, text=True, check=True)
        cpu.stop()
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        gen = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        wall = cpu.result["wall_s"]
        # CpuWindow counts this process as the generator; redis-benchmark is a child
        other = max(0.0, cpu.result["other_cores"] - gen / wall) if wall else 0.0
        r = parse_redis_csv(out.stdout)
        ops = n
        raw = {"requests": n, "wall_s": round(cpu.result["wall_s"], 2), **r,
               "server_cpu_s": round(cpu.result["redis_cpu_s"], 2),
               "gen_cpu_s": round(gen, 2), "busy_cores": round(cpu.result["busy_cores"], 2),
               "other_cores": round(other, 2), "appendfsync": self.redis.fsync}
        return {"shape": shape, "system": f"redis {test.upper()}",
                "generator": f"redis-benchmark -c {self.args.connections} (not wrk)",
                "ops_per_s": r["rps"], "p50_ms": r["p50_latency_ms"],
                "p99_ms": r["p99_latency_ms"],
                "cpu_us_per_op": round(cpu.result["redis_cpu_s"] / ops * 1e6, 1),
                "recall": None, "errors": 0, "other_cores": raw["other_cores"], "raw": raw}


def parse_redis_csv(text: str) -> dict[str, float]:
    """redis-benchmark --csv: a header line, then one line per test."""
    rows = list(csv.DictReader(io.StringIO(text.strip())))
    if not rows:
        raise RuntimeError(f"no CSV from redis-benchmark: {text[:300]}")
    return {k: float(v) for k, v in rows[-1].items() if k != "test"}


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def line(r: dict[str, Any]) -> str:
    return (f"{r['shape']:<16} {r['system']:<30} {fmt(r['ops_per_s'], '.0f'):>8} ops/s  "
            f"p50 {fmt(r['p50_ms'], '.2f'):>7}  p99 {fmt(r['p99_ms'], '.2f'):>7} ms  "
            f"CPU {fmt(r['cpu_us_per_op'], '.0f'):>6} µs/op  errors {r['errors']}  "
            f"other work {fmt(r.get('other_cores'), '.2f')} cores"
            + (f"  recall@10 {r['recall']:.3f}" if r.get("recall") is not None else ""))
