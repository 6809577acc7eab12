"""The sockets under gossip: one UDP endpoint and length-prefixed TCP frames (memberlist's
`NetTransport`), and the sealed codec every packet goes through.

A datagram carries one SWIM message as `swim_messages.encode` writes it, sealed by `swim_auth`
(channel, clock, MAC). Over TCP (push-pull, and the `Refuse` that may answer one) a frame is a
4-byte big-endian length followed by the same sealed encoding; a request and its reply share one
connection, which then closes. Addresses are "host:port" strings (IPv6 as "[addr]:port").

What is bounded before the MAC is checked: a datagram's size (MAX_DATAGRAM_IN), a frame's size
(the caller's limit, from the member cap), and the time to read it (the caller's deadline).
Nothing is unpacked before the MAC passes. Drops are counted in `spine_gossip_dropped_total`
by reason and logged at most once per reason per `Drops.every` seconds. Host names are looked
up with the loop's resolver (`resolve`), never blocking the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import socket
import ssl as _ssl
import struct
from collections.abc import Callable, Coroutine
from typing import Any

import structlog

from spine.core.metrics import Registry
from spine.core.swim_auth import MAC_SIZE, AuthError, Channel, GossipAuth
from spine.core.swim_messages import (
    DEFAULT_MAX_MEMBERS,
    DecodeError,
    Message,
    PushPull,
    Refuse,
    decode,
    encode,
)
from spine.runtime import LinkTable

log = structlog.get_logger("spine.gossip")

__all__ = [
    "MAX_DATAGRAM_IN", "MAX_FRAME", "TRANSPORT_ERRORS", "Codec", "DatagramEndpoint", "Drops",
    "GossipSockets", "address_of", "answers_on_connection", "frame", "frame_limit", "ip_target",
    "read_frame", "request", "resolve", "split_address",
]

_FRAME = struct.Struct(">I")
MAX_FRAME = 16 * 1024 * 1024  # the most any caller may allow; anything larger is not ours
MAX_DATAGRAM_IN = 16 * 1024  # ours are ~1.4 KB; a bigger one is dropped before its MAC
_MEMBER_BYTES = 512  # a generous encoded member record (a real one is ~150 bytes)
_MAX_NAMES = 1024  # host names resolved and remembered
_MAX_HELD = 4096  # datagrams held back by link delays at once; past it they are dropped


def frame_limit(max_members: int) -> int:
    """The largest push-pull frame accepted from a cluster of at most `max_members`."""
    return min(MAX_FRAME, max_members * _MEMBER_BYTES + 64 * 1024)

TRANSPORT_ERRORS = (OSError, TimeoutError, asyncio.IncompleteReadError, DecodeError, ValueError)
"""What a peer that is down, slow or not speaking our protocol can make a TCP exchange raise."""


def split_address(address: str) -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port"; ValueError if it is neither."""
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"not a host:port address: {address!r}")
    return host.strip("[]"), int(port)


def ip_target(address: str) -> tuple[str, int] | None:
    """(ip, port) if `address` names an IP literal, None for a host name (see `resolve`)."""
    host, port = split_address(address)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None
    return host, port


async def resolve(address: str) -> tuple[str, int]:
    """`split_address`, with a host name looked up by the loop's resolver (off the loop)."""
    host, port = split_address(address)
    if ip_target(address) is None:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        host = str(infos[0][4][0])
    return host, port


def frame(data: bytes) -> bytes:
    """One length-prefixed TCP frame."""
    return _FRAME.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader, limit: int = MAX_FRAME) -> bytes:
    """Read one length-prefixed frame; AuthError("oversized") if it claims more than `limit`
    (read before its MAC can be checked, so the limit bounds what a stranger makes us hold)."""
    (size,) = _FRAME.unpack(await reader.readexactly(_FRAME.size))
    if size > min(limit, MAX_FRAME):
        raise AuthError("oversized", f"gossip frame of {size} bytes exceeds {limit}")
    return await reader.readexactly(size)


async def request(
    address: str, payload: bytes, want_reply: bool, local_host: str | None = None,
    limit: int = MAX_FRAME, ssl: _ssl.SSLContext | None = None,
) -> bytes | None:
    """Send one frame to `address` over a fresh connection (from `local_host`, the node's own
    address, so that address-based firewall rules see the node; over TLS with `ssl`) and, if
    asked, read the one reply frame. The caller bounds the time (TRANSPORT_ERRORS on failure)."""
    host, port = split_address(address)
    local = (local_host, 0) if local_host and local_host != "0.0.0.0" else None
    reader, writer = await asyncio.open_connection(host, port, local_addr=local, ssl=ssl)
    try:
        writer.write(frame(payload))
        await writer.drain()
        return await read_frame(reader, limit) if want_reply else None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


class DatagramEndpoint(asyncio.DatagramProtocol):
    """Hands each datagram and its source (host, port) to a callback."""

    def __init__(self, on_datagram: Callable[[bytes, Any], None]) -> None:
        self._on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a peer that is down: SWIM's timeouts already cover it.
        log.debug("gossip_udp_error", error=repr(exc))


class Drops:
    """Dropped gossip packets: counted by reason (`spine_gossip_dropped_total`), and logged at
    most once per reason every `every` seconds with how many were dropped meanwhile."""

    def __init__(self, registry: Registry | None, clock: Callable[[], float],
                 every: float = 10.0) -> None:
        self._clock = clock
        self.every = every
        self._total = None if registry is None else registry.counter(
            "spine_gossip_dropped_total",
            "gossip packets and updates dropped: unauthenticated, stale, replayed, oversized,"
            " malformed, unexpected, members_full, relays_full, unknown_target,"
            " absurd_incarnation, connections_full", ("reason",))
        self._counts: dict[str, int] = {}
        self._next_log: dict[str, float] = {}  # by reason: a fixed, small set

    def __call__(self, reason: str, src: str, detail: str = "") -> None:
        """Count one drop, and log it unless this reason was logged recently."""
        if self._total is not None:
            self._total.inc(reason)
        self._counts[reason] = self._counts.get(reason, 0) + 1
        now = self._clock()
        if now >= self._next_log.get(reason, -math.inf):
            self._next_log[reason] = now + self.every
            log.warning("gossip_dropped", reason=reason, src=src, detail=detail[:200],
                        dropped_since_last_log=self._counts[reason])
            self._counts[reason] = 0

    def get(self, reason: str) -> float:
        """How many were dropped for `reason` (0 without a registry)."""
        return 0.0 if self._total is None else self._total.get(reason)


class Codec:
    """SWIM messages sealed for a channel and opened from one: the MAC first (`swim_auth`),
    then the bounded decoder; `wall_ms` is the node's wall clock for the freshness window."""

    def __init__(self, auth: GossipAuth, wall_ms: Callable[[], int],
                 max_members: int = DEFAULT_MAX_MEMBERS) -> None:
        self.auth = auth
        self._wall_ms = wall_ms
        self.max_members = max_members

    def seal(self, channel: Channel, msg: Message, bound_to: bytes = b"") -> bytes:
        """The sealed wire form of `msg`."""
        return self.auth.seal(channel, encode(msg), self._wall_ms(), bound_to)

    def seal_with_mac(self, channel: Channel, msg: Message) -> tuple[bytes, bytes]:
        """`seal`, and the MAC a reply to it will be bound to."""
        data = self.seal(channel, msg)
        return data, data[-MAC_SIZE:]

    def open(self, channel: Channel, data: bytes, bound_to: bytes = b"") -> tuple[Message, bytes]:
        """The message in `data` and its MAC; AuthError or DecodeError (the project's
        `InvalidInput`) if it is oversized, unauthenticated, stale, replayed or malformed."""
        if channel is Channel.DATAGRAM and len(data) > MAX_DATAGRAM_IN:
            raise AuthError("oversized", f"gossip datagram of {len(data)} bytes")
        payload, mac = self.auth.open(channel, data, self._wall_ms(), bound_to)
        return decode(payload, self.max_members), mac


class GossipSockets:
    """One UDP endpoint and one TCP server on the gossip port, with every packet sealed and
    opened by `codec`: datagrams (Ping, PingReq, Ack, Nack) go to `on_message`; a push-pull
    request goes to `on_request`, whose answer is written back on the same connection; our own
    push-pulls (`push_pull`) hand their reply (a push-pull, or a Refuse) to `on_message`."""

    def __init__(
        self,
        host: str,
        port: int,
        codec: Codec,
        drops: Drops,
        *,
        io_timeout: float,
        frame_limit: int,
        on_message: Callable[[str, Message], None],
        on_request: Callable[[str, PushPull], Message | None],
        max_inbound: int = 32,
        ssl_server: _ssl.SSLContext | None = None,
        ssl_client: _ssl.SSLContext | None = None,
    ) -> None:
        """`ssl_server` / `ssl_client`: mutual TLS for the TCP push-pull (`tls.gossip`)."""
        self.host, self.port = host, port
        self._ssl_server, self._ssl_client = ssl_server, ssl_client
        self.codec, self.drops = codec, drops
        self.io_timeout, self.frame_limit, self.max_inbound = io_timeout, frame_limit, max_inbound
        self._on_message, self._on_request = on_message, on_request
        self._transport: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pulling: set[str] = set()  # addresses with a push-pull in flight
        self._resolved: dict[str, tuple[str, int]] = {}  # host names only, capped
        self._resolving: set[str] = set()
        self._inbound = 0
        # Test-only link delay and loss (`use_links`): off unless a node follows a link file.
        self._links: LinkTable | None = None
        self._link_peers: dict[str, str] = {}
        self._held: set[asyncio.TimerHandle] = set()

    def use_links(self, links: LinkTable, peers: dict[str, str]) -> None:
        """Delay or drop what is sent to a peer as `links` says (test-only); `peers` maps the
        gossip addresses of the peers it names to their node ids (others are never delayed).
        One-way: push-pull replies and what we receive are not delayed."""
        self._links, self._link_peers = links, dict(peers)

    def _link_delay(self, address: str) -> float | None:
        """Seconds to hold a packet to `address`, or None to drop it."""
        if self._links is None:
            return 0.0
        peer = self._link_peers.get(address)
        return 0.0 if peer is None else self._links.delay_for(peer)

    def _send_later(self, delay: float, data: bytes, target: tuple[str, int]) -> None:
        if len(self._held) >= _MAX_HELD:
            return  # a full queue drops, as a router's would
        handle: asyncio.TimerHandle

        def fire() -> None:
            self._held.discard(handle)
            if self._transport is not None:
                self._transport.sendto(data, target)

        handle = asyncio.get_running_loop().call_later(delay, fire)
        self._held.add(handle)

    def _sendto(self, delay: float, data: bytes, target: tuple[str, int]) -> None:
        if delay > 0:
            self._send_later(delay, data, target)
        elif self._transport is not None:
            self._transport.sendto(data, target)

    async def start(self) -> None:
        """Bind UDP and TCP on (host, port)."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: DatagramEndpoint(self._on_datagram), local_addr=(self.host, self.port))
        self._transport = transport
        try:
            self._server = await asyncio.start_server(
                self._serve, self.host, self.port, reuse_address=True, ssl=self._ssl_server,
                ssl_handshake_timeout=self.io_timeout if self._ssl_server else None)
        except BaseException:
            transport.close()
            self._transport = None
            raise

    async def close(self) -> None:
        """Stop serving, cancel every exchange in flight, close both sockets."""
        if self._server is not None:
            self._server.close()
        for handle in self._held:
            handle.cancel()
        self._held.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # ----------------------------------------------------------------------------- receive

    def _on_datagram(self, data: bytes, addr: Any) -> None:
        src = address_of(addr)
        try:
            msg, _ = self.codec.open(Channel.DATAGRAM, data)
        except AuthError as e:
            self.drops(e.reason, src, str(e))
            return
        except DecodeError as e:
            self.drops("malformed", src, str(e))
            return
        if isinstance(msg, PushPull | Refuse):  # TCP only: a Refuse must answer our push-pull
            self.drops("unexpected", src, type(msg).__name__)
            return
        try:
            self._on_message(src, msg)
        except Exception:  # never let one message take the endpoint down
            log.exception("gossip_message_failed", src=src, kind=type(msg).__name__)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        where = address_of(peer)
        if self._inbound >= self.max_inbound:
            self.drops("connections_full", where)
            writer.close()
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._inbound += 1
        try:
            data = await asyncio.wait_for(read_frame(reader, self.frame_limit), self.io_timeout)
            msg, mac = self.codec.open(Channel.REQUEST, data)
            if not isinstance(msg, PushPull) or msg.is_reply:
                self.drops("unexpected", where, type(msg).__name__)
                return
            reply = self._on_request(_push_pull_source(msg, where), msg)
            if reply is not None:
                writer.write(frame(self.codec.seal(Channel.REPLY, reply, mac)))
                await asyncio.wait_for(writer.drain(), self.io_timeout)
        except AuthError as e:
            self.drops(e.reason, where, str(e))
        except DecodeError as e:
            self.drops("malformed", where, str(e))
        except TRANSPORT_ERRORS as e:
            log.info("gossip_tcp_failed", peer=where, error=repr(e))
        except Exception:
            log.exception("gossip_tcp_failed", peer=where)
        finally:
            self._inbound -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._tasks.discard(task)

    # -------------------------------------------------------------------------------- send

    def send(self, address: str, msg: Message) -> None:
        """One sealed datagram to `address` (a host name is looked up off the loop first)."""
        if self._transport is None:
            return
        try:
            target = self._resolved.get(address) or ip_target(address)
        except ValueError as e:
            log.warning("gossip_bad_address", address=address, error=repr(e))
            return
        delay = self._link_delay(address)
        if delay is None:
            return  # lost on its link (test-only)
        data = self.codec.seal(Channel.DATAGRAM, msg)
        if target is not None:
            self._sendto(delay, data, target)
        elif address not in self._resolving:
            self._resolving.add(address)
            self._spawn(self._resolve_and_send(address, data, delay))

    async def _resolve_and_send(self, address: str, data: bytes, delay: float = 0.0) -> None:
        try:
            target = await asyncio.wait_for(resolve(address), self.io_timeout)
        except (OSError, ValueError, TimeoutError) as e:
            log.warning("gossip_bad_address", address=address, error=repr(e))
            return
        finally:
            self._resolving.discard(address)
        if len(self._resolved) >= _MAX_NAMES:
            self._resolved.clear()
        self._resolved[address] = target
        self._sendto(delay, data, target)

    def push_pull(self, address: str, msg: PushPull, local_host: str | None) -> None:
        """Start a push-pull exchange with `address` unless one is in flight."""
        if address in self._pulling:
            return
        delay = self._link_delay(address)
        if delay is not None:  # None: lost on its link (test-only)
            self._spawn(self._push_pull(address, msg, local_host, delay))

    async def _push_pull(
        self, address: str, msg: PushPull, local_host: str | None, delay: float = 0.0
    ) -> None:
        self._pulling.add(address)
        try:
            if delay > 0 and self._links is not None:
                await self._links.sleep(delay)
            data, mac = self.codec.seal_with_mac(Channel.REQUEST, msg)
            raw = await asyncio.wait_for(
                request(address, data, not msg.is_reply, local_host, self.frame_limit,
                        self._ssl_client),
                self.io_timeout)
            reply = None if raw is None else self.codec.open(Channel.REPLY, raw, mac)[0]
        except AuthError as e:
            self.drops(e.reason, address, str(e))
            return
        except DecodeError as e:
            self.drops("malformed", address, str(e))
            return
        except TRANSPORT_ERRORS as e:
            log.debug("push_pull_failed", peer=address, error=repr(e))
            return
        except Exception:
            log.exception("push_pull_failed", peer=address)
            return
        finally:
            self._pulling.discard(address)
        if reply is None:
            return
        if answers_on_connection(reply):  # a push-pull reply, or the Refuse of our request
            self._on_message(address, reply)
        else:
            self.drops("unexpected", address, type(reply).__name__)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _push_pull_source(msg: PushPull, where: str) -> str:
    """The sender's gossip address: its own record in the push-pull, else the socket peer."""
    return next((m.address for m in msg.members if m.node_id == msg.sender), where)


def address_of(addr: Any) -> str:
    """A socket address as "host:port" (IPv6 in brackets)."""
    if not isinstance(addr, tuple) or len(addr) < 2:
        return str(addr)
    host = str(addr[0])
    return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"


def answers_on_connection(msg: Message) -> bool:
    """Whether `msg` is the answer a push-pull request waits for on its own connection."""
    return isinstance(msg, Refuse) or (isinstance(msg, PushPull) and msg.is_reply)
