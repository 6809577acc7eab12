"""TLS on the HTTP API and mutual TLS on internal RPC, with certificates made at test time.

A 3-node cluster of real processes runs with `tls.http` and `tls.rpc` on: clients reach it over
https with the test CA; writes at session and strong level need RPC between the nodes, so their
success shows mutual TLS between peers works; plain HTTP, an untrusting client, an RPC
connection without a certificate, with one from another CA, or without TLS at all are refused.
In-process RPC pairs show the dialling side's address check (`tls.check_hostname`).
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import secrets
import socket
import ssl
import time
import urllib.error
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from spine.client import Client, SpineHTTPError
from spine.cluster.gossip_transport import (
    TRANSPORT_ERRORS,
    Codec,
    Drops,
    GossipSockets,
    request,
)
from spine.cluster.rpc import RpcClient, RpcServer
from spine.core.clock import HLC
from spine.core.config import TlsSection
from spine.core.errors import PeerUnavailable
from spine.core.messages import Ping, Tag
from spine.core.swim_auth import Channel, GossipAuth
from spine.core.swim_messages import Message, PushPull
from spine.tls import rpc_client_context, rpc_server_context
from tests.harness.http_client import Reply
from tests.harness.ports import GOSSIP_OFFSET, HOST, RPC_OFFSET, free_base_port
from tests.integration.cluster import LocalCluster
from tests.tlscerts import Ca, make_ca, make_cert

pytestmark = pytest.mark.integration


class Pki:
    """The test CA with a certificate per node, and a rogue CA with one of its own."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "pki"
        self.ca = make_ca(self.dir)
        for name in ("n1", "n2", "n3"):
            make_cert(self.ca, self.dir, name)
        # A certificate of the right CA that does not name 127.0.0.1.
        make_cert(self.ca, self.dir, "elsewhere", ips=("127.0.0.99",), dns=())
        self.rogue_ca: Ca = make_ca(root / "rogue", "rogue-ca")
        self.rogue = make_cert(self.rogue_ca, root / "rogue", "n1")

    def tls(self, **kw: Any) -> dict[str, Any]:
        return {"cert_file": str(self.dir / "{node}.pem"), "key_file": str(self.dir / "{node}.key"),
                "ca_file": str(self.ca.cert), **kw}

    def client_context(self, cert: tuple[Path, Path] | None) -> ssl.SSLContext:
        """A context that trusts the test CA and presents `cert` (or nothing)."""
        ctx = ssl.create_default_context(cafile=str(self.ca.cert))
        if cert is not None:
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        return ctx

    def node_cert(self, name: str) -> tuple[Path, Path]:
        return self.dir / f"{name}.pem", self.dir / f"{name}.key"


class TlsCluster(LocalCluster):
    """A LocalCluster whose nodes serve https: the harness speaks https with the test CA."""

    def __init__(self, root: Path, pki: Pki, **kw: Any) -> None:
        self.pki = pki
        self.https = ssl.create_default_context(cafile=str(pki.ca.cert))
        super().__init__(root, 3, tls=pki.tls(http=True, rpc=True, gossip=True,
                                              handshake_timeout_ms=1000),
                         cluster={"secret": secrets.token_hex(32)}, **kw)

    def url(self, name: str) -> str:
        return f"https://{HOST}:{self.port(name)}"

    def request(self, name: str, method: str, path: str, body: Any = None,
                headers: Mapping[str, str] | None = None, timeout: float = 10.0, *,
                use_key: bool = True) -> Reply:
        """The harness's raw request over https (its health and metrics polls use it too)."""
        conn = http.client.HTTPSConnection(HOST, self.port(name), timeout=timeout,
                                           context=self.https)
        try:
            data = None if body is None else json.dumps(body).encode()
            hdrs = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers={**hdrs, **(headers or {})})
            resp = conn.getresponse()
            return Reply(resp.status, resp.msg, resp.read())
        finally:
            conn.close()

    http = request


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[TlsCluster]:
    c = TlsCluster(tmp_path_factory.mktemp("tls-cluster"), pki)
    try:
        yield c
    finally:
        c.close()


def rpc_port(c: LocalCluster, name: str) -> int:
    return c.base + RPC_OFFSET + c.names.index(name)


def first_bytes(port: int, ctx: ssl.SSLContext | None, send: bytes = b"") -> bytes:
    """Connect to the RPC port (over TLS with `ctx`), and return what the server sends first:
    its handshake frame if it let us in, b"" if it closed; TLS alerts and resets raise."""
    with contextlib.ExitStack() as stack:
        sock = stack.enter_context(socket.create_connection((HOST, port), timeout=10))
        if ctx is not None:
            sock = stack.enter_context(ctx.wrap_socket(sock, server_hostname=HOST))
        if send:
            sock.sendall(send)
        return sock.recv(4096)
    raise AssertionError("unreachable")


@pytest.mark.timeout(120)
def test_writes_and_reads_over_https_and_mutual_tls_rpc(tls_cluster: TlsCluster,
                                                        pki: Pki) -> None:
    c = tls_cluster
    c.wait_peers_alive()
    client = c.client(["n1"], verify=str(pki.ca.cert))
    for level in ("session", "strong"):
        # W = 2 of 3: at least one peer must acknowledge over mutual-TLS RPC.
        written = client.request("PUT", f"/v1/ns/tls/memories/k-{level}",
                                 {"content": f"over https at {level}"}, consistency=level)
        assert written["content"] == f"over https at {level}"
        # A reader on another node without the session token: a quorum read over RPC.
        other = c.client(["n3"], verify=str(pki.ca.cert))
        got = other.request("GET", f"/v1/ns/tls/memories/k-{level}", consistency="strong")
        assert got["version"] == written["version"]
    # The session token carries read-your-writes across nodes over https.
    rr = c.client(["n1", "n2", "n3"], verify=str(pki.ca.cert))
    rr.put("tls", "rr", "mine")
    for _ in range(3):
        assert rr.get("tls", "rr")["content"] == "mine"
    assert c.http("n2", "GET", "/v1/cluster").json()["node"] == "n2"


def test_plain_http_and_an_untrusting_client_are_refused(tls_cluster: TlsCluster) -> None:
    c = tls_cluster
    plain = http.client.HTTPConnection(HOST, c.port("n1"), timeout=10)
    try:
        with pytest.raises((http.client.HTTPException, OSError)):
            plain.request("GET", "/healthz")
            plain.getresponse().read()
    finally:
        plain.close()
    # The test CA is not among the system CAs: the default client refuses the node.
    with pytest.raises(urllib.error.URLError) as info:
        Client([c.url("n1")]).request("GET", "/healthz")
    assert isinstance(info.value.reason, ssl.SSLCertVerificationError)
    # verify=False (testing only) skips the check.
    assert Client([c.url("n1")], verify=False).request("GET", "/healthz")["node"] == "n1"


def test_a_tls_handshake_never_finished_is_cut_off(tls_cluster: TlsCluster) -> None:
    # tls.handshake_timeout_ms is 1 s here; asyncio's own default would hold it for 60 s.
    with socket.create_connection((HOST, tls_cluster.port("n1")), timeout=20) as sock:
        start = time.monotonic()
        assert sock.recv(1) == b""  # closed by the server, not by our timeout
        assert time.monotonic() - start < 10


def test_rpc_refuses_connections_without_a_cert_of_the_cluster_ca(
    tls_cluster: TlsCluster, pki: Pki
) -> None:
    port = rpc_port(tls_cluster, "n2")
    # Control: a node's own certificate gets the RPC handshake frame (4-byte length first).
    hello = first_bytes(port, pki.client_context(pki.node_cert("n1")))
    assert len(hello) >= 4 and b"n2" in hello
    refusals = {
        "no certificate": pki.client_context(None),
        "another CA's certificate": pki.client_context(pki.rogue),
    }
    for what, ctx in refusals.items():
        try:
            got = first_bytes(port, ctx)
        except (ssl.SSLError, ConnectionError):
            continue  # the handshake failed: refused
        assert got == b"", f"RPC with {what} was answered: {got!r}"
    # Not TLS at all: the server waits for a ClientHello and drops what is not one.
    try:
        got = first_bytes(port, None, send=b"\x00\x00\x00\x10" + b"x" * 16)
    except ConnectionError:
        got = b""
    assert got == b"" or got.startswith(b"\x15"), got  # closed, or a TLS alert record
    assert b"n2" not in got


@pytest.mark.timeout(60)
def test_rpc_client_checks_the_peer_address_unless_told_not_to(pki: Pki) -> None:
    async def run() -> None:
        hlc = HLC(lambda: 1, 500)
        keyring = [secrets.token_hex(16)]

        async def ping(_peer: str, _msg: Any) -> str:
            return "pong"

        tls = TlsSection(rpc=True, **pki.tls())
        # The server presents a certificate of the cluster CA that names 127.0.0.99 only.
        srv_tls = TlsSection(rpc=True, **pki.tls(cert_file=str(pki.dir / "elsewhere.pem"),
                                                 key_file=str(pki.dir / "elsewhere.key")))
        good = RpcServer("n2", keyring, hlc, {Tag.PING: ping}, secrets.token_bytes)
        wrong = RpcServer("n3", keyring, hlc, {Tag.PING: ping}, secrets.token_bytes)
        await good.start(HOST, 0, ssl=rpc_server_context(tls, "n2"))
        await wrong.start(HOST, 0, ssl=rpc_server_context(srv_tls, "n3"))
        clients: list[RpcClient] = []
        try:
            addrs = {n: s._server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
                     for n, s in (("n2", good), ("n3", wrong))}

            def client(ctx: ssl.SSLContext) -> RpcClient:
                clients.append(RpcClient("n1", keyring, hlc, dict(addrs), 5.0,
                                         token_bytes=secrets.token_bytes, ssl=ctx))
                return clients[-1]

            checking = client(rpc_client_context(tls, "n1"))
            assert await checking.call("n2", Ping("n1"), 5.0) == "pong"
            with pytest.raises(PeerUnavailable):
                await checking.call("n3", Ping("n1"), 5.0)
            lax = client(rpc_client_context(replace(tls, check_hostname=False), "n1"))
            assert await lax.call("n3", Ping("n1"), 5.0) == "pong"
            # Without TLS the listener does not speak RPC at all.
            plain = RpcClient("n1", keyring, hlc, dict(addrs), 1.0,
                              token_bytes=secrets.token_bytes)
            clients.append(plain)
            with pytest.raises(PeerUnavailable):
                await plain.call("n2", Ping("n1"), 5.0)
        finally:
            for cl in clients:
                await cl.close()
            await good.stop()
            await wrong.stop()

    asyncio.run(run())


def test_errors_answer_json_over_https(
    tls_cluster: TlsCluster, pki: Pki
) -> None:
    # Errors travel over https as they do over http (the API layer is unchanged).
    with pytest.raises(SpineHTTPError) as info:
        tls_cluster.client(["n1"], verify=str(pki.ca.cert)).get("tls", "absent")
    assert info.value.status == 404 and info.value.code == "not_found"


@pytest.mark.timeout(60)
def test_gossip_push_pull_over_mutual_tls(pki: Pki) -> None:
    async def run() -> None:
        tls = TlsSection(gossip=True, **pki.tls())
        codec = Codec(GossipAuth([secrets.token_hex(16)], 10_000), lambda: int(time.time() * 1000))
        requests: list[PushPull] = []

        def answer(_src: str, msg: PushPull) -> Message:
            requests.append(msg)
            return PushPull("n2", (), is_reply=True)

        port = free_base_port(1) + GOSSIP_OFFSET
        server = GossipSockets(
            HOST, port, codec, Drops(None, time.monotonic), io_timeout=2.0, frame_limit=1 << 20,
            on_message=lambda _src, _msg: None, on_request=answer,
            ssl_server=rpc_server_context(tls, "n2"))
        await server.start()
        try:
            address = f"{HOST}:{port}"

            async def push_pull(ctx: ssl.SSLContext | None) -> Message:
                data, mac = codec.seal_with_mac(Channel.REQUEST, PushPull("n1", ()))
                raw = await asyncio.wait_for(request(address, data, True, None, 1 << 20, ctx), 5)
                assert raw is not None
                return codec.open(Channel.REPLY, raw, mac)[0]

            reply = await push_pull(rpc_client_context(tls, "n1"))
            assert reply == PushPull("n2", (), is_reply=True)
            assert len(requests) == 1
            rogue = pki.client_context(pki.rogue)
            for ctx in (None, pki.client_context(None), rogue):
                with pytest.raises(TRANSPORT_ERRORS):
                    await push_pull(ctx)
            assert len(requests) == 1  # none of them reached the gossip layer
        finally:
            await server.close()

    asyncio.run(run())


def test_cli_talks_https_with_cacert(tls_cluster: TlsCluster, pki: Pki, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from spine.cli import main

    url = tls_cluster.url("n2")
    session = ["--session-file", str(tmp_path / "session")]
    assert main(["put", "tls-cli", "c1", "--content", "via cli", "--url", url,
                 "--cacert", str(pki.ca.cert), *session]) == 0
    assert json.loads(capsys.readouterr().out)["content"] == "via cli"
    monkeypatch.setenv("SPINE_CACERT", str(pki.ca.cert))
    assert main(["get", "tls-cli", "c1", "--url", url, *session]) == 0
    assert json.loads(capsys.readouterr().out)["content"] == "via cli"
    monkeypatch.delenv("SPINE_CACERT")
    # The system CAs do not know the test CA: a clear error, no traceback.
    assert main(["get", "tls-cli", "c1", "--url", url, *session]) == 1
    err = capsys.readouterr().err
    assert "certificate verify failed" in err and "--cacert" in err, err
