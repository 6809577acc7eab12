"""The deployment's balancer for real: Debian's haproxy with the repository's docker/haproxy.cfg,
rendered for loopback, in front of a native 3-node cluster.

Eight clients, each carrying its own session token, go only through haproxy while one node is
SIGKILLed and restarted and then another is paused and resumed. Read-your-writes must hold for
every read (0 violations), and every acknowledged write must be readable at `strong` afterwards
(0 lost). Client-visible errors are counted and printed, not hidden.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness.http_client import http_request
from tests.harness.ports import bindable, free_base_port
from tests.harness.wait import wait_until
from tests.integration.cluster import LocalCluster
from tests.integration.debian import ensure

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
HAPROXY_CFG = REPO / "docker" / "haproxy.cfg"
CLIENTS = 8
KEYS_PER_CLIENT = 4
NS = "lb"
PAUSE_S = 3.0  # long enough for haproxy's checks (inter 1s, fall 2) to mark the node down


def render(cfg: str, lb_port: int, node_ports: list[int]) -> str:
    """docker/haproxy.cfg with its listener and servers on 127.0.0.1 and no Docker DNS."""
    out = re.sub(r"^resolvers docker\n(?:[ \t]+\S.*\n)*", "", cfg, flags=re.M)
    out = out.replace(" resolvers docker init-addr last,libc,none", "")
    out, binds = re.subn(r"^(\s*)bind :8788$", rf"\1bind 127.0.0.1:{lb_port}", out, flags=re.M)
    servers = 0
    for i, port in enumerate(node_ports, 1):
        out, n = re.subn(rf"^(\s*)server spine{i} spine{i}:8788 check$",
                         rf"\1server spine{i} 127.0.0.1:{port} check", out, flags=re.M)
        servers += n
    # If the shipped file changes shape, this test must change with it, not run on a stale copy.
    backends = len(re.findall(r"^backend ", cfg, flags=re.M))
    assert binds == 1 and servers == backends * len(node_ports), "docker/haproxy.cfg changed shape"
    assert "resolvers" not in out and "spine1:" not in out
    return out


class Haproxy:
    """One haproxy process in the foreground (-db), in its own session, stopped by its PID."""

    def __init__(self, binary: str, cfg_path: Path, log_path: Path, port: int) -> None:
        self.port = port
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen([binary, "-db", "-f", str(cfg_path)],
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        wait_until(lambda: bindable(self.port, 1, reuse=True), 10.0, 0.05,
                   f"haproxy's port {self.port} to be released")


@dataclass
class ClientRun:
    """What one client saw: its last acknowledged version of each key, the writes whose outcome
    it does not know, and every violation and error."""

    index: int
    acked: dict[str, int] = field(default_factory=dict)
    unknown: set[tuple[str, int]] = field(default_factory=set)
    late_unknown: set[tuple[str, int]] = field(default_factory=set)
    violations: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    requests: int = 0
    token: str | None = None

    def judge(self, key: str, seen: int) -> str | None:
        """What is wrong with reading version `seen` of `key` now, if anything.

        The acknowledged write, or one of this client's writes with an unknown outcome (it may
        land after a later write, with a newer version: monotonic writes are not promised yet),
        may be read; an older acknowledged write or a value never written may not."""
        acked = self.acked[key]
        if seen == acked or (key, seen) in self.unknown:
            if seen < acked:
                self.late_unknown.add((key, seen))
            return None
        if seen < acked:
            return f"{key}: read {seen} after writing {acked}"
        return f"{key}: read {seen}, never written"

    def headers(self) -> dict[str, str]:
        return {"Spine-Session": self.token} if self.token else {}

    def keep_token(self, headers: object) -> None:
        token = getattr(headers, "get", lambda _k: None)("Spine-Session")
        if token:
            self.token = token


def _error_kind(status: int, body: bytes) -> str:
    m = re.search(rb'"code"\s*:\s*"([a-z_]+)"', body)
    return f"{status} {m.group(1).decode() if m else ''}".strip()


def client_loop(run: ClientRun, port: int, stop: threading.Event) -> None:
    """Write a key, then read it back with the token, until told to stop."""
    keys = [f"c{run.index}-k{j}" for j in range(KEYS_PER_CLIENT)]
    n = 0
    while not stop.is_set():
        n += 1
        key = keys[n % len(keys)]
        path = f"/v1/ns/{NS}/memories/{key}"
        run.requests += 1
        try:
            r = http_request(port, "PUT", path, {"content": f"{run.index}:{n}"}, run.headers())
        except OSError as e:
            run.unknown.add((key, n))
            run.errors[f"write {type(e).__name__}"] += 1
            continue
        if r.status in (200, 201):
            run.acked[key] = n
            run.keep_token(r.headers)
        else:
            run.unknown.add((key, n))
            run.errors[f"write {_error_kind(r.status, r.body)}"] += 1
            continue
        run.requests += 1
        try:
            r = http_request(port, "GET", path, headers=run.headers())
        except OSError as e:
            run.errors[f"read {type(e).__name__}"] += 1
            continue
        if r.status == 200:
            run.keep_token(r.headers)
            problem = run.judge(key, int(r.json()["content"].split(":")[1]))
            if problem:
                run.violations.append(problem)
        elif r.status == 404:
            run.violations.append(f"{key}: not found after writing {run.acked[key]}")
        else:
            run.errors[f"read {_error_kind(r.status, r.body)}"] += 1


@pytest.fixture
def balanced(tmp_path: Path) -> Iterator[tuple[LocalCluster, Haproxy]]:
    binary = ensure("haproxy", "haproxy")
    cluster = LocalCluster(tmp_path / "cluster", 3)
    try:
        lb_port = free_base_port(1)
        cfg_path = tmp_path / "haproxy.cfg"
        cfg_path.write_text(render(HAPROXY_CFG.read_text(), lb_port,
                                   [cluster.port(n) for n in cluster.names]))
        check = subprocess.run([binary, "-c", "-f", str(cfg_path)], capture_output=True,
                               text=True, check=False)
        assert check.returncode == 0, check.stdout + check.stderr
        lb = Haproxy(binary, cfg_path, tmp_path / "haproxy.log", lb_port)
    except BaseException:
        cluster.close()
        raise
    try:
        wait_until(lambda: http_request(lb_port, "GET", "/readyz", timeout=2).status == 200,
                   20.0, 0.1, "haproxy to serve /readyz")
        yield cluster, lb
    finally:
        try:
            lb.close()
        finally:
            cluster.close()


def test_clients_through_haproxy_keep_their_writes_across_a_kill_and_a_pause(
    balanced: tuple[LocalCluster, Haproxy], capsys: pytest.CaptureFixture[str]
) -> None:
    cluster, lb = balanced
    stop = threading.Event()
    runs = [ClientRun(i) for i in range(CLIENTS)]
    threads = [threading.Thread(target=client_loop, args=(r, lb.port, stop), daemon=True)
               for r in runs]
    started = time.monotonic()
    for t in threads:
        t.start()

    def writes_acked() -> int:
        return sum(len(r.acked) for r in runs)

    try:
        wait_until(lambda: writes_acked() >= CLIENTS, 20.0, 0.05, "every client to write")
        cluster.kill("n1")
        acked_at_kill = sum(r.requests for r in runs)
        wait_until(lambda: sum(r.requests for r in runs) >= acked_at_kill + 200, 30.0, 0.05,
                   "clients to go on through haproxy with n1 down")
        cluster.start("n1")
        cluster.pause("n2")
        time.sleep(PAUSE_S)  # the fault's length, not a wait for anything
        cluster.resume("n2")
        resumed_at = sum(r.requests for r in runs)
        wait_until(lambda: sum(r.requests for r in runs) >= resumed_at + 100, 30.0, 0.05,
                   "clients to go on after n2 resumed")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    elapsed = time.monotonic() - started
    assert not any(t.is_alive() for t in threads), "a client did not stop"

    # Every acknowledged write, read at strong through a node directly.
    lost: list[str] = []
    for run in runs:
        for key, n in run.acked.items():
            r = http_request(cluster.port("n3"), "GET", f"/v1/ns/{NS}/memories/{key}",
                             headers={"Spine-Consistency": "strong"})
            if r.status != 200:
                lost.append(f"{key}: acked {n}, strong read answered {r.status}")
                continue
            problem = run.judge(key, int(r.json()["content"].split(":")[1]))
            if problem:
                lost.append(problem)

    requests = sum(r.requests for r in runs)
    errors = sum((r.errors for r in runs), Counter())
    violations = [v for r in runs for v in r.violations]
    with capsys.disabled():
        print(f"\nhaproxy: {requests} requests from {CLIENTS} token-carrying clients in "
              f"{elapsed:.1f}s (n1 SIGKILLed and restarted, n2 paused and resumed); "
              f"{sum(errors.values())} client-visible errors {dict(errors)}; "
              f"{len(violations)} read-your-writes violations; {len(lost)} acknowledged writes "
              f"lost of {sum(len(r.acked) for r in runs)} keys checked at strong; "
              f"{sum(len(r.late_unknown) for r in runs)} writes with an unknown outcome applied "
              "after a later acknowledged one")
    assert violations == [], violations[:10]
    assert lost == [], lost[:10]
    assert sum(len(r.acked) for r in runs) == CLIENTS * KEYS_PER_CLIENT


def test_a_change_feed_long_poll_through_haproxy_outwaits_the_default_server_timeout(
    balanced: tuple[LocalCluster, Haproxy],
) -> None:
    # docker/haproxy.cfg sends /changes to a backend whose server timeout is 40 s (15 s for
    # the rest): a poll waiting 16 s for a change must come back 200, not haproxy's 504.
    _, lb = balanced
    ns = "through-lb"
    start = http_request(lb.port, "GET", f"/v1/ns/{ns}/changes?from=now")
    assert start.status == 200, start.body
    cursor = start.json()["cursor"]
    began = time.monotonic()
    r = http_request(lb.port, "GET", f"/v1/ns/{ns}/changes?cursor={cursor}&wait_s=16",
                     timeout=40)
    assert r.status == 200, r.body
    assert r.json()["items"] == [] and time.monotonic() - began >= 15.5
