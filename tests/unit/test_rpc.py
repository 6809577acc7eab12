"""Internal RPC against hostile input (issue 14, item 2): real RpcServer/RpcClient in-process on
127.0.0.1 ephemeral ports, attacked with raw sockets, a tampering proxy and an impostor server.

The attack tests fail at 0d917e7 (see the report of the change that added them): a 64 MiB length
prefix is read for 5 s, half-open handshakes are never capped, a flipped bit or a replayed frame
is served, an impostor that never proves the secret receives requests, a send buffer grows
without bound, and an oversize reply hangs every call on its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import pytest

from spine.cluster import rpc_handshake
from spine.cluster.rpc import RpcClient, RpcServer
from spine.cluster.rpc_frames import REPLY, REQUEST, SealedChannel, read_frame
from spine.core.clock import HLC
from spine.core.errors import FrameTooLarge, InvalidInput, PeerUnavailable, SpineError
from spine.core.messages import Ping, Read, Search, Tag

pytestmark = pytest.mark.timeout(60)

SECRET = "unit-test-cluster-secret-0123456789"
HOST = "127.0.0.1"


def _hlc() -> HLC:
    return HLC(wall_ms=lambda: 1_700_000_000_000, max_offset_ms=500)


def make_server(handlers: dict[Tag, Any], keyring: list[str] | None = None,
                **kw: Any) -> RpcServer:
    return RpcServer("s", keyring or [SECRET], _hlc(), handlers, os.urandom, **kw)


def make_client(port: int, keyring: list[str] | None = None, **kw: Any) -> RpcClient:
    return RpcClient("c", keyring or [SECRET], _hlc(), {"s": (HOST, port)}, 2.0,
                     token_bytes=os.urandom, **kw)


def _port(srv: RpcServer) -> int:
    assert srv._server is not None
    return int(srv._server.sockets[0].getsockname()[1])


@contextlib.asynccontextmanager
async def serving(handlers: dict[Tag, Any], **kw: Any) -> AsyncIterator[RpcServer]:
    srv = make_server(handlers, **kw)
    await srv.start(HOST, 0)
    try:
        yield srv
    finally:
        await srv.stop()


async def eventually(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def _to_eof(r: asyncio.StreamReader) -> bytes:
    """Everything until the peer closes (a reset counts as closed)."""
    try:
        return await r.read()
    except ConnectionError:
        return b""


async def _ping(peer: str, msg: Ping) -> list[str]:
    return [msg.node, "pong"]


# ------------------------------------------------------------------ before the handshake


@pytest.mark.asyncio
async def test_a_huge_length_prefix_is_refused_before_its_body_is_read() -> None:
    async with serving({Tag.PING: _ping}) as srv:
        r, w = await asyncio.open_connection(HOST, _port(srv))
        await read_frame(r)  # the server's hello
        w.write(struct.pack(">I", 64 << 20) + b"\0" * 65536)
        with contextlib.suppress(ConnectionError):
            await w.drain()
        # Closed at once, not after buffering up to 64 MiB for the handshake deadline.
        assert await asyncio.wait_for(_to_eof(r), 2.0) == b""
        w.close()
        await eventually(lambda: srv.refused.get("malformed") == 1)


@pytest.mark.asyncio
async def test_a_silent_connection_is_closed_at_the_handshake_deadline() -> None:
    async with serving({}, handshake_timeout=0.3) as srv:
        r, w = await asyncio.open_connection(HOST, _port(srv))
        await read_frame(r)
        assert await asyncio.wait_for(_to_eof(r), 2.0) == b""
        w.close()
        assert srv.refused.get("timeout") == 1


@pytest.mark.asyncio
async def test_half_open_handshakes_are_capped_and_the_excess_reset_at_once() -> None:
    async with serving({Tag.PING: _ping}, max_pending_handshakes=8,
                       handshake_timeout=30) as srv:
        conns = [await asyncio.open_connection(HOST, _port(srv)) for _ in range(40)]

        async def closed(r: asyncio.StreamReader) -> bool:
            try:
                await asyncio.wait_for(_to_eof(r), 1.5)
                return True
            except TimeoutError:
                return False

        verdicts = await asyncio.gather(*(closed(r) for r, _ in conns))
        assert sum(verdicts) == 32, "every connection past the cap is closed at once"
        assert srv.pending_handshakes == 8
        assert srv.refused.get("too_many_handshakes") == 32
        for _, w in conns:
            w.close()
        # Once the held ones go away, a real peer gets in again.
        await eventually(lambda: srv.pending_handshakes == 0)
        client = make_client(_port(srv))
        assert await client.call("s", Ping("c"), 2.0) == ["c", "pong"]
        await client.close()


@pytest.mark.asyncio
async def test_a_client_without_the_secret_is_refused_and_counted() -> None:
    async with serving({Tag.PING: _ping}) as srv:
        client = make_client(_port(srv), keyring=["not-the-cluster-secret-at-all"])
        with pytest.raises(PeerUnavailable, match="refused"):
            await client.call("s", Ping("c"), 2.0)
        await client.close()
        assert srv.refused.get("bad_secret") == 1


@pytest.mark.asyncio
async def test_keyring_rotation_accepts_an_old_secret_and_signs_with_the_first() -> None:
    async with serving({Tag.PING: _ping}, keyring=["new-secret-0123456789", SECRET]) as srv:
        old = make_client(_port(srv), keyring=[SECRET])
        new = make_client(_port(srv), keyring=["new-secret-0123456789", SECRET])
        assert await old.call("s", Ping("c"), 2.0) == ["c", "pong"]
        assert await new.call("s", Ping("c"), 2.0) == ["c", "pong"]
        await old.close()
        await new.close()
    async with serving({Tag.PING: _ping}) as srv:  # a node that never heard of the new one
        ahead = make_client(_port(srv), keyring=["new-secret-0123456789", SECRET])
        with pytest.raises(PeerUnavailable):
            await ahead.call("s", Ping("c"), 2.0)
        await ahead.close()


# ------------------------------------------------------------------ mutual authentication


def impostor_hello(nonce: bytes) -> list[Any]:
    return [rpc_handshake.HANDSHAKE_VERSION, 1, nonce, "s"]


def impostor_ok() -> list[Any]:
    return ["ok", os.urandom(32)]


def _framed(obj: Any) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


@pytest.mark.asyncio
async def test_a_server_that_cannot_prove_the_secret_gets_no_request() -> None:
    """An impostor on a peer's address says "ok" without knowing the secret."""
    after_ok: list[bytes] = []

    async def impostor(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            w.write(_framed(impostor_hello(os.urandom(32))))
            await read_frame(r)  # the client's proof, useless to it
            w.write(_framed(impostor_ok()))
            after_ok.append(await _to_eof(r))
        finally:
            w.close()

    server = await asyncio.start_server(impostor, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    client = make_client(port)
    with pytest.raises(PeerUnavailable):
        await client.call("s", Ping("secret-payload"), 1.0)
    await client.close()
    await eventually(lambda: bool(after_ok))
    assert b"secret-payload" not in after_ok[0] and after_ok[0] == b""
    server.close()
    await server.wait_closed()


# ------------------------------------------------------------------ after the handshake


class Proxy:
    """A TCP relay between client and server that can rewrite or stop the client's bytes."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.tamper: Callable[[bytes], bytes] | None = None
        self.frozen = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._conn, HOST, 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _conn(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection(HOST, self.target)
        self._writers += [cw, sw]
        for t in (self._pump(cr, sw, upstream=True), self._pump(sr, cw, upstream=False)):
            task = asyncio.create_task(t)
            self._tasks.add(task)

    async def _pump(self, r: asyncio.StreamReader, w: asyncio.StreamWriter,
                    upstream: bool) -> None:
        with contextlib.suppress(ConnectionError):
            while True:
                while upstream and self.frozen:  # stop reading: the client's buffers fill
                    await asyncio.sleep(0.01)
                data = await r.read(65536)
                if not data:
                    break
                if upstream and self.tamper is not None:
                    data = self.tamper(data)
                w.write(data)
                await w.drain()
        w.close()

    async def close(self) -> None:
        for w in self._writers:
            w.transport.abort()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def _flip_in(marker: bytes) -> Callable[[bytes], bytes]:
    def tamper(data: bytes) -> bytes:
        i = data.find(marker)
        if i < 0:
            return data
        forged = bytearray(data)
        forged[i + len(marker) - 1] ^= 0x01
        return bytes(forged)

    return tamper


@pytest.mark.asyncio
async def test_a_forged_frame_after_a_good_handshake_closes_the_connection() -> None:
    seen: list[str] = []

    async def ping(peer: str, msg: Ping) -> str:
        seen.append(msg.node)
        return msg.node

    async with serving({Tag.PING: ping}) as srv:
        proxy = Proxy(_port(srv))
        client = make_client(await proxy.start())
        assert await client.call("s", Ping("honest"), 2.0) == "honest"
        proxy.tamper = _flip_in(b"MARKER-forged")  # what an on-path attacker could do
        with pytest.raises(PeerUnavailable):
            await client.call("s", Ping("MARKER-forged"), 2.0)
        assert seen == ["honest"], "the forged request reached a handler"
        assert srv.bad_frames.get("mac") == 1
        proxy.tamper = None
        assert await client.call("s", Ping("again"), 2.0) == "again"  # a new connection
        await client.close()
        await proxy.close()


@pytest.mark.asyncio
async def test_a_replayed_frame_closes_the_connection() -> None:
    seen: list[str] = []

    async def ping(peer: str, msg: Ping) -> str:
        seen.append(msg.node)
        return msg.node

    async with serving({Tag.PING: ping}) as srv:
        proxy = Proxy(_port(srv))
        client = make_client(await proxy.start())
        assert await client.call("s", Ping("first"), 2.0) == "first"

        def twice(data: bytes) -> bytes:
            return data + data if b"MARKER-replay" in data else data

        proxy.tamper = twice
        with contextlib.suppress(PeerUnavailable):
            await client.call("s", Ping("MARKER-replay"), 2.0)
        # Either the node drops the connection, or it serves the replay as well.
        await eventually(lambda: "s" not in client._conns or seen.count("MARKER-replay") == 2)
        # The genuine copy may be served or cancelled with the connection; never the replay.
        assert seen.count("MARKER-replay") <= 1, "the replayed request was served again"
        assert srv.bad_frames.get("mac") == 1
        await client.close()
        await proxy.close()


@pytest.mark.asyncio
async def test_sends_wait_for_a_peer_that_stops_reading() -> None:
    """Backpressure: callers wait for room instead of queueing megabytes in the send buffer."""
    async with serving({Tag.SEARCH: _search_echo}) as srv:
        proxy = Proxy(_port(srv))
        client = make_client(await proxy.start())
        await client.call("s", Search("ns", b"x", 1), 2.0)
        proxy.frozen = True
        payload = b"\0" * 60_000
        calls = [client.call("s", Search("ns", payload, 1), 1.0) for _ in range(400)]
        await asyncio.gather(*calls, return_exceptions=True)
        conn = client._conns.get("s")
        buffered = 0 if conn is None else conn.writer.transport.get_write_buffer_size()
        assert buffered < 2 << 20, f"{buffered} bytes queued behind a peer that does not read"
        proxy.frozen = False
        await client.close()
        await proxy.close()


async def _search_echo(peer: str, msg: Search) -> int:
    return len(msg.vector)


# ------------------------------------------------------------------ frame size


@pytest.mark.asyncio
async def test_an_oversize_reply_fails_only_its_own_call() -> None:
    big_sent, ping_waiting = asyncio.Event(), asyncio.Event()

    async def read(peer: str, msg: Read) -> bytes:
        big_sent.set()
        return b"x" * 100_000  # past the 64 KiB limit below

    async def ping(peer: str, msg: Ping) -> str:
        if msg.node == "wait":
            ping_waiting.set()
            await big_sent.wait()  # answered only after the oversize reply
        return "pong"

    async with serving({Tag.READ: read, Tag.PING: ping}, max_frame=65536) as srv:
        client = make_client(_port(srv), max_frame=65536)
        assert await client.call("s", Ping("warm"), 2.0) == "pong"
        conn = client._conns["s"]
        pinged = asyncio.ensure_future(client.call("s", Ping("wait"), 3.0))
        await asyncio.wait_for(ping_waiting.wait(), 2.0)  # in flight on the same connection
        with pytest.raises(FrameTooLarge):
            await client.call("s", Read([("ns", "k")]), 3.0)
        assert await pinged == "pong"
        assert await client.call("s", Ping("again"), 2.0) == "pong"
        assert client._conns["s"] is conn, "the connection was dropped"
        await client.close()


@pytest.mark.asyncio
async def test_an_oversize_request_fails_at_the_sender_and_nothing_is_sent() -> None:
    got: list[int] = []

    async def search(peer: str, msg: Search) -> int:
        got.append(len(msg.vector))
        return len(msg.vector)

    async with serving({Tag.SEARCH: search}, max_frame=65536) as srv:
        client = make_client(_port(srv), max_frame=65536)
        assert await client.call("s", Search("ns", b"v", 1), 2.0) == 1
        conn = client._conns["s"]
        with pytest.raises(FrameTooLarge) as ei:
            await client.call("s", Search("ns", b"v" * 100_000, 1), 2.0)
        assert ei.value.details["code"] == "frame_too_large"  # callers keep the peer up
        assert await client.call("s", Search("ns", b"vv", 1), 2.0) == 2
        assert got == [1, 2] and client._conns["s"] is conn
        await client.close()


# ------------------------------------------------------------------ replies and handler errors


@pytest.mark.asyncio
async def test_handler_errors_answer_the_call_and_keep_the_connection() -> None:
    async def boom(peer: str, msg: Ping) -> Any:
        if msg.node == "raise":
            raise RuntimeError("a bug")
        if msg.node == "invalid":
            raise InvalidInput("bad thing", field="node")
        if msg.node == "unpackable":
            return {1, 2}
        return "ok"

    async with serving({Tag.PING: boom}) as srv:
        client = make_client(_port(srv))
        assert await client.call("s", Ping("x"), 2.0) == "ok"
        conn = client._conns["s"]
        with pytest.raises(SpineError, match="a bug"):
            await client.call("s", Ping("raise"), 2.0)
        with pytest.raises(InvalidInput) as ei:
            await client.call("s", Ping("invalid"), 2.0)
        assert ei.value.field == "node"
        with pytest.raises(SpineError, match="unpackable"):
            await client.call("s", Ping("unpackable"), 2.0)
        with pytest.raises(InvalidInput):  # no handler for this tag
            await client.call("s", Read([("ns", "k")]), 2.0)
        assert await client.call("s", Ping("x"), 2.0) == "ok"
        assert client._conns["s"] is conn
        await client.close()


@pytest.mark.asyncio
async def test_replies_match_by_id_and_unknown_ids_are_ignored() -> None:
    """A peer holding the secret answers out of order and with ids nobody asked for."""
    root = rpc_handshake.root_key(SECRET)

    async def peer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            s = await rpc_handshake.accept(r, w, "s", [root], os.urandom(32))
            chan = SealedChannel(s.send_key, s.recv_key, 1 << 20)
            first, second = await chan.read(r), await chan.read(r)
            assert first.kind == second.kind == REQUEST
            for frame in (second, first):
                w.write(chan.seal([REPLY, 999_999, frame.tag, 1, "stray"]))
                w.write(chan.seal([REPLY, frame.req_id, frame.tag, 1, frame.body[0]]))
            await w.drain()
            await _to_eof(r)
        finally:
            w.close()
            done.set()

    done = asyncio.Event()

    server = await asyncio.start_server(peer, HOST, 0)
    client = make_client(server.sockets[0].getsockname()[1])
    a, b = await asyncio.gather(client.call("s", Ping("a"), 2.0), client.call("s", Ping("b"), 2.0))
    assert (a, b) == ("a", "b")
    await client.close()
    await asyncio.wait_for(done.wait(), 5.0)
    server.close()
    await server.wait_closed()

