"""SSL contexts from the `tls` section: TLS for the HTTP API, mutual TLS for internal RPC and
gossip's TCP push-pull (gossip datagrams stay plaintext, authenticated by the cluster secret).

- HTTP: the node presents its certificate; clients are not asked for one (API keys
  authenticate them).
- RPC, and gossip's TCP push-pull with `tls.gossip`: both ends present their certificate and
  check the other's against `tls.ca_file`; a connection without a client certificate, or with
  one from another CA, fails the TLS handshake before a byte of RPC is read. The dialling side
  also checks that the peer's certificate names the address it dialled (an IP or DNS
  subjectAltName) unless `tls.check_hostname` is off. The cluster-secret handshake (and the
  gossip MAC) still runs inside the channel: a certificate alone admits no one.

Every file is read here, once, when the node is built: a missing or unreadable file, or a key
that does not match its certificate, is a ConfigError naming the key.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from spine.core.config import TlsSection
from spine.core.errors import ConfigError

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True)
class TlsContexts:
    """The contexts one node uses; None where TLS is off."""

    http: ssl.SSLContext | None = None
    rpc_server: ssl.SSLContext | None = None
    rpc_client: ssl.SSLContext | None = None
    gossip_server: ssl.SSLContext | None = None
    gossip_client: ssl.SSLContext | None = None


def _file(key: str, path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"tls.{key}: no such file: {path}", field=f"tls.{key}")
    try:
        with p.open("rb"):
            pass
    except OSError as e:
        raise ConfigError(f"tls.{key}: cannot read {path}: {e.strerror}",
                          field=f"tls.{key}") from None
    return str(p)


def _base(tls: TlsSection, purpose: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = _VERSIONS[tls.min_version]
    return ctx


def _load_chain(ctx: ssl.SSLContext, tls: TlsSection, node_id: str) -> None:
    cert = _file("cert_file", tls.cert_path(node_id))
    key = _file("key_file", tls.key_path(node_id))
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as e:
        raise ConfigError(f"tls.cert_file: {cert} with key {key}: {e.reason or e}",
                          field="tls.cert_file") from None


def _load_ca(ctx: ssl.SSLContext, tls: TlsSection) -> None:
    ca = _file("ca_file", tls.ca_file)
    try:
        ctx.load_verify_locations(cafile=ca)
    except ssl.SSLError as e:
        raise ConfigError(f"tls.ca_file: {ca}: {e.reason or e}", field="tls.ca_file") from None


def http_server_context(tls: TlsSection, node_id: str) -> ssl.SSLContext:
    """The HTTP listener's context: this node's certificate, no client certificate asked."""
    ctx = _base(tls, ssl.PROTOCOL_TLS_SERVER)
    _load_chain(ctx, tls, node_id)
    return ctx


def rpc_server_context(tls: TlsSection, node_id: str) -> ssl.SSLContext:
    """The RPC listener's context: presents this node's certificate, requires the peer's."""
    ctx = _base(tls, ssl.PROTOCOL_TLS_SERVER)
    _load_chain(ctx, tls, node_id)
    _load_ca(ctx, tls)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def rpc_client_context(tls: TlsSection, node_id: str) -> ssl.SSLContext:
    """The context for dialling peers: presents this node's certificate, checks theirs."""
    ctx = _base(tls, ssl.PROTOCOL_TLS_CLIENT)
    _load_chain(ctx, tls, node_id)
    _load_ca(ctx, tls)
    ctx.check_hostname = tls.check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def build_contexts(tls: TlsSection, node_id: str) -> TlsContexts:
    """Every context the `tls` section turns on for `node_id`."""
    # Gossip's TCP push-pull is mutual TLS exactly as RPC is (its own context objects).
    return TlsContexts(
        http=http_server_context(tls, node_id) if tls.http else None,
        rpc_server=rpc_server_context(tls, node_id) if tls.rpc else None,
        rpc_client=rpc_client_context(tls, node_id) if tls.rpc else None,
        gossip_server=rpc_server_context(tls, node_id) if tls.gossip else None,
        gossip_client=rpc_client_context(tls, node_id) if tls.gossip else None,
    )


class HttpsSite(web.TCPSite):
    """aiohttp's TCPSite with a deadline on the TLS handshake.

    asyncio allows a TLS handshake 60 s, and the HTTP layer's header deadline starts only once
    the handshake is done, so without this a client that opens connections and never finishes
    the handshake holds each for a minute (`tls.handshake_timeout_ms`).
    """

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *,
                 handshake_timeout: float, **kw: Any) -> None:
        super().__init__(runner, host, port, **kw)
        self._handshake_timeout = handshake_timeout

    async def start(self) -> None:
        """Listen, as TCPSite.start does, with the handshake deadline."""
        self._runner._reg_site(self)
        server = self._runner.server
        assert server is not None and self._ssl_context is not None
        self._server = await asyncio.get_running_loop().create_server(
            server, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port,
            ssl_handshake_timeout=self._handshake_timeout,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]
