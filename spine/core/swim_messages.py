"""SWIM's members and wire messages (SWIM §4–§5, Lifeguard's Nack), and their codec.

A datagram is one tag byte followed by a msgpack list of the message's fields, in order; the same
holds for the push-pull body sent over TCP. Tags and state codes are append-only: never reuse or
renumber one. Decoders read the fields they know and ignore any a newer peer appends, so a field
may be added at the end of a message without a new tag.

Everything decoded is bounded (issue 14): every integer is range-checked (an incarnation fits
memberlist's uint32, so a refutation at incarnation + 1 always encodes), every string and list has
a maximum length, addresses must be "host:port" with a port in 1..65535, and msgpack itself is
told the limits, so a body can neither allocate past its own size nor smuggle an integer the
state machine would overflow on. The decoder sees only bodies whose MAC has been checked
(`swim_auth`); the bounds are what holds against a peer that has the secret and lies.
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


MAX_INCARNATION = 2**32 - 1
"""Incarnations fit an unsigned 32-bit integer (memberlist's width); a claim above is rejected."""
MAX_SEQ = 2**63 - 1
MAX_ID = 256  # characters in a node id
MAX_ADDRESS = 300  # a DNS name (253) in brackets, a colon and a port
MAX_META_PAIRS = 16
MAX_META_KEY = 64
MAX_META_VALUE = 512
MAX_REASON = 1024  # a Refuse's explanation
MAX_UPDATES = 64  # piggybacked updates in one datagram (it holds far fewer in 1,400 bytes)
DEFAULT_MAX_MEMBERS = 1024  # members in one push-pull, unless the caller says otherwise


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


@dataclass(frozen=True, slots=True)
class Dropped:
    """Something from `node_id` this node would not act on: a cap reached (`members_full`,
    `relays_full`), a relay asked for a stranger (`unknown_target`), a claim about us past
    MAX_INCARNATION (`absurd_incarnation`); counted and logged by the shell."""

    at: float
    reason: str
    node_id: str


Event = Transition | Refusal | Dropped
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


def _str(x: Any, limit: int = MAX_ID, *, empty: bool = False) -> str:
    if not isinstance(x, str):
        raise DecodeError(f"expected a string, got {type(x).__name__}")
    if len(x) > limit or (not x and not empty):
        raise DecodeError(f"string of {len(x)} characters outside 1..{limit}")
    return x


def _int(x: Any, hi: int = MAX_SEQ) -> int:
    if not isinstance(x, int) or isinstance(x, bool):
        raise DecodeError(f"expected an integer, got {type(x).__name__}")
    if not 0 <= x <= hi:
        raise DecodeError(f"integer {x} outside 0..{hi}")
    return x


def _bool(x: Any) -> bool:
    if not isinstance(x, bool):
        raise DecodeError(f"expected a boolean, got {type(x).__name__}")
    return x


def _list(x: Any, n: int, limit: int = MAX_UPDATES) -> list[Any]:
    if not isinstance(x, list) or not n <= len(x) <= max(n, limit):
        raise DecodeError(f"expected a list of {n} to {max(n, limit)} fields")
    return x


def check_address(address: str) -> str:
    """`address` if it is "host:port" (IPv6 as "[addr]:port") with a port in 1..65535."""
    host, sep, port = address.rpartition(":")
    if (not sep or not host.strip("[]") or not (port.isascii() and port.isdigit())
            or not 1 <= int(port) <= 65535):
        raise DecodeError(f"not a host:port address: {address[:64]!r}")
    return address


def _address(x: Any) -> str:
    return check_address(_str(x, MAX_ADDRESS))


def _member(x: Any) -> Member:
    w = _list(x, 5, 16)
    try:
        state = MemberState(_int(w[3], 255))
    except ValueError:
        raise DecodeError(f"unknown member state {w[3]!r}") from None
    if not isinstance(w[4], dict) or len(w[4]) > MAX_META_PAIRS:
        raise DecodeError(f"expected a meta map of at most {MAX_META_PAIRS} pairs")
    meta = meta_of((_str(k, MAX_META_KEY), _str(v, MAX_META_VALUE, empty=True))
                   for k, v in w[4].items())
    return Member(_str(w[0]), _address(w[1]), _int(w[2], MAX_INCARNATION), state, meta)


def _updates(x: Any) -> tuple[Update, ...]:
    return tuple(Update(_member(u), _str(_list(u, 6, 16)[5], empty=True)) for u in _list(x, 0))


def _ping(w: list[Any], _: int) -> Message:
    w = _list(w, 4)
    return Ping(_int(w[0]), _str(w[1]), _str(w[2]), _updates(w[3]))


def _ping_req(w: list[Any], _: int) -> Message:
    w = _list(w, 5)
    return PingReq(_int(w[0]), _str(w[1]), _str(w[2]), _address(w[3]), _updates(w[4]))


def _ack(w: list[Any], _: int) -> Message:
    w = _list(w, 3)
    return Ack(_int(w[0]), _str(w[1]), _updates(w[2]))


def _nack(w: list[Any], _: int) -> Message:
    w = _list(w, 2)
    return Nack(_int(w[0]), _str(w[1]))


def _push_pull(w: list[Any], max_members: int) -> Message:
    w = _list(w, 3)
    members = tuple(_member(m) for m in _list(w[1], 0, max_members))
    return PushPull(_str(w[0]), members, _bool(w[2]))


def _refuse(w: list[Any], _: int) -> Message:
    w = _list(w, 2)
    return Refuse(_str(w[0]), _str(w[1], MAX_REASON, empty=True))


_DECODERS: dict[int, Callable[[list[Any], int], Message]] = {
    Tag.PING: _ping,
    Tag.PING_REQ: _ping_req,
    Tag.ACK: _ack,
    Tag.NACK: _nack,
    Tag.PUSH_PULL: _push_pull,
    Tag.REFUSE: _refuse,
}


def decode(data: bytes, max_members: int = DEFAULT_MAX_MEMBERS) -> Message:
    """The message in `data`; DecodeError if it is not one (unknown tag, bad body, a value out
    of range, or a push-pull of more than `max_members` members)."""
    if not data:
        raise DecodeError("empty SWIM message")
    decoder = _DECODERS.get(data[0])
    if decoder is None:
        raise DecodeError(f"unknown SWIM message tag {data[0]}")
    try:
        body = msgpack.unpackb(
            data[1:], raw=False, strict_map_key=True, max_str_len=MAX_REASON,
            max_bin_len=0, max_ext_len=0, max_map_len=MAX_META_PAIRS,
            max_array_len=max(max_members, MAX_UPDATES))
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise DecodeError(f"bad msgpack body: {str(exc)[:200]}") from None
    except RecursionError:
        raise DecodeError("msgpack body nested too deeply") from None
    return decoder(_list(body, 0, 16), max_members)
