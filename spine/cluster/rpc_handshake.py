"""Internal RPC handshake: mutual challenge–response over the cluster keyring, then session keys.

    server → client  HELLO  [HANDSHAKE_VERSION, PROTOCOL_VERSION, server nonce, server id]
    client → server  AUTH   [HANDSHAKE_VERSION, PROTOCOL_VERSION, client id, client nonce, proof]
    server → client  ["ok", server proof]  or  ["refused", reason]

Each proof is HMAC-SHA256 under a root key derived from one cluster secret (labelled, so no RPC
MAC can be mistaken for a gossip one) over a role label and the transcript: both versions, both
node ids and both fresh nonces. The client signs with the first secret of its keyring; the server
accepts any secret of its own keyring (a rotation in progress, as memberlist's keyring does) and
proves itself under the same one, so neither side can be impersonated or replayed by someone
without a secret. Session keys, one per direction, come from that root and the transcript
(HKDF-style expand), and `spine.cluster.rpc_frames.SealedChannel` MACs every later frame with
them. Every handshake frame is capped at `HANDSHAKE_MAX` bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Any

from spine.cluster.rpc_frames import pack_plain, read_frame
from spine.core.errors import PeerUnavailable, ProtocolError
from spine.core.messages import PROTOCOL_VERSION

HANDSHAKE_VERSION = 2  # 1 was the client-only HMAC over the server nonce
NONCE_LEN = 32
PROOF_LEN = 32
MAX_NODE_ID = 256
_ROOT_LABEL = b"spine/rpc/v2 root"


class HandshakeRefused(ProtocolError):
    """The peer does not hold a secret of our keyring, or speaks another protocol version."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message, reason=reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Session:
    """An authenticated connection's peer and its two frame keys."""

    peer: str
    send_key: bytes
    recv_key: bytes


def root_key(secret: str) -> bytes:
    """The RPC key derived from one cluster secret (domain-separated from gossip's use of it)."""
    return hmac.new(secret.encode(), _ROOT_LABEL, hashlib.sha256).digest()


def transcript(server_id: str, client_id: str, server_nonce: bytes, client_nonce: bytes) -> bytes:
    """Everything both proofs and the session keys bind, each field length-prefixed."""
    parts = [struct.pack(">II", HANDSHAKE_VERSION, PROTOCOL_VERSION)]
    for f in (server_id.encode(), client_id.encode(), server_nonce, client_nonce):
        parts.append(struct.pack(">I", len(f)) + f)
    return b"".join(parts)


def proof(root: bytes, role: str, tr: bytes) -> bytes:
    """The MAC a side sends to show it holds `root`'s secret (`role`: client or server)."""
    return hmac.new(root, b"proof " + role.encode() + b"\0" + tr, hashlib.sha256).digest()


def session_keys(root: bytes, tr: bytes) -> tuple[bytes, bytes]:
    """(client→server key, server→client key) for this connection."""
    prk = hmac.new(root, b"session\0" + tr, hashlib.sha256).digest()
    c2s = hmac.new(prk, b"client to server\x01", hashlib.sha256).digest()
    s2c = hmac.new(prk, b"server to client\x01", hashlib.sha256).digest()
    return c2s, s2c


def _node_id(v: Any, what: str) -> str:
    if not isinstance(v, str) or not 0 < len(v) <= MAX_NODE_ID:
        raise ProtocolError(f"{what} must be a non-empty string of at most {MAX_NODE_ID}")
    return v


def _nonce(v: Any, what: str) -> bytes:
    if not isinstance(v, bytes) or len(v) != NONCE_LEN:
        raise ProtocolError(f"{what} must be {NONCE_LEN} bytes")
    return v


def _versions_match(hs: Any, proto: Any) -> bool:
    return bool(hs == HANDSHAKE_VERSION and proto == PROTOCOL_VERSION)


async def _send(writer: asyncio.StreamWriter, obj: Any) -> None:
    writer.write(pack_plain(obj))
    await writer.drain()


async def accept(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
    node_id: str, roots: list[bytes], nonce: bytes,
) -> Session:
    """Server side; HandshakeRefused or ProtocolError when the client fails it (the caller bounds
    the time)."""
    await _send(writer, [HANDSHAKE_VERSION, PROTOCOL_VERSION, nonce, node_id])
    auth = await read_frame(reader)
    if not isinstance(auth, list) or len(auth) != 5:
        raise ProtocolError("handshake answer must be a list of 5 items")
    hs, proto, peer, client_nonce, mac = auth
    if not _versions_match(hs, proto):
        await _send(writer, ["refused", "protocol version"])
        raise HandshakeRefused(f"client speaks handshake {hs!r}, protocol {proto!r}", "version")
    peer = _node_id(peer, "client id")
    tr = transcript(node_id, peer, nonce, _nonce(client_nonce, "client nonce"))
    want = [proof(r, "client", tr) for r in roots]
    ok = [r for r, w in zip(roots, want, strict=True)
          if isinstance(mac, bytes) and hmac.compare_digest(mac, w)]
    if not ok:
        await _send(writer, ["refused", "bad cluster secret"])
        raise HandshakeRefused(f"{peer} does not hold the cluster secret", "bad_secret")
    await _send(writer, ["ok", proof(ok[0], "server", tr)])
    c2s, s2c = session_keys(ok[0], tr)
    return Session(peer, send_key=s2c, recv_key=c2s)


async def connect(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
    node_id: str, expected_peer: str, root: bytes, nonce: bytes,
) -> Session:
    """Client side; PeerUnavailable when the server refuses us or fails to prove itself."""
    hello = await read_frame(reader)
    if not isinstance(hello, list) or len(hello) != 4:
        raise ProtocolError("handshake hello must be a list of 4 items")
    hs, proto, server_nonce, server_id = hello
    if not _versions_match(hs, proto):
        raise PeerUnavailable(
            f"{expected_peer} speaks handshake {hs!r}, protocol {proto!r}", node=expected_peer)
    server_id = _node_id(server_id, "server id")
    if server_id != expected_peer:
        raise PeerUnavailable(f"{expected_peer}'s address answered as {server_id!r}",
                              node=expected_peer)
    tr = transcript(server_id, node_id, _nonce(server_nonce, "server nonce"), nonce)
    await _send(writer, [HANDSHAKE_VERSION, PROTOCOL_VERSION, node_id, nonce,
                         proof(root, "client", tr)])
    answer = await read_frame(reader)
    if not isinstance(answer, list) or len(answer) != 2:
        raise ProtocolError("handshake verdict must be a list of 2 items")
    status, detail = answer
    if status != "ok":
        raise PeerUnavailable(f"{expected_peer} refused the connection: {str(detail)[:200]}",
                              node=expected_peer)
    if not isinstance(detail, bytes) or not hmac.compare_digest(
            detail, proof(root, "server", tr)):
        raise PeerUnavailable(f"{expected_peer} failed to prove it holds the cluster secret",
                              node=expected_peer)
    c2s, s2c = session_keys(root, tr)
    return Session(server_id, send_key=c2s, recv_key=s2c)
