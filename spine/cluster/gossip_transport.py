"""The sockets under gossip: one UDP endpoint and length-prefixed TCP frames (memberlist's
`NetTransport`).

A datagram carries one SWIM message as `swim_messages.encode` writes it. Over TCP (push-pull, and
the `Refuse` that may answer one) a frame is a 4-byte big-endian length followed by the same
encoding; a request and its reply share one connection, which then closes. Addresses are
"host:port" strings (IPv6 as "[addr]:port").
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
from collections.abc import Callable
from typing import Any

import structlog

from spine.core.swim_messages import DecodeError

log = structlog.get_logger("spine.gossip")

__all__ = [
    "MAX_FRAME", "TRANSPORT_ERRORS", "DatagramEndpoint", "frame", "read_frame", "request",
    "resolve", "split_address",
]

_FRAME = struct.Struct(">I")
MAX_FRAME = 16 * 1024 * 1024  # a push-pull of ~100k members; anything larger is not ours

TRANSPORT_ERRORS = (OSError, TimeoutError, asyncio.IncompleteReadError, DecodeError, ValueError)
"""What a peer that is down, slow or not speaking our protocol can make a TCP exchange raise."""


def split_address(address: str) -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port"; ValueError if it is neither."""
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"not a host:port address: {address!r}")
    return host.strip("[]"), int(port)


def resolve(address: str) -> tuple[str, int]:
    """`split_address`, with a host name looked up (blocking: do it once per address)."""
    host, port = split_address(address)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        host = str(socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0][4][0])
    return host, port


def frame(data: bytes) -> bytes:
    """One length-prefixed TCP frame."""
    return _FRAME.pack(len(data)) + data


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """Read one length-prefixed frame; DecodeError if it claims more than MAX_FRAME."""
    (size,) = _FRAME.unpack(await reader.readexactly(_FRAME.size))
    if size > MAX_FRAME:
        raise DecodeError(f"gossip frame of {size} bytes exceeds {MAX_FRAME}")
    return await reader.readexactly(size)


async def request(
    address: str, payload: bytes, want_reply: bool, local_host: str | None = None
) -> bytes | None:
    """Send one frame to `address` over a fresh connection (from `local_host`, the node's own
    address, so that address-based firewall rules see the node) and, if asked, read the one
    reply frame. The caller bounds the time (TRANSPORT_ERRORS on failure)."""
    host, port = split_address(address)
    local = (local_host, 0) if local_host and local_host != "0.0.0.0" else None
    reader, writer = await asyncio.open_connection(host, port, local_addr=local)
    try:
        writer.write(frame(payload))
        await writer.drain()
        return await read_frame(reader) if want_reply else None
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
