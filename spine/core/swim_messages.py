"""SWIM's members and wire messages (SWIM §4–§5, Lifeguard's Nack), and their codec.

A datagram is one tag byte followed by a msgpack list of the message's fields, in order; the same
holds for the push-pull body sent over TCP. Tags and state codes are append-only: never reuse or
renumber one. Decoders read the fields they know and ignore any a newer peer appends, so a field
may be added at the end of a message without a new tag.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack

from spine.core.errors import InvalidInput

Meta = tuple[tuple[str, str], ...]
"""A member's self-description (zone, ring state, cluster, shard count, embedder fingerprint):
key-sorted pairs, opaque to SWIM except through the identity check hook."""


def meta_of(items: Mapping[str, str] | Iterable[tuple[str, str]]) -> Meta:
    """The canonical (key-sorted, immutable) form of a meta mapping."""
    pairs = items.items() if isinstance(items, Mapping) else items
    return tuple(sorted((str(k), str(v)) for k, v in pairs))


class MemberState(enum.Enum):
    """A member's liveness as one node sees it; the value is the stable wire code."""

    ALIVE = 0
    SUSPECT = 1
    DEAD = 2
    LEFT = 3


@dataclass(frozen=True, slots=True)
class Member:
    """What one node believes about another: who, where, which incarnation, in which state."""

    node_id: str
    address: str  # "host:port" of its gossip endpoint
    incarnation: int
    state: MemberState
    meta: Meta = ()

    def meta_dict(self) -> dict[str, str]:
        """The meta as a fresh dict."""
        return dict(self.meta)


@dataclass(frozen=True, slots=True)
class Update:
    """One piggybacked assertion about a member, and the node that made it.

    `by` is the member itself for ALIVE and LEFT, and the accuser for SUSPECT and DEAD: Lifeguard
    counts independent accusers to shorten a suspicion, so the accuser must travel with it.
    An empty `by` is an accuser unknown (learnt from a push-pull), which never counts.
    """

    member: Member
    by: str


@dataclass(frozen=True, slots=True)
class Ping:
    """Direct probe (SWIM §3.1). `target` is the node id meant, so a reused address is caught."""

    seq: int
    sender: str
    target: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class PingReq:
    """Ask a helper to probe `target` on our behalf and relay its ack (SWIM §3.1, k helpers)."""

    seq: int
    sender: str
    target: str
    target_address: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    """Answer to a Ping, or a helper relaying the target's answer under the requester's `seq`."""

    seq: int
    sender: str
    updates: tuple[Update, ...] = ()


@dataclass(frozen=True, slots=True)
class Nack:
    """A helper's 'I could not reach the target either' (Lifeguard §IV-A): it proves the helper,
    and hence our own link, healthy, so the prober does not blame itself for the failure."""

    seq: int
    sender: str


@dataclass(frozen=True, slots=True)
class PushPull:
    """Full state for the periodic TCP anti-entropy exchange; a request asks for the peer's."""

    sender: str
    members: tuple[Member, ...]
    is_reply: bool = False


@dataclass(frozen=True, slots=True)
class Refuse:
    """'Your identity does not match this cluster': sent back to a member the check refused."""

    sender: str
    reason: str


Message = Ping | PingReq | Ack | Nack | PushPull | Refuse


class Outbound(NamedTuple):
    """A message to send: PushPull over TCP, everything else as one UDP datagram."""

    address: str
    msg: Message


@dataclass(frozen=True, slots=True)
class Transition:
    """A member's state (or meta, when old == new) changed in this node's view."""

    at: float
    node_id: str
    old: MemberState | None  # None: first heard of
    new: MemberState | None  # None: forgotten (reaped)
    incarnation: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """The identity check refused `node_id`, or (by_peer) the peer `node_id` refused us."""

    at: float
    node_id: str
    address: str
    reason: str
    by_peer: bool


Event = Transition | Refusal
"""What `Swim.drain_events` hands the shell: for metrics, logs and liveness callbacks."""


class Tag(enum.IntEnum):
    """Stable one-byte message tags (append-only)."""

    PING = 1
    PING_REQ = 2
    ACK = 3
    NACK = 4
    PUSH_PULL = 5
    REFUSE = 6


class DecodeError(InvalidInput):
    """A datagram or push-pull body that is not a well-formed SWIM message."""


# ---------------------------------------------------------------------------------------- encode


def _member_wire(m: Member) -> list[Any]:
    return [m.node_id, m.address, m.incarnation, m.state.value, dict(m.meta)]


def _updates_wire(ups: tuple[Update, ...]) -> list[Any]:
    return [[*_member_wire(u.member), u.by] for u in ups]


def _body(msg: Message) -> tuple[Tag, list[Any]]:
    match msg:
        case Ping(seq, sender, target, ups):
            return Tag.PING, [seq, sender, target, _updates_wire(ups)]
        case PingReq(seq, sender, target, target_address, ups):
            return Tag.PING_REQ, [seq, sender, target, target_address, _updates_wire(ups)]
        case Ack(seq, sender, ups):
            return Tag.ACK, [seq, sender, _updates_wire(ups)]
        case Nack(seq, sender):
            return Tag.NACK, [seq, sender]
        case PushPull(sender, members, is_reply):
            return Tag.PUSH_PULL, [sender, [_member_wire(m) for m in members], is_reply]
        case Refuse(sender, reason):
            return Tag.REFUSE, [sender, reason]
    raise TypeError(f"not a SWIM message: {msg!r}")


def update_size(up: Update) -> int:
    """Bytes `up` adds to a message's encoding (for the datagram budget)."""
    return len(msgpack.packb([*_member_wire(up.member), up.by], use_bin_type=True))


def encode(msg: Message) -> bytes:
    """The wire form of `msg`: its tag byte, then its fields as a msgpack list."""
    tag, body = _body(msg)
    packed: bytes = msgpack.packb(body, use_bin_type=True)
    return bytes((tag,)) + packed


# ---------------------------------------------------------------------------------------- decode


def _str(x: Any) -> str:
    if not isinstance(x, str):
        raise DecodeError(f"expected a string, got {type(x).__name__}")
    return x


def _int(x: Any) -> int:
    if not isinstance(x, int) or isinstance(x, bool):
        raise DecodeError(f"expected an integer, got {type(x).__name__}")
    return x


def _bool(x: Any) -> bool:
    if not isinstance(x, bool):
        raise DecodeError(f"expected a boolean, got {type(x).__name__}")
    return x


def _list(x: Any, n: int) -> list[Any]:
    if not isinstance(x, list) or len(x) < n:
        raise DecodeError(f"expected a list of at least {n} fields")
    return x


def _member(x: Any) -> Member:
    w = _list(x, 5)
    try:
        state = MemberState(_int(w[3]))
    except ValueError:
        raise DecodeError(f"unknown member state {w[3]!r}") from None
    if not isinstance(w[4], dict):
        raise DecodeError("expected a meta map")
    meta = meta_of((_str(k), _str(v)) for k, v in w[4].items())
    return Member(_str(w[0]), _str(w[1]), _int(w[2]), state, meta)


def _updates(x: Any) -> tuple[Update, ...]:
    return tuple(Update(_member(u), _str(_list(u, 6)[5])) for u in _list(x, 0))


def _ping(w: list[Any]) -> Message:
    w = _list(w, 4)
    return Ping(_int(w[0]), _str(w[1]), _str(w[2]), _updates(w[3]))


def _ping_req(w: list[Any]) -> Message:
    w = _list(w, 5)
    return PingReq(_int(w[0]), _str(w[1]), _str(w[2]), _str(w[3]), _updates(w[4]))


def _ack(w: list[Any]) -> Message:
    w = _list(w, 3)
    return Ack(_int(w[0]), _str(w[1]), _updates(w[2]))


def _nack(w: list[Any]) -> Message:
    w = _list(w, 2)
    return Nack(_int(w[0]), _str(w[1]))


def _push_pull(w: list[Any]) -> Message:
    w = _list(w, 3)
    return PushPull(_str(w[0]), tuple(_member(m) for m in _list(w[1], 0)), _bool(w[2]))


def _refuse(w: list[Any]) -> Message:
    w = _list(w, 2)
    return Refuse(_str(w[0]), _str(w[1]))


_DECODERS: dict[int, Callable[[list[Any]], Message]] = {
    Tag.PING: _ping,
    Tag.PING_REQ: _ping_req,
    Tag.ACK: _ack,
    Tag.NACK: _nack,
    Tag.PUSH_PULL: _push_pull,
    Tag.REFUSE: _refuse,
}


def decode(data: bytes) -> Message:
    """The message in `data`; DecodeError if it is not one (unknown tag, bad body)."""
    if not data:
        raise DecodeError("empty SWIM message")
    decoder = _DECODERS.get(data[0])
    if decoder is None:
        raise DecodeError(f"unknown SWIM message tag {data[0]}")
    try:
        body = msgpack.unpackb(data[1:], raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise DecodeError(f"bad msgpack body: {exc}") from None
    return decoder(_list(body, 0))
