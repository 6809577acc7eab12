"""Internal RPC: msgpack frames over persistent, multiplexed TCP connections.

Frame: 4-byte big-endian length, then msgpack `[kind, request_id, tag, hlc, body]`. One connection
per peer carries many concurrent requests, matched to replies by request id. A connection starts
with a challenge–response handshake: the server sends a random nonce, the client answers with
HMAC-SHA256(cluster secret, nonce + its node id) and the protocol version; anything else is refused
and the socket closed. Every request and reply carries the sender's HLC, which the receiver
observes (and refuses when it is too far ahead: `clock.max_offset`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ssl as _ssl
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import structlog

from spine.core.clock import HLC
from spine.core.errors import ERRORS_BY_CODE, ClockSkew, PeerUnavailable, SpineError
from spine.core.messages import DECODERS, PROTOCOL_VERSION, Message, Tag

_LEN = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024

REQUEST, REPLY, ERROR = 1, 2, 3

Handler = Callable[[str, Any], Awaitable[Any]]

log = structlog.get_logger("spine.rpc")


def _mac(secret: bytes, nonce: bytes, node: str) -> bytes:
    return hmac.new(secret, nonce + node.encode(), hashlib.sha256).digest()


def _pack(obj: Any) -> bytes:
    body: bytes = msgpack.packb(obj, use_bin_type=True)
    return _LEN.pack(len(body)) + body


async def _read_frame(reader: asyncio.StreamReader) -> Any:
    head = await reader.readexactly(4)
    (n,) = _LEN.unpack(head)
    if n > MAX_FRAME:
        raise PeerUnavailable(f"frame of {n} bytes is past the limit")
    return msgpack.unpackb(await reader.readexactly(n), raw=False)


def _remote_error(node: str, code: str, message: str, details: dict[str, Any]) -> SpineError:
    """Rebuild the error a peer answered; unknown codes become PeerUnavailable."""
    cls = ERRORS_BY_CODE.get(code)
    if cls is None or cls is PeerUnavailable:
        return PeerUnavailable(f"{node}: {code}: {message}", node=node, code=code)
    field = details.pop("field", None) if isinstance(details, dict) else None
    return cls(message, field=field, **(details if isinstance(details, dict) else {}))


class RpcServer:
    """Accepts authenticated peer connections and dispatches requests to a handler table."""

    def __init__(
        self,
        node_id: str,
        keyring: list[str],
        hlc: HLC,
        handlers: dict[Tag, Handler],
        token_bytes: Callable[[int], bytes],
    ) -> None:
        self.node_id = node_id
        self._keyring = [k.encode() for k in keyring]
        self._hlc = hlc
        self._handlers = handlers
        self._token_bytes = token_bytes
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.refused = 0

    async def start(self, host: str, port: int, *, ssl: _ssl.SSLContext | None = None) -> None:
        """Listen on (host, port); with `ssl`, every connection is TLS first (mutual if it asks)."""
        self._server = await asyncio.start_server(
            self._serve, host, port, limit=MAX_FRAME, ssl=ssl)

    async def stop(self) -> None:
        """Stop listening and close every open connection."""
        if self._server is not None:
            self._server.close()
        for t in list(self._conns):
            t.cancel()
        for t in list(self._conns):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        pending: set[asyncio.Task[None]] = set()
        try:
            peer = await self._handshake(reader, writer)
            if peer is None:
                return
            while True:
                frame = await _read_frame(reader)
                t = asyncio.create_task(self._dispatch(peer, frame, writer))
                pending.add(t)
                t.add_done_callback(pending.discard)
        except (asyncio.IncompleteReadError, ConnectionError, PeerUnavailable, ValueError):
            pass
        finally:
            for t in pending:
                t.cancel()
            writer.close()
            self._conns.discard(task)

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> str | None:
        nonce = self._token_bytes(16)
        writer.write(_pack([PROTOCOL_VERSION, nonce, self.node_id]))
        try:
            version, peer, mac = await asyncio.wait_for(_read_frame(reader), 5)
        except (TimeoutError, ValueError, TypeError):
            self.refused += 1
            return None
        ok = (
            version == PROTOCOL_VERSION
            and isinstance(peer, str)
            and isinstance(mac, bytes)
            and any(hmac.compare_digest(mac, _mac(k, nonce, peer)) for k in self._keyring)
        )
        if not ok:
            self.refused += 1
            log.warning("rpc_refused", peer=peer, reason="bad secret or protocol version")
            writer.write(_pack(["refused", "bad cluster secret or protocol version"]))
            return None
        writer.write(_pack(["ok", self.node_id]))
        return str(peer)

    async def _dispatch(self, peer: str, frame: Any, writer: asyncio.StreamWriter) -> None:
        _, req_id, tag, hlc, body = frame
        try:
            self._hlc.observe(hlc)
            handler = self._handlers[Tag(tag)]
            msg = DECODERS[tag](body)
            result = await handler(peer, msg)
            reply = [REPLY, req_id, tag, self._hlc.now(), result]
        except SpineError as e:
            details = {**e.details, "field": e.field} if e.field else dict(e.details)
            reply = [ERROR, req_id, tag, self._hlc.now(), [e.code, e.message, details]]
        except Exception as e:  # a bug in a handler: answer, log, keep the connection
            log.exception("rpc_handler_failed", peer=peer, tag=tag)
            reply = [ERROR, req_id, tag, self._hlc.now(), ["internal", repr(e), {}]]
        with contextlib.suppress(ConnectionError, RuntimeError):
            writer.write(_pack(reply))


class _Connection:
    """One authenticated, multiplexed connection to a peer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.waiting: dict[int, asyncio.Future[Any]] = {}
        self.next_id = 0
        self.reader_task: asyncio.Task[None] | None = None
        self.closed = False

    def fail_all(self, exc: BaseException) -> None:
        self.closed = True
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(exc)
        self.waiting.clear()


class RpcClient:
    """Calls peers by node id; one lazily opened connection per peer, reopened after a failure."""

    def __init__(
        self,
        node_id: str,
        keyring: list[str],
        hlc: HLC,
        addresses: dict[str, tuple[str, int]],
        connect_timeout: float,
        local_addr: str | None = None,
        *,
        ssl: _ssl.SSLContext | None = None,
    ) -> None:
        self.node_id = node_id
        self._secret = keyring[0].encode()
        self._ssl = ssl
        self._hlc = hlc
        self.addresses = addresses
        self._connect_timeout = connect_timeout
        self._local_addr = local_addr
        self._conns: dict[str, _Connection] = {}
        self._connecting: dict[str, asyncio.Future[_Connection]] = {}

    async def call(self, node: str, msg: Message, timeout: float) -> Any:
        """Send `msg` to `node` and return the handler's reply; PeerUnavailable on any failure."""
        try:
            return await asyncio.wait_for(self._call(node, msg), timeout)
        except TimeoutError:
            raise PeerUnavailable(f"{node} did not answer in {timeout:.2f}s", node=node) from None
        except (OSError, asyncio.IncompleteReadError) as e:
            raise PeerUnavailable(f"{node}: {e}", node=node) from None

    async def _call(self, node: str, msg: Message) -> Any:
        conn = await self._connection(node)
        conn.next_id += 1
        req_id = conn.next_id
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        conn.waiting[req_id] = fut
        try:
            frame = [REQUEST, req_id, int(msg.TAG), self._hlc.now(), msg.to_wire()]
            conn.writer.write(_pack(frame))
            return await fut
        finally:
            conn.waiting.pop(req_id, None)

    async def _connection(self, node: str) -> _Connection:
        conn = self._conns.get(node)
        if conn is not None and not conn.closed:
            return conn
        pending = self._connecting.get(node)
        if pending is None:
            pending = asyncio.ensure_future(self._open(node))
            self._connecting[node] = pending
            pending.add_done_callback(lambda _f: self._connecting.pop(node, None))
        return await asyncio.shield(pending)

    async def _open(self, node: str) -> _Connection:
        if node not in self.addresses:
            raise PeerUnavailable(f"unknown node {node!r}", node=node)
        host, port = self.addresses[node]
        local = (self._local_addr, 0) if self._local_addr else None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, limit=MAX_FRAME, local_addr=local,
                                    ssl=self._ssl),
            self._connect_timeout,
        )
        try:
            _version, nonce, _server_id = await asyncio.wait_for(
                _read_frame(reader), self._connect_timeout
            )
            writer.write(_pack([PROTOCOL_VERSION, self.node_id,
                                _mac(self._secret, nonce, self.node_id)]))
            status, detail = await asyncio.wait_for(_read_frame(reader), self._connect_timeout)
        except BaseException:
            writer.close()
            raise
        if status != "ok":
            writer.close()
            raise PeerUnavailable(f"{node} refused the connection: {detail}", node=node)
        conn = _Connection(reader, writer)
        conn.reader_task = asyncio.create_task(self._read_replies(node, conn))
        self._conns[node] = conn
        return conn

    async def _read_replies(self, node: str, conn: _Connection) -> None:
        try:
            while True:
                kind, req_id, _tag, hlc, body = await _read_frame(conn.reader)
                fut = conn.waiting.get(req_id)
                if fut is None or fut.done():
                    continue
                try:
                    self._hlc.observe(hlc)
                except ClockSkew as e:
                    fut.set_exception(e)
                    continue
                if kind == REPLY:
                    fut.set_result(body)
                else:
                    fut.set_exception(_remote_error(node, *body))
        except (asyncio.IncompleteReadError, ConnectionError, OSError, ValueError) as e:
            conn.fail_all(PeerUnavailable(f"connection to {node} lost: {e!r}", node=node))
        except asyncio.CancelledError:
            conn.fail_all(PeerUnavailable(f"connection to {node} closed", node=node))
            raise
        finally:
            conn.closed = True
            conn.writer.close()
            if self._conns.get(node) is conn:
                del self._conns[node]

    def drop(self, node: str) -> None:
        """Close the connection to `node` (after a timeout, so the next call reconnects)."""
        conn = self._conns.pop(node, None)
        if conn is not None and conn.reader_task is not None:
            conn.reader_task.cancel()

    async def close(self) -> None:
        """Close every connection."""
        tasks = [c.reader_task for c in self._conns.values() if c.reader_task is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._conns.clear()
