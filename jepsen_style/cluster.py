"""A Spine cluster of real processes for the fault harness, one loopback address per node.

Node ``i`` (``n1``, ``n2``, …) listens for HTTP, RPC and gossip on its own address
``127.0.K.(11+i)`` (``K`` = 0 unless another harness on this machine holds that block), with
ports from one base: HTTP ``base+i``, RPC ``base+1000+i``, gossip ``base+2000+i``. Spine binds
its outgoing RPC connections and its gossip UDP socket to the node's address, so kernel drop
rules on ``(saddr, daddr)`` cut exactly the links between nodes (see ``nemesis.py``); the
harness's own clients connect from 127.0.0.1 and are never cut.

Each node runs in its own session (process group) with ``SPINE_TEST_CLOCK_FILE`` pointing at
``<root>/clock-nI``: a millisecond offset the node adds to its wall clock (``set_clock``).

Every process is killed and reaped, and the nftables table removed, on ``close()``, on leaving a
``with`` block, and from an ``atexit`` hook if the harness dies first.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from spine.core.config import local_cluster
from spine.core.config_env import merge_settings

RPC_OFFSET = 1000
GOSSIP_OFFSET = 2000
FIRST_HOST = 11
START_TIMEOUT = 45.0
REAP_TIMEOUT = 20.0
CLOCK_ENV = "SPINE_TEST_CLOCK_FILE"
LOCK_DIR = Path(tempfile.gettempdir()) / "spine-jepsen-locks"
TABLE_PREFIX = "spine_jepsen"
# Ranges that clusters started outside the harness use (`spine up`, the benchmarks).
RESERVED = [range(b, b + GOSSIP_OFFSET + 32) for b in (8788, 18788)]

T = TypeVar("T")


class ClusterError(RuntimeError):
    """A node failed to start, or a wait on the cluster timed out."""


class StopWaiting(Exception):
    """Raised by a predicate to end a wait at once: the condition can no longer hold."""


# --------------------------------------------------------------------------- safety net

_LIVE: set[JepsenCluster] = set()
_LIVE_LOCK = threading.Lock()


def _close_all() -> None:
    with _LIVE_LOCK:
        clusters = list(_LIVE)
    for c in clusters:
        with contextlib.suppress(Exception):
            c.close()


atexit.register(_close_all)


def wait_until(
    predicate: Callable[[], T], timeout: float, interval: float = 0.1, what: str = "condition"
) -> T:
    """Poll ``predicate`` until truthy (returned); ClusterError after ``timeout`` seconds.
    Exceptions from the predicate count as "not yet"."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except StopWaiting as e:
            raise ClusterError(f"gave up waiting for {what}: {e}") from None
        except Exception as e:  # not reachable yet
            last = e
        if time.monotonic() >= deadline:
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}"
                               + (f" (last error: {last!r})" if last else ""))
        time.sleep(interval)


# --------------------------------------------------------------------------- addresses


class AddressBlock:
    """An exclusive claim (a ``flock`` held while the cluster lives) on ``127.0.K.0/24``, so
    that two harnesses on one machine never share node addresses, whose drop rules would cut
    each other's clusters. ``K`` = 0 first, as the design says: nodes on 127.0.0.11, .12, …"""

    def __init__(self, prefer: int | None = None) -> None:
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        order = list(range(0, 250)) if prefer is None else [prefer]
        for k in order:
            fd = os.open(LOCK_DIR / f"127.0.{k}.lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self.k, self._fd = k, fd
            return
        raise ClusterError(f"no free loopback block (tried {order[0]}..{order[-1]})")

    def host(self, i: int) -> str:
        """The address of node index ``i`` (0-based)."""
        return f"127.0.{self.k}.{FIRST_HOST + i}"

    @property
    def table(self) -> str:
        """The nftables table (family inet) that holds this block's fault rules."""
        return TABLE_PREFIX if self.k == 0 else f"{TABLE_PREFIX}_{self.k}"

    def release(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            self._fd = -1


def _bindable(host: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _ports(base: int, i: int) -> list[tuple[int, int]]:
    return [(base + i, socket.SOCK_STREAM), (base + RPC_OFFSET + i, socket.SOCK_STREAM),
            (base + GOSSIP_OFFSET + i, socket.SOCK_STREAM),
            (base + GOSSIP_OFFSET + i, socket.SOCK_DGRAM)]


def free_base_port(hosts: list[str], rng: random.Random | None = None) -> int:
    """A base B such that node i's HTTP, RPC and gossip (TCP and UDP) ports are free on its host,
    below the kernel's ephemeral range (so an outgoing connection cannot take a node's port while
    it is down between kill and restart), and not on 127.0.0.1 either (no wildcard listener)."""
    rng = rng or random.Random()
    try:
        lo = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        lo = 32768
    top = min(lo, 65536) - GOSSIP_OFFSET - len(hosts) - 1
    for _ in range(300):
        base = rng.randrange(10000, max(10001, top))
        if any(base + d + i in r for r in RESERVED for d in (0, RPC_OFFSET, GOSSIP_OFFSET)
               for i in range(len(hosts))):
            continue
        if all(_bindable(h, p, k) and _bindable("127.0.0.1", p, k)
               for i, h in enumerate(hosts) for p, k in _ports(base, i)):
            return base
    raise ClusterError(f"no free range of ports for {len(hosts)} nodes")


# --------------------------------------------------------------------------- the cluster


class JepsenCluster:
    """``nodes`` Spine processes sharing one ``cluster.yaml`` under ``root``.

    ``overrides`` are deep-merged into the config (e.g. ``{"handoff": {"enabled": False}}``).
    ``sync``: ``storage.sync`` (fsync). Off by default: SIGKILL loses nothing the kernel's page
    cache holds, so kill faults test the same thing, at a fraction of the disk cost.
    """

    def __init__(
        self,
        root: str | Path,
        nodes: int = 5,
        overrides: Mapping[str, Any] | None = None,
        *,
        sync: bool = False,
        block: int | None = None,
        start: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_dir = self.root / "logs"
        self.log_dir.mkdir(exist_ok=True)
        self.data_dir = self.root / "data"
        self.config_path = self.root / "cluster.yaml"
        self.names = [f"n{i + 1}" for i in range(nodes)]
        self.sync = sync
        self.overrides = dict(overrides or {})
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.paused: set[str] = set()
        self.clock_offsets: dict[str, int] = {n: 0 for n in self.names}
        self._lock = threading.RLock()
        self._closed = False
        self._block = AddressBlock(block)
        self.hosts = {n: self._block.host(i) for i, n in enumerate(self.names)}
        self.table = self._block.table
        # A harness killed with SIGKILL leaves its table behind; we hold the block now, so any
        # table of its name is stale and would partition this cluster.
        from jepsen_style.nemesis import Nftables

        with contextlib.suppress(Exception):
            Nftables(self.table).delete_table()
        self.base = 0
        self.config: dict[str, Any] = {}
        self._rng = rng or random.Random()
        with _LIVE_LOCK:
            _LIVE.add(self)
        for n in self.names:
            self.set_clock(n, 0)
        if start:
            try:
                self.start_all()
            except BaseException:
                self.close()
                raise

    # ------------------------------------------------------------------ addresses

    def index(self, node: str) -> int:
        return self.names.index(node)

    def host(self, node: str) -> str:
        return self.hosts[node]

    def port(self, node: str) -> int:
        return self.base + self.index(node)

    def rpc_port(self, node: str) -> int:
        return self.base + RPC_OFFSET + self.index(node)

    def gossip_port(self, node: str) -> int:
        return self.base + GOSSIP_OFFSET + self.index(node)

    def url(self, node: str) -> str:
        return f"http://{self.host(node)}:{self.port(node)}"

    @property
    def urls(self) -> dict[str, str]:
        return {n: self.url(n) for n in self.names}

    def clock_file(self, node: str) -> Path:
        return self.root / f"clock-{node}"

    def log_path(self, node: str) -> Path:
        return self.log_dir / f"{node}.log"

    # ------------------------------------------------------------------ lifecycle

    def _write_config(self) -> None:
        hosts = [self.hosts[n] for n in self.names]
        self.base = free_base_port(hosts, self._rng)
        cfg = local_cluster(len(self.names), self.base, str(self.data_dir), sync=self.sync)
        for i, node in enumerate(cfg["nodes"]):
            node["host"] = hosts[i]
        cfg["seeds"] = [f"{h}:{self.base + GOSSIP_OFFSET + i}" for i, h in enumerate(hosts)]
        # Workloads choose their level per request (e.g. eventual for an untagged register).
        cfg["consistency"]["allow_weaker"] = True
        self.config = merge_settings(cfg, self.overrides)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def start_all(self, attempts: int = 3) -> None:
        """Pick ports, write the config, start every node, wait for each to answer /healthz and
        for all to see each other alive. A port taken meanwhile: start again on fresh ports."""
        for attempt in range(attempts):
            self._write_config()
            for n in self.names:
                self._spawn(n)
            try:
                for n in self.names:
                    self.wait_healthy(n)
                self.wait_peers_alive(timeout=30.0)
                return
            except ClusterError:
                raced = any("address already in use" in self.log_text(n).lower()
                            for n in self.names)
                self._kill_all()
                if not raced or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _spawn(self, node: str) -> None:
        with self._lock:
            if self._closed:
                raise ClusterError("the cluster is closed")
            proc = self.procs.get(node)
            if proc is not None and proc.poll() is None:
                raise ClusterError(f"{node} is already running (pid {proc.pid})")
            env = dict(os.environ)
            env[CLOCK_ENV] = str(self.clock_file(node))
            with self.log_path(node).open("ab") as log:
                log.write(f"--- harness: starting {node} at {time.time():.3f}\n".encode())
                log.flush()
                proc = subprocess.Popen(
                    [sys.executable, "-m", "spine", "serve", "--config", str(self.config_path),
                     "--node", node],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.root, env=env,
                    start_new_session=True,
                )
            self.procs[node] = proc
            self.paused.discard(node)

    def start(self, node: str, *, wait: bool = True, timeout: float = START_TIMEOUT) -> None:
        """(Re)start ``node`` on its data directory and ports; wait for its /healthz."""
        self._spawn(node)
        if wait:
            self.wait_healthy(node, timeout)

    def kill(self, node: str) -> int | None:
        """SIGKILL ``node``'s process group and reap it; its exit status (None: not running)."""
        with self._lock:
            proc = self.procs.get(node)
            if proc is None or proc.poll() is not None:
                return None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        code = proc.wait(timeout=REAP_TIMEOUT)
        with self._lock:
            self.paused.discard(node)
        return code

    def pause(self, node: str) -> None:
        """SIGSTOP ``node``'s process group: its sockets stay open, it answers nothing."""
        with self._lock:
            proc = self.procs[node]
            if proc.poll() is not None:
                raise ClusterError(f"{node} is not running")
            os.killpg(proc.pid, signal.SIGSTOP)
            self.paused.add(node)

    def resume(self, node: str) -> None:
        """SIGCONT ``node``'s process group."""
        with self._lock:
            proc = self.procs.get(node)
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGCONT)
            self.paused.discard(node)

    def set_clock(self, node: str, offset_ms: int) -> None:
        """Move ``node``'s wall clock to real time + ``offset_ms`` (it follows within ~50 ms).
        The file is replaced atomically, so the node never reads a half-written offset."""
        path = self.clock_file(node)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(f"{int(offset_ms)}\n")
        tmp.replace(path)
        self.clock_offsets[node] = int(offset_ms)

    def is_running(self, node: str) -> bool:
        proc = self.procs.get(node)
        return proc is not None and proc.poll() is None

    def running(self) -> list[str]:
        """Nodes whose process lives and is not paused."""
        return [n for n in self.names if self.is_running(n) and n not in self.paused]

    def pid(self, node: str) -> int | None:
        proc = self.procs.get(node)
        return None if proc is None or proc.poll() is not None else proc.pid

    def _kill_all(self) -> None:
        with self._lock:
            procs = list(self.procs.values())
            for proc in procs:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, signal.SIGKILL)
            self.paused.clear()
        for proc in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=REAP_TIMEOUT)

    def close(self) -> None:
        """Kill and reap every node, remove the nftables table, reset the clock files and
        release the address block. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._kill_all()
        finally:
            try:
                from jepsen_style.nemesis import Nftables

                Nftables(self.table).delete_table()
            finally:
                for n in self.names:
                    with contextlib.suppress(OSError):
                        self.set_clock(n, 0)
                self._block.release()
                with _LIVE_LOCK:
                    _LIVE.discard(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> JepsenCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ observation

    def http(self, node: str, method: str, path: str, body: Any = None,
             headers: Mapping[str, str] | None = None,
             timeout: float = 5.0) -> tuple[int, Any, Mapping[str, str]]:
        """One HTTP request to ``node`` (from 127.0.0.1): status, decoded JSON (or raw text),
        headers."""
        conn = http.client.HTTPConnection(self.host(node), self.port(node), timeout=timeout)
        try:
            hdrs = dict(headers or {})
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                hdrs.setdefault("Content-Type", "application/json")
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
            try:
                decoded: Any = json.loads(raw) if raw else None
            except ValueError:
                decoded = raw.decode("utf-8", "replace")
            return resp.status, decoded, dict(resp.getheaders())
        finally:
            conn.close()

    def healthy(self, node: str, timeout: float = 1.0) -> bool:
        status, body, _ = self.http(node, "GET", "/healthz", timeout=timeout)
        return status == 200 and isinstance(body, dict) and body.get("node") == node

    def wait_healthy(self, node: str, timeout: float = START_TIMEOUT) -> None:
        proc = self.procs[node]

        def ok() -> bool:
            if proc.poll() is not None:
                raise StopWaiting(f"{node} exited with status {proc.returncode}")
            return self.healthy(node)

        try:
            wait_until(ok, timeout, 0.1, f"{node} to answer /healthz")
        except ClusterError as e:
            raise ClusterError(f"{e}\n{self.log_tail(node)}") from None

    def view(self, node: str, timeout: float = 2.0) -> dict[str, Any]:
        """``GET /v1/cluster`` on ``node``."""
        status, body, _ = self.http(node, "GET", "/v1/cluster", timeout=timeout)
        if status != 200 or not isinstance(body, dict):
            raise ClusterError(f"/v1/cluster on {node}: {status} {body!r}")
        return body

    def alive_seen_by(self, node: str) -> set[str]:
        """The members ``node`` currently considers alive."""
        return {m["id"] for m in self.view(node)["members"] if m.get("alive")}

    def wait_peers_alive(self, timeout: float = 30.0, nodes: list[str] | None = None) -> None:
        """Wait until each of ``nodes`` (default: every running node) sees all of them alive."""
        up = list(nodes) if nodes is not None else self.running()
        wait_until(lambda: all(set(up) <= self.alive_seen_by(n) for n in up), timeout, 0.2,
                   f"{up} to see each other alive")

    def log_text(self, node: str) -> str:
        p = self.log_path(node)
        return p.read_text(errors="replace") if p.exists() else ""

    def log_tail(self, node: str, lines: int = 30) -> str:
        tail = self.log_text(node).splitlines()[-lines:]
        return f"--- {node} log ({self.log_path(node)}):\n" + "\n".join(tail)
