"""Ports for a cluster of N nodes on loopback: node i listens for HTTP on `base + i`, RPC on
`base + RPC_OFFSET + i` and gossip (TCP and UDP) on `base + GOSSIP_OFFSET + i`, each on its own
host (127.0.0.1 unless a harness gives each node an address of its own)."""

from __future__ import annotations

import random
import socket
from collections.abc import Sequence
from pathlib import Path

HOST = "127.0.0.1"
RPC_OFFSET = 1000
GOSSIP_OFFSET = 2000
# Port ranges that clusters started outside the harnesses use (`spine up` defaults to 8788, the
# benchmark to 18788): a cluster started there later must not find our nodes on its ports.
RESERVED = [range(b, b + GOSSIP_OFFSET + 32) for b in (8788, 18788)]


def bindable(port: int, kind: int, *, host: str = HOST, reuse: bool = False) -> bool:
    """Whether a socket of `kind` (SOCK_STREAM, SOCK_DGRAM) can bind `host:port` now."""
    with socket.socket(socket.AF_INET, kind) as s:
        if reuse:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def listeners(base: int, count: int) -> list[tuple[int, int, int]]:
    """(node index, port, socket kind) of every listener a cluster on `base` opens."""
    out: list[tuple[int, int, int]] = []
    for i in range(count):
        out.append((i, base + i, socket.SOCK_STREAM))
        out.append((i, base + RPC_OFFSET + i, socket.SOCK_STREAM))
        out.append((i, base + GOSSIP_OFFSET + i, socket.SOCK_STREAM))
        out.append((i, base + GOSSIP_OFFSET + i, socket.SOCK_DGRAM))
    return out


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing ports (ip_local_port_range)."""
    try:
        lo, hi = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(lo), int(hi)
    except (OSError, ValueError):
        return 32768, 60999


def usable(base: int, count: int, hosts: Sequence[str] | None = None) -> bool:
    """Every listener of `count` nodes on `base` is free on its node's host and on 127.0.0.1
    (no wildcard listener may shadow a node's address), and none is in a reserved range."""
    spots = listeners(base, count)
    if max(p for _, p, _ in spots) > 65535:
        return False
    if any(p in r for _, p, _ in spots for r in RESERVED):
        return False
    for i, port, kind in spots:
        host = hosts[i] if hosts is not None and i < len(hosts) else HOST
        if not bindable(port, kind, host=host):
            return False
        if host != HOST and not bindable(port, kind):
            return False
    return True


def free_base_port(
    count: int, rng: random.Random | None = None, hosts: Sequence[str] | None = None
) -> int:
    """A base port B such that every listener of `count` nodes is free (see `usable`); node i
    on `hosts[i]` (default 127.0.0.1).

    Candidates come from below the kernel's ephemeral range, so that an outgoing connection
    cannot take a node's port while the node is down between `kill` and `start`. If none is
    free there, ports the kernel hands out for port 0 are tried as bases.
    """
    rng = rng or random.Random()
    lo, _hi = ephemeral_range()
    top = min(lo, 65536) - GOSSIP_OFFSET - count - 1
    for _ in range(300):
        base = rng.randrange(10000, max(10001, top))
        if usable(base, count, hosts):
            return base
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            base = s.getsockname()[1]
        if usable(base, count, hosts):
            return base
    raise RuntimeError(f"no free range of ports for {count} nodes")
