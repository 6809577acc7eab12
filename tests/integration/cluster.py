"""A local Spine cluster of real processes on 127.0.0.1, for the integration tests.

`LocalCluster(tmp_path, nodes=3, **overrides)` is the shared process-cluster harness
(`tests.harness.cluster.ProcessCluster`: config, ports, spawning, signals, waits) with what
these tests add: every node on 127.0.0.1, fast liveness probes and hint replay, an API key sent
on the harness's own requests, ring joins on spare ports (`add_node`), one replica's view of a
key (`local_record`), and a check on `close()` that every port it used can be bound again.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from spine.client import Client
from spine.core.config_env import merge_settings
from tests.harness.cluster import ProcessCluster
from tests.harness.http_client import Reply
from tests.harness.ports import (
    GOSSIP_OFFSET,
    HOST,
    RPC_OFFSET,
    bindable,
    free_base_port,
    listeners,
)
from tests.harness.wait import wait_until


class LocalCluster(ProcessCluster):
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
        super().__init__(tmp_path, nodes, merge_settings(
            {"liveness": {"probe_interval_ms": 200}, "handoff": {"replay_interval_ms": 200}},
            overrides,
        ), sync=sync)
        self.spare = spare
        self.api_key = api_key  # sent on the harness's own health and metrics requests
        if start:
            self.start_all()

    def port_slots(self) -> int:
        return self.count + self.spare

    def _free_base(self) -> int:
        # Looked up in this module, so that a test module can narrow the choice further by
        # patching `tests.integration.cluster.free_base_port` (test_search does).
        return free_base_port(self.port_slots(), self._rng)

    def _released(self) -> None:
        """Every port the cluster used can be bound again."""
        if not self.base:
            return
        busy: list[int] = []

        def ports_free() -> bool:
            busy[:] = [p for _, p, k in listeners(self.base, self.port_slots())
                       if not bindable(p, k, reuse=True)]
            return not busy

        wait_until(ports_free, 10.0, 0.05, lambda: f"ports {busy} to be released")

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
            self.wait_healthy(name)
        return name

    def __enter__(self) -> LocalCluster:
        return self

    # ------------------------------------------------------------ clients and reads

    http = ProcessCluster.request

    def client(self, nodes: Iterable[str] | None = None, **kw: Any) -> Client:
        """A spine.client.Client round-robining over `nodes` (default: all)."""
        names = list(nodes) if nodes is not None else list(self.names)
        return Client([self.url(n) for n in names], **kw)

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
