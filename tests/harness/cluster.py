"""A cluster of real Spine processes: N `python -m spine serve` nodes sharing one cluster.yaml.

`ProcessCluster(root, nodes, overrides)` picks free ports, writes `<root>/cluster.yaml` (from
`spine.core.local_cluster`, deep-merged with `overrides`), and starts each node in its
own session (process group), logging to `<root>/logs/<node>.log`, from `<root>`. Faults are
plain signals to that group: `kill` (SIGKILL), `stop` (SIGTERM), `pause`/`resume`
(SIGSTOP/SIGCONT); `start` restarts a node on its data directory and ports. Nothing sleeps to
stand in for synchronisation: every wait polls a condition against a deadline (`wait_until`).

Latency without netem: every node follows its own link file (`SPINE_TEST_LINK_FILE`,
`spine.core.links`), and `set_link` / `set_links` / `regions` write them: what a node sends a
peer waits that link's delay, or is dropped at its loss rate (one-way: replies come back
undelayed, so an RPC round trip pays the caller's link once). `wait_links` polls until every
running node applies what was written; `clear_links` removes every delay.

`close()` SIGKILLs whatever is left and reaps every process; an `atexit` hook closes every
cluster still open if the harness itself dies first. The two harnesses specialise it:
`tests.integration.cluster.LocalCluster` and `jepsen_style.cluster.JepsenCluster`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from spine.core.config_env import merge_settings
from spine.core.local_cluster import local_cluster
from spine.runtime import LINK_FILE_ENV
from tests.harness.http_client import Reply, http_request, parse_metrics
from tests.harness.ports import GOSSIP_OFFSET, HOST, RPC_OFFSET, free_base_port
from tests.harness.wait import StopWaiting, WaitTimeout, wait_until

T = TypeVar("T")

START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0

class ClusterError(AssertionError):
    """A node failed to start or stop, or a wait on the cluster timed out."""


class _Exited(StopWaiting):
    def __init__(self, name: str, code: int) -> None:
        super().__init__(f"{name} exited with {code}")
        self.code = code


# Every cluster not closed yet (the atexit safety net closes them).
_LIVE: set[ProcessCluster] = set()
_LIVE_LOCK = threading.Lock()


def _close_all() -> None:
    with _LIVE_LOCK:
        clusters = list(_LIVE)
    for c in clusters:
        with contextlib.suppress(Exception):
            c.close()


atexit.register(_close_all)


class ProcessCluster:
    """`nodes` Spine processes (`n1`, `n2`, …) sharing one `cluster.yaml` under `root`.

    `overrides` are deep-merged into the config; `sync` is `storage.sync` (fsync; off by
    default: SIGKILL loses nothing the kernel's page cache holds). `rng` picks the ports.
    Safe to drive from several threads (a fault thread beside the test's own).
    """

    start_timeout = START_TIMEOUT  # seconds a node has to answer /healthz once spawned
    restart_waits_for_peers = True  # `start` waits until the running nodes see each other
    poll_interval = 0.05  # seconds between polls of the peers' views (`wait_peers_alive`)
    link_control = True  # every node follows a link file (`set_link`); empty until written

    def __init__(
        self,
        root: str | Path,
        nodes: int,
        overrides: Mapping[str, Any] | None = None,
        *,
        sync: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.count = nodes
        self.names = [f"n{i + 1}" for i in range(nodes)]
        self.sync = sync
        self.overrides: dict[str, Any] = dict(overrides or {})
        self.api_key: str | None = None  # sent on the harness's own requests, if set
        self.data_dir = self.root / "data"
        self.log_dir = self.root / "logs"
        self.log_dir.mkdir(exist_ok=True)
        self.config_path = self.root / "cluster.yaml"
        self.node_args: dict[str, list[str]] = {}  # per node: config path and extra flags
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.paused: set[str] = set()
        self.base = 0
        self.config: dict[str, Any] = {}
        self._rng = rng or random.Random()
        # What each node's link file says: src -> dst -> {"delay_ms", "jitter_ms", "loss"}.
        self.links: dict[str, dict[str, dict[str, float]]] = {n: {} for n in self.names}
        self._lock = threading.RLock()
        self._closed = False
        with _LIVE_LOCK:
            _LIVE.add(self)

    # ------------------------------------------------------------ addresses

    def index(self, node: str) -> int:
        return self.names.index(node)

    def host(self, node: str) -> str:
        """The address `node` listens on."""
        return HOST

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

    def log_path(self, node: str) -> Path:
        return self.log_dir / f"{node}.log"

    def link_file(self, node: str) -> Path:
        """The link file `node` follows (what it sends each peer waits, or is dropped)."""
        return self.root / f"links-{node}.json"

    # ------------------------------------------------------------ configuration

    def port_slots(self) -> int:
        """How many nodes' ports to reserve from the base."""
        return self.count

    def _free_base(self) -> int:
        return free_base_port(self.port_slots(), self._rng, [self.host(n) for n in self.names])

    def base_config(self) -> dict[str, Any]:
        """The config before `overrides`: `local_cluster` on the chosen base."""
        return local_cluster(self.count, self.base, str(self.data_dir), sync=self.sync)

    def _write_config(self) -> None:
        self.base = self._free_base()
        self.config = merge_settings(self.base_config(), self.overrides)
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    # ------------------------------------------------------------ lifecycle

    def start_all(self, attempts: int = 3) -> None:
        """Pick free ports, write the config, start every node and wait until it is up
        (`_wait_started`). If a node cannot bind its port (another process took it after the
        check), the whole cluster starts again on fresh ports. On failure the cluster is closed.
        """
        try:
            for attempt in range(attempts):
                self._write_config()
                for name in self.names:
                    self._spawn(name)
                try:
                    self._wait_started()
                    return
                except Exception:
                    port_race = any(self._bind_failed(n) for n in self.names)
                    self._kill_all()
                    if not port_race or attempt == attempts - 1:
                        raise
        except BaseException:
            self.close()
            raise

    def _wait_started(self) -> None:
        for name in self.names:
            self.wait_healthy(name)

    def _bind_failed(self, name: str) -> bool:
        return "address already in use" in self.log_text(name).lower()

    def _node_env(self, node: str) -> dict[str, str] | None:
        """The environment `node` runs with (None: the harness's own)."""
        return None

    def _spawn(self, node: str) -> None:
        with self._lock:
            if self._closed:
                raise ClusterError("the cluster is closed")
            assert node in self.names, node
            proc = self.procs.get(node)
            if proc is not None and proc.poll() is None:
                raise ClusterError(f"{node} is already running (pid {proc.pid})")
            args = self.node_args.get(node, ["--config", str(self.config_path)])
            env = self._node_env(node)
            if self.link_control:
                env = dict(os.environ if env is None else env)
                env[LINK_FILE_ENV] = str(self.link_file(node))
            with self.log_path(node).open("ab") as log:
                log.write(f"--- harness: starting {node} at {time.time():.3f}\n".encode())
                log.flush()
                proc = subprocess.Popen(
                    [sys.executable, "-m", "spine", "serve", *args, "--node", node],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.root,
                    env=env, start_new_session=True,
                )
            self.procs[node] = proc
            self.paused.discard(node)

    def wait_healthy(self, node: str, timeout: float | None = None) -> None:
        """Wait until `node` answers /healthz as itself; fails at once if its process exits."""
        proc = self.procs[node]

        def up() -> bool:
            if proc.poll() is not None:
                raise _Exited(node, proc.returncode)
            return self.healthy(node)

        try:
            wait_until(up, timeout or self.start_timeout, 0.05, f"{node} to answer /healthz")
        except _Exited as e:
            raise ClusterError(
                f"{node} exited with status {e.code} while starting:\n{self.log_tail(node)}"
            ) from None
        except WaitTimeout as e:
            raise ClusterError(f"{e}\n{self.log_tail(node)}") from None

    def start(
        self, node: str, *, wait: bool = True, wait_peers: bool | None = None,
        timeout: float | None = None,
    ) -> None:
        """(Re)start `node` on its data directory and ports; with `wait`, until it answers
        /healthz; with `wait_peers` (default: `restart_waits_for_peers`), also until every
        running node sees every running node alive."""
        self._spawn(node)
        if not wait:
            return
        self.wait_healthy(node, timeout)
        if self.restart_waits_for_peers if wait_peers is None else wait_peers:
            self.wait_peers_alive()

    def _signal(self, node: str, sig: signal.Signals) -> subprocess.Popen[bytes]:
        with self._lock:
            proc = self.procs.get(node)
            if proc is None or proc.poll() is not None:
                code = None if proc is None else proc.returncode
                raise ClusterError(f"{node} is not running (exit status {code})")
            os.killpg(proc.pid, sig)
            return proc

    def _reap(self, node: str, proc: subprocess.Popen[bytes], timeout: float) -> int:
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
            raise ClusterError(
                f"{node} did not exit within {timeout:.0f}s:\n{self.log_tail(node)}"
            ) from None
        with self._lock:
            self.paused.discard(node)
        return code

    def kill(self, node: str) -> int | None:
        """SIGKILL `node`'s process group and reap it; its exit status (None: not running)."""
        with self._lock:
            proc = self.procs.get(node)
            if proc is None or proc.poll() is not None:
                return None
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        return self._reap(node, proc, STOP_TIMEOUT)

    def stop(self, node: str) -> int:
        """SIGTERM `node` (a clean shutdown) and wait for it to exit; fails if it does not."""
        if node in self.paused:
            self.resume(node)
        return self._reap(node, self._signal(node, signal.SIGTERM), STOP_TIMEOUT)

    def pause(self, node: str) -> None:
        """SIGSTOP `node`: its sockets stay open but it answers nothing."""
        with self._lock:
            self._signal(node, signal.SIGSTOP)
            self.paused.add(node)

    def resume(self, node: str) -> None:
        """SIGCONT `node` (nothing to do if it is not running)."""
        with self._lock:
            proc = self.procs.get(node)
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGCONT)
            self.paused.discard(node)

    def is_running(self, node: str) -> bool:
        proc = self.procs.get(node)
        return proc is not None and proc.poll() is None

    def running(self) -> list[str]:
        """Nodes whose process is alive and not paused."""
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
                proc.wait(timeout=STOP_TIMEOUT)

    def close(self) -> None:
        """SIGKILL every node left and reap every process, then `_released`. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._kill_all()
            for n in self.names:
                with contextlib.suppress(OSError):
                    self.link_file(n).unlink(missing_ok=True)
            self._released()
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(self)

    def _released(self) -> None:
        """What a harness undoes once every node is gone."""

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> ProcessCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ link delay and loss

    def _write_links(self, node: str) -> None:
        """Replace `node`'s link file atomically (it never reads a half-written one)."""
        path = self.link_file(node)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.links[node], sort_keys=True))
        tmp.replace(path)

    def set_link(
        self, src: str, dst: str, delay_ms: float, loss: float = 0.0, jitter_ms: float = 0.0
    ) -> None:
        """What `src` sends `dst` waits `delay_ms` (+ uniform [0, `jitter_ms`)), or is dropped
        with probability `loss`; one direction only (call it again swapped for both). The
        node follows within ~50 ms (`wait_links` waits for it)."""
        with self._lock:
            link = {"delay_ms": float(delay_ms), "jitter_ms": float(jitter_ms),
                    "loss": float(loss)}
            if any(link.values()):
                self.links[src][dst] = link
            else:
                self.links[src].pop(dst, None)
            self._write_links(src)

    def set_links(self, matrix: Mapping[str, Mapping[str, float | Mapping[str, float]]]) -> None:
        """Replace every link: `matrix[src][dst]` is a delay in ms, or a mapping with
        `delay_ms`, `jitter_ms` and `loss`; links not named lose their delay."""
        with self._lock:
            for src in self.names:
                self.links[src] = {}
                for dst, spec in (matrix.get(src) or {}).items():
                    link = ({"delay_ms": float(spec)} if isinstance(spec, int | float)
                            else {k: float(v) for k, v in spec.items()})
                    if any(link.values()):
                        self.links[src][dst] = link
                self._write_links(src)

    def clear_links(self) -> None:
        """No delay or loss on any link."""
        self.set_links({})

    def regions(
        self, groups: list[list[str]], delay_ms: float, jitter_ms: float = 0.0
    ) -> dict[str, dict[str, float | Mapping[str, float]]]:
        """Delay every link between two of `groups` (both ways) by `delay_ms` (+ jitter), and
        none within a group; replaces every other link. An RPC between regions then takes
        `delay_ms` more (the request waits, the reply does not). Returns the matrix."""
        where = {n: i for i, g in enumerate(groups) for n in g}
        unknown = sorted(set(where) - set(self.names))
        if unknown:
            raise ValueError(f"regions name unknown nodes {unknown}")
        matrix: dict[str, dict[str, float | Mapping[str, float]]] = {
            a: {b: {"delay_ms": float(delay_ms), "jitter_ms": float(jitter_ms)}
                for b in where if where[b] != where[a]}
            for a in where
        }
        self.set_links(matrix)
        return matrix

    def links_applied(self, node: str) -> bool:
        """Whether `node` applies what its link file says (its `spine_test_link_*` gauges)."""
        want = self.links[node]
        got: dict[str, dict[str, float]] = {}
        for name, lbl, v in self.metrics(node):
            if name in ("spine_test_link_delay_ms", "spine_test_link_loss"):
                got.setdefault(lbl.get("peer", ""), {})[name] = v
        return got == {
            peer: {"spine_test_link_delay_ms": link.get("delay_ms", 0.0),
                   "spine_test_link_loss": link.get("loss", 0.0)}
            for peer, link in want.items()
        }

    def wait_links(self, timeout: float = 10.0, nodes: list[str] | None = None) -> None:
        """Wait until every one of `nodes` (default: the running ones) applies its link file."""
        todo = list(nodes) if nodes is not None else self.running()
        wait_until(lambda: all(self.links_applied(n) for n in todo), timeout,
                   self.poll_interval, f"{todo} to apply their link files")

    # ------------------------------------------------------------ observation

    def request(
        self,
        node: str,
        method: str,
        path: str,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        *,
        use_key: bool = True,
    ) -> Reply:
        """One raw HTTP request to `node` (from 127.0.0.1); the harness's `api_key` is sent
        unless `headers` hold an Authorization of their own or `use_key` is false."""
        hdrs = dict(headers or {})
        if use_key and self.api_key and not any(k.lower() == "authorization" for k in hdrs):
            hdrs["Authorization"] = f"Bearer {self.api_key}"
        return http_request(self.port(node), method, path, body, hdrs, timeout,
                            host=self.host(node))

    def healthy(self, node: str, timeout: float = 1.0) -> bool:
        """Whether `node` answers /healthz as itself (connection errors propagate)."""
        r = self.request(node, "GET", "/healthz", timeout=timeout)
        body = r.decoded()
        return r.status == 200 and isinstance(body, dict) and body.get("node") == node

    def wait_until(
        self,
        predicate: Callable[[], T],
        timeout: float = 10.0,
        interval: float = 0.05,
        message: str | Callable[[], str] = "condition",
    ) -> T:
        """Poll with a deadline; raise WaitTimeout naming `message` on timeout."""
        return wait_until(predicate, timeout, interval, message)

    def metrics(self, node: str) -> list[tuple[str, dict[str, str], float]]:
        r = self.request(node, "GET", "/metrics")
        assert r.status == 200, r
        return parse_metrics(r.body.decode())

    def metric(self, node: str, metric: str, **labels: str) -> float:
        """The sum of every series of `metric` on `node` whose labels include `labels`."""
        return sum(
            v for n, lbl, v in self.metrics(node)
            if n == metric and all(lbl.get(k) == want for k, want in labels.items())
        )

    def cluster_view(self, node: str, timeout: float = 2.0) -> dict[str, Any]:
        """`GET /v1/cluster` on `node`."""
        r = self.request(node, "GET", "/v1/cluster", timeout=timeout)
        view = r.decoded()
        if r.status != 200 or not isinstance(view, dict):
            raise ClusterError(f"/v1/cluster on {node}: {r.status} {view!r}")
        return view

    def alive_seen_by(self, node: str) -> set[str]:
        """The members `node` currently considers alive."""
        return {m["id"] for m in self.cluster_view(node)["members"] if m.get("alive")}

    def wait_peers_alive(
        self, timeout: float = 15.0, nodes: list[str] | None = None
    ) -> None:
        """Wait until each of `nodes` (default: every running node) sees all of them alive."""
        up = list(nodes) if nodes is not None else self.running()
        wait_until(lambda: all(set(up) <= self.alive_seen_by(n) for n in up), timeout,
                   self.poll_interval,
                   f"{up} to see each other alive")

    def log_text(self, node: str) -> str:
        p = self.log_path(node)
        return p.read_text(errors="replace") if p.exists() else ""

    def log_tail(self, node: str, lines: int = 40) -> str:
        tail = self.log_text(node).splitlines()[-lines:]
        return f"--- {node} log ({self.log_path(node)}), last {len(tail)} lines:\n" + "\n".join(
            tail
        )

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(self.log_tail(n, lines) for n in self.names)
