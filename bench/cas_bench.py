#!/usr/bin/env python3
"""Conditional writes and leases: Spine (3 nodes, fsync on) beside a 3-member etcd on this box,
in one run. Prints figures; asserts nothing.

    .venv/bin/python bench/cas_bench.py [--duration 15] [--warmup 2] [--concurrency 16,64]
        [--shared-keys 4] [--lease-clients 16] [--only cas,lease] [--no-etcd] [--json OUT]

What it does, in order:

1. Starts a 3-node Spine cluster of real `spine serve` processes with the integration harness
   (tests/integration/cluster.py `LocalCluster`, `storage.sync: true`, hash embedder) and a
   3-member etcd cluster (Debian `etcd-server`, 3.4; installed with apt-get if missing) on
   127.0.0.1, each member with its own data directory under one temp dir (etcd fsyncs its WAL).
2. Compare-and-set, for each --concurrency C (default 16 and 64), two shapes:
   - `own`: client i loops on its own key: read the key, then write it on that version;
   - `shared`: all C clients on --shared-keys keys (client i on key i mod K), so most attempts
     lose a race (Spine answers 412 precondition_failed, etcd's txn answers succeeded=false).
   Spine: `GET /v1/ns/{ns}/memories/{id}` (its `ETag`), then `PUT` with `If-Match: <ETag>`;
   each client carries its `Spine-Session` token as the Python client does. etcd:
   `POST /v3/kv/range` (default, linearizable) for the key's `mod_revision`, then `POST
   /v3/kv/txn` comparing `mod_revision` and putting the same ~64-byte value. Client i talks to
   node/member i mod 3. Reported: successful writes/s, attempts/s, conflicts, errors, p50/p99 of
   one attempt (read + write) and of the write alone, and the server processes' CPU per
   successful write (utime+stime from /proc of every process of that cluster, over the
   measured window), the generator's own CPU per write, and the ratio Spine/etcd.
3. Leases, one client and --lease-clients clients, each on a name of its own: Spine `POST
   /v1/ns/{ns}/leases/{name}` then `DELETE …?token=T` (a round trip = both); beside it the
   etcd lock recipe: `lease/grant`, a txn putting the key with that lease if it does not exist
   (`create_revision == 0`), `lease/revoke`.

Load: one asyncio process (uvloop when present), aiohttp with keep-alive, closed loop (each
client sends its next request when the previous one answered). Each case gets --warmup seconds
that are not counted, then --duration measured seconds; between cases the Spine nodes are let
go idle (background index inserts drained). Every process started is stopped by its pid (etcd:
SIGTERM then SIGKILL; Spine: the harness SIGKILLs and reaps each node's process group), also on
Ctrl-C, SIGTERM or an error, and the ports are checked free again at the end. Figures also go
to bench/results/cas-<timestamp>.json (or --json).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import functools
import json
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.harness.ports import RPC_OFFSET, bindable, free_base_port  # noqa: E402
from tests.integration.cluster import LocalCluster  # noqa: E402

NS = "casbench"
MEMBERS = 3
CLK_TCK = os.sysconf("SC_CLK_TCK")
VALUE_BYTES = 64
LEASE_TTL_MS = 10_000
TARGET_RATIO = 0.5
SBIN = ":/usr/sbin:/usr/bin:/sbin:/bin"


class Stop(Exception):
    """SIGTERM: unwind through the same cleanup as Ctrl-C."""


# ---------------------------------------------------------------------------------- /proc

def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()


def descendants(roots: list[int]) -> list[int]:
    """`roots` and every process below them (a node that forks workers is charged for them)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            f = _stat_fields(int(d.name))
            if f is not None:
                parent[int(d.name)] = int(f[1])
    out = set(roots)
    grew = True
    while grew:
        grew = False
        for pid, ppid in parent.items():
            if ppid in out and pid not in out:
                out.add(pid)
                grew = True
    return sorted(out)


def cpu_seconds(pids: list[int]) -> dict[int, float]:
    """utime+stime of each live pid (fields 14 and 15 of /proc/PID/stat)."""
    out = {}
    for p in pids:
        f = _stat_fields(p)
        if f is not None:
            out[p] = (int(f[11]) + int(f[12])) / CLK_TCK
    return out


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine."""
    vals = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = vals[3] + vals[4]
    return sum(vals[:8]) - idle, sum(vals[:8])


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class CpuWindow:
    """CPU used by each group of processes (and by this generator, and by the whole machine)
    between `start()` and `stop()`. Process trees are re-read at both ends; a process that
    appears or exits in between is counted from/to where it was seen."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.seen: dict[str, dict[int, float]] = {}
        self.t0 = 0.0
        self.gen0 = 0.0
        self.busy0 = (0, 0)
        self.result: dict[str, float] = {}

    def start(self) -> None:
        self.seen = {g: cpu_seconds(descendants(r)) for g, r in self.groups.items()}
        self.gen0 = self_cpu()
        self.busy0 = machine_busy()
        self.t0 = time.monotonic()

    def stop(self) -> None:
        wall = time.monotonic() - self.t0
        gen = self_cpu() - self.gen0
        busy1 = machine_busy()
        res: dict[str, float] = {"wall_s": wall, "gen_cpu_s": gen}
        used_total = gen
        for g, roots in self.groups.items():
            now = cpu_seconds(descendants(roots))
            used = sum(v - self.seen[g].get(p, 0.0) for p, v in now.items())
            res[f"{g}_cpu_s"] = used
            used_total += used
        d_busy, d_total = busy1[0] - self.busy0[0], busy1[1] - self.busy0[1]
        cores = (d_busy / d_total * (os.cpu_count() or 1)) if d_total else 0.0
        res["busy_cores"] = cores
        res["other_cores"] = max(0.0, cores - used_total / wall) if wall else 0.0
        self.result = res


# ---------------------------------------------------------------------------------- etcd

def find_etcd(install: bool) -> str | None:
    """The etcd binary; with `install`, apt-get installs Debian's etcd-server first if it is
    missing (as root, or with `sudo -n`). None (and a message saying why) if unavailable."""
    found = shutil.which("etcd", path=os.environ.get("PATH", "") + SBIN)
    if found or not install:
        return found
    print("# etcd not found: installing Debian's etcd-server with apt-get ...", flush=True)
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else [])
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = [*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends", "etcd-server"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if r.returncode != 0:
            subprocess.run([*sudo, "apt-get", "update", "-q"], capture_output=True, env=env,
                           timeout=600)
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        print(f"# could not run apt-get: {e}", file=sys.stderr)
        return None
    found = shutil.which("etcd", path=os.environ.get("PATH", "") + SBIN)
    if not found:
        print(f"# apt-get install etcd-server failed ({r.returncode}): {r.stderr[-500:]}",
              file=sys.stderr)
    return found


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


class Etcd:
    """A 3-member etcd cluster on 127.0.0.1: client port base+i, peer port base+1000+i."""

    def __init__(self, binary: str, root: Path) -> None:
        self.binary = binary
        self.root = root / "etcd"
        self.root.mkdir(parents=True, exist_ok=True)
        self.base = free_base_port(MEMBERS)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.version = subprocess.run([binary, "--version"], capture_output=True,
                                      text=True).stdout.split("\n", 1)[0]

    def client_port(self, i: int) -> int:
        return self.base + i

    def peer_port(self, i: int) -> int:
        return self.base + RPC_OFFSET + i

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{self.client_port(i)}" for i in range(MEMBERS)]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.poll() is None]

    def start(self, deadline_s: float = 60.0) -> None:
        token = "casbench-" + secrets.token_hex(4)
        initial = ",".join(f"e{i + 1}=http://127.0.0.1:{self.peer_port(i)}" for i in range(MEMBERS))
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        for i in range(MEMBERS):
            name = f"e{i + 1}"
            client = f"http://127.0.0.1:{self.client_port(i)}"
            peer = f"http://127.0.0.1:{self.peer_port(i)}"
            cmd = [self.binary, "--name", name, "--data-dir", str(self.root / name),
                   "--listen-client-urls", client, "--advertise-client-urls", client,
                   "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                   "--initial-cluster", initial, "--initial-cluster-token", token,
                   "--initial-cluster-state", "new", "--logger", "zap", "--log-level", "warn"]
            log = (self.root / f"{name}.log").open("ab")
            self.procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                               stderr=log, cwd=self.root,
                                               start_new_session=True, env=env))
            log.close()
        deadline = time.monotonic() + deadline_s
        pending = list(range(MEMBERS))
        while pending:
            for i in list(pending):
                if self.procs[i].poll() is not None:
                    raise RuntimeError(f"etcd e{i + 1} exited with {self.procs[i].returncode}:\n"
                                       + self.log_tail(i))
                with contextlib.suppress(OSError, ValueError), \
                        urllib.request.urlopen(self.urls[i] + "/health", timeout=1) as r:
                    if json.loads(r.read()).get("health") == "true":
                        pending.remove(i)
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"etcd members {pending} not healthy after {deadline_s:.0f}s")
            if pending:
                time.sleep(0.2)

    def log_tail(self, i: int, chars: int = 2000) -> str:
        try:
            return (self.root / f"e{i + 1}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> list[str]:
        """SIGTERM each member (by its pid), SIGKILL what is left after 10 s, reap all; then
        check the ports are free. Problems found, as sentences."""
        problems = []
        for p in self.procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                problems.append(f"etcd pid {p.pid} ignored SIGTERM; killed")
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                p.wait(timeout=10)
        deadline = time.monotonic() + 10
        busy = self.busy_ports()
        while busy and time.monotonic() < deadline:
            time.sleep(0.1)
            busy = self.busy_ports()
        if busy:
            problems.append(f"etcd ports still bound: {busy}")
        return problems

    def busy_ports(self) -> list[int]:
        ports = [self.client_port(i) for i in range(MEMBERS)] + \
                [self.peer_port(i) for i in range(MEMBERS)]
        return [p for p in ports if not bindable(p, socket.SOCK_STREAM, reuse=True)]


# ---------------------------------------------------------------------------------- load

@dataclass
class Tally:
    """What one case's clients did in the measured window."""

    ok: int = 0  # successful conditional writes (or lease round trips)
    conflicts: int = 0  # 412 / txn succeeded=false / lease_held
    errors: dict[str, int] = field(default_factory=dict)
    attempt_lat: list[float] = field(default_factory=list)  # seconds, read + write
    write_lat: list[float] = field(default_factory=list)  # seconds, the write alone

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


class Window:
    """The measured window: ops that complete inside it are counted."""

    def __init__(self) -> None:
        self.measuring = False
        self.stopping = False


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * len(s)) - 1))] * 1000


Attempt = Callable[[aiohttp.ClientSession, int, Tally, Window], Awaitable[None]]


async def run_case(attempt: Attempt, clients: int, warmup: float, duration: float,
                   cpu: CpuWindow) -> Tally:
    """`clients` closed-loop workers running `attempt` for warmup + duration seconds."""
    tally = Tally()
    win = Window()
    conn = aiohttp.TCPConnector(limit=clients * 2, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=10)

    async def worker(http: aiohttp.ClientSession, i: int) -> None:
        while not win.stopping:
            try:
                await attempt(http, i, tally, win)
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                if win.measuring:
                    tally.error(type(e).__name__)

    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as http:
        tasks = [asyncio.create_task(worker(http, i)) for i in range(clients)]
        try:
            await asyncio.sleep(warmup)
            cpu.start()
            win.measuring = True
            await asyncio.sleep(duration)
            win.measuring = False
            cpu.stop()
            win.stopping = True
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=20)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return tally


def value(i: int, n: int) -> str:
    return f"client {i} write {n} ".ljust(VALUE_BYTES, "x")


class SpineCas:
    """Read the key's ETag, then PUT with If-Match; the key of client i is keys[i % len]."""

    def __init__(self, urls: list[str], keys: list[str]) -> None:
        self.urls = urls
        self.keys = keys
        self.tokens: dict[int, str] = {}
        self.n = 0

    def _headers(self, i: int, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = dict(extra or {})
        tok = self.tokens.get(i)
        if tok:
            h["Spine-Session"] = tok
        return h

    async def __call__(self, http: aiohttp.ClientSession, i: int, t: Tally, w: Window) -> None:
        url = f"{self.urls[i % len(self.urls)]}/v1/ns/{NS}/memories/{self.keys[i % len(self.keys)]}"
        self.n += 1
        t0 = time.monotonic()
        async with http.get(url, headers=self._headers(i)) as r:
            body = await r.read()
            self.tokens[i] = r.headers.get("Spine-Session", self.tokens.get(i, ""))
            if r.status == 200:
                tag = r.headers.get("ETag") or '"' + json.loads(body)["version"] + '"'
                cond = {"If-Match": tag}
            elif r.status == 404:
                cond = {"If-None-Match": "*"}
            else:
                if w.measuring:
                    t.error(f"GET {r.status}")
                return
        t1 = time.monotonic()
        async with http.put(url, json={"content": value(i, self.n)},
                            headers=self._headers(i, cond)) as r:
            await r.read()
            self.tokens[i] = r.headers.get("Spine-Session", self.tokens.get(i, ""))
            status = r.status
        t2 = time.monotonic()
        if not w.measuring:
            return
        if status in (200, 201):
            t.ok += 1
            t.attempt_lat.append(t2 - t0)
            t.write_lat.append(t2 - t1)
        elif status == 412:
            t.conflicts += 1
            t.attempt_lat.append(t2 - t0)
            t.write_lat.append(t2 - t1)
        else:
            t.error(f"PUT {status}")


class EtcdCas:
    """Range for mod_revision, then a txn: compare mod_revision, put."""

    def __init__(self, urls: list[str], keys: list[str]) -> None:
        self.urls = urls
        self.keys = [b64(k) for k in keys]
        self.n = 0

    async def __call__(self, http: aiohttp.ClientSession, i: int, t: Tally, w: Window) -> None:
        base = self.urls[i % len(self.urls)]
        key = self.keys[i % len(self.keys)]
        self.n += 1
        t0 = time.monotonic()
        async with http.post(f"{base}/v3/kv/range", json={"key": key}) as r:
            body = await r.json(content_type=None)
            if r.status != 200:
                if w.measuring:
                    t.error(f"range {r.status}")
                return
        kvs = body.get("kvs") or []
        rev = int(kvs[0].get("mod_revision", 0)) if kvs else 0
        txn = {"compare": [{"target": "MOD", "result": "EQUAL", "key": key, "mod_revision": rev}],
               "success": [{"request_put": {"key": key, "value": b64(value(i, self.n))}}]}
        t1 = time.monotonic()
        async with http.post(f"{base}/v3/kv/txn", json=txn) as r:
            body = await r.json(content_type=None)
            status = r.status
        t2 = time.monotonic()
        if not w.measuring:
            return
        if status != 200:
            t.error(f"txn {status}")
            return
        t.attempt_lat.append(t2 - t0)
        t.write_lat.append(t2 - t1)
        if body.get("succeeded"):
            t.ok += 1
        else:
            t.conflicts += 1


class SpinePut:
    """The baseline: an unconditional PUT (default level) of the client's own key, carrying the
    session token, so the price of the condition shows beside it."""

    def __init__(self, urls: list[str], keys: list[str]) -> None:
        self.urls = urls
        self.keys = keys
        self.tokens: dict[int, str] = {}
        self.n = 0

    async def __call__(self, http: aiohttp.ClientSession, i: int, t: Tally, w: Window) -> None:
        url = f"{self.urls[i % len(self.urls)]}/v1/ns/{NS}/memories/{self.keys[i % len(self.keys)]}"
        self.n += 1
        tok = self.tokens.get(i)
        t0 = time.monotonic()
        async with http.put(url, json={"content": value(i, self.n)},
                            headers={"Spine-Session": tok} if tok else {}) as r:
            await r.read()
            self.tokens[i] = r.headers.get("Spine-Session", tok or "")
            status = r.status
        t1 = time.monotonic()
        if not w.measuring:
            return
        if status in (200, 201):
            t.ok += 1
            t.attempt_lat.append(t1 - t0)
            t.write_lat.append(t1 - t0)
        else:
            t.error(f"PUT {status}")


class EtcdPut:
    """The baseline: an unconditional `/v3/kv/put` of the client's own key."""

    def __init__(self, urls: list[str], keys: list[str]) -> None:
        self.urls = urls
        self.keys = [b64(k) for k in keys]
        self.n = 0

    async def __call__(self, http: aiohttp.ClientSession, i: int, t: Tally, w: Window) -> None:
        base = self.urls[i % len(self.urls)]
        self.n += 1
        body = {"key": self.keys[i % len(self.keys)], "value": b64(value(i, self.n))}
        t0 = time.monotonic()
        async with http.post(f"{base}/v3/kv/put", json=body) as r:
            await r.read()
            status = r.status
        t1 = time.monotonic()
        if not w.measuring:
            return
        if status == 200:
            t.ok += 1
            t.attempt_lat.append(t1 - t0)
            t.write_lat.append(t1 - t0)
        else:
            t.error(f"put {status}")


class SpineLease:
    """Acquire a lease on a name of the client's own, then release it with its token."""

    def __init__(self, urls: list[str], prefix: str) -> None:
        self.urls = urls
        self.prefix = prefix

    async def __call__(self, http: aiohttp.ClientSession, i: int, t: Tally, w: Window) -> None:
        url = f"{self.urls[i % len(self.urls)]}/v1/ns/{NS}/leases/{self.prefix}-{i}"
        t0 = time.monotonic()
        async with http.post(url, json={"holder": f"agent-{i}", "ttl_ms": LEASE_TTL_MS}) as r:
            body = await r.json(content_type=None)
            if r.status != 200:
                if w.measuring:
                    if r.status == 409:
                        t.conflicts += 1
                    else:
                        t.error(f"acquire {r.status}")
                return
        tok = body["token"]
        t1 = time.monotonic()
        async with http.delete(url, params={"token": str(tok)}) as r:
            await r.read()
            status = r.status
        t2 = time.monotonic()
        if not w.measuring:
            return
        if status == 200:
            t.ok += 1
            t.attempt_lat.append(t2 - t0)
            t.write_lat.append(t2 - t1)
        else:
            t.error(f"release {status}")


class EtcdLock:
    """etcd's lock recipe on a name of the client's own: grant a lease, put the key with it if
    the key does not exist (create_revision == 0), revoke the lease (which deletes the key)."""

    def __init__(self, urls: list[str], prefix: str) -> None:
        self.urls = urls
        self.prefix = prefix

    async def __call__(self, http: aiohttp.ClientSession, i: int, t: Tally, w: Window) -> None:
        base = self.urls[i % len(self.urls)]
        key = b64(f"lock/{self.prefix}-{i}")
        t0 = time.monotonic()
        async with http.post(f"{base}/v3/lease/grant",
                             json={"TTL": LEASE_TTL_MS // 1000}) as r:
            body = await r.json(content_type=None)
            if r.status != 200 or "ID" not in body:
                if w.measuring:
                    t.error(f"grant {r.status}")
                return
        lease = body["ID"]
        txn = {"compare": [{"target": "CREATE", "result": "EQUAL", "key": key,
                            "create_revision": 0}],
               "success": [{"request_put": {"key": key, "value": b64(f"agent-{i}"),
                                            "lease": lease}}]}
        async with http.post(f"{base}/v3/kv/txn", json=txn) as r:
            body = await r.json(content_type=None)
            got = r.status == 200 and bool(body.get("succeeded"))
        t1 = time.monotonic()
        async with http.post(f"{base}/v3/lease/revoke", json={"ID": lease}) as r:
            await r.read()
            status = r.status
        t2 = time.monotonic()
        if not w.measuring:
            return
        if not got:
            t.conflicts += 1
        elif status == 200:
            t.ok += 1
            t.attempt_lat.append(t2 - t0)
            t.write_lat.append(t2 - t1)
        else:
            t.error(f"revoke {status}")


# ---------------------------------------------------------------------------------- cases

@dataclass
class Case:
    name: str  # e.g. cas-own-c16
    system: str  # spine | etcd
    kind: str  # cas | lease | put
    shape: str  # own | shared | single | many
    clients: int
    make: Callable[[], Attempt]


def seed_keys(spine_urls: list[str], etcd_urls: list[str] | None, keys: list[str]) -> None:
    """Write every key once (unconditionally) so that the loops start on existing records."""
    for n, k in enumerate(keys):
        body = json.dumps({"content": value(n, 0)}).encode()
        req = urllib.request.Request(f"{spine_urls[n % 3]}/v1/ns/{NS}/memories/{k}", data=body,
                                     method="PUT", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            r.read()
        if etcd_urls:
            body = json.dumps({"key": b64(k), "value": b64(value(n, 0))}).encode()
            req = urllib.request.Request(f"{etcd_urls[n % 3]}/v3/kv/put", data=body,
                                         method="POST")
            with urllib.request.urlopen(req, timeout=30) as r:
                r.read()


def settle(pids: list[int], idle_cores: float = 0.15, deadline_s: float = 30.0) -> float:
    """Wait (bounded) until the Spine nodes are idle: background work of the previous case
    (vector-index inserts) would otherwise be charged to the next one."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline_s:
        a = sum(cpu_seconds(descendants(pids)).values())
        time.sleep(0.5)
        b = sum(cpu_seconds(descendants(pids)).values())
        if (b - a) / 0.5 < idle_cores:
            break
    return time.monotonic() - t0


def summarize(case: Case, t: Tally, cpu: dict[str, float]) -> dict[str, Any]:
    secs = cpu["wall_s"]
    server_cpu = cpu[f"{case.system}_cpu_s"]
    attempts = t.ok + t.conflicts
    return {
        "case": case.name, "system": case.system, "kind": case.kind, "shape": case.shape,
        "clients": case.clients, "seconds": round(secs, 2),
        "ok": t.ok, "conflicts": t.conflicts, "errors": t.errors,
        "ops_per_s": round(t.ok / secs, 1),
        "attempts_per_s": round(attempts / secs, 1),
        "conflict_share": round(t.conflicts / attempts, 3) if attempts else None,
        "p50_ms": pct(t.attempt_lat, 0.50), "p99_ms": pct(t.attempt_lat, 0.99),
        "write_p50_ms": pct(t.write_lat, 0.50), "write_p99_ms": pct(t.write_lat, 0.99),
        "server_cpu_s": round(server_cpu, 2),
        "server_us_per_op": round(server_cpu / t.ok * 1e6) if t.ok else None,
        "server_us_per_attempt": round(server_cpu / attempts * 1e6) if attempts else None,
        "gen_us_per_op": round(cpu["gen_cpu_s"] / t.ok * 1e6) if t.ok else None,
        # what the servers alone could do with every core of the box: cores / CPU per op
        "server_bound_ops_per_s": round((os.cpu_count() or 1) / (server_cpu / t.ok))
        if t.ok and server_cpu else None,
        "busy_cores": round(cpu["busy_cores"], 2), "other_cores": round(cpu["other_cores"], 2),
    }


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def line(r: dict[str, Any]) -> str:
    errs = sum(r["errors"].values())
    return (f"{r['case']:<18} {r['system']:<5} {r['ops_per_s']:>8.0f} ok/s  "
            f"{r['attempts_per_s']:>7.0f} tries/s  conflicts {r['conflicts']:>6}  errors {errs:>3}  "
            f"p50 {fmt(r['p50_ms']):>6}  p99 {fmt(r['p99_ms']):>6} ms  "
            f"(write p50 {fmt(r['write_p50_ms'])}  p99 {fmt(r['write_p99_ms'])})  "
            f"server {fmt(r['server_us_per_op'], '.0f')} µs/op  gen {fmt(r['gen_us_per_op'], '.0f')}"
            f" µs/op  busy {r['busy_cores']:.2f} (other {r['other_cores']:.2f})")


def table(rows: list[dict[str, Any]]) -> str:
    by = {(r["case"], r["system"]): r for r in rows}
    hdr = ["case", "spine ok/s", "etcd ok/s", "ratio", "spine p50/p99 ms", "etcd p50/p99 ms",
           "spine conflicts", "etcd conflicts", "spine µs/op", "etcd µs/op", "CPU ratio",
           "errors s/e"]
    out = [hdr]
    for case in dict.fromkeys(r["case"] for r in rows):
        s, e = by.get((case, "spine")), by.get((case, "etcd"))
        ratio = "-"
        if s and e and e["ops_per_s"]:
            x = s["ops_per_s"] / e["ops_per_s"]
            ratio = f"{x:.2f}x" + ("" if s["kind"] != "cas" else
                                   (" ok" if x >= TARGET_RATIO else " MISS"))

        def cell(r: dict[str, Any] | None, k: str, spec: str = ".0f") -> str:
            return "-" if r is None else fmt(r[k], spec)

        def lat(r: dict[str, Any] | None) -> str:
            return "-" if r is None else f"{fmt(r['p50_ms'])}/{fmt(r['p99_ms'])}"

        def share(r: dict[str, Any] | None) -> str:
            if r is None:
                return "-"
            return f"{r['conflicts']} ({fmt((r['conflict_share'] or 0) * 100, '.0f')}%)"

        cpu_ratio = "-"  # etcd's server CPU per op over Spine's: > 1 means Spine is cheaper
        if s and e and s["server_us_per_op"] and e["server_us_per_op"]:
            cpu_ratio = f"{e['server_us_per_op'] / s['server_us_per_op']:.2f}x"
        errs = "/".join("-" if r is None else str(sum(r["errors"].values())) for r in (s, e))
        out.append([case, cell(s, "ops_per_s"), cell(e, "ops_per_s"), ratio, lat(s), lat(e),
                    share(s), share(e), cell(s, "server_us_per_op"), cell(e, "server_us_per_op"),
                    cpu_ratio, errs])
    widths = [max(len(r[i]) for r in out) for i in range(len(hdr))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in out)


def build_cases(args: argparse.Namespace, spine_urls: list[str],
                etcd_urls: list[str] | None) -> tuple[list[Case], list[str]]:
    cases: list[Case] = []
    keys: list[str] = []
    parts = set(args.only.split(","))
    systems: list[tuple[str, list[str]]] = [("spine", spine_urls)]
    if etcd_urls:
        systems.append(("etcd", etcd_urls))
    if "cas" in parts:
        for c in args.concurrency:
            own = [f"own-c{c}-{i}" for i in range(c)]
            shared = [f"shared-c{c}-{i}" for i in range(args.shared_keys)]
            keys += own + shared
            for shape, ks in (("own", own), ("shared", shared)):
                for system, urls in systems:
                    cls: type[SpineCas | EtcdCas] = SpineCas if system == "spine" else EtcdCas
                    cases.append(Case(f"cas-{shape}-c{c}", system, "cas", shape, c,
                                      functools.partial(cls, urls, ks)))
    if "put" in parts:  # the baseline, on the own-key shape of each concurrency
        for c in args.concurrency:
            own = [f"put-c{c}-{i}" for i in range(c)]
            keys += own
            for system, urls in systems:
                cls1: type[SpinePut | EtcdPut] = SpinePut if system == "spine" else EtcdPut
                cases.append(Case(f"put-own-c{c}", system, "put", "own", c,
                                  functools.partial(cls1, urls, own)))
    if "lease" in parts:
        for c in (1, args.lease_clients):
            shape = "single" if c == 1 else "many"
            for system, urls in systems:
                prefix = f"l{c}-{secrets.token_hex(3)}"
                cls2: type[SpineLease | EtcdLock] = SpineLease if system == "spine" else EtcdLock
                cases.append(Case(f"lease-c{c}", system, "lease", shape, c,
                                  functools.partial(cls2, urls, prefix)))
    return cases, keys


# ---------------------------------------------------------------------------------- main

def event_loop() -> tuple[Callable[[Coroutine[Any, Any, Tally]], Tally], str]:
    """uvloop's runner when it is installed (as the nodes use it), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run, "asyncio"
    return uvloop.run, f"uvloop {getattr(uvloop, '__version__', '?')}"


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                return ln.split(":", 1)[1].strip()
    return platform.processor()


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=15, help="measured seconds per case")
    ap.add_argument("--warmup", type=float, default=2, help="uncounted seconds before each case")
    ap.add_argument("--concurrency", default="16,64",
                    help="comma-separated client counts for the compare-and-set cases")
    ap.add_argument("--shared-keys", type=int, default=4, help="keys of the contended shape")
    ap.add_argument("--lease-clients", type=int, default=16,
                    help="clients of the many-clients lease case (each on a name of its own)")
    ap.add_argument("--only", default="cas,lease",
                    help="comma-separated parts: cas, lease, put (the baseline: unconditional "
                         "writes of own keys, Spine PUT and etcd put; not run by default)")
    ap.add_argument("--no-etcd", action="store_true", help="measure Spine alone")
    ap.add_argument("--no-install", action="store_true",
                    help="do not apt-get install etcd-server when etcd is missing")
    ap.add_argument("--json", default="", help="where to write the figures (default: "
                    "bench/results/cas-<timestamp>.json)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (data and logs)")
    args = ap.parse_args()
    args.concurrency = [int(x) for x in args.concurrency.split(",") if x]
    return args


def main() -> int:
    args = parse_args()
    etcd_bin = None if args.no_etcd else find_etcd(not args.no_install)
    if not args.no_etcd and etcd_bin is None:
        print("# etcd is unavailable (install it: apt-get install -y etcd-server): measuring "
              "Spine alone, no ratio", file=sys.stderr, flush=True)

    def on_term(signum: int, frame: object) -> None:
        raise Stop()

    signal.signal(signal.SIGTERM, on_term)
    root = Path(tempfile.mkdtemp(prefix="spine-casbench-"))
    spine: LocalCluster | None = None
    etcd: Etcd | None = None
    rows: list[dict[str, Any]] = []
    rc = 0
    started = dt.datetime.now(dt.UTC)
    try:
        print(f"# {started:%Y-%m-%d %H:%M} UTC; temp dir {root}", flush=True)
        spine = LocalCluster(root / "spine", MEMBERS, sync=True)
        spine_urls = [spine.url(n) for n in spine.names]
        spine_pids = [p for n in spine.names if (p := spine.pid(n)) is not None]
        print(f"# spine: 3 nodes {spine_urls} (pids {spine_pids}), storage.sync true", flush=True)
        etcd_urls: list[str] | None = None
        if etcd_bin:
            etcd = Etcd(etcd_bin, root)
            etcd.start()
            etcd_urls = etcd.urls
            print(f"# etcd: {etcd.version}, 3 members {etcd_urls} (pids {etcd.pids})",
                  flush=True)
        cases, keys = build_cases(args, spine_urls, etcd_urls)
        seed_keys(spine_urls, etcd_urls, keys)
        groups = {"spine": spine_pids, **({"etcd": etcd.pids} if etcd else {})}
        runner, loop_name = event_loop()
        print(f"# load: aiohttp {aiohttp.__version__} on {loop_name}; {args.warmup:g} s warm-up "
              f"+ {args.duration:g} s per case, {len(cases)} cases", flush=True)
        for case in cases:
            waited = settle(spine_pids)
            cpu = CpuWindow(groups)
            tally = runner(run_case(case.make(), case.clients, args.warmup, args.duration, cpu))
            r = summarize(case, tally, cpu.result)
            r["settle_s"] = round(waited, 1)
            rows.append(r)
            print(line(r), flush=True)
    except (KeyboardInterrupt, Stop):
        print("# interrupted: stopping every process started", file=sys.stderr, flush=True)
        rc = 130
    except Exception as e:
        print(f"# error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        rc = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut cleanup
        problems: list[str] = []
        if etcd is not None:
            problems += etcd.stop()
        if spine is not None:
            try:
                spine.close()  # SIGKILL each node's group by its pid, reap, wait ports free
            except Exception as e:
                problems.append(f"spine cluster close: {e}")
        for problem in problems:
            print(f"# WARNING: {problem}", file=sys.stderr)
        print("# stopped: etcd members and Spine nodes, ports free" if not problems else
              "# stopped with problems (above)", flush=True)
        if args.keep or rc == 1:
            print(f"# logs and data kept in {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        rc = rc or (1 if problems else 0)

    if rows:
        print()
        print(table(rows))
        meta = {
            "date": started.isoformat(timespec="seconds"),
            "command": " ".join([".venv/bin/python", "bench/cas_bench.py", *sys.argv[1:]]),
            "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "kernel": platform.release(),
                        "python": platform.python_version()},
            "etcd": etcd.version if etcd else None, "aiohttp": aiohttp.__version__,
            "loop": event_loop()[1], "duration_s": args.duration,
            "warmup_s": args.warmup, "shared_keys": args.shared_keys,
            "value_bytes": VALUE_BYTES, "lease_ttl_ms": LEASE_TTL_MS, "fsync": True,
        }
        out = Path(args.json) if args.json else \
            HERE / "results" / f"cas-{started:%Y%m%d-%H%M%S}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
        print(f"\n# figures written to {out}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
