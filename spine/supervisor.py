"""`spine up`: a local cluster of node processes on loopback, kept running like a small init.

Each node runs as `python -m spine serve` in its own session. A node that exits (a crash, or a
`kill -9` to try the fault promises) never takes the others down: by `--on-exit` it is
restarted (with backoff when it keeps dying), reported and left down, or, as before, the whole
cluster stops. Every port is checked before anything starts, so a clash is one line naming the
port, not a traceback from inside a node.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

ON_EXIT = ("restart", "leave", "stop")
RESTART_MIN_S = 1.0
RESTART_MAX_S = 30.0
STABLE_S = 10.0  # a node that ran this long before exiting starts again from the shortest delay
STOP_GRACE_S = 15.0


def restart_delay(previous: float, uptime: float) -> float:
    """Seconds to wait before restarting a node that ran `uptime` seconds after the last delay
    `previous`: the shortest delay after a stable run, else double the last, capped."""
    if uptime >= STABLE_S or previous <= 0:
        return RESTART_MIN_S
    return min(RESTART_MAX_S, previous * 2)


@dataclass(frozen=True, slots=True)
class Listener:
    """One socket a node will bind."""

    node: str
    what: str
    host: str
    port: int
    kind: int = socket.SOCK_STREAM


def listeners(cfg: dict[str, Any]) -> list[Listener]:
    """Every socket the nodes of a generated local config bind (HTTP, RPC, gossip UDP and TCP)."""
    out: list[Listener] = []
    for n in cfg["nodes"]:
        host, port = n.get("host", "127.0.0.1"), int(n["port"])
        rpc = int(n.get("rpc_port") or port + 1000)
        gossip = int(n.get("gossip_port") or port + 2000)
        out += [Listener(n["id"], "HTTP", host, port), Listener(n["id"], "RPC", host, rpc),
                Listener(n["id"], "gossip", host, gossip),
                Listener(n["id"], "gossip", host, gossip, socket.SOCK_DGRAM)]
    return out


def first_clash(wanted: Sequence[Listener]) -> Listener | None:
    """The first listener whose address is taken, or None when all can be bound."""
    for lst in wanted:
        with socket.socket(socket.AF_INET, lst.kind) as s:
            if lst.kind == socket.SOCK_STREAM:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((lst.host, lst.port))
            except OSError:
                return lst
    return None


@dataclass
class _Child:
    node: str
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    delay: float = 0.0
    restart_at: float | None = None


@dataclass
class Supervisor:
    """Starts one `spine serve` per node and keeps them as `on_exit` says until told to stop."""

    cfg_path: Path
    nodes: list[str]
    on_exit: str = "restart"
    out: TextIO = sys.stderr
    monotonic: Callable[[], float] = time.monotonic
    children: dict[str, _Child] = field(default_factory=dict)

    def say(self, line: str) -> None:
        """One status line for the person at the terminal."""
        print(f"spine: {line}", file=self.out, flush=True)

    def spawn(self, node: str) -> None:
        """Start (or restart) `node`."""
        child = self.children.setdefault(node, _Child(node))
        child.proc = subprocess.Popen(
            [sys.executable, "-m", "spine", "serve", "--config", str(self.cfg_path),
             "--node", node],
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        child.started = self.monotonic()
        child.restart_at = None
        self.say(f"{node} started (pid {child.proc.pid})")

    def step(self) -> bool:
        """Look at every node once: report exits and act on them. False when the cluster is to
        stop (`on_exit: stop` after an exit, or every node down and left down)."""
        now = self.monotonic()
        for child in self.children.values():
            if child.proc is not None and child.proc.poll() is not None:
                code = child.proc.returncode
                child.proc = None
                how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"status {code}"
                if self.on_exit == "stop":
                    self.say(f"{child.node} exited ({how}); stopping the others (--on-exit stop)")
                    return False
                if self.on_exit == "leave":
                    self.say(f"{child.node} exited ({how}); left down, the others keep serving")
                    continue
                child.delay = restart_delay(child.delay, now - child.started)
                child.restart_at = now + child.delay
                self.say(f"{child.node} exited ({how}); restarting in {child.delay:.0f}s")
            elif child.proc is None and child.restart_at is not None and now >= child.restart_at:
                self.spawn(child.node)
        return any(c.proc is not None or c.restart_at is not None
                   for c in self.children.values())

    def stop_all(self) -> None:
        """SIGTERM every running node, then SIGKILL what has not exited in time; reap all."""
        running = [c.proc for c in self.children.values() if c.proc is not None]
        for p in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = self.monotonic() + STOP_GRACE_S
        for p in running:
            try:
                p.wait(timeout=max(0.1, deadline - self.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for c in self.children.values():
            c.proc = None
            c.restart_at = None

    def run(self, poll_s: float = 0.2) -> int:
        """Start every node and supervise until SIGINT/SIGTERM (0) or the cluster stops (1)."""
        stopping = False

        def stop(_sig: int, _frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        for node in self.nodes:
            self.spawn(node)
        alive = True
        while not stopping and alive:
            time.sleep(poll_s)
            alive = self.step()
        if not alive and self.on_exit == "leave":
            self.say("every node is down")
        self.stop_all()
        return 0 if stopping else 1


def describe(cfg: dict[str, Any], data: Path, cfg_path: Path) -> list[str]:
    """The lines `spine up` prints before it starts: where each node listens."""
    lines = [f"{len(cfg['nodes'])} nodes on loopback; data in {data}; config {cfg_path}"]
    by_node: dict[str, list[Listener]] = {}
    for lst in listeners(cfg):
        by_node.setdefault(lst.node, []).append(lst)
    for node, (http, rpc, gossip, _udp) in by_node.items():
        lines.append(f"  {node}  http://{http.host}:{http.port}  rpc {rpc.host}:{rpc.port} (tcp)"
                     f"  gossip {gossip.host}:{gossip.port} (udp+tcp)")
    return lines
