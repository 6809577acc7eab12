"""The servers bench/peers.py runs side by side on 127.0.0.1: a 3-node Spine (`spine up`), a
3-member etcd, one redis-server and one chroma server; what they need installed; their ports,
RSS and disk. Every process is started here and stopped here, by its pid.

Ports all come from one range (41000-41999 by default) and are checked free (TCP, and UDP for
Spine's gossip) without SO_REUSEADDR, because that range overlaps the kernel's ephemeral ports:
a port left in TIME_WAIT by some other client would make a server's bind fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from cas_bench import Etcd, find_etcd  # noqa: E402
from run_bench import children_of, stop_cluster, wait_ready  # noqa: E402

from tests.harness.ports import bindable  # noqa: E402

CHROMA_VENV = Path("/tmp/spine-peers-venv")
NODES = 3


# ---------------------------------------------------------------------------------- installs

def _apt(packages: list[str]) -> None:
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else [])
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"# installing {' '.join(packages)} with apt-get ...", flush=True)
    subprocess.run([*sudo, "apt-get", "update", "-qq"], env=env, check=False,
                   stdout=subprocess.DEVNULL)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-q", "--no-install-recommends",
                    *packages], env=env, check=False, stdout=subprocess.DEVNULL)


def ensure_installed(install: bool) -> dict[str, str | None]:
    """Paths of etcd, redis-server, redis-benchmark, wrk and chroma; installs what is missing
    when `install` (apt-get for the Debian packages, pip into CHROMA_VENV for chromadb,
    matplotlib into the project's venv). A missing one is None."""
    out: dict[str, str | None] = {"etcd": find_etcd(install)}
    if install and not (shutil.which("redis-server") and shutil.which("redis-benchmark")):
        _apt(["redis-server", "redis-tools"])
    if install and not shutil.which("wrk"):
        _apt(["wrk"])
    for name in ("redis-server", "redis-benchmark", "wrk"):
        out[name] = shutil.which(name)
    chroma = CHROMA_VENV / "bin" / "chroma"
    if install and not chroma.exists():
        print(f"# installing chromadb into {CHROMA_VENV} with pip ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(CHROMA_VENV)],
                       check=False)
        if not (CHROMA_VENV / "bin" / "pip").exists():
            subprocess.run([str(CHROMA_VENV / "bin" / "python"), "-m", "ensurepip", "-q"],
                           check=False)
        subprocess.run([str(CHROMA_VENV / "bin" / "pip"), "install", "-q", "chromadb"],
                       check=False)
    out["chroma"] = str(chroma) if chroma.exists() else None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if install:
            print("# installing matplotlib into the project venv ...", flush=True)
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"],
                           check=False)
    return out


def version_of(cmd: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        return (r.stdout or r.stderr).strip().split("\n", 1)[0]
    return "?"


# ---------------------------------------------------------------------------------- ports

class Ports:
    """Hands out ports from [lo, hi] that are free now (TCP, plus UDP where asked)."""

    def __init__(self, lo: int, hi: int) -> None:
        self.next = lo
        self.hi = hi

    def take(self, count: int, udp: bool = False) -> list[int]:
        out: list[int] = []
        while len(out) < count:
            if self.next > self.hi:
                raise RuntimeError(f"not enough free ports up to {self.hi}")
            p = self.next
            self.next += 1
            if bindable(p, socket.SOCK_STREAM) and \
                    (not udp or bindable(p, socket.SOCK_DGRAM)):
                out.append(p)
        return out


# ---------------------------------------------------------------------------------- /proc

def rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError):
        for ln in Path(f"/proc/{pid}/status").read_text().splitlines():
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1]) / 1024
    return None


def du_mb(path: Path) -> float:
    """Disk blocks used under `path` (what `du -s` counts: sparse files by their blocks)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
    return total / 2**20


def _wait_port_free(ports: list[int], deadline_s: float = 10) -> list[int]:
    deadline = time.monotonic() + deadline_s
    busy = [p for p in ports if not bindable(p, socket.SOCK_STREAM, reuse=True)]
    while busy and time.monotonic() < deadline:
        time.sleep(0.1)
        busy = [p for p in ports if not bindable(p, socket.SOCK_STREAM, reuse=True)]
    return busy


def _stop_popen(proc: subprocess.Popen[bytes], name: str, grace_s: float = 15) -> list[str]:
    """SIGTERM, then SIGKILL after `grace_s`; always reaped."""
    if proc.poll() is not None:
        return []
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
        return []
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=10)
        return [f"{name} pid {proc.pid} ignored SIGTERM for {grace_s:.0f} s; killed"]


# ---------------------------------------------------------------------------------- Spine

class Spine:
    """`spine up --nodes 3` (fsync on unless told otherwise) on ports of this run's range,
    through --config: HTTP, RPC and gossip ports given node by node."""

    def __init__(self, root: Path, ports: Ports, embedder: str, sync: bool = True) -> None:
        self.data = root / "spine"
        self.data.mkdir(parents=True)
        http, rpc, gossip = ports.take(NODES), ports.take(NODES), ports.take(NODES, udp=True)
        self.ports = http
        self.urls = [f"http://127.0.0.1:{p}" for p in http]
        self.all_ports = http + rpc + gossip
        extra = {
            "nodes": [{"id": f"n{i + 1}", "host": "127.0.0.1", "port": http[i],
                       "rpc_port": rpc[i], "gossip_port": gossip[i]} for i in range(NODES)],
            "seeds": [f"127.0.0.1:{gossip[0]}"],
            "embedder": {"name": embedder, "dim": 384},
        }
        self.config = root / "spine-extra.yaml"
        self.config.write_text(yaml.safe_dump(extra, sort_keys=False))
        spine = REPO / ".venv" / "bin" / "spine"
        cmd = [str(spine)] if spine.exists() else [sys.executable, "-m", "spine"]
        self.cmd = cmd + ["up", "--nodes", str(NODES), "--base-port", str(http[0]),
                          "--data", str(self.data), "--config", str(self.config)] + \
            ([] if sync else ["--no-sync"])
        self.embedder = embedder
        self.sync = sync
        self.up: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []

    def start(self) -> None:
        log = (self.data / "up.log").open("ab")
        self.up = subprocess.Popen(self.cmd, cwd=REPO, start_new_session=True,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        wait_ready(self.urls, self.up)
        deadline = time.monotonic() + 10
        while len(self.pids) != NODES and time.monotonic() < deadline:
            self.pids = children_of(self.up.pid)
            time.sleep(0.05)
        if len(self.pids) != NODES:
            raise RuntimeError(f"expected {NODES} node processes under {self.up.pid}, "
                               f"got {self.pids}")

    def stop(self) -> list[str]:
        if self.up is None:
            return []
        left = stop_cluster(self.up, self.pids)
        problems = [f"spine node processes {left} survived SIGTERM; killed"] if left else []
        busy = _wait_port_free(self.ports)
        return problems + ([f"spine ports still bound: {busy}"] if busy else [])


# ---------------------------------------------------------------------------------- etcd

class PeerEtcd(Etcd):
    """cas_bench's 3-member etcd, on ports of this run's range."""

    def __init__(self, binary: str, root: Path, ports: Ports) -> None:
        super().__init__(binary, root)
        self.client_ports = ports.take(NODES)
        self.peer_ports = ports.take(NODES)

    def client_port(self, i: int) -> int:
        return self.client_ports[i]

    def peer_port(self, i: int) -> int:
        return self.peer_ports[i]

    @property
    def data(self) -> Path:
        return self.root


# ---------------------------------------------------------------------------------- Redis

class Redis:
    """One redis-server, AOF on (appendfsync `fsync`: everysec is its common setting)."""

    def __init__(self, binary: str, root: Path, ports: Ports, fsync: str) -> None:
        self.binary = binary
        self.data = root / "redis"
        self.data.mkdir(parents=True)
        self.port = ports.take(1)[0]
        self.fsync = fsync
        self.proc: subprocess.Popen[bytes] | None = None
        self.version = version_of([binary, "--version"])

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc and self.proc.poll() is None else []

    def start(self, deadline_s: float = 20) -> None:
        cmd = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port),
               "--dir", str(self.data), "--appendonly", "yes", "--appendfsync", self.fsync,
               "--save", "", "--daemonize", "no", "--protected-mode", "yes",
               "--logfile", str(self.data / "redis.log")]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + deadline_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            with contextlib.suppress(OSError), \
                    socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith(b"+PONG"):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server not answering PING after {deadline_s:.0f}s")
            time.sleep(0.1)

    def stop(self) -> list[str]:
        if self.proc is None:
            return []
        problems = _stop_popen(self.proc, "redis-server")
        busy = _wait_port_free([self.port])
        return problems + ([f"redis port still bound: {busy}"] if busy else [])


# ---------------------------------------------------------------------------------- chroma

class Chroma:
    """`chroma run` from CHROMA_VENV; collections are made with cosine space and no embedding
    function (vectors are always passed)."""

    def __init__(self, binary: str, root: Path, ports: Ports) -> None:
        self.binary = binary
        self.data = root / "chroma"
        self.data.mkdir(parents=True)
        self.port = ports.take(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.api = f"{self.url}/api/v2/tenants/default_tenant/databases/default_database"
        self.proc: subprocess.Popen[bytes] | None = None
        self.version = version_of([str(CHROMA_VENV / "bin" / "python"), "-c",
                                   "import chromadb; print('chromadb', chromadb.__version__)"])

    @property
    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc and self.proc.poll() is None else []

    def start(self, deadline_s: float = 60) -> None:
        log = (self.data.parent / "chroma.log").open("ab")
        self.proc = subprocess.Popen(
            [self.binary, "run", "--host", "127.0.0.1", "--port", str(self.port),
             "--path", str(self.data)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            cwd=self.data.parent)
        log.close()
        deadline = time.monotonic() + deadline_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chroma exited with {self.proc.returncode}; see "
                                   f"{self.data.parent / 'chroma.log'}")
            with contextlib.suppress(OSError), \
                    urllib.request.urlopen(self.url + "/api/v2/heartbeat", timeout=1) as r:
                if r.status == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"chroma not answering after {deadline_s:.0f}s")
            time.sleep(0.2)

    def stop(self) -> list[str]:
        if self.proc is None:
            return []
        problems = _stop_popen(self.proc, "chroma")
        busy = _wait_port_free([self.port])
        return problems + ([f"chroma port still bound: {busy}"] if busy else [])


def temp_root() -> Path:
    return Path(tempfile.mkdtemp(prefix="spine-peers-"))


def server_rss(groups: dict[str, list[int]]) -> dict[str, list[float | None]]:
    """RSS (MiB) of each server process, by system."""
    return {name: [rss_mb(p) for p in pids] for name, pids in groups.items()}
