"""A local Spine cluster of real processes on 127.0.0.1, for the integration tests.

`LocalCluster(tmp_path, nodes=3, **overrides)` writes a `cluster.yaml` (from
`spine.core.config.local_cluster`, deep-merged with `overrides`), starts one
`python -m spine serve` process per node in its own session, and waits for `/healthz` on each.
Faults are plain signals: `kill` (SIGKILL), `stop` (SIGTERM), `pause`/`resume`
(SIGSTOP/SIGCONT); `start` restarts a node on its data directory. Nothing here sleeps to stand in
for synchronisation: every wait polls a condition against a deadline and fails with a message.

`close()` SIGKILLs whatever is left, reaps every process and checks that each port it used can
be bound again. An `atexit` hook kills anything still running if the test process itself dies.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any, TypeVar

import yaml

from spine.client import Client
from spine.core.config import local_cluster
from spine.core.config_env import merge_settings

HOST = "127.0.0.1"
RPC_OFFSET = 1000
GOSSIP_OFFSET = 2000
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0

T = TypeVar("T")

# Every process any LocalCluster started and has not reaped yet (for the atexit safety net).
_LIVE: dict[int, subprocess.Popen[bytes]] = {}


def _kill_leftovers() -> None:
    for pid, proc in list(_LIVE.items()):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)
        _LIVE.pop(pid, None)


atexit.register(_kill_leftovers)


class WaitTimeout(AssertionError):
    """A polled condition did not hold before its deadline."""


class StopWaiting(Exception):
    """Raised by a predicate to end a wait at once: the condition can no longer hold."""


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str | Callable[[], str] = "condition",
) -> T:
    """Poll `predicate` until it returns a truthy value (returned), or raise WaitTimeout.

    Exceptions raised by the predicate count as "not yet"; the last one is named in the error.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    last_value: Any = None
    while True:
        try:
            last_value = predicate()
            if last_value:
                return last_value
            last_exc = None
        except StopWaiting:
            raise
        except Exception as e:  # the condition is not reachable yet: try again
            last_exc = e
        if time.monotonic() >= deadline:
            what = message() if callable(message) else message
            detail = f"; last error: {last_exc!r}" if last_exc else f"; last value: {last_value!r}"
            raise WaitTimeout(f"timed out after {timeout:.1f}s waiting for {what}{detail}")
        time.sleep(interval)


# ----------------------------------------------------------------------------- ports


def _bindable(port: int, kind: int, reuse: bool) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


def _families(base: int, count: int) -> list[tuple[int, int]]:
    """(port, socket kind) of every listener a cluster on `base` opens (gossip: TCP and UDP)."""
    out: list[tuple[int, int]] = []
    for i in range(count):
        out.append((base + i, socket.SOCK_STREAM))
        out.append((base + RPC_OFFSET + i, socket.SOCK_STREAM))
        out.append((base + GOSSIP_OFFSET + i, socket.SOCK_STREAM))
        out.append((base + GOSSIP_OFFSET + i, socket.SOCK_DGRAM))
    return out


def _ephemeral_range() -> tuple[int, int]:
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


# Port ranges that clusters started outside the tests use (`spine up` defaults to 8788, the
# benchmark to 18788): a cluster started there later must not find our nodes on its ports.
RESERVED = [range(b, b + GOSSIP_OFFSET + 32) for b in (8788, 18788)]


def _usable(base: int, count: int) -> bool:
    ports = [p for p, _ in _families(base, count)]
    if max(ports) > 65535 or any(p in r for p in ports for r in RESERVED):
        return False
    return all(_bindable(p, k, reuse=False) for p, k in _families(base, count))


def free_base_port(count: int, rng: random.Random | None = None) -> int:
    """A base port B such that B+i, B+1000+i and B+2000+i (TCP, and UDP for gossip) are free.

    Candidates come from below the kernel's ephemeral range, so that an outgoing connection
    cannot take a node's port while the node is down between `kill` and `start`. If none is
    free there, ports the kernel hands out for port 0 are tried as bases.
    """
    rng = rng or random.Random()
    lo, _hi = _ephemeral_range()
    top = min(lo, 65536) - GOSSIP_OFFSET - count - 1
    for _ in range(200):
        base = rng.randrange(10000, max(10001, top))
        if _usable(base, count):
            return base
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            base = s.getsockname()[1]
        if _usable(base, count):
            return base
    raise RuntimeError(f"no free range of ports for {count} nodes")


# ----------------------------------------------------------------------------- HTTP


@dataclass
class Reply:
    """An HTTP reply: status, headers and raw body (`.json()` decodes it)."""

    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def error(self) -> dict[str, Any]:
        """The `error` object of a JSON error body (fails the test if the shape is wrong)."""
        data = self.json()
        assert isinstance(data, dict) and set(data) == {"error"}, data
        err = data["error"]
        assert isinstance(err, dict), data
        assert isinstance(err.get("code"), str) and isinstance(err.get("message"), str), data
        return err


def http_request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> Reply:
    """One HTTP request to 127.0.0.1:`port`; `body` is bytes as is, else JSON-encoded."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        hdrs = dict(headers or {})
        data: bytes | None
        if body is None:
            data = None
        elif isinstance(body, bytes):
            data = body
        else:
            data = json.dumps(body).encode()
        if data is not None:
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        return Reply(resp.status, resp.msg, resp.read())
    finally:
        conn.close()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Prometheus text exposition → (name, labels, value) samples."""
    out: list[tuple[str, dict[str, str], float]] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            raise ValueError(f"not a Prometheus sample: {line!r}")
        labels = dict(_LABEL.findall(m.group(3) or ""))
        out.append((m.group(1), labels, float(m.group(4))))
    return out


# ----------------------------------------------------------------------------- the cluster


class LocalCluster:
    """N Spine nodes as real processes on 127.0.0.1, sharing one cluster.yaml."""

    def __init__(
        self,
        tmp_path: Path,
        nodes: int = 3,
        *,
        sync: bool = False,
        api_key: str | None = None,
        start: bool = True,
        spare: int = 0,
        **overrides: Any,
    ) -> None:
        """`spare`: ports reserved for nodes `add_node` may start later (ring joins)."""
        self.root = Path(tmp_path)
        self.root.mkdir(parents=True, exist_ok=True)
        self.count = nodes
        self.spare = spare
        self.node_args: dict[str, list[str]] = {}  # per node: config path and extra flags
        self.sync = sync
        self.api_key = api_key  # sent on the harness's own health and metrics requests
        self.overrides = merge_settings(
            {"liveness": {"probe_interval_ms": 200}, "handoff": {"replay_interval_ms": 200}},
            overrides,
        )
        self.names = [f"n{i + 1}" for i in range(nodes)]
        self.data_dir = self.root / "data"
        self.log_dir = self.root / "logs"
        self.log_dir.mkdir(exist_ok=True)
        self.config_path = self.root / "cluster.yaml"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.paused: set[str] = set()
        self.base = 0
        self.config: dict[str, Any] = {}
        self._closed = False
        if start:
            self.start_all()

    # ------------------------------------------------------------ lifecycle

    def _write_config(self) -> None:
        self.base = free_base_port(self.count + self.spare)
        cfg = local_cluster(self.count, self.base, str(self.data_dir), sync=self.sync)
        self.config = merge_settings(cfg, self.overrides)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def start_all(self, attempts: int = 3) -> None:
        """Pick free ports, write the config, start every node and wait until all are healthy.

        If a node cannot bind its port (another process took it after the check), the whole
        cluster is started again on fresh ports.
        """
        for attempt in range(attempts):
            self._write_config()
            for name in self.names:
                self._spawn(name)
            try:
                for name in self.names:
                    self._wait_healthy(name)
                return
            except Exception:
                port_race = any(self._bind_failed(n) for n in self.names)
                self._kill_all()
                if not port_race or attempt == attempts - 1:
                    self.close()
                    raise
        raise AssertionError("unreachable")

    def _bind_failed(self, name: str) -> bool:
        return "address already in use" in self.log_text(name).lower()

    def _spawn(self, name: str) -> None:
        assert name in self.names, name
        proc = self.procs.get(name)
        assert proc is None or proc.poll() is not None, f"{name} is already running"
        log_path = self.log_path(name)
        with log_path.open("ab") as log:
            log.write(f"--- harness: starting {name} at {time.time():.3f}\n".encode())
            log.flush()
            args = self.node_args.get(name, ["--config", str(self.config_path)])
            proc = subprocess.Popen(
                [sys.executable, "-m", "spine", "serve", *args, "--node", name],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.root,
                start_new_session=True,
            )
        self.procs[name] = proc
        _LIVE[proc.pid] = proc

    def _wait_healthy(self, name: str, timeout: float = START_TIMEOUT) -> None:
        proc = self.procs[name]

        def healthy() -> bool:
            if proc.poll() is not None:
                raise _Exited(name, proc.returncode)
            r = self.http(name, "GET", "/healthz", timeout=1.0)
            return r.status == 200 and r.json().get("node") == name

        try:
            wait_until(healthy, timeout, 0.05, f"{name} to answer /healthz")
        except _Exited as e:
            raise AssertionError(
                f"{name} exited with status {e.code} while starting:\n{self.log_tail(name)}"
            ) from None
        except WaitTimeout as e:
            raise AssertionError(f"{e}\n{self.log_tail(name)}") from None

    def start(self, name: str, *, wait_peers: bool = True) -> None:
        """(Re)start `name` on its data directory and ports; wait until it answers /healthz.

        With `wait_peers`, also wait until every running node sees every running node alive.
        """
        self._spawn(name)
        self._wait_healthy(name)
        if wait_peers:
            self.wait_peers_alive()

    def add_node(self, *, wait: bool = True) -> str:
        """Start one more node (on a spare port) with `serve --join`: it fetches the ring from
        the configured nodes and joins as `joining`. Its own config lists the first nodes and
        itself; theirs is unchanged (they learn of it from its ring map). Its name."""
        assert len(self.names) < self.count + self.spare, "no spare port left"
        i = len(self.names)
        name = f"n{i + 1}"
        cfg = merge_settings(self.config, {})
        cfg["nodes"] = [*self.config["nodes"], {
            "id": name, "host": HOST, "port": self.base + i,
            "rpc_port": self.base + RPC_OFFSET + i, "gossip_port": self.base + GOSSIP_OFFSET + i,
        }]
        path = self.root / f"cluster-{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.names.append(name)
        self.node_args[name] = ["--config", str(path), "--join"]
        self._spawn(name)
        if wait:
            self._wait_healthy(name)
        return name

    def _signal(self, name: str, sig: signal.Signals) -> subprocess.Popen[bytes]:
        proc = self.procs[name]
        assert proc.poll() is None, f"{name} is not running (exit status {proc.returncode})"
        proc.send_signal(sig)
        return proc

    def _reap(self, name: str, proc: subprocess.Popen[bytes], timeout: float) -> int:
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            _LIVE.pop(proc.pid, None)
            raise AssertionError(
                f"{name} did not exit within {timeout:.0f}s:\n{self.log_tail(name)}"
            ) from None
        _LIVE.pop(proc.pid, None)
        self.paused.discard(name)
        return code

    def kill(self, name: str) -> int:
        """SIGKILL `name` and reap it."""
        proc = self._signal(name, signal.SIGKILL)
        return self._reap(name, proc, STOP_TIMEOUT)

    def stop(self, name: str) -> int:
        """SIGTERM `name` (a clean shutdown) and wait for it to exit; fails if it does not."""
        if name in self.paused:
            self.resume(name)
        proc = self._signal(name, signal.SIGTERM)
        return self._reap(name, proc, STOP_TIMEOUT)

    def pause(self, name: str) -> None:
        """SIGSTOP `name`: its sockets stay open but it answers nothing."""
        self._signal(name, signal.SIGSTOP)
        self.paused.add(name)

    def resume(self, name: str) -> None:
        """SIGCONT a paused node."""
        self._signal(name, signal.SIGCONT)
        self.paused.discard(name)

    def running(self) -> list[str]:
        """Nodes whose process is alive and not paused."""
        return [
            n for n in self.names
            if n in self.procs and self.procs[n].poll() is None and n not in self.paused
        ]

    def _kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait(timeout=STOP_TIMEOUT)
            _LIVE.pop(proc.pid, None)
        self.paused.clear()

    def close(self) -> None:
        """SIGKILL every node left, reap every process, and check that the ports are free."""
        if self._closed:
            return
        self._closed = True
        self._kill_all()
        if self.base:
            busy: list[int] = []

            def ports_free() -> bool:
                busy[:] = [p for p, k in _families(self.base, self.count + self.spare)
                           if not _bindable(p, k, reuse=True)]
                return not busy

            wait_until(ports_free, 10.0, 0.05, lambda: f"ports {busy} to be released")

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ addresses and clients

    def port(self, name: str) -> int:
        return self.base + self.names.index(name)

    def url(self, name: str) -> str:
        return f"http://{HOST}:{self.port(name)}"

    def client(self, nodes: Iterable[str] | None = None, **kw: Any) -> Client:
        """A spine.client.Client round-robining over `nodes` (default: all)."""
        names = list(nodes) if nodes is not None else list(self.names)
        return Client([self.url(n) for n in names], **kw)

    def http(
        self,
        name: str,
        method: str,
        path: str,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        *,
        use_key: bool = True,
    ) -> Reply:
        """One raw HTTP request to `name`; the harness's api_key is sent unless `headers` hold an
        Authorization of their own or `use_key` is false."""
        hdrs = dict(headers or {})
        if use_key and self.api_key and not any(k.lower() == "authorization" for k in hdrs):
            hdrs["Authorization"] = f"Bearer {self.api_key}"
        return http_request(self.port(name), method, path, body, hdrs, timeout)

    def read(
        self,
        name: str,
        ns: str,
        mid: str,
        level: str | None = None,
        session: str | None = None,
    ) -> Reply:
        """GET one memory through `name` at `level` (eventual: that node's own replica)."""
        hdrs: dict[str, str] = {}
        if level is not None:
            hdrs["Spine-Consistency"] = level
        if session is not None:
            hdrs["Spine-Session"] = session
        return self.http(name, "GET", f"/v1/ns/{ns}/memories/{mid}", headers=hdrs)

    @property
    def eventual_is_honoured(self) -> bool:
        """Whether `Spine-Consistency: eventual` gives R=1 here (see test_session's xfail)."""
        cons = self.config.get("consistency", {})
        return bool(cons.get("allow_weaker")) or cons.get("default") == "eventual"

    def local_record(self, name: str, ns: str, mid: str) -> dict[str, Any] | None:
        """What `name` itself stores for an untagged key (R=1 eventual read), None when absent.

        Only in a cluster where the eventual header is honoured: elsewhere the read would be a
        quorum read with read repair, and could not tell what one replica holds.
        """
        assert self.eventual_is_honoured, "configure consistency.allow_weaker for local reads"
        r = self.read(name, ns, mid, "eventual")
        if r.status == 404:
            return None
        assert r.status == 200, (r.status, r.body)
        rec: dict[str, Any] = r.json()
        return rec

    def wait_until(
        self,
        predicate: Callable[[], T],
        timeout: float = 10.0,
        interval: float = 0.05,
        message: str | Callable[[], str] = "condition",
    ) -> T:
        """Poll with a deadline; raise WaitTimeout naming `message` on timeout."""
        return wait_until(predicate, timeout, interval, message)

    # ------------------------------------------------------------ observation

    def metrics(self, name: str) -> list[tuple[str, dict[str, str], float]]:
        r = self.http(name, "GET", "/metrics")
        assert r.status == 200, r
        return parse_metrics(r.body.decode())

    def metric(self, name: str, metric: str, **labels: str) -> float:
        """The sum of every series of `metric` on `name` whose labels include `labels`."""
        return sum(
            v for n, lbl, v in self.metrics(name)
            if n == metric and all(lbl.get(k) == want for k, want in labels.items())
        )

    def cluster_view(self, name: str) -> dict[str, Any]:
        r = self.http(name, "GET", "/v1/cluster", timeout=2.0)
        assert r.status == 200, r
        view: dict[str, Any] = r.json()
        return view

    def wait_peers_alive(self, timeout: float = 15.0) -> None:
        """Wait until every running node sees every running node as alive."""
        up = self.running()

        def all_alive() -> bool:
            for n in up:
                alive = {m["id"] for m in self.cluster_view(n)["members"] if m["alive"]}
                if not set(up) <= alive:
                    return False
            return True

        wait_until(all_alive, timeout, 0.05, f"{up} to see each other alive")

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def log_text(self, name: str) -> str:
        p = self.log_path(name)
        return p.read_text(errors="replace") if p.exists() else ""

    def log_tail(self, name: str, lines: int = 40) -> str:
        tail = self.log_text(name).splitlines()[-lines:]
        return f"--- {name} log ({self.log_path(name)}), last {len(tail)} lines:\n" + "\n".join(
            tail
        )

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(self.log_tail(n, lines) for n in self.names)


class _Exited(StopWaiting):
    def __init__(self, name: str, code: int) -> None:
        super().__init__(f"{name} exited with {code}")
        self.code = code
