"""The node's client listener: whether the node may listen where it is configured to (auth off
only on loopback, a strong cluster secret off it), the HTTP layer's view of the node
(`Services`), and the HTTP site itself, plain or TLS, with its connection gauges and the drain
before it closes."""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from spine.api.auth import Authenticator
from spine.api.http import Services, build_app, mint_id
from spine.api.limits import HttpLimits, LimitedRunner
from spine.api.readiness import readiness, serves_clients
from spine.api.views import cluster_view, shards_view
from spine.core.config import Config
from spine.core.errors import ConfigError
from spine.core.metrics import Registry
from spine.core.quota import NamespaceQuota
from spine.core.secret_policy import check_secret_policy
from spine.tls import HttpsSite

if TYPE_CHECKING:
    import ssl

    from spine.node import Node

log = structlog.get_logger("spine.node")


def is_loopback(host: str) -> bool:
    """Whether `host` names only loopback addresses."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except OSError:
            return False
        return all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_exposure(cfg: Config, node_id: str, *, insecure: bool) -> None:
    """Refuse to build node `node_id` where its listeners would be open to others unguarded: off
    loopback it needs API keys (or `--insecure` / `auth.insecure`) and a strong cluster secret
    (the secret policy; `--insecure` never waives it)."""
    host = cfg.node(node_id).host
    on_loopback = is_loopback(host)
    if not cfg.auth.keys and not on_loopback and not (insecure or cfg.auth.insecure):
        raise ConfigError(
            f"node {node_id} listens on {host}, not loopback, and auth.keys is empty:"
            " add API keys or start with --insecure",
            field="auth.keys",
        )
    check_secret_policy(cfg, node_id, on_loopback=on_loopback)


def auth_mode(auth: Authenticator, host: str) -> str:
    """How client requests are authenticated, and why, for the start-up log line."""
    if auth.enabled:
        return "on"
    if is_loopback(host):
        return "off: every listener is on loopback"
    return "off: --insecure"


def node_services(node: Node) -> Services:
    """The HTTP layer's view of `node`: its services, limits, views and readiness."""
    cfg = node.cfg
    lim = cfg.limits
    return Services(
        node_id=node.id, coordinator=node.coordinator, fanout=node.fanout,
        metrics=node.metrics, auth=node.auth, limits=cfg.limits_value(),
        dim=cfg.embedder.dim, session_max_keys=cfg.session.max_keys,
        body_bytes=lim.body_bytes, max_inflight=lim.max_inflight,
        cluster_view=functools.partial(cluster_view, node),
        shards_view=functools.partial(shards_view, node),
        readiness=functools.partial(readiness, node),
        serves_clients=functools.partial(serves_clients, node),
        storage_problem=node.store.disk.failure,
        mint_id=mint_id(node.rt.wall_ms, node.rt.token_bytes),
        search=node.search.handle,
        http=HttpLimits.from_section(lim), clock=node.rt.monotonic,
        quota=NamespaceQuota(lim.max_namespaces, node.indexer.indexes.holds,
                             node.indexer.indexes.count),
        list_page_bytes=lim.list_page_bytes,
        admin={a: functools.partial(node.rebalancer.admin, a)
               for a in ("join", "decommission", "remove")},
        leases=node.leases, max_lease_ttl_ms=cfg.paxos.max_lease_ttl_ms,
        settlement=node.replicator.settlement,
        feed=node.feed, feed_limits=cfg.feed,
    )


class HttpListener:
    """The HTTP site over `services` at `host:port` (TLS when `ssl_context` is set), whose
    connections obey `services.http`."""

    def __init__(
        self, services: Services, host: str, port: int, registry: Registry, *,
        ssl_context: ssl.SSLContext | None, handshake_timeout: float,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.host, self.port = host, port
        self._ssl, self._handshake_timeout, self._sleep = ssl_context, handshake_timeout, sleep
        self._runner = LimitedRunner(
            build_app(services), services.http, access_log=None, handle_signals=False
        )
        guard = self._runner.guard
        registry.gauge(
            "spine_http_connections_refused", "HTTP connections closed at once: past"
            " limits.client_connections from one address, since start", (),
            lambda: {(): float(guard.refused)})
        registry.gauge(
            "spine_http_head_timeouts", "HTTP connections closed for not sending a request head"
            " within limits.header_timeout_ms, since start", (),
            lambda: {(): float(guard.head_timeouts)})
        registry.gauge(
            "spine_http_connections", "open HTTP connections", (),
            lambda: {(): float(sum(guard.open.values()))})

    async def start(self) -> None:
        """Bind and serve."""
        await self._runner.setup()
        site: web.TCPSite
        if self._ssl is None:
            site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        else:
            site = HttpsSite(self._runner, self.host, self.port, reuse_address=True,
                             ssl_context=self._ssl, handshake_timeout=self._handshake_timeout)
        await site.start()

    async def close(self, drain_ms: int) -> None:
        """Keep serving for `drain_ms` (the node answers /readyz 503 meanwhile, so a balancer
        moves traffic away first), then close every connection."""
        if drain_ms > 0:
            log.info("node_draining", drain_ms=drain_ms)
            await self._sleep(drain_ms / 1000)
        await self._runner.cleanup()
