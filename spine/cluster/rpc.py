"""Internal RPC: sealed msgpack frames over persistent, multiplexed TCP connections.

One connection per peer carries many concurrent requests, matched to replies by request id. A
connection starts with the mutual handshake of `spine.cluster.rpc_handshake` (bounded in size and
time, and only `max_pending_handshakes` at once); every later frame is MAC'd per direction
(`spine.cluster.rpc_frames`) and checked before it is unpacked, and a frame that fails closes the
connection. Sends wait for the transport to drain (backpressure); a message past the frame limit
fails only its own call, with FrameTooLarge, on the side that would have sent it. Every request
and reply carries the sender's HLC, which the receiver observes (and refuses when it is too far
ahead: `clock.max_offset`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as _ssl
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from spine.cluster import rpc_handshake
from spine.cluster.rpc_frames import (
    DEFAULT_MAX_FRAME,
    ERROR,
    HANDSHAKE_MAX,
    REPLY,
    REQUEST,
    Frame,
    SealedChannel,
    read_frame,
)
from spine.core.clock import HLC
from spine.core.errors import (
    ERRORS_BY_CODE,
    ClockSkew,
    FrameTooLarge,
    InvalidInput,
    PeerUnavailable,
    ProtocolError,
    SpineError,
)
from spine.core.messages import Message, Tag, decode
from spine.core.metrics import Registry
from spine.runtime import LinkTable

__all__ = [
    "DEFAULT_MAX_FRAME", "ERROR", "HANDSHAKE_MAX", "REPLY", "REQUEST", "Handler", "RpcClient",
    "RpcServer", "read_frame",
]

# The StreamReader buffers at most about twice this before it stops reading the socket; frames
# larger than this are still read whole (readexactly resumes the transport as it waits).
_STREAM_LIMIT = 64 * 1024

Handler = Callable[[str, Any], Awaitable[Any]]

log = structlog.get_logger("spine.rpc")


def _remote_error(node: str, body: Any) -> SpineError:
    """Rebuild the error a peer answered; unknown codes become PeerUnavailable."""
    if not (isinstance(body, list) and len(body) == 3 and isinstance(body[0], str)
            and isinstance(body[1], str) and isinstance(body[2], dict)):
        return PeerUnavailable(f"{node}: malformed error reply", node=node, code="protocol")
    code, message, details = body
    cls = ERRORS_BY_CODE.get(code)
    if cls is None or cls is PeerUnavailable:
        return PeerUnavailable(f"{node}: {code}: {message}", node=node, code=code)
    kw = {k: v for k, v in details.items() if isinstance(k, str) and k not in ("message", "field")}
    field = details.get("field")
    return cls(message, field=field if isinstance(field, str) else None, **kw)


def _sent(sent: list[bool]) -> dict[str, Any]:
    return {"sent": True} if sent else {}


def _error_reply(frame: Frame, hlc: int, e: SpineError) -> list[Any]:
    details = {**e.details, "field": e.field} if e.field else dict(e.details)
    return [ERROR, frame.req_id, frame.tag, hlc, [e.code, e.message, details]]


class RpcServer:
    """Accepts authenticated peer connections and dispatches requests to a handler table."""

    def __init__(
        self,
        node_id: str,
        keyring: list[str],
        hlc: HLC,
        handlers: dict[Tag, Handler],
        token_bytes: Callable[[int], bytes],
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        handshake_timeout: float = 5.0,
        max_pending_handshakes: int = 64,
        max_inflight: int = 1024,
        registry: Registry | None = None,
    ) -> None:
        self.node_id = node_id
        self._roots = [rpc_handshake.root_key(s) for s in keyring]
        self._hlc = hlc
        self._handlers = handlers
        self._token_bytes = token_bytes
        self._max_frame = max_frame
        self._handshake_timeout = handshake_timeout
        self._max_pending = max_pending_handshakes
        self._max_inflight = max_inflight
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self.pending_handshakes = 0
        reg = registry if registry is not None else Registry()
        self.refused = reg.counter(
            "spine_rpc_refused_total",
            "inbound RPC connections closed before finishing the handshake, by reason",
            ("reason",))
        self.bad_frames = reg.counter(
            "spine_rpc_bad_frames_total",
            "authenticated RPC connections closed for a frame that failed its MAC, size or"
            " shape check", ("reason",))
        reg.gauge("spine_rpc_pending_handshakes",
                  "inbound RPC connections that have not finished the handshake", (),
                  lambda: {(): float(self.pending_handshakes)})

    async def start(self, host: str, port: int, *, ssl: _ssl.SSLContext | None = None) -> None:
        """Listen on (host, port); with `ssl`, every connection is TLS first (mutual if it asks)."""
        self._server = await asyncio.start_server(
            self._serve, host, port, limit=_STREAM_LIMIT, ssl=ssl,
            ssl_handshake_timeout=self._handshake_timeout if ssl is not None else None)

    @property
    def port(self) -> int:
        """The port listened on (after start)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

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
        if task is not None:
            self._conns.add(task)
        try:
            if self.pending_handshakes >= self._max_pending:
                # Past the cap nothing is read or answered: the socket is reset at once.
                self.refused.inc("too_many_handshakes")
                writer.transport.abort()
                return
            session = await self._handshake(reader, writer)
            if session is not None:
                try:
                    await self._serve_frames(session, reader, writer)
                finally:
                    # Replies still queued are for calls that fail anyway; close() would keep
                    # the socket until a peer that stopped reading took them.
                    writer.transport.abort()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except asyncio.CancelledError:
            pass  # stop(): asyncio's connection callback must not see a cancelled task
        finally:
            writer.close()
            if task is not None:
                self._conns.discard(task)

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> rpc_handshake.Session | None:
        self.pending_handshakes += 1
        try:
            async with asyncio.timeout(self._handshake_timeout):
                return await rpc_handshake.accept(
                    reader, writer, self.node_id, self._roots, self._token_bytes(32))
        except TimeoutError:
            self.refused.inc("timeout")
        except asyncio.IncompleteReadError:
            self.refused.inc("closed")
        except rpc_handshake.HandshakeRefused as e:
            self.refused.inc(e.reason)
            log.warning("rpc_refused", peer=writer.get_extra_info("peername"), reason=e.message)
        except ProtocolError as e:
            self.refused.inc("malformed")
            log.info("rpc_refused", peer=writer.get_extra_info("peername"), reason=e.message)
        finally:
            self.pending_handshakes -= 1
        return None

    async def _serve_frames(
        self, session: rpc_handshake.Session, reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        chan = SealedChannel(session.send_key, session.recv_key, self._max_frame)
        slots = asyncio.Semaphore(self._max_inflight)
        pending: set[asyncio.Task[None]] = set()

        def done(t: asyncio.Task[None]) -> None:
            pending.discard(t)
            slots.release()

        try:
            while True:
                # A peer with max_inflight requests unanswered is not read from until one is
                # answered: TCP then pushes back on it instead of tasks piling up here.
                await slots.acquire()
                try:
                    frame = await chan.read(reader)
                    if frame.kind != REQUEST:
                        raise ProtocolError(f"a server takes requests, not kind {frame.kind}")
                except BaseException:
                    slots.release()
                    raise
                t = asyncio.create_task(self._dispatch(session.peer, frame, chan, writer))
                pending.add(t)
                t.add_done_callback(done)
        except ProtocolError as e:  # FrameTooLarge from a peer is a PeerUnavailable, not this
            self.bad_frames.inc(str(e.details.get("reason", "malformed")))
            log.warning("rpc_bad_frame", peer=session.peer, error=e.message)
        except FrameTooLarge as e:
            self.bad_frames.inc("too_large")
            log.warning("rpc_bad_frame", peer=session.peer, error=e.message)
        finally:
            for t in pending:
                t.cancel()

    async def _dispatch(
        self, peer: str, frame: Frame, chan: SealedChannel, writer: asyncio.StreamWriter
    ) -> None:
        reply = await self._answer(peer, frame)
        try:
            # Room first, then seal and write with no await between (sequence numbers follow
            # write order): a peer that stops reading holds replies here, not in our buffer.
            if writer.transport.get_write_buffer_size():
                await writer.drain()
        except (OSError, RuntimeError):
            return  # the connection is going away; its reader sees it
        try:
            data = chan.seal(reply)
        except FrameTooLarge as e:  # the caller gets this error instead of a reply it can't take
            data = chan.seal(_error_reply(frame, self._hlc.now(), e))
        except Exception as e:  # a handler returned something msgpack cannot carry: a bug
            log.exception("rpc_reply_unpackable", peer=peer, tag=frame.tag)
            data = chan.seal(_error_reply(frame, self._hlc.now(),
                                          SpineError(f"unpackable reply: {e!r}")))
        writer.write(data)

    async def _answer(self, peer: str, frame: Frame) -> list[Any]:
        try:
            self._hlc.observe(frame.hlc)
            msg = decode(frame.tag, frame.body)
            handler = self._handlers.get(msg.TAG)
            if handler is None:
                raise InvalidInput(f"this node serves no {msg.TAG.name} requests", field="tag")
            result = await handler(peer, msg)
            return [REPLY, frame.req_id, frame.tag, self._hlc.now(), result]
        except SpineError as e:
            return _error_reply(frame, self._hlc.now(), e)
        except Exception as e:  # a bug in a handler: answer, log, keep the connection
            log.exception("rpc_handler_failed", peer=peer, tag=frame.tag)
            return _error_reply(frame, self._hlc.now(), SpineError(repr(e)))


class _Connection:
    """One authenticated, multiplexed connection to a peer."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, chan: SealedChannel
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.chan = chan
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
        token_bytes: Callable[[int], bytes],
        ssl: _ssl.SSLContext | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        registry: Registry | None = None,
        links: LinkTable | None = None,
    ) -> None:
        """`links`: test-only per-peer delay and loss of outgoing requests (`LinkTable`)."""
        self.node_id = node_id
        self._root = rpc_handshake.root_key(keyring[0])
        self._hlc = hlc
        self.addresses = addresses
        self._connect_timeout = connect_timeout
        self._local_addr = local_addr
        self._token_bytes = token_bytes
        self._ssl = ssl
        self._max_frame = max_frame
        self.links = links
        self._conns: dict[str, _Connection] = {}
        self._connecting: dict[str, asyncio.Future[_Connection]] = {}
        reg = registry if registry is not None else Registry()
        self.bad_frames = reg.counter(
            "spine_rpc_bad_replies_total",
            "outbound RPC connections closed for a reply frame that failed its MAC, size or"
            " shape check", ("reason",))

    async def call(self, node: str, msg: Message, timeout: float) -> Any:
        """Send `msg` to `node` and return the handler's reply; PeerUnavailable on any failure
        (FrameTooLarge, a kind of it, when the request or its reply is past the frame limit).
        A failure after the request was written carries `sent=True`: the peer may have acted
        on it (the outcome is unknown)."""
        sent: list[bool] = []
        call = self._call if self.links is None else self._linked_call
        try:
            return await asyncio.wait_for(call(node, msg, sent), timeout)
        except TimeoutError:
            raise PeerUnavailable(f"{node} did not answer in {timeout:.2f}s", node=node,
                                  **_sent(sent)) from None
        except (OSError, asyncio.IncompleteReadError, ProtocolError) as e:
            raise PeerUnavailable(f"{node}: {e}", node=node, **_sent(sent)) from None
        except PeerUnavailable as e:
            if sent and "code" not in e.details:
                e.details["sent"] = True
            raise

    async def _linked_call(self, node: str, msg: Message, sent: list[bool]) -> Any:
        """`_call` after the link's delay (test-only, `LinkTable`). The wait holds nothing: no
        connection, no request id, no lock, so calls on undelayed links pass it by. A lost
        request was, as far as the caller can tell, written: it waits out its timeout and
        fails with `sent`, as after a frame the network dropped. Replies are not delayed."""
        assert self.links is not None
        delay = self.links.delay_for(node)
        if delay is None:
            sent.append(True)
            await asyncio.get_running_loop().create_future()  # until the caller's timeout
        elif delay > 0:
            await self.links.sleep(delay)
        return await self._call(node, msg, sent)

    async def _call(self, node: str, msg: Message, sent: list[bool]) -> Any:
        conn = await self._connection(node)
        # Backpressure: wait for room in the send buffer before writing, so a peer that stops
        # reading holds callers back, and a caller that gives up leaves nothing queued.
        if conn.writer.transport.get_write_buffer_size():
            await conn.writer.drain()
        if conn.closed:
            raise PeerUnavailable(f"connection to {node} closed", node=node)
        conn.next_id += 1
        req_id = conn.next_id
        # Sealed (and size-checked) before anything is registered or written: a request past
        # the limit fails here, for this caller only. No await from here to the write.
        data = conn.chan.seal([REQUEST, req_id, int(msg.TAG), self._hlc.now(), msg.to_wire()])
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        conn.waiting[req_id] = fut
        try:
            conn.writer.write(data)
            sent.append(True)
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
            asyncio.open_connection(host, port, limit=_STREAM_LIMIT, local_addr=local,
                                    ssl=self._ssl),
            self._connect_timeout,
        )
        try:
            async with asyncio.timeout(self._connect_timeout):
                session = await rpc_handshake.connect(
                    reader, writer, self.node_id, node, self._root, self._token_bytes(32))
        except BaseException:
            writer.close()
            raise
        conn = _Connection(reader, writer,
                           SealedChannel(session.send_key, session.recv_key, self._max_frame))
        conn.reader_task = asyncio.create_task(self._read_replies(node, conn))
        self._conns[node] = conn
        return conn

    async def _read_replies(self, node: str, conn: _Connection) -> None:
        try:
            while True:
                frame = await conn.chan.read(conn.reader)
                if frame.kind == REQUEST:
                    raise ProtocolError("a client connection carries no requests")
                fut = conn.waiting.get(frame.req_id)
                if fut is None or fut.done():
                    continue  # the caller gave up (timeout), or an id we never sent
                try:
                    self._hlc.observe(frame.hlc)
                except ClockSkew as e:
                    fut.set_exception(e)
                    continue
                if frame.kind == REPLY:
                    fut.set_result(frame.body)
                else:
                    fut.set_exception(_remote_error(node, frame.body))
        except FrameTooLarge as e:
            # Only a peer with a larger limit sends one; which call it answered is unknown.
            self.bad_frames.inc("too_large")
            conn.fail_all(e)
        except ProtocolError as e:
            self.bad_frames.inc(str(e.details.get("reason", "malformed")))
            log.warning("rpc_bad_reply", peer=node, error=e.message)
            conn.fail_all(PeerUnavailable(f"connection to {node} closed: {e.message}", node=node))
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as e:
            conn.fail_all(PeerUnavailable(f"connection to {node} lost: {e!r}", node=node))
        except asyncio.CancelledError:
            conn.fail_all(PeerUnavailable(f"connection to {node} closed", node=node))
            raise
        finally:
            conn.closed = True
            conn.writer.transport.abort()  # queued requests belong to calls failed above
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
