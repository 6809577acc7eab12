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

import contextlib
import fcntl
import os
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.harness.cluster import ClusterError, ProcessCluster
from tests.harness.ports import GOSSIP_OFFSET

FIRST_HOST = 11
START_TIMEOUT = 45.0
CLOCK_ENV = "SPINE_TEST_CLOCK_FILE"
LOCK_DIR = Path(tempfile.gettempdir()) / "spine-jepsen-locks"
TABLE_PREFIX = "spine_jepsen"


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


# --------------------------------------------------------------------------- the cluster


class JepsenCluster(ProcessCluster):
    """``nodes`` Spine processes sharing one ``cluster.yaml`` under ``root``, each on its own
    loopback address with its own clock file (the shared harness, ``ProcessCluster``, does the
    rest).

    ``overrides`` are deep-merged into the config (e.g. ``{"handoff": {"enabled": False}}``).
    ``sync``: ``storage.sync`` (fsync). Off by default: SIGKILL loses nothing the kernel's page
    cache holds, so kill faults test the same thing, at a fraction of the disk cost.
    ``regions``: that many regions (node i in region ``r{i % regions}``, each node its own zone),
    every link between two regions delayed ``region_delay_ms`` each way by the nodes' userspace
    link layer (`LinkTable`), gossip timed for such links; 0: one region, no delay.
    """

    start_timeout = START_TIMEOUT
    restart_waits_for_peers = False  # a restart may come while the network is cut
    poll_interval = 0.2  # each poll of the peers' views is a request to every node

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
        regions: int = 0,
        region_delay_ms: float = 60.0,
    ) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        if regions < 0 or regions > nodes:
            raise ValueError("regions must be between 0 and the number of nodes")
        self.region_count = regions
        self.region_delay_ms = region_delay_ms
        self._block = AddressBlock(block)
        super().__init__(root, nodes, overrides, sync=sync, rng=rng)
        self.hosts = {n: self._block.host(i) for i, n in enumerate(self.names)}
        self.table = self._block.table
        # A harness killed with SIGKILL leaves its table behind; we hold the block now, so any
        # table of its name is stale and would partition this cluster.
        from jepsen_style.nemesis import Nftables

        with contextlib.suppress(Exception):
            Nftables(self.table).delete_table()
        self.clock_offsets: dict[str, int] = {n: 0 for n in self.names}
        for n in self.names:
            self.set_clock(n, 0)
        self.region_groups: list[list[str]] = (
            [[n for i, n in enumerate(self.names) if i % regions == r] for r in range(regions)]
            if regions else [])
        if self.region_groups:  # the links are slow from the first packet on
            self.regions(self.region_groups, region_delay_ms)
        if start:
            self.start_all()

    # ------------------------------------------------------------------ addresses

    def host(self, node: str) -> str:
        return self.hosts[node]

    def clock_file(self, node: str) -> Path:
        return self.root / f"clock-{node}"

    # ------------------------------------------------------------------ lifecycle

    def base_config(self) -> dict[str, Any]:
        cfg = super().base_config()
        hosts = [self.hosts[n] for n in self.names]
        for i, node in enumerate(cfg["nodes"]):
            node["host"] = hosts[i]
        cfg["seeds"] = [f"{h}:{self.base + GOSSIP_OFFSET + i}" for i, h in enumerate(hosts)]
        # Workloads choose their level per request (e.g. eventual for an untagged register).
        cfg["consistency"]["allow_weaker"] = True
        if self.region_count:
            for i, node in enumerate(cfg["nodes"]):
                node["region"] = f"r{i % self.region_count}"
                node["zone"] = f"r{i % self.region_count}-z{i // self.region_count}"
            # memberlist's WAN timing: a direct probe must outlast a round trip between regions
            rtt = int(2 * self.region_delay_ms)
            cfg.setdefault("gossip", {}).update(
                protocol_period_ms=max(1000, 4 * rtt), ping_timeout_ms=max(300, 2 * rtt))
        return cfg

    def _wait_started(self) -> None:
        """Every node answers /healthz, and all see each other alive."""
        super()._wait_started()
        self.wait_peers_alive(timeout=30.0)

    def _node_env(self, node: str) -> dict[str, str]:
        env = dict(os.environ)
        env[CLOCK_ENV] = str(self.clock_file(node))
        return env

    def set_clock(self, node: str, offset_ms: int) -> None:
        """Move ``node``'s wall clock to real time + ``offset_ms`` (it follows within ~50 ms).
        The file is replaced atomically, so the node never reads a half-written offset."""
        path = self.clock_file(node)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(f"{int(offset_ms)}\n")
        tmp.replace(path)
        self.clock_offsets[node] = int(offset_ms)

    def _released(self) -> None:
        """Remove the nftables table, reset the clock files and release the address block."""
        try:
            from jepsen_style.nemesis import Nftables

            Nftables(self.table).delete_table()
        finally:
            for n in self.names:
                with contextlib.suppress(OSError):
                    self.set_clock(n, 0)
            self._block.release()

    def __enter__(self) -> JepsenCluster:
        return self

    # ------------------------------------------------------------------ observation

    def http(self, node: str, method: str, path: str, body: Any = None,
             headers: Mapping[str, str] | None = None,
             timeout: float = 5.0) -> tuple[int, Any, Mapping[str, str]]:
        """One HTTP request to ``node`` (from 127.0.0.1): status, decoded JSON (or raw text),
        headers."""
        r = self.request(node, method, path, body, headers, timeout)
        return r.status, r.decoded(), dict(r.headers.items())

