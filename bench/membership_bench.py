#!/usr/bin/env python3
"""Spine membership benchmark: SWIM failure-detection latency and anti-entropy repair rate on
real local clusters (`python -m spine serve` processes on 127.0.0.1). Prints figures; asserts
nothing.

    .venv/bin/python bench/membership_bench.py [--part detect|repair|all] [--base-port 28788]
        [--nodes 5] [--kills 20] [--keys 5000] [--ae-rate N] [--ae-interval-ms MS]
        [--ae-shards-per-round N] [--repair-timeout S] [--seed S] [--json OUT] [--logs DIR]

Both parts run on `tests/integration/cluster.py`'s LocalCluster (the integration-test harness:
config from `spine.core.local_cluster` deep-merged with overrides, `storage.sync: false`,
`liveness.probe_interval_ms: 200`), but on fixed ports: HTTP on base+i, RPC on base+1000+i,
gossip (UDP and TCP) on base+2000+i. Every process started is SIGKILLed and reaped at the end
(`LocalCluster.close()`, which also checks that the ports are free again).

1. detect: a --nodes cluster with gossip on (default SWIM settings). --kills times: SIGKILL a
   random node other than n1; one thread per survivor polls its `GET /v1/cluster` every 20 ms
   and notes when the victim's `gossip` field first reads `suspect` and `dead`. Reported: time
   from the kill until the first survivor and until every survivor says dead (p50/p99/max),
   beside `failure_detection_bound(swim_config(gossip), nodes)`. The victim is then restarted on
   its data directory, and the next kill waits until every node sees every node `alive`
   (restart → alive everywhere is reported too). Any other member that a survivor reports as
   not alive meanwhile is counted as a false suspicion.
2. repair: a 3-node cluster with `handoff.enabled: false` (so only anti-entropy can repair).
   n3 is stopped (SIGTERM), --keys records are written through n1/n2 with `POST …/_batch`
   (session level, W=2), the survivors are left to go idle (their vector-index backlog drained),
   n3 is restarted and every shard's `root` in `GET /v1/cluster/shards` is polled on every
   replica until all agree. Reported: seconds from the restart, keys/s = keys / seconds, and the
   `spine_antientropy_*` metrics of every node.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import http.client
import json
import math
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from spine.cluster.membership import swim_config  # noqa: E402
from spine.core.config import from_dict  # noqa: E402
from spine.core.swim import failure_detection_bound  # noqa: E402
from tests.harness.ports import GOSSIP_OFFSET, HOST, RPC_OFFSET  # noqa: E402
from tests.harness.wait import WaitTimeout, wait_until  # noqa: E402
from tests.integration.cluster import LocalCluster  # noqa: E402

NS = "membership-bench"
POLL_S = 0.020  # detection: each survivor's /v1/cluster is read every 20 ms
CLK_TCK = os.sysconf("SC_CLK_TCK")
AE_METRICS = (
    "spine_antientropy_rounds_total",
    "spine_antientropy_keys_repaired_total",
    "spine_antientropy_tombstones_purged_total",
    "spine_antientropy_shards_differing",
)


# ----------------------------------------------------------------------------- helpers


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (with 20 samples p99 is the maximum)."""
    s = sorted(values)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def summary(values: list[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None, "min": None, "mean": None}
    return {"n": len(values), "p50": pct(values, 50), "p99": pct(values, 99), "max": max(values),
            "min": min(values), "mean": sum(values) / len(values)}


def fmt(v: float | int | None, unit: str = "s") -> str:
    return "-" if v is None else f"{v:.2f} {unit}".rstrip()


def busy_ports(base: int, count: int) -> list[int]:
    """The ports of a cluster on `base` that cannot be bound now (HTTP, RPC, gossip TCP+UDP)."""
    busy = []
    for i in range(count):
        for port, kind in ((base + i, socket.SOCK_STREAM), (base + RPC_OFFSET + i, socket.SOCK_STREAM),
                           (base + GOSSIP_OFFSET + i, socket.SOCK_STREAM),
                           (base + GOSSIP_OFFSET + i, socket.SOCK_DGRAM)):
            with socket.socket(socket.AF_INET, kind) as s:
                # as the nodes bind: a TCP port in TIME_WAIT from the previous cluster is fine
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((HOST, port))
                except OSError:
                    busy.append(port)
    return busy


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(vals) - vals[3] - vals[4]) / CLK_TCK, sum(vals) / CLK_TCK


def busy_cores(since: tuple[float, float]) -> float:
    """Average cores busy on the whole machine (anything, not only Spine) since `since`."""
    busy, total = machine_busy()
    return (busy - since[0]) / max(1e-9, total - since[1]) * (os.cpu_count() or 1)


_local = threading.local()


def get_json(port: int, path: str, timeout: float = 2.0) -> Any:
    """GET `path` from 127.0.0.1:`port` over a keep-alive connection of this thread.

    The pollers below read each node several times a second; a new connection per request
    would leave thousands of client sockets in TIME_WAIT on ephemeral ports, and one of those
    on a node's port (38788… lies in Linux's ephemeral range) stops that node from restarting.
    """
    conns: dict[int, http.client.HTTPConnection] = _local.__dict__.setdefault("conns", {})
    for attempt in (0, 1):
        conn = conns.get(port)
        if conn is None:
            conn = conns[port] = http.client.HTTPConnection(HOST, port, timeout=timeout)
        try:
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            conns.pop(port, None)
            if attempt:
                raise
            continue  # a kept connection the server closed meanwhile: once more, on a new one
        if resp.status != 200:
            raise RuntimeError(f"GET {path} on port {port} answered {resp.status}")
        return json.loads(body)
    raise AssertionError("unreachable")


def close_conns() -> None:
    """Close this thread's kept connections."""
    for conn in _local.__dict__.pop("conns", {}).values():
        conn.close()


def in_ephemeral_range(port: int) -> bool:
    try:
        lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return False
    return lo <= port <= hi


class BenchCluster(LocalCluster):
    """LocalCluster on a fixed base port (the harness picks a random free one)."""

    def __init__(self, root: Path, nodes: int, base: int, **overrides: Any) -> None:
        self.fixed_base = base
        self.keep_logs: Path | None = None
        super().__init__(root, nodes, start=False, **overrides)

    def _write_config(self) -> None:
        super()._write_config()  # local_cluster() on a random base, merged with the overrides
        base = self.fixed_base
        busy: list[int] = []

        def free() -> bool:
            busy[:] = busy_ports(base, self.count)
            return not busy

        try:  # a client socket of the previous cluster in TIME_WAIT lasts 60 s
            wait_until(free, 75, 0.5, lambda: f"ports {busy} (base {base}) to be free")
        except WaitTimeout as e:
            raise SystemExit(f"{e}: pick another --base-port") from None
        self.base = base
        for i, node in enumerate(self.config["nodes"]):
            node["port"] = base + i
            node["rpc_port"] = base + RPC_OFFSET + i
            node["gossip_port"] = base + GOSSIP_OFFSET + i
        self.config["seeds"] = [f"{HOST}:{base + GOSSIP_OFFSET}"]
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def gossip_states(self, observer: str, timeout: float = 2.0) -> dict[str, str]:
        view = get_json(self.port(observer), "/v1/cluster", timeout)
        return {m["id"]: m.get("gossip", "?") for m in view["members"]}

    def restart(self, name: str) -> int:
        """Start `name` again; if its ports are taken (a client socket in TIME_WAIT on one of
        them), wait until they are free and try again. Returns the retries needed."""
        i = self.names.index(name)
        mine = {self.base + i, self.base + RPC_OFFSET + i, self.base + GOSSIP_OFFSET + i}
        for attempt in range(3):
            seen = len(self.log_text(name))
            try:
                self.start(name, wait_peers=False)
                return attempt
            except AssertionError:
                if attempt == 2 or "address already in use" not in \
                        self.log_text(name)[seen:].lower():
                    raise
                print(f"  {name}: a port is in use, waiting for it to be free", flush=True)
                wait_until(lambda: not mine & set(busy_ports(self.base, self.count)), 75, 0.5,
                           f"{name}'s ports to be free")
        raise AssertionError("unreachable")

    def close(self) -> None:
        close_conns()
        if self.keep_logs is not None:
            dest = self.keep_logs / self.root.name
            dest.mkdir(parents=True, exist_ok=True)
            for n in self.names:
                if self.log_path(n).exists():
                    shutil.copy(self.log_path(n), dest / f"{n}.log")
        try:
            super().close()
        except WaitTimeout as e:  # every process is reaped; only a port is still held
            print(f"warning: {e}", file=sys.stderr)

    def all_alive_everywhere(self) -> bool:
        want = dict.fromkeys(self.names, "alive")
        return all(self.gossip_states(n) == want for n in self.names)

    def node_cpu_s(self) -> float:
        return sum(proc_cpu_s(p.pid) for n, p in self.procs.items() if p.poll() is None)


# ----------------------------------------------------------------------------- part 1: detect


class Watcher(threading.Thread):
    """Polls one survivor's /v1/cluster until it reports `victim` dead (or `until`)."""

    def __init__(self, c: BenchCluster, observer: str, victim: str, t0: float, until: float):
        super().__init__(daemon=True, name=f"watch-{observer}")
        self.c, self.observer, self.victim, self.t0, self.until = c, observer, victim, t0, until
        self.suspect_s: float | None = None
        self.dead_s: float | None = None
        self.false: dict[str, str] = {}  # other members seen not alive: member -> worst state
        self.polls = 0
        self.errors = 0

    def run(self) -> None:
        rank = {"alive": 0, "suspect": 1, "dead": 2, "left": 3}
        while time.monotonic() < self.until:
            started = time.monotonic()
            try:
                states = self.c.gossip_states(self.observer, timeout=1.0)
            except Exception:
                self.errors += 1
                close_conns()
            else:
                now = time.monotonic() - self.t0
                self.polls += 1
                s = states.get(self.victim)
                if s in ("suspect", "dead") and self.suspect_s is None:
                    self.suspect_s = now
                for m, st in states.items():
                    if m not in (self.victim, self.observer) and st != "alive" and \
                            rank.get(st, 9) > rank.get(self.false.get(m, "alive"), 0):
                        self.false[m] = st
                if s == "dead":
                    self.dead_s = now
                    break
            time.sleep(max(0.0, POLL_S - (time.monotonic() - started)))
        close_conns()


def part_detect(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    c = BenchCluster(root / "detect", args.nodes, args.base_port)
    c.keep_logs = args.logs
    try:
        c.start_all()
        cfg = from_dict(c.config)
        bound = failure_detection_bound(swim_config(cfg.gossip), args.nodes)
        g = cfg.gossip
        print(f"# detect: {args.nodes} nodes on base port {c.base}; gossip period "
              f"{g.protocol_period_ms} ms, ping timeout {g.ping_timeout_ms} ms, k={g.ping_req_k}, "
              f"suspicion_mult {g.suspicion_mult}; documented bound {bound:.2f} s", flush=True)
        wait_until(c.all_alive_everywhere, 30, 0.1, "every node alive everywhere")
        kills: list[dict[str, Any]] = []
        t_start = time.monotonic()
        for k in range(args.kills):
            victim = rng.choice(c.names[1:])
            survivors = [n for n in c.names if n != victim]
            t0 = time.monotonic()
            c.kill(victim)
            reaped = time.monotonic() - t0
            watchers = [Watcher(c, s, victim, t0, t0 + bound + 15) for s in survivors]
            for w in watchers:
                w.start()
            for w in watchers:
                w.join()
            dead = [w.dead_s for w in watchers]
            row: dict[str, Any] = {
                "kill": k + 1, "victim": victim, "reaped_s": reaped,
                "dead_s": {w.observer: w.dead_s for w in watchers},
                "suspect_s": {w.observer: w.suspect_s for w in watchers},
                "first_dead_s": min((d for d in dead if d is not None), default=None),
                "all_dead_s": None if None in dead else max(d for d in dead if d is not None),
                "false_suspicions": {w.observer: w.false for w in watchers if w.false},
                "polls": sum(w.polls for w in watchers), "poll_errors": sum(w.errors for w in watchers),
            }
            t1 = time.monotonic()
            try:
                row["port_retries"] = c.restart(victim)
                row["healthy_s"] = time.monotonic() - t1
                wait_until(c.all_alive_everywhere, 60, 0.05,
                           f"{victim} alive again everywhere after its restart")
                row["rejoin_s"] = time.monotonic() - t1
                view = {m["id"]: m for m in c.http("n1", "GET", "/v1/cluster").json()["members"]}
                row["incarnation_after"] = view[victim].get("incarnation")
            except (AssertionError, WaitTimeout) as e:
                row["restart_error"] = str(e)[:2000]
                kills.append(row)
                print(f"kill {k + 1:2d}: {victim}: restart failed: {str(e)[:300]}", flush=True)
                break
            kills.append(row)
            print(f"kill {k + 1:2d}: {victim}  first dead {fmt(row['first_dead_s'])}, all dead "
                  f"{fmt(row['all_dead_s'])} (first suspect "
                  f"{fmt(min((s for s in row['suspect_s'].values() if s is not None), default=None))})"
                  f"; restart → alive everywhere {fmt(row['rejoin_s'])}"
                  + (f"; FALSE SUSPICIONS {row['false_suspicions']}" if row["false_suspicions"] else ""),
                  flush=True)
        firsts = [r["first_dead_s"] for r in kills if r["first_dead_s"] is not None]
        alls = [r["all_dead_s"] for r in kills if r["all_dead_s"] is not None]
        suspects = [min(v for v in r["suspect_s"].values() if v is not None)
                    for r in kills if any(v is not None for v in r["suspect_s"].values())]
        rejoins = [r["rejoin_s"] for r in kills if "rejoin_s" in r]
        return {
            "nodes": args.nodes, "kills_requested": args.kills, "kills_done": len(kills),
            "gossip": dataclasses.asdict(g),
            "bound_s": bound,
            "first_dead": summary(firsts), "all_dead": summary(alls),
            "first_suspect": summary(suspects), "restart_to_alive_everywhere": summary(rejoins),
            "missed": sum(1 for r in kills if r["all_dead_s"] is None),
            "over_bound": sum(1 for r in kills if r["all_dead_s"] is not None
                              and r["all_dead_s"] > bound),
            "false_suspicions": sum(1 for r in kills if r["false_suspicions"]),
            "wall_s": time.monotonic() - t_start,
            "kills": kills,
        }
    except BaseException:
        print(c.log_tails(30), file=sys.stderr)
        raise
    finally:
        c.close()


# ----------------------------------------------------------------------------- part 2: repair


def roots(c: BenchCluster) -> dict[int, dict[str, str | None]]:
    out: dict[int, dict[str, str | None]] = {}
    for node in c.running():
        for e in get_json(c.port(node), "/v1/cluster/shards", 5.0)["shards"]:
            if "root" in e:
                out.setdefault(e["shard"], {})[node] = e["root"]
    return out


def differing(c: BenchCluster, holders: dict[int, list[str]], among: list[str]) -> int:
    """Shards whose replicas in `among` do not all report the same built root."""
    got = roots(c)
    bad = 0
    for shard, prefs in holders.items():
        values = {got.get(shard, {}).get(n) for n in prefs if n in among}
        if len(values) != 1 or None in values:
            bad += 1
    return bad


def ae_metrics(c: BenchCluster) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for n in c.running():
        samples = c.metrics(n)
        out[n] = {m: sum(v for name, _, v in samples if name == m)
                  for m in (*AE_METRICS, "spine_hints_written_total", "spine_read_repairs_total")}
    return out


def settle(c: BenchCluster, idle_cores: float = 0.1, deadline_s: float = 120) -> float:
    """Wait until the running nodes are idle (index inserts behind the writes drained)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline_s:
        a = c.node_cpu_s()
        time.sleep(1.0)
        if c.node_cpu_s() - a < idle_cores:
            break
    return time.monotonic() - t0


def write_keys(c: BenchCluster, keys: int, batch: int = 500) -> tuple[float, int]:
    """--keys records through n1/n2 with _batch (session level); (seconds, items retried)."""
    retried = 0
    t0 = time.monotonic()
    for n, start in enumerate(range(0, keys, batch)):
        items = [{"id": f"k{i:06d}", "content": f"memory {i}: the repair benchmark wrote this",
                  "tags": ["bench"]} for i in range(start, min(keys, start + batch))]
        for attempt in range(6):
            r = c.http(("n1", "n2")[n % 2], "POST", f"/v1/ns/{NS}/memories/_batch",
                       {"items": items}, {"Spine-Consistency": "session"}, timeout=60)
            results = r.json().get("results", []) if r.status == 200 else []
            bad = [x for x in results if x.get("status") not in (200, 201)]
            if r.status == 200 and not bad:
                break
            retried += len(bad) if r.status == 200 else len(items)
            time.sleep(0.5 * (attempt + 1))
        else:
            raise RuntimeError(f"batch at {start} failed: {r.status} {r.body[:300]!r}")
    return time.monotonic() - t0, retried


def part_repair(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    ae: dict[str, Any] = {}
    if args.ae_rate is not None:
        ae["max_keys_per_s"] = args.ae_rate
    if args.ae_interval_ms is not None:
        ae["interval_ms"] = args.ae_interval_ms
    if args.ae_shards_per_round is not None:
        ae["shards_per_round"] = args.ae_shards_per_round
    overrides: dict[str, Any] = {"handoff": {"enabled": False},
                                 "consistency": {"allow_weaker": True}}
    if ae:
        overrides["antientropy"] = ae
    c = BenchCluster(root / "repair", 3, args.base_port, **overrides)
    c.keep_logs = args.logs
    try:
        c.start_all()
        cfg = from_dict(c.config)
        a = cfg.antientropy
        shards = c.http("n1", "GET", "/v1/cluster/shards").json()["shards"]
        holders = {e["shard"]: e["preference_list"] for e in shards}
        held_n3 = sum(1 for p in holders.values() if "n3" in p)
        sweep = math.ceil(held_n3 / a.shards_per_round) * a.interval_ms / 1000
        print(f"# repair: 3 nodes on base port {c.base}, {len(holders)} shards (n3 holds "
              f"{held_n3}); antientropy interval {a.interval_ms} ms, {a.shards_per_round} "
              f"shards/round (one node's sweep of its shards: {sweep:.0f} s), max_keys_per_s "
              f"{a.max_keys_per_s}; handoff off", flush=True)
        wait_until(c.all_alive_everywhere, 30, 0.1, "every node alive everywhere")
        c.stop("n3")
        wait_until(lambda: all(c.gossip_states(n)["n3"] != "alive" for n in ("n1", "n2")), 30,
                   0.1, "n1 and n2 to see n3 gone")
        write_s, retried = write_keys(c, args.keys)
        print(f"wrote {args.keys} keys through n1/n2 with n3 stopped in {write_s:.1f} s "
              f"({args.keys / write_s:.0f} keys/s; {retried} items retried)", flush=True)
        wait_until(lambda: differing(c, holders, ["n1", "n2"]) == 0, 30, 0.2,
                   "n1 and n2 to agree on every root")
        idle_s = settle(c)
        print(f"survivors agree on every root; idle after {idle_s:.1f} s", flush=True)
        before = ae_metrics(c)
        cpu0 = c.node_cpu_s()
        trace: list[tuple[float, int]] = []
        t0 = time.monotonic()
        c.restart("n3")
        healthy_s = time.monotonic() - t0
        everyone = list(c.names)
        last = [len(holders)]

        def converged() -> bool:
            try:
                d = differing(c, holders, everyone)
            except Exception:
                d = last[0]
            if not trace or d != trace[-1][1]:
                trace.append((round(time.monotonic() - t0, 2), d))
                print(f"  +{time.monotonic() - t0:6.1f} s: {d} shards differ", flush=True)
            last[0] = d
            return d == 0

        timed_out = False
        try:
            wait_until(converged, args.repair_timeout, 0.1, "equal roots on every replica")
        except WaitTimeout:
            timed_out = True
        repair_s = time.monotonic() - t0
        cpu_s = c.node_cpu_s() - cpu0
        after = ae_metrics(c)
        sample = random.Random(args.seed).sample(range(args.keys), min(100, args.keys))
        present = 0
        for i in sample:
            r = c.read("n3", NS, f"k{i:06d}", "eventual")
            present += r.status == 200
        delta = {n: {m: after[n][m] - before.get(n, {}).get(m, 0.0) for m in after[n]}
                 for n in after}
        repaired = sum(d["spine_antientropy_keys_repaired_total"] for d in delta.values())
        return {
            "keys": args.keys, "write_s": write_s, "write_keys_per_s": args.keys / write_s,
            "write_items_retried": retried, "survivors_idle_after_s": idle_s,
            "antientropy": {"interval_ms": a.interval_ms, "shards_per_round": a.shards_per_round,
                            "max_keys_per_s": a.max_keys_per_s,
                            "ae_rate_arg": args.ae_rate},
            "shards": len(holders), "shards_held_by_n3": held_n3, "one_node_sweep_s": sweep,
            "n3_healthy_s": healthy_s, "repair_s": repair_s, "timed_out": timed_out,
            "keys_per_s": None if timed_out else args.keys / repair_s,
            "records_moved": repaired,
            "node_cpu_s_during_repair": cpu_s,
            "n3_sample_present": f"{present}/{len(sample)}",
            "metrics_after": after, "metrics_delta": delta,
            "trace": trace,
        }
    except BaseException:
        print(c.log_tails(30), file=sys.stderr)
        raise
    finally:
        c.close()


# ----------------------------------------------------------------------------- main


def source_info() -> dict[str, Any]:
    """Which Spine ran: the package path, and the git commit and spine/ changes if in a checkout."""
    import spine

    info: dict[str, Any] = {"spine": str(Path(spine.__file__).parent), "commit": None,
                            "spine_dirty": None}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        git = ["git", "-C", str(REPO)]
        info["commit"] = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True,
                                        text=True, check=True, timeout=10).stdout.strip()
        info["spine_dirty"] = bool(subprocess.run(
            [*git, "status", "--porcelain", "--", "spine"], capture_output=True, text=True,
            check=True, timeout=10).stdout.strip())
    return info


def print_detect(d: dict[str, Any]) -> None:
    print(f"\n== failure detection: {d['nodes']} nodes, {d['kills_done']} kills "
          f"({d['wall_s']:.0f} s) ==")
    print(f"{'':32}{'p50':>9}{'p99':>9}{'max':>9}{'min':>9}")
    for label, key in (("kill → first survivor: suspect", "first_suspect"),
                       ("kill → first survivor: dead", "first_dead"),
                       ("kill → every survivor: dead", "all_dead"),
                       ("restart → alive everywhere", "restart_to_alive_everywhere")):
        s = d[key]
        print(f"{label:32}" + "".join(f"{fmt(s[q]):>9}" for q in ("p50", "p99", "max", "min")))
    print(f"documented bound failure_detection_bound(swim_config(gossip), {d['nodes']}) = "
          f"{d['bound_s']:.2f} s; over the bound: {d['over_bound']}; never declared dead: "
          f"{d['missed']}; kills with a false suspicion of another member: "
          f"{d['false_suspicions']}")
    print(f"machine busy (all processes, {os.cpu_count()} cpus): "
          f"{d['machine_busy_cores']:.2f} cores on average")


def print_repair(r: dict[str, Any]) -> None:
    a = r["antientropy"]
    print(f"\n== anti-entropy repair: {r['keys']} keys missed by n3 ==")
    print(f"settings: interval {a['interval_ms']} ms, {a['shards_per_round']} shards/round, "
          f"max_keys_per_s {a['max_keys_per_s']}" + ("" if a["ae_rate_arg"] is None else
                                                      f" (--ae-rate {a['ae_rate_arg']})"))
    state = "TIMED OUT after" if r["timed_out"] else "equal roots everywhere"
    print(f"restart → {state} {r['repair_s']:.2f} s (n3 healthy after {r['n3_healthy_s']:.2f} s)"
          f"; {fmt(r['keys_per_s'], 'keys/s')}; {r['records_moved']:.0f} records moved; node CPU "
          f"{r['node_cpu_s_during_repair']:.1f} s; sample on n3: {r['n3_sample_present']}")
    print(f"{'node':6}" + "".join(f"{m.removeprefix('spine_'):>40}" for m in
                                  (*AE_METRICS, "spine_hints_written_total")))
    for n, vals in r["metrics_after"].items():
        print(f"{n:6}" + "".join(f"{vals[m]:>40.0f}" for m in
                                 (*AE_METRICS, "spine_hints_written_total")))
    print("(counters since each process started: n1/n2 ran the whole time, n3 since its restart)")
    print(f"machine busy (all processes, {os.cpu_count()} cpus): "
          f"{r['machine_busy_cores']:.2f} cores on average over the part")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("detect", "repair", "all"), default="all")
    ap.add_argument("--base-port", type=int, default=28788)
    ap.add_argument("--nodes", type=int, default=5, help="detect: cluster size (default 5)")
    ap.add_argument("--kills", type=int, default=20, help="detect: kills (default 20)")
    ap.add_argument("--keys", type=int, default=5000, help="repair: keys n3 misses (5000)")
    ap.add_argument("--ae-rate", type=int, default=None,
                    help="repair: antientropy.max_keys_per_s (default: the config default)")
    ap.add_argument("--ae-interval-ms", type=int, default=None,
                    help="repair: antientropy.interval_ms (default: the config default)")
    ap.add_argument("--ae-shards-per-round", type=int, default=None,
                    help="repair: antientropy.shards_per_round (default: the config default)")
    ap.add_argument("--repair-timeout", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    ap.add_argument("--logs", type=Path, default=None,
                    help="copy the nodes' logs here (DIR/detect, DIR/repair) when a part ends")
    args = ap.parse_args()
    if args.nodes < 2:
        ap.error("--nodes must be at least 2")

    started = dt.datetime.now(dt.UTC)
    out: dict[str, Any] = {
        "bench": "membership", "started": started.isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", "bench/membership_bench.py", *sys.argv[1:]]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "kernel": platform.release()},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "source": source_info(),
        "loadavg_start": os.getloadavg(),
    }
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="spine-membership-") as tmp:
        root = Path(tmp)
        if args.part in ("detect", "all"):
            m0 = machine_busy()
            out["detect"] = part_detect(args, root)
            out["detect"]["machine_busy_cores"] = busy_cores(m0)
            print_detect(out["detect"])
        if args.part in ("repair", "all"):
            m0 = machine_busy()
            out["repair"] = part_repair(args, root)
            out["repair"]["machine_busy_cores"] = busy_cores(m0)
            print_repair(out["repair"])
    out["wall_s"] = time.monotonic() - t0
    out["loadavg_end"] = os.getloadavg()
    print(f"\ntotal {out['wall_s']:.0f} s")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=1, default=str))
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
