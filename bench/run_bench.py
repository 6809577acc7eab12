#!/usr/bin/env python3
"""Spine core benchmark: a local 3-node cluster (or --nodes N) driven by wrk.

    python bench/run_bench.py [--duration 20] [--connections 64] [--threads 3]
                              [--base-port 18788] [--keep] [--quick] [--no-sync]
                              [--only get_session,mix_90_10] [--nodes 6]

Starts `spine up --nodes 3` on a temporary data dir, waits for /readyz on every node, preloads
keys with POST .../_batch, runs each scenario (bench/lua/*.lua) for --duration seconds and
prints, per scenario: ops/s, p50/p99/p99.9 latency, errors and non-2xx, the node processes'
CPU per operation (µs/op) and the load generator's (wrk's) own CPU. Figures also go to
bench/results/<timestamp>.json. It measures; it asserts nothing.

wrk talks to one host, so every wrk thread is pinned to one node (round-robin, see
bench/lua/common.lua): --threads is rounded up to a multiple of the node count and
--connections down to a multiple of --threads.

--owner-routing: each wrk thread asks its node only for keys that node owns, as a token-aware
client (Cassandra's drivers) or a client reading `/v1/cluster/shards` would route: no request is
forwarded. With N=3 on 3 nodes every node owns every key, so it changes nothing there; on more
nodes it takes out the forward hop that a load balancer's random node costs (the key lists are
computed here from the cluster's own shard map, `spine.core.ring.shard_of`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LUA = HERE / "lua"
RESULTS = HERE / "results"
NODES = 3
CLK_TCK = os.sysconf("SC_CLK_TCK")
NS = "bench"


@dataclass
class Scenario:
    name: str
    script: str
    does: str
    env: dict[str, str] = field(default_factory=dict)
    token: bool = False  # hand the scenario one session token obtained beforehand
    target_ops: float | None = None
    target_p99_ms: float | None = None


def scenarios(keys: int, put_keys: int) -> list[Scenario]:
    base = {"SPINE_NS": NS, "SPINE_KEYS": str(keys), "SPINE_PUT_KEYS": str(put_keys),
            "SPINE_CONTENT_BYTES": "200"}
    return [
        Scenario("get_session", "get.lua",
                 "GET random preloaded key, session level, with a session token (R=1, local read)",
                 dict(base), token=True, target_ops=10_000, target_p99_ms=10),
        Scenario("get_quorum", "get.lua",
                 "GET random preloaded key, session level, no token (R=quorum)", dict(base)),
        Scenario("put_session", "put.lua",
                 "PUT ~200 B content to a random id of 100k, session level (W=quorum), token carried",
                 {**base, "SPINE_PREFIX": "p"}, target_ops=3_000, target_p99_ms=20),
        Scenario("put_update", "put.lua",
                 "PUT ~200 B content replacing a random preloaded key, session level, token carried",
                 {**base, "SPINE_PREFIX": "k", "SPINE_PUT_KEYS": str(keys)}),
        Scenario("put_strong", "put.lua",
                 "PUT as above with Spine-Consistency: strong (ABD: read quorum, write quorum)",
                 {**base, "SPINE_PREFIX": "s", "SPINE_LEVEL": "strong"}),
        Scenario("put_eventual", "put.lua",
                 "PUT as above tagged 'analytics' (override -> eventual, W=1)",
                 {**base, "SPINE_PREFIX": "e", "SPINE_TAGS": '["analytics"]'}),
        Scenario("mix_90_10", "mix.lua",
                 "90% GET / 10% PUT over the preloaded keys, session level, token carried and "
                 "updated from every reply",
                 dict(base), token=True, target_ops=8_000),
        Scenario("mix_90_10_static", "mix.lua",
                 "the same mix, but each client keeps the one token it started with (never "
                 "updated): shows the R=1 read path without token overflow",
                 {**base, "SPINE_TOKEN_UPDATE": "0"}, token=True),
    ]


# ---------------------------------------------------------------------------------- processes

def proc_cpu_ticks(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)


def children_of(ppid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            raw = (d / "stat").read_text()
        except OSError:
            continue
        if int(raw[raw.rindex(")") + 2:].split()[1]) == ppid:
            out.append(int(d.name))
    return sorted(out)


def alive(pid: int) -> bool:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return raw[raw.rindex(")") + 2:].split()[0] != "Z"


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = vals[3] + vals[4]
    return sum(vals[:8]) - idle, sum(vals[:8])


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    print("wrk not found; installing it with apt-get (Debian package 'wrk')...", file=sys.stderr)
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else [])
    try:
        subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True)
        subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "wrk"], check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"could not install wrk ({e}); install it yourself: apt-get install -y wrk")
    path = shutil.which("wrk")
    if not path:
        sys.exit("wrk still not on PATH after apt-get install; install it: apt-get install -y wrk")
    return path


# ---------------------------------------------------------------------------------- HTTP

def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None,
         timeout: float = 30.0) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, dict(r.headers), json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = raw.decode(errors="replace")
        return e.code, dict(e.headers), parsed


def wait_ready(urls: list[str], up: subprocess.Popen[bytes], deadline_s: float = 90) -> None:
    deadline = time.monotonic() + deadline_s
    pending = list(urls)
    while pending:
        if up.poll() is not None:
            raise RuntimeError(f"spine up exited with {up.returncode} before the nodes were ready")
        if time.monotonic() > deadline:
            raise RuntimeError(f"nodes not ready after {deadline_s}s: {pending}")
        for u in list(pending):
            try:
                if http("GET", u + "/healthz", timeout=1)[0] == 200 and \
                        http("GET", u + "/readyz", timeout=1)[0] == 200:
                    pending.remove(u)
            except (OSError, ValueError):
                pass
        time.sleep(0.3)


def preload(urls: list[str], keys: int, batch: int = 1000) -> float:
    words = [
        "agent", "memory", "cluster", "replica", "quorum", "session", "vector", "shard", "token",
        "handoff", "gossip", "ring", "version", "clock", "record", "search", "observed", "user",
        "prefers", "meeting", "notes", "project",
    ]
    t0 = time.monotonic()
    for n, start in enumerate(range(0, keys, batch)):
        items = []
        for i in range(start, min(keys, start + batch)):
            text = " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(30))[:200]
            items.append({"id": f"k-{i}", "content": f"{i} {text}"[:200]})
        for attempt in range(5):
            status, _, body = http("POST", f"{urls[n % len(urls)]}/v1/ns/{NS}/memories/_batch",
                                   {"items": items}, timeout=120)
            bad = [r for r in body.get("results", [])] if status == 200 else None
            if status == 200 and bad is not None and all(r["status"] in (200, 201) for r in bad):
                break
            time.sleep(0.5 * (attempt + 1))
        else:
            raise RuntimeError(f"preload batch at {start} failed: {status} {str(body)[:300]}")
    return time.monotonic() - t0


def owner_key_lists(urls: list[str], keys: int, put_keys: int, out: Path) -> dict[str, Any]:
    """For each node (in `urls` order, the order wrk threads are pinned in) and each id prefix
    the scenarios use, the indices of the ids that node owns, one file per (prefix, node):
    `out/<prefix>-<node index>.txt`. Returns a summary (keys per node per prefix)."""
    from spine.core.ring import shard_of

    _, _, view = http("GET", f"{urls[0]}/v1/cluster/shards")
    owners = [set(s["preference_list"]) for s in view["shards"]]
    ids = []
    for u in urls:
        _, _, v = http("GET", f"{u}/v1/cluster/shards")
        ids.append(v["node"])
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    for prefix, n in (("k", keys), ("p", put_keys), ("s", put_keys), ("e", put_keys)):
        per_node: list[list[int]] = [[] for _ in urls]
        for i in range(n):
            held = owners[shard_of(NS, f"{prefix}-{i}", len(owners))]
            for j, node in enumerate(ids):
                if node in held:
                    per_node[j].append(i)
        for j, idx in enumerate(per_node):
            (out / f"{prefix}-{j}.txt").write_text("\n".join(map(str, idx)) + "\n")
        summary[prefix] = [len(x) for x in per_node]
    return summary


def forwards(urls: list[str]) -> float:
    """Requests forwarded to another node so far, summed over the nodes (`spine_forwards_total`)."""
    total = 0.0
    for u in urls:
        with urllib.request.urlopen(f"{u}/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("spine_forwards_total"):
                    total += float(line.rsplit(" ", 1)[1])
    return total


def session_token(url: str) -> str:
    """One token from any request: a GET of a key the scenarios never read."""
    _, headers, _ = http("GET", f"{url}/v1/ns/{NS}/memories/token-probe")
    token = headers.get("Spine-Session")
    if not token:
        raise RuntimeError("no Spine-Session header in a reply")
    return token


# ---------------------------------------------------------------------------------- runs

def run_wrk(wrk: str, sc: Scenario, urls: list[str], ports: list[int], args: argparse.Namespace,
            duration: int, node_pids: list[int], token: str | None) -> dict[str, Any]:
    env = dict(os.environ)
    env.update(sc.env)
    env["SPINE_PORTS"] = " ".join(str(p) for p in ports)
    if args.keys_dir:
        env["SPINE_KEYS_DIR"] = args.keys_dir
    if token:
        env["SPINE_TOKEN"] = token
    cmd = [wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s", "--timeout", "10s",
           "-s", str(LUA / sc.script), urls[0] + "/"]
    ticks0 = {p: proc_cpu_ticks(p) for p in node_pids}
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    fwd0 = forwards(urls)
    busy0, total0 = machine_busy()
    t0 = time.monotonic()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.monotonic() - t0
    fwd1 = forwards(urls)
    busy1, total1 = machine_busy()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ticks1 = {p: proc_cpu_ticks(p) for p in node_pids}
    if res.returncode != 0:
        raise RuntimeError(f"wrk failed ({res.returncode}): {res.stderr}\n{res.stdout}")
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("SPINE_RESULT ")), None)
    if line is None:
        raise RuntimeError(f"no SPINE_RESULT in wrk output:\n{res.stdout}\n{res.stderr}")
    w = json.loads(line[len("SPINE_RESULT "):])
    per_node = {}
    for p in node_pids:
        if ticks0[p] is None or ticks1[p] is None:
            raise RuntimeError(f"node process {p} went away during {sc.name}")
        per_node[p] = (ticks1[p] - ticks0[p]) / CLK_TCK
    node_cpu = sum(per_node.values())
    gen_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    secs = w["duration_us"] / 1e6
    busy_cores = (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)
    reqs = w["requests"]
    errors = w["err_connect"] + w["err_read"] + w["err_write"] + w["err_timeout"]
    out = {
        "scenario": sc.name, "does": sc.does,
        "ops": reqs, "seconds": round(secs, 3), "ops_per_s": round(reqs / secs, 1),
        "p50_ms": w["p50_us"] / 1000, "p90_ms": w["p90_us"] / 1000, "p99_ms": w["p99_us"] / 1000,
        "p999_ms": w["p999_us"] / 1000, "max_ms": w["lat_max_us"] / 1000,
        "mean_ms": round(w["lat_mean_us"] / 1000, 3),
        "non_2xx": w["err_status"], "socket_errors": errors,
        "status_counts": {k: w[k] for k in ("s200", "s201", "s404", "s503", "sother") if w[k]},
        "gets": w["gets"], "puts": w["puts"],
        "forwarded_share": round((fwd1 - fwd0) / reqs, 3) if reqs else None,
        "node_cpu_s": round(node_cpu, 2),
        "node_cpu_per_node_s": [round(v, 2) for v in per_node.values()],
        "node_us_per_op": round(node_cpu / reqs * 1e6, 1) if reqs else None,
        "gen_cpu_s": round(gen_cpu, 2),
        "gen_us_per_op": round(gen_cpu / reqs * 1e6, 1) if reqs else None,
        "gen_cpu_share": round(gen_cpu / (gen_cpu + node_cpu), 3) if gen_cpu + node_cpu else None,
        "machine_busy_cores": round(busy_cores, 2),
        # CPU used by processes other than the nodes and wrk (other jobs on a shared box)
        "other_busy_cores": round(max(0.0, busy_cores - (node_cpu + gen_cpu) / wall), 2),
        # what the box could do if nodes + wrk had all its cores: cores / CPU per op
        "cpu_bound_ops_per_s": round((os.cpu_count() or 1) / ((node_cpu + gen_cpu) / reqs))
        if reqs else None,
        "wall_s": round(wall, 2),
        "target_ops_per_s": sc.target_ops, "target_p99_ms": sc.target_p99_ms,
    }
    return out


def start_profile(outdir: str, name: str, pid: int, duration: int) -> tuple[Any, Path] | None:
    if not outdir:
        return None
    spy = shutil.which("py-spy") or str(REPO / ".venv" / "bin" / "py-spy")
    if not Path(spy).exists():
        sys.exit("--profile needs py-spy: .venv/bin/pip install py-spy")
    Path(outdir).mkdir(parents=True, exist_ok=True)
    out = Path(outdir) / f"{name}-n1.txt"
    proc = subprocess.Popen([spy, "record", "--nonblocking", "--format", "raw", "-r", "100",
                             "-d", str(duration), "-p", str(pid), "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, out


def finish_profile(spy: tuple[Any, Path]) -> str:
    proc, out = spy
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait()
    sys.path.insert(0, str(HERE))
    from profile_report import report
    text = report(out, 15) if out.exists() else f"(no profile written to {out})"
    print(text, flush=True)
    return str(out)


def settle(node_pids: list[int], idle_cores: float = 0.1, deadline_s: float = 180) -> float:
    """Wait until the nodes are idle (background work of the previous phase, e.g. vector-index
    inserts behind a preload or a put scenario, has drained): total node CPU below `idle_cores`
    over a 1 s window. Returns the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline_s:
        a = sum(proc_cpu_ticks(p) or 0 for p in node_pids)
        time.sleep(1.0)
        b = sum(proc_cpu_ticks(p) or 0 for p in node_pids)
        if (b - a) / CLK_TCK < idle_cores:
            break
    return time.monotonic() - t0


def fmt_table(rows: list[dict[str, Any]]) -> str:
    hdr = ["scenario", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "non2xx", "sockerr",
           "node µs/op", "wrk µs/op", "wrk share", "busy", "other", "cpu-bound ops/s", "target"]
    lines = [hdr]
    for r in rows:
        tgt = []
        if r["target_ops_per_s"]:
            ok = r["ops_per_s"] >= r["target_ops_per_s"]
            tgt.append(f"≥{r['target_ops_per_s']:.0f}/s {'ok' if ok else 'MISS'}")
        if r["target_p99_ms"]:
            ok = r["p99_ms"] <= r["target_p99_ms"]
            tgt.append(f"p99≤{r['target_p99_ms']:.0f}ms {'ok' if ok else 'MISS'}")
        lines.append([r["scenario"], f"{r['ops_per_s']:.0f}", f"{r['p50_ms']:.2f}",
                      f"{r['p99_ms']:.2f}", f"{r['p999_ms']:.2f}", str(r["non_2xx"]),
                      str(r["socket_errors"]), f"{r['node_us_per_op']:.0f}",
                      f"{r['gen_us_per_op']:.0f}", f"{r['gen_cpu_share'] * 100:.0f}%",
                      f"{r['machine_busy_cores']:.2f}", f"{r['other_busy_cores']:.2f}",
                      f"{r['cpu_bound_ops_per_s']}", "; ".join(tgt)])
    widths = [max(len(row[i]) for row in lines) for i in range(len(hdr))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) for row in lines)


def stop_cluster(up: subprocess.Popen[bytes], node_pids: list[int]) -> list[int]:
    """SIGTERM `spine up` (it stops its nodes), wait, then check no node process is left."""
    if up.poll() is None:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(p) for p in node_pids):
        time.sleep(0.2)
    left = [p for p in node_pids if alive(p)]
    for p in left:  # only the node processes this run started, by pid
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)
    return left


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=20, help="seconds per scenario")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=3,
                    help="wrk threads; rounded up to a multiple of the node count (3)")
    ap.add_argument("--base-port", type=int, default=18788)
    ap.add_argument("--embedder", default="hash",
                    help="the nodes' embedder: hash (the default here: the write path, not the"
                         " model) or minilm (spine up's own default)")
    ap.add_argument("--nodes", type=int, default=NODES,
                    help="nodes `spine up` starts (N=3 replicas each key; 6 measures scaling)")
    ap.add_argument("--keys", type=int, default=20_000, help="keys preloaded for the gets/mix")
    ap.add_argument("--put-keys", type=int, default=100_000, help="id space of the put scenarios")
    ap.add_argument("--quick", action="store_true", help="5 s per scenario (smoke check)")
    ap.add_argument("--keep", action="store_true", help="keep the temp data dir")
    ap.add_argument("--no-sync", action="store_true", help="pass --no-sync to spine up (no fsync)")
    ap.add_argument("--only", default="", help="comma-separated scenario names")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per scenario")
    ap.add_argument("--profile", metavar="DIR", default="",
                    help="py-spy record node n1 during each scenario into DIR (collapsed stacks) "
                         "and print its top functions")
    ap.add_argument("--owner-routing", action="store_true",
                    help="each wrk thread asks its node only for keys it owns (no forwards)")
    ap.add_argument("--pause", type=int, default=0,
                    help="seconds to wait before each scenario (e.g. to attach a profiler)")
    args = ap.parse_args()
    args.keys_dir = ""
    duration = 5 if args.quick else args.duration
    args.threads = -(-max(1, args.threads) // args.nodes) * args.nodes
    args.connections = max(args.threads, args.connections // args.threads * args.threads)

    wrk = ensure_wrk()
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    spine = REPO / ".venv" / "bin" / "spine"
    spine_cmd = [str(spine)] if spine.exists() else [sys.executable, "-m", "spine"]
    data = Path(tempfile.mkdtemp(prefix="spine-bench-"))
    ports = [args.base_port + i for i in range(args.nodes)]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    extra = data / "bench-extra.json"  # YAML is a superset of JSON
    extra.write_text(json.dumps({"embedder": {"name": args.embedder, "dim": 384}}))
    up_cmd = spine_cmd + ["up", "--nodes", str(args.nodes), "--base-port", str(args.base_port),
                          "--data", str(data), "--config", str(extra)] + \
        (["--no-sync"] if args.no_sync else [])
    todo = scenarios(args.keys, args.put_keys)
    if args.only:
        names = set(args.only.split(","))
        todo = [s for s in todo if s.name in names]

    print(f"# {' '.join(up_cmd)}", flush=True)
    up = subprocess.Popen(up_cmd, cwd=REPO, start_new_session=True,
                          stdout=subprocess.DEVNULL, stderr=open(data / "up.log", "wb"))
    node_pids: list[int] = []
    rows: list[dict[str, Any]] = []
    rc = 0
    try:
        wait_ready(urls, up)
        node_pids = children_of(up.pid)
        if len(node_pids) != args.nodes:
            raise RuntimeError(
                f"expected {args.nodes} node processes under {up.pid}, got {node_pids}")
        print(f"# nodes ready: pids {node_pids}; preloading {args.keys} keys...", flush=True)
        took = preload(urls, args.keys)
        print(f"# preload {args.keys} keys in {took:.1f}s ({args.keys / took:.0f}/s); "
              f"wrk -t{args.threads} -c{args.connections} -d{duration}s", flush=True)
        if args.owner_routing:
            args.keys_dir = str(data / "owned")
            held = owner_key_lists(urls, args.keys, args.put_keys, Path(args.keys_dir))
            print(f"# owner routing: ids owned per node (k- of {args.keys}): {held['k']}",
                  flush=True)
        for sc in todo:
            if args.pause:
                print(f"# {sc.name} starts in {args.pause}s (node pids {node_pids})", flush=True)
                time.sleep(args.pause)
            waited = settle(node_pids)
            print(f"# {sc.name}: nodes idle after {waited:.0f}s", flush=True)
            token = session_token(urls[0]) if sc.token else None
            if args.warmup:
                run_wrk(wrk, sc, urls, ports, args, args.warmup, node_pids, token)
            spy = start_profile(args.profile, sc.name, node_pids[0], duration)
            r = run_wrk(wrk, sc, urls, ports, args, duration, node_pids, token)
            if spy is not None:
                r["profile"] = finish_profile(spy)
            r["settle_s"] = round(waited, 1)
            rows.append(r)
            print(f"{sc.name:13s} {r['ops_per_s']:8.0f} ops/s  p50 {r['p50_ms']:6.2f}  "
                  f"p99 {r['p99_ms']:6.2f}  p99.9 {r['p999_ms']:7.2f} ms  non2xx {r['non_2xx']}  "
                  f"node {r['node_us_per_op']:.0f} µs/op  wrk {r['gen_us_per_op']:.0f} µs/op "
                  f"({r['gen_cpu_share'] * 100:.0f}%)  busy {r['machine_busy_cores']:.2f} cores "
                  f"(other {r['other_busy_cores']:.2f})  forwarded {r['forwarded_share']:.0%}",
                  flush=True)
    except KeyboardInterrupt:
        print("# interrupted", file=sys.stderr)
        rc = 130
    except Exception as e:
        print(f"# error: {e}", file=sys.stderr)
        rc = 1
    finally:
        left = stop_cluster(up, node_pids)
        if left:
            print(f"# WARNING: node processes {left} survived SIGTERM; killed them", file=sys.stderr)
            rc = rc or 1
        else:
            print(f"# cluster stopped (spine up rc={up.returncode}); no node process left",
                  flush=True)
        if rc and data.exists():
            log = (data / "up.log").read_text(errors="replace")[-3000:]
            if log.strip():
                print(f"# tail of {data / 'up.log'}:\n{log}", file=sys.stderr)
        if args.keep:
            print(f"# data kept in {data}")
        else:
            shutil.rmtree(data, ignore_errors=True)

    if rows:
        print()
        print(fmt_table(rows))
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = RESULTS / f"bench-{stamp}{'-quick' if args.quick else ''}.json"
        meta = {
            "date": dt.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
            "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "kernel": platform.release(),
                        "python": platform.python_version()},
            "wrk": wrk_version, "threads": args.threads, "connections": args.connections,
            "duration_s": duration, "keys": args.keys, "put_keys": args.put_keys,
            "fsync": not args.no_sync, "nodes": args.nodes,
            "embedder": args.embedder, "owner_routing": args.owner_routing,
        }
        out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
        print(f"\n# figures written to {out.relative_to(REPO)}")
    return rc


def cpu_model() -> str:
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                return ln.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
