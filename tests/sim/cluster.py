"""A whole Spine cluster in one process: real `Node` compositions on virtual time.

Each node is `spine.node.Node` as a process builds it (coordinator, replicator, ring keeper,
rebalancer, handoff, anti-entropy, SWIM gossip, search fan-out, LMDB store and vector index on a
temp dir), given the simulator's ports: a `SimTransport` for RPC, a `SimGossip` for gossip, the
store's event-loop writer and a `SimRuntime` whose clocks are the virtual loop's, skewed per
node. No listener is opened; nothing reads a real clock; every draw comes from the seed.

A crash cancels every task of the node and drops what its store had not committed; a restart
builds a new `Node` over the same data directory, as a new process would.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable, Coroutine, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from spine.cluster.gossip_transport import Codec
from spine.core.config import Config, from_dict
from spine.core.config_env import merge_settings
from spine.core.local_cluster import local_cluster
from spine.core.swim_auth import GossipAuth
from spine.node import Node
from spine.runtime import Runtime
from tests.sim.simnet import Endpoint, Faults, SimGossip, SimNet, SimTransport
from tests.sim.vloop import NODE, VirtualLoop, node_context

T = TypeVar("T")

# Log events (info and up) that go into the trace besides errors: the ring's and handoff's story.
TRACED = ("ring_", "transfer", "shard_dropped", "hint")

EPOCH_MS = 1_800_000_000_000  # virtual time 0 on every wall clock (before its skew)

# Real defaults scaled for a short run: the same protocol, reached in seconds of virtual time.
SIM_SETTINGS: dict[str, Any] = {
    "ring": {"shards": 32, "vnodes": 32, "sync_interval_ms": 300, "drop_grace_s": 4},
    "timeouts": {"connect_ms": 100, "rpc_ms": 300, "read_ms": 400, "write_ms": 400,
                 "search_ms": 400},
    "handoff": {"replay_interval_ms": 200},
    "antientropy": {"interval_ms": 500, "shards_per_round": 32, "max_keys_per_s": 100_000},
    "gossip": {"protocol_period_ms": 200, "ping_timeout_ms": 80, "push_pull_interval_ms": 2000},
    "embedder": {"name": "hash", "dim": 8},
    "index": {"persist_interval_s": 5},
    "shutdown": {"drain_ms": 0},
}


class SimRuntime(Runtime):
    """The virtual loop's time as every clock, skewed by `wall_offset_ms`; seeded randomness."""

    def __init__(self, loop: VirtualLoop, rng: random.Random, skew_ms: int = 0) -> None:
        super().__init__(wall_offset_ms=skew_ms, rng=rng)
        self.loop = loop

    def wall_ms(self) -> int:
        return EPOCH_MS + int(self.loop.time() * 1000) + self.wall_offset_ms

    def monotonic(self) -> float:
        return self.loop.time()

    def token_bytes(self, n: int) -> bytes:
        return self.rng.randbytes(n)


@dataclass
class Incarnation:
    """One run of a node: the `Node`, its endpoint on the network, its runtime."""

    node: Node
    endpoint: Endpoint
    runtime: SimRuntime


class SimCluster:
    """N nodes (plus spares that may join later) on one virtual loop and one network."""

    def __init__(self, seed: int, root: Path, *, nodes: int = 5, spare: int = 1,
                 faults: Faults | None = None, settings: dict[str, Any] | None = None) -> None:
        self.seed = seed
        self.root = root
        self.rng = random.Random(seed)
        self.loop = VirtualLoop()
        self.trace: list[str] = []
        self.errors: list[str] = []  # error-level log events: each is a failure of the run
        self.net = SimNet(self.loop, random.Random(self.rng.random()), faults or Faults(),
                          self.log)
        all_ids = [f"n{i + 1}" for i in range(nodes + spare)]
        base = local_cluster(nodes + spare, 20000, str(root), sync=False)
        self.settings = merge_settings(merge_settings(base, SIM_SETTINGS), settings or {})
        self.first = all_ids[:nodes]
        self.spares = all_ids[nodes:]
        self.live: dict[str, Incarnation] = {}
        self.down: dict[str, Incarnation] = {}
        self.skew: dict[str, int] = {n: 0 for n in all_ids}
        self._rngs = {n: random.Random(self.rng.random()) for n in all_ids}
        self._configs: dict[tuple[str, ...], Config] = {}

    # ---------------------------------------------------------------- running

    def log(self, line: str) -> None:
        self.trace.append(f"{self.loop.time():9.4f} {line}")

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run `coro` on the virtual loop, with log events routed into the trace."""
        structlog.configure(processors=[self._log_event], cache_logger_on_first_use=False)
        try:
            return self.loop.run_until_complete(coro)
        finally:
            structlog.reset_defaults()

    def _log_event(self, _logger: Any, level: str, event: MutableMapping[str, Any]) -> Any:
        if level in ("error", "critical", "exception"):
            what = event.pop("event", "?")
            self.errors.append(f"t={self.loop.time():.4f} {NODE.get()}: {what} {event}")
            self.log(f"{NODE.get()} ERROR {what} {event}")
        elif level in ("info", "warning") and str(event.get("event", "")).startswith(TRACED):
            self.log(f"{NODE.get()} {event.pop('event')} {dict(event)}")
        raise structlog.DropEvent

    def close(self) -> None:
        """Cancel everything still running and close every store (the end of a run)."""
        async def shutdown() -> None:
            for name in list(self.live):
                await self.crash(name)
        with contextlib.suppress(Exception):
            self.run(shutdown())
        for inc in self.down.values():
            with contextlib.suppress(Exception):
                inc.node.store.abandon()
        self.down.clear()
        self.loop.close()

    # ---------------------------------------------------------------- nodes

    def config(self, names: list[str]) -> Config:
        """The validated config of a cluster of `names` (built once per member list: a Config
        is immutable, and building one costs ~8 ms, ~5% of a seed when done at every start)."""
        key = tuple(names)
        cfg = self._configs.get(key)
        if cfg is None:
            data = dict(self.settings)
            data["nodes"] = [n for n in self.settings["nodes"] if n["id"] in names]
            cfg = self._configs[key] = from_dict(data)
        return cfg

    async def start(self, name: str, *, join: bool = False) -> Node:
        """Start (or restart) `name`; `join`: as a new node joining the ring."""
        old = self.down.pop(name, None)
        if old is not None:
            old.node.store.abandon()
        members = self.first + ([name] if name not in self.first else [])
        cfg = self.config(members)
        ctx = node_context(name)
        rt = SimRuntime(self.loop, self._rngs[name], self.skew[name])
        me = cfg.node(name)
        address = "{}:{}".format(*me.gossip_address)
        window_ms = cfg.clock.max_offset_ms + cfg.gossip.freshness_margin_ms
        transport = SimTransport(self.net, name, hlc=None)  # type: ignore[arg-type]
        gossips: list[SimGossip] = []

        def gossip_net(on_message: Callable[..., None], on_request: Callable[..., Any]
                       ) -> SimGossip:
            codec = Codec(GossipAuth(cfg.cluster.keyring(), window_ms), rt.wall_ms,
                          cfg.gossip.max_members)
            g = SimGossip(self.net, name, address, codec, on_message, on_request)
            gossips.append(g)
            return g

        node = ctx.run(Node, cfg, name, rt, join=join, transport=transport,
                       gossip_net=gossip_net, store_writer="loop")
        # No simulated client searches, and executor work runs inline (one batch at a time), so
        # the indexer would make a tantivy commit + reload after every LMDB commit: ~70% of a
        # seed's CPU (3.76 -> 1.10 s a seed without them). Documents are still added and deleted.
        node.indexer._commit_text = lambda: None
        transport.hlc = node.hlc
        ep = Endpoint(name, address, ctx, node.hlc, node.handlers,
                      gossips[0] if gossips else None)
        self.net.attach(ep)
        self.live[name] = Incarnation(node, ep, rt)
        self.log(f"{name} start{' (join)' if join else ''}")
        await self.loop.create_task(node.start_services(), context=ctx)
        return node

    async def crash(self, name: str) -> None:
        """Kill `name`: its tasks cancelled, its uncommitted writes gone, calls to it refused."""
        inc = self.live.pop(name)
        self.net.detach(name)
        self.net.paused.pop(name, None)
        tasks = list(self.loop.tasks.get(name, ()))
        self.loop.cancel_node(name)
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        self.down[name] = inc
        self.log(f"{name} crash")

    def node(self, name: str) -> Node:
        return self.live[name].node

    def boot(self, settle: float = 3.0) -> None:
        """Start the first members and let membership settle for `settle` virtual seconds."""
        async def go() -> None:
            for name in self.first:
                await self.start(name)
            await self.loop.create_task(asyncio.sleep(settle))
        self.run(go())

    def call(self, name: str, fn: Callable[[Node], Coroutine[Any, Any, T]]) -> T:
        """Run `fn(node)` as a task of node `name` (as its HTTP handler would) to its end."""
        inc = self.live[name]

        async def go() -> T:
            return await self.loop.create_task(fn(inc.node), context=inc.endpoint.ctx)

        return self.run(go())
