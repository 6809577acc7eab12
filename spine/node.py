"""The composition root: builds every part of a node from the config; `start()` / `stop()`."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Literal

import structlog

from spine.api.auth import Authenticator
from spine.api.gauges import register_gauges
from spine.api.http import Services
from spine.api.listener import HttpListener, auth_mode, check_exposure, node_services
from spine.cluster.acceptor import Acceptor
from spine.cluster.antientropy import AntiEntropy
from spine.cluster.coordinator import Coordinator
from spine.cluster.embedding import EmbedBatcher
from spine.cluster.expiry_sweep import ExpirySweep
from spine.cluster.fanout import FanOut
from spine.cluster.feed import FeedService
from spine.cluster.gossip_transport import GossipSockets
from spine.cluster.handlers import build_handlers
from spine.cluster.handoff import Handoff
from spine.cluster.leases import Leases
from spine.cluster.liveness import ProbeLiveness
from spine.cluster.loopback import Loopback
from spine.cluster.membership import Gossip, identity_meta, swim_config
from spine.cluster.paxos import Proposer
from spine.cluster.peer_latency import PeerLatency
from spine.cluster.rebalance import Rebalancer
from spine.cluster.replication import Replicator
from spine.cluster.ringkeeper import RingKeeper
from spine.cluster.rpc import RpcClient, RpcServer
from spine.cluster.search import SearchService
from spine.core.clock import HLC, hlc_from_ms
from spine.core.config import Config
from spine.core.consistency import Level
from spine.core.messages import Ping
from spine.core.metrics import SpineMetrics
from spine.core.peer_stats import PeerStats
from spine.core.ring import Ring, shard_of
from spine.core.ringmap import JOINING, Entry, Placement, genesis
from spine.core.routing import Route, route
from spine.fault_control import FaultControl
from spine.ports import GossipNetFactory, Transport
from spine.runtime import Runtime
from spine.storage.embedders import auto_threads, make_embedder
from spine.storage.graph_builder import BuildPolicy
from spine.storage.indexer import Indexer
from spine.storage.lmdb_store import Store
from spine.tls import build_contexts

log = structlog.get_logger("spine.node")


class Node:
    """One Spine process: storage, replication, coordinator, RPC and HTTP."""

    def __init__(
        self,
        cfg: Config,
        node_id: str,
        runtime: Runtime | None = None,
        *,
        insecure: bool = False,
        join: bool = False,
        transport: Transport | None = None,
        gossip_net: GossipNetFactory | None = None,
        store_writer: Literal["thread", "loop"] = "thread",
    ) -> None:
        """`transport`, `gossip_net`, `store_writer`: the ports to the world, real sockets and a
        writer thread by default; the deterministic simulator (tests/sim) passes in-memory ones
        and runs the node without listeners (`start_services`)."""
        self.cfg = cfg
        self.me = cfg.node(node_id)
        self.id = node_id
        self.rt = runtime or Runtime()
        check_exposure(cfg, node_id, insecure=insecure)
        # Certificates are read now, so a bad `tls` section fails before anything is opened.
        self.tls = build_contexts(cfg.tls, node_id)
        self.metrics = SpineMetrics()
        shards = cfg.ring.shards
        data_dir = Path(cfg.storage.path) / node_id
        emb = cfg.embedder
        # 0 = auto: this host's cores shared by the nodes configured on it, so co-located nodes
        # (spine up, the test harness) never oversubscribe the cores with model or build threads.
        host_share = auto_threads(
            len(os.sched_getaffinity(0)), sum(1 for n in cfg.nodes if n.host == self.me.host))
        self.embed_threads = emb.threads or host_share
        self.embedder = make_embedder(emb.name, emb.dim, self.embed_threads,
                                      cache_dir=Path(cfg.storage.path) / "embedder-cache")
        self.embed = EmbedBatcher(self.embedder, queue_texts=emb.queue_texts,
                                  cache_queries=emb.cache_queries)
        self.store = Store(
            data_dir / "lmdb",
            shard_of=lambda ns, mid: shard_of(ns, mid, shards),
            sync=cfg.storage.sync,
            map_size_mb=cfg.storage.map_size_mb,
            max_batch=cfg.storage.max_batch,
            history_keep=cfg.history.keep,
            reserve_mb=cfg.storage.reserve_mb,
            writer=store_writer,
        )
        ix = cfg.index
        self.indexer = Indexer(
            self.store, data_dir / "index", dim=cfg.embedder.dim, m=ix.m,
            ef_construction=ix.ef_construction, ef_search=ix.ef_search,
            fingerprint=self.embedder.fingerprint, persist_interval=ix.persist_interval_s,
            sleep=self.rt.sleep, monotonic=self.rt.monotonic, exact_max=ix.exact_max,
            build=BuildPolicy(
                threads=ix.build_threads or host_share, batch_ms=ix.build_batch_ms,
                busy_pct=ix.build_busy_pct, backlog_max=ix.build_backlog_max),
            recall_target_pct=ix.recall_target_pct, probe_every=ix.probe_every,
        )
        # Derived structures follow every LMDB commit, in commit order: the store's change feed.
        self.store.subscribe(self.indexer.on_commit)
        self.indexer.register_metrics(self.metrics.registry)
        self.hlc = HLC(self.rt.wall_ms, cfg.clock.max_offset_ms, last=self.store.max_hlc)
        t = cfg.timeouts
        # Test-only clock skew, link delay and loss, from the files the process harness names.
        self.faults = FaultControl(self.rt, self.metrics.registry)
        links = self.faults.links
        self.rpc_client: Transport = transport if transport is not None else RpcClient(
            node_id, cfg.cluster.keyring(), self.hlc,
            {n.id: n.rpc_address for n in cfg.nodes}, t.connect_ms / 1000,
            local_addr=self.me.host if self.me.host != "0.0.0.0" else None,
            ssl=self.tls.rpc_client,
            token_bytes=self.rt.token_bytes, max_frame=cfg.rpc.max_frame_bytes,
            registry=self.metrics.registry, links=links,
        )
        # Every call to a peer is timed: reads and search prefer the fastest peers and hedge.
        self.peer_stats = PeerStats(hedge_max=t.rpc_ms / 2000)
        timed = PeerLatency(self.rpc_client, self.peer_stats, self.rt.monotonic)
        # Calls to this node itself are answered from its own handler table (built last).
        self.rpc: Transport = Loopback(node_id, timed, lambda: self.handlers)
        # Liveness for routing, hints and fan-out: SWIM gossip, or RPC probes without it.
        self.gossip: Gossip | None = None
        self.liveness: Gossip | ProbeLiveness
        if cfg.gossip.enabled:
            self.liveness = self.gossip = self._make_gossip(gossip_net)
            if links is not None and isinstance(self.gossip.net, GossipSockets):
                self.gossip.net.use_links(links, {
                    "{}:{}".format(*n.gossip_address): n.id for n in cfg.nodes})
        else:
            self.liveness = ProbeLiveness(
                node_id, [n.id for n in cfg.nodes], self._probe,
                cfg.liveness.probe_interval_ms / 1000, self.rt.sleep,
            )
        me = self.me
        self.keeper = RingKeeper(
            node_id, self.store, self.rpc, self.liveness,
            genesis=genesis({"id": n.id, "zone": n.zone, "region": n.region, "host": n.host,
                             "port": n.port, "rpc_port": n.rpc_address[1],
                             "gossip_port": n.gossip_address[1]} for n in cfg.nodes),
            me=Entry(node_id, JOINING, 0, me.zone, me.host, me.port,
                     me.rpc_address[1], me.gossip_address[1], region=me.region),
            shards=shards, vnodes=cfg.ring.vnodes, n=cfg.replication.replicas,
            interval=cfg.ring.sync_interval_ms / 1000, rpc_timeout=t.rpc_ms / 1000,
            now_version=self.hlc.now, sleep=self.rt.sleep, monotonic=self.rt.monotonic,
            rng=self.rt.rng, trailing_window=cfg.ring.drop_grace_s / 2, join=join,
        )
        self.keeper.on_change.append(self._placement_changed)
        self._placement_changed(self.keeper.placement)
        self.replicator = Replicator(
            node_id, self.store, self.rpc, self.liveness, self.metrics,
            rpc_timeout=t.rpc_ms / 1000, wall_ms=self.rt.wall_ms,
            hints_enabled=cfg.handoff.enabled, monotonic=self.rt.monotonic,
            replicated=self._replicated, stats=self.peer_stats,
        )
        ae = cfg.antientropy
        self.antientropy = AntiEntropy(
            node_id, self.store, self.replicator, self.rpc, self.liveness, self.ring,
            self.metrics, interval=ae.interval_ms / 1000, shards_per_round=ae.shards_per_round,
            max_keys_per_s=ae.max_keys_per_s, grace_ms=cfg.tombstone.grace_s * 1000,
            rpc_timeout=t.rpc_ms / 1000, wall_ms=self.rt.wall_ms, monotonic=self.rt.monotonic,
            sleep=self.rt.sleep, rng=self.rt.rng, enabled=ae.enabled,
            settlement=self.replicator.settlement,
        )
        self.store.subscribe(self.antientropy.on_commit)
        quorum = cfg.policy().quorum(cfg.policy().default)
        self.rebalancer = Rebalancer(
            node_id, self.keeper, self.antientropy, self.store, self.rpc, self.liveness,
            self.metrics, max_keys_per_s=cfg.ring.transfer_max_keys_per_s,
            drop_grace=cfg.ring.drop_grace_s, settle_delay=(t.write_ms + t.rpc_ms) / 1000,
            min_synced=cfg.replication.n - quorum.w + 1, rpc_timeout=t.rpc_ms / 1000,
            monotonic=self.rt.monotonic, sleep=self.rt.sleep,
            indexed_seq=lambda: self.indexer.indexed_seq,
        )
        self.acceptor = Acceptor(self.store, self.replicator.apply_local,
                                 any_ballot=cfg.paxos.unsafe_accept_any_ballot,
                                 clock_check=self.hlc.check)
        self.proposer = Proposer(
            node_id, self._route, self.rpc, self.liveness, self.hlc, self.rt.rng,
            rpc_timeout=t.rpc_ms / 1000, spawn=self.replicator.spawn, metrics=self.metrics,
            hint=self.replicator.hint,
        )
        self.coordinator = Coordinator(
            node_id, self.placement, self.store, self.replicator, self.rpc, self.liveness,
            self.hlc,
            cfg.policy(), self.metrics,
            read_timeout=t.read_ms / 1000, write_timeout=t.write_ms / 1000,
            session_max_keys=cfg.session.max_keys, dim=cfg.embedder.dim,
            embed=self.embed.embed, proposer=self.proposer,
            ignore_fences=cfg.paxos.unsafe_ignore_fences, lifecycle=cfg.lifecycle.value(),
            leader=self.acceptor.leader,
        )
        self.leases = Leases(
            node_id, self.proposer, self.coordinator.get, self.hlc,
            max_offset_ms=cfg.clock.max_offset_ms, timeout=t.write_ms / 1000,
        )
        self.fanout = FanOut(
            node_id, self.ring, self.rpc, self.liveness,
            lambda: sorted(self.keeper.placement.current.members), t.search_ms / 1000,
            now_hlc=self.hlc.now, stats=self.peer_stats, metrics=self.metrics,
        )
        self.handoff = Handoff(
            self.store, self.replicator, self.liveness, self.metrics,
            interval=cfg.handoff.replay_interval_ms / 1000,
            window_ms=cfg.handoff.window_s * 1000, batch=cfg.handoff.batch,
            wall_ms=self.rt.wall_ms, sleep=self.rt.sleep, placement=self.placement,
        )
        self.search = SearchService(
            self.indexer, self.fanout, self.coordinator, self.embed.embed_query,
            cfg.limits_value(), cfg.embedder.dim,
        )
        self.handoff.enabled = cfg.handoff.enabled
        lc = cfg.lifecycle
        self.expiry = ExpirySweep(
            node_id, self.store, self.replicator, self.liveness, self.placement, self.hlc,
            self.metrics, interval=lc.sweep_interval_ms / 1000, keys_per_s=lc.sweep_keys_per_s,
            margin_ms=t.write_ms + cfg.clock.max_offset_ms,
            read_quorum=cfg.policy().quorum(Level.SESSION).r, read_timeout=t.read_ms / 1000,
            write_timeout=t.write_ms / 1000, sleep=self.rt.sleep,
        )
        self.store.subscribe(self.expiry.on_commit)
        strong = cfg.policy().quorum(Level.STRONG)
        self.feed = FeedService(
            node_id, self.store, self.rpc, members=self._feed_members,
            is_alive=self.liveness.is_alive, route=self._route, settle=self.coordinator.settle,
            quorum_w=strong.w, metrics=self.metrics, now_hlc=self.hlc.now,
            grace_hlc=hlc_from_ms(cfg.tombstone.grace_s * 1000), rpc_timeout=t.read_ms / 1000,
            page_bytes=cfg.feed.page_bytes, max_waiters=cfg.feed.max_waiters,
            rng=lambda: self.rt.rng.getrandbits(62),
        )
        self.store.subscribe(self.feed.on_commit)
        self.liveness.on_up.append(self.handoff.wake)
        handlers = build_handlers(node_id, self.store, self.replicator, self.coordinator,
                                  cfg.session.max_keys, self.search.local)
        handlers.update(self.acceptor.handlers())
        handlers.update(self.feed.handlers())
        handlers.update(self.antientropy.handlers())
        handlers.update(self.keeper.handlers())
        handlers.update(self.rebalancer.handlers())
        self.handlers = handlers  # what this node serves its peers (the RPC server's table)
        self.rpc_server = RpcServer(
            node_id, cfg.cluster.keyring(), self.hlc, handlers, self.rt.token_bytes,
            max_frame=cfg.rpc.max_frame_bytes,
            handshake_timeout=cfg.rpc.handshake_timeout_ms / 1000,
            max_pending_handshakes=cfg.rpc.max_pending_handshakes,
            max_inflight=cfg.rpc.max_inflight_per_connection,
            registry=self.metrics.registry,
        )
        self.auth = Authenticator(cfg.auth.keys, agents_see_cluster=cfg.auth.agents_see_cluster)
        self._http: HttpListener | None = None
        self.draining = False  # /readyz answers 503 from the first moment of a shutdown
        register_gauges(self)

    # ------------------------------------------------------------ wiring helpers

    def ring(self) -> Ring:
        """The current ring (reads, quorums, search fan-out, anti-entropy)."""
        return self.keeper.placement.current

    def _replicated(self, node: str, seconds: float) -> None:
        """A write this node sent reached `node` after `seconds`: replication lag, per region,
        for the regions other than this node's."""
        placement = self.placement()
        region = placement.region_of(node)
        if region != placement.region_of(self.id):
            self.metrics.replication_lag.observe(seconds, region)

    def placement(self) -> Placement:
        """The current ring, the next one while the ring changes, and the moves between."""
        return self.keeper.placement

    def _feed_members(self) -> list[str]:
        """Whose feed logs a change-feed poll reads: the members of the current ring and, while
        it changes, of the next."""
        p = self.placement()
        return sorted(set(p.current.members) | set(p.next.members))

    def _route(self, namespace: str, mid: str) -> Route:
        """A key's route under the current placement, seen from this node."""
        return route(self.placement(), namespace, mid, self.id, self.liveness.is_alive)

    def _placement_changed(self, placement: Placement) -> None:
        if isinstance(self.rpc_client, RpcClient):
            for node, e in placement.map.entries.items():
                if node != self.id and e.rpc_port:
                    self.rpc_client.addresses[node] = (e.host, e.rpc_port)
        state = placement.map.state(self.id) or "standby"
        if self.gossip is not None and self.gossip.swim.me().meta_dict().get("ring") != state:
            self.gossip.swim.update_meta(self._identity(state))

    def _make_gossip(self, net: GossipNetFactory | None) -> Gossip:
        cfg = self.cfg
        host, port = self.me.gossip_address
        meta = self._identity("standby")  # the ring state follows once the keeper is built
        peers = {n.id: "{}:{}".format(*n.gossip_address) for n in cfg.nodes}
        window_ms = cfg.clock.max_offset_ms + cfg.gossip.freshness_margin_ms
        return Gossip(self.id, host, port, runtime=self.rt, config=swim_config(cfg.gossip),
                      meta=meta, secrets=cfg.cluster.keyring(), window_ms=window_ms,
                      seeds=cfg.seeds, peers=peers, registry=self.metrics.registry,
                      ssl_server=self.tls.gossip_server, ssl_client=self.tls.gossip_client,
                      net=net)

    def _identity(self, ring_state: str) -> dict[str, str]:
        cfg = self.cfg
        return identity_meta(zone=self.me.zone, ring_state=ring_state, cluster=cfg.cluster.name,
                             shards=cfg.ring.shards, embedder=self.embedder.fingerprint)

    async def _probe(self, peer: str) -> None:
        await self.rpc.call(peer, Ping(self.id), self.cfg.timeouts.connect_ms / 1000)

    # ------------------------------------------------------------ lifecycle

    @property
    def services(self) -> Services:
        """The HTTP layer's view of this node."""
        return self._services

    async def start(self) -> None:
        """Open storage, start listeners and background loops."""
        self._services = node_services(self)
        await self._open_storage()
        host, rpc_port = self.me.rpc_address
        await self.rpc_server.start(host, rpc_port, ssl=self.tls.rpc_server)
        await self._join_cluster()
        self.faults.start()
        self._http = HttpListener(
            self._services, self.me.host, self.me.port, self.metrics.registry,
            ssl_context=self.tls.http, handshake_timeout=self.cfg.tls.handshake_timeout_ms / 1000,
            sleep=self.rt.sleep,
        )
        await self._http.start()
        log.info(
            "node_started", http=f"{self.me.host}:{self.me.port}",
            rpc=f"{host}:{rpc_port}", auth=auth_mode(self.auth, self.me.host),
            tls={"http": self.tls.http is not None, "rpc": self.tls.rpc_server is not None,
                 "gossip": self.tls.gossip_server is not None},
            members=len(self.keeper.placement.current.members),
            ring_state=self.keeper.state(), ring_from=self.keeper.origin,
            replication=self.cfg.replication.n,
        )

    async def start_services(self) -> None:
        """Start storage and every background service, but no listener: the simulator's start,
        where peers reach `self.handlers` through the in-memory transport."""
        await self._open_storage()
        await self._join_cluster()

    async def _open_storage(self) -> None:
        loop = asyncio.get_running_loop()
        how = await loop.run_in_executor(None, self.indexer.recover)
        log.info("index_recovered", how=how, seq=self.store.seq)
        await self.embed.ready()  # the model is loaded before the node takes its first write
        self.store.start()
        await self.feed.start()
        self.indexer.start()
        self.antientropy.start()  # builds its trees in the background, then runs rounds

    async def _join_cluster(self) -> None:
        if isinstance(self.liveness, ProbeLiveness):
            self.liveness.start()
        else:
            await self.liveness.start()  # gossip: bound and joined before we serve
        peers = [n.id for n in self.cfg.nodes if n.id != self.id]
        await self.keeper.start(peers)
        self.rebalancer.start()
        self.handoff.start()
        self.expiry.start()

    async def stop(self) -> None:
        """Drain (answer /readyz 503 while still serving, for `shutdown.drain_ms`, so a balancer
        moves traffic away first), then stop listeners and loops, let the writer finish, close
        storage."""
        self.draining = True
        if self._http is not None:
            await self._http.close(self.cfg.shutdown.drain_ms)
            self._http = None
        self.faults.stop()
        await self.rebalancer.stop()
        await self.keeper.stop()
        await self.handoff.stop()
        await self.expiry.stop()
        await self.antientropy.stop()
        await self.liveness.stop()
        await self.replicator.stop()
        await self.rpc_server.stop()
        await self.rpc.close()
        await self.indexer.stop()
        self.embed.close()
        with contextlib.suppress(Exception):
            self.store.close()
        log.info("node_stopped")


async def run_node(
    cfg: Config, node_id: str, *, insecure: bool = False, join: bool = False
) -> None:
    """Run a node until SIGINT/SIGTERM, then stop it cleanly."""
    import signal

    node = Node(cfg, node_id, insecure=insecure, join=join)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    await stop.wait()
    await node.stop()
