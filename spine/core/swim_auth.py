"""Gossip authentication: every datagram and push-pull frame sealed with the cluster secret
(memberlist's keyring, with a MAC in place of its encryption; issue 14).

The envelope is `channel (1 byte) | sender's wall clock, ms (8 bytes) | SWIM message | MAC`,
where MAC = HMAC-SHA256(gossip key, channel | clock | [request MAC] | message), truncated to
16 bytes. It is checked, in constant time, before a single byte of the message is unpacked; a
packet that fails is dropped with a reason (`AuthError.reason`) for the shell to count.

- Keys. The gossip key is HMAC-SHA256(secret, "spine/gossip/v1"), not the secret itself: a MAC
  made for gossip can never pass for one the RPC handshake checks (domain separation). A node
  signs with the first secret of `cluster.keyring()` and accepts any of them, so the secret can
  be rotated without a flag day: add the new one everywhere as accepted, then make it the
  signing one, then drop the old.
- Channels. The channel byte is covered by the MAC and must be the one the receiver expects: a
  datagram cannot be replayed as a push-pull request, nor a request as a reply. A reply (the
  push-pull answer or a `Refuse`) also covers the MAC of the request it answers, so it is
  accepted only on the exchange that asked for it.
- Replay. What this gives, and why it is enough:
  1. a packet whose clock is further than `window_ms` (clock.max_offset plus a margin) from ours
     either way is dropped as stale, so a capture is useless after that;
  2. within the window each receiver accepts a given datagram or request once (a bounded cache
     of the MACs it has seen; once full, the oldest are forgotten and only the idempotence below
     is left);
  3. a packet captured on its way to one node and replayed to another within the window is
     harmless because SWIM's messages are idempotent given incarnations: an update applies only
     if it supersedes what the receiver holds, so an old one is ignored; a Ping names its target
     node; an Ack or a Nack counts only for the probe in flight with that sequence number from
     the target or a helper that probe asked (and each node starts its sequence numbers at a
     random point); a relayed ping goes only to a member, at the address we know for it.
  What it does not give: confidentiality (gossip says who is up and where, never data), nor
  protection from a node that holds the secret; against those the decoder's bounds and the caps
  in `Swim` keep a lying member from doing more than lie.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from collections.abc import Sequence

from spine.core.swim_messages import DecodeError

__all__ = ["MAC_SIZE", "OVERHEAD", "AuthError", "Channel", "GossipAuth", "gossip_key"]

_HEADER = struct.Struct(">BQ")
MAC_SIZE = 16
OVERHEAD = _HEADER.size + MAC_SIZE
"""Bytes the envelope adds to a SWIM message."""
_DOMAIN = b"spine/gossip/v1"
_MAX_CLOCK = 2**63 - 1


class Channel(enum.IntEnum):
    """Where a sealed packet travels; part of what the MAC covers."""

    DATAGRAM = 1
    REQUEST = 2  # a push-pull over TCP
    REPLY = 3  # its answer on the same connection: a push-pull or a Refuse


class AuthError(DecodeError):
    """A gossip packet that failed authentication; `reason` labels the drop counter."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def gossip_key(secret: str) -> bytes:
    """The gossip MAC key derived from a cluster secret (never the secret itself)."""
    return hmac.new(secret.encode(), _DOMAIN, hashlib.sha256).digest()


class GossipAuth:
    """Seals and opens gossip packets under a keyring, with a freshness window and a replay
    cache; pure (the caller passes its wall clock in milliseconds)."""

    def __init__(self, secrets: Sequence[str], window_ms: int, replay_cap: int = 16_384) -> None:
        if not secrets:
            raise ValueError("gossip needs at least one secret")
        # Keyed HMAC states, copied per packet: the key schedule is paid once.
        self._macs = [hmac.new(gossip_key(s), digestmod=hashlib.sha256) for s in secrets]
        self.window_ms = window_ms
        self._replay_cap = replay_cap
        self._seen: dict[bytes, int] = {}  # MAC -> the packet's clock; insertion ordered

    def _mac(self, i: int, header: bytes, bound_to: bytes, payload: bytes) -> bytes:
        h = self._macs[i].copy()
        h.update(header)
        h.update(bound_to)
        h.update(payload)
        return h.digest()[:MAC_SIZE]

    def seal(self, channel: Channel, payload: bytes, now_ms: int, bound_to: bytes = b"") -> bytes:
        """`payload` in an envelope signed with the first key; a REPLY passes the request's MAC
        as `bound_to`."""
        header = _HEADER.pack(channel, min(max(now_ms, 0), _MAX_CLOCK))
        return header + payload + self._mac(0, header, bound_to, payload)

    def open(
        self, channel: Channel, data: bytes, now_ms: int, bound_to: bytes = b""
    ) -> tuple[bytes, bytes]:
        """The message inside `data` and its MAC; AuthError (with a reason) if the envelope is
        malformed, for another channel, signed with no key we hold, stale, or seen before."""
        if len(data) < OVERHEAD + 1:
            raise AuthError("unauthenticated", f"gossip packet of {len(data)} bytes is too short")
        header, payload, mac = data[:_HEADER.size], data[_HEADER.size:-MAC_SIZE], data[-MAC_SIZE:]
        if not any(hmac.compare_digest(mac, self._mac(i, header, bound_to, payload))
                   for i in range(len(self._macs))):
            raise AuthError("unauthenticated", "gossip packet with a bad MAC")
        kind, clock = _HEADER.unpack(header)
        if kind != channel:
            raise AuthError("unexpected", f"gossip packet for channel {kind}, not {channel}")
        if abs(clock - now_ms) > self.window_ms:
            raise AuthError("stale", f"gossip packet stamped {clock - now_ms} ms from our clock")
        if channel is not Channel.REPLY:
            self._remember(mac, clock, now_ms)
        return payload, mac

    def _remember(self, mac: bytes, clock: int, now_ms: int) -> None:
        if mac in self._seen:
            raise AuthError("replayed", "gossip packet seen before")
        seen = self._seen
        # Forget what the window check would refuse anyway, oldest first, and past the cap.
        while seen:
            old = next(iter(seen))
            if len(seen) < self._replay_cap and now_ms - seen[old] <= self.window_ms:
                break
            del seen[old]
        seen[mac] = clock
