"""The in-memory network the simulated nodes talk over: RPC calls and SWIM gossip, with faults.

Every message goes through the real wire forms: an RPC request is `msg.to_wire()` packed with
msgpack and decoded on the far side by `spine.core.messages.decode`, its reply packed and, for an
error, rebuilt by the RPC client's own `_remote_error`; HLC timestamps ride along both ways as on
a real connection. Gossip packets are sealed and opened by the real `Codec` (MAC, freshness
window, replay cache), so clock skew past the window shows up as it would.

Faults, all drawn from one seeded `random.Random`: per-message loss, a one-way delay (so
reordering), duplication of requests and datagrams, directional cuts (partitions), and node
crashes (a crashed node's pending deliveries vanish; calls to it are refused). A delivery runs in
the receiving node's context, so whatever it starts belongs to that node.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack

from spine.cluster.gossip_transport import Codec
from spine.cluster.rpc import Handler, _remote_error
from spine.core.clock import HLC
from spine.core.errors import PeerUnavailable, SpineError
from spine.core.messages import Message, Tag, decode
from spine.core.swim_auth import AuthError, Channel
from spine.core.swim_messages import Message as GossipMessage
from spine.core.swim_messages import PushPull, Refuse

_REPLY, _ERROR = 1, 2


@dataclass
class Faults:
    """What the network does to messages; times in seconds."""

    loss: float = 0.0
    dup: float = 0.0
    delay: tuple[float, float] = (0.0005, 0.004)


@dataclass
class Endpoint:
    """One live incarnation of a node on the network."""

    node: str
    gossip_address: str
    ctx: contextvars.Context
    hlc: HLC
    handlers: dict[Any, Handler] = field(default_factory=dict)
    gossip: SimGossip | None = None


class SimNet:
    """Nodes by id and gossip address, the cuts between them, and the fault draws."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rng: random.Random, faults: Faults,
                 trace: Callable[[str], None]) -> None:
        self.loop = loop
        self.rng = rng
        self.faults = faults
        self.trace = trace
        self.up: dict[str, Endpoint] = {}
        self.by_address: dict[str, str] = {}
        self.cut: set[tuple[str, str]] = set()  # (from, to) pairs that lose everything
        # Paused nodes (SIGSTOP, a long GC pause, as its peers see it): what they send and what
        # they are sent is held, in order, and goes on when they resume.
        self.paused: dict[str, list[tuple[Callable[[], None], contextvars.Context]]] = {}
        self.bugs: list[str] = []  # what no fault explains (a handler crashing, a MAC failing)
        self.sent = self.lost = 0

    # ---------------------------------------------------------------- topology

    def attach(self, ep: Endpoint) -> None:
        self.up[ep.node] = ep
        self.by_address[ep.gossip_address] = ep.node

    def detach(self, node: str) -> None:
        self.up.pop(node, None)

    def partition(self, side: set[str], others: set[str]) -> None:
        for a in side:
            for b in others:
                self.cut.update({(a, b), (b, a)})

    def heal(self) -> None:
        self.cut.clear()

    def passes(self, src: str, dst: str) -> bool:
        """Whether one message from src reaches dst (a draw: loss, cuts)."""
        self.sent += 1
        if (src, dst) in self.cut or (src != dst and self.rng.random() < self.faults.loss):
            self.lost += 1
            return False
        return True

    def delay(self) -> float:
        lo, hi = self.faults.delay
        return self.rng.uniform(lo, hi)

    def copies(self) -> int:
        return 2 if self.rng.random() < self.faults.dup else 1

    def deliver(self, src: str, dst: str, ep: Endpoint, fn: Callable[[], None]) -> None:
        """Run `fn` in `ep`'s context after a delay, if `ep` is still that node's incarnation."""
        def go() -> None:
            if self.up.get(dst) is not ep or (src, dst) in self.cut:
                return
            if dst in self.paused:
                self.paused[dst].append((go, ep.ctx))
            else:
                fn()

        def send() -> None:
            self.loop.call_later(self.delay(), go, context=ep.ctx)
        if src in self.paused:
            self.paused[src].append((send, ep.ctx))
        else:
            send()

    def pause(self, node: str) -> None:
        self.paused.setdefault(node, [])

    def resume(self, node: str) -> None:
        for fn, ctx in self.paused.pop(node, []):
            self.loop.call_soon(fn, context=ctx)


class _TimedOut(Exception):
    """A call's timer went off before any answer (only ever raised inside `SimTransport`)."""


def _settle(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


class SimTransport:
    """`spine.ports.Transport` for one node, over a `SimNet`."""

    def __init__(self, net: SimNet, node: str, hlc: HLC) -> None:
        self.net, self.node, self.hlc = net, node, hlc

    async def call(self, node: str, msg: Message, timeout: float) -> Any:
        """As `RpcClient.call`: the reply, or PeerUnavailable (`sent` once the request went).

        One future per call, settled by the first answer, the refusal or the timeout's timer,
        whichever comes first: no task and no `wait_for` per call (they were half of a seed's
        tasks and timers)."""
        net = self.net
        loop = net.loop
        if timeout <= 0:  # as wait_for: no time left, nothing is sent
            await asyncio.sleep(0)
            raise PeerUnavailable(f"{node} did not answer in {timeout:.2f}s", node=node, sent=True)
        fut: asyncio.Future[Any] = loop.create_future()
        me = net.up.get(self.node)
        dst = net.up.get(node)
        if dst is None or me is None:  # the peer is down: the connection is refused
            loop.call_later(net.delay(), _settle, fut,
                            PeerUnavailable(f"{node}: connection refused", node=node))
        else:
            data = msgpack.packb([int(msg.TAG), self.hlc.now(), msg.to_wire()],
                                 use_bin_type=True)
            # A request rides a TCP connection and the RPC client never resends one, so a peer
            # acts on it at most once; duplicates test that every message a node may get twice
            # (after a reconnect's replay by handoff or anti-entropy) is idempotent. A Forward
            # is not (it runs a client's write), and is never sent twice.
            copies = net.copies()
            for _ in range(1 if msg.TAG is Tag.FORWARD else copies):
                if net.passes(self.node, node):
                    net.deliver(self.node, node, dst,
                                lambda: loop.create_task(self._serve(dst, me, data, fut)))
        timer = loop.call_later(timeout, _settle, fut, _TimedOut())
        try:
            return await fut
        except _TimedOut:  # the request went out: the peer may have acted on it
            raise PeerUnavailable(f"{node} did not answer in {timeout:.2f}s", node=node,
                                  sent=True) from None
        finally:
            timer.cancel()

    async def _serve(self, dst: Endpoint, src: Endpoint, data: bytes,
                     fut: asyncio.Future[Any]) -> None:
        tag, hlc, body = msgpack.unpackb(data, raw=False)
        try:
            dst.hlc.observe(hlc)
            msg = decode(tag, body)
            handler = dst.handlers.get(msg.TAG)
            if handler is None:
                raise SpineError(f"{dst.node} serves no {msg.TAG.name}")
            reply: list[Any] = [_REPLY, dst.hlc.now(), await handler(src.node, msg)]
        except SpineError as e:
            details = {**e.details, "field": e.field} if e.field else dict(e.details)
            reply = [_ERROR, dst.hlc.now(), [e.code, e.message, details]]
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a handler crashing is a bug, whatever the faults
            self.net.bugs.append(f"{dst.node}: handler for tag {tag} raised {e!r}")
            reply = [_ERROR, dst.hlc.now(), ["internal", repr(e), {}]]
        packed = msgpack.packb(reply, use_bin_type=True)
        net = self.net
        if net.passes(dst.node, src.node):
            net.deliver(dst.node, src.node, src, lambda: self._answered(dst.node, src, packed, fut))

    def _answered(self, node: str, src: Endpoint, packed: bytes, fut: asyncio.Future[Any]) -> None:
        if fut.done():
            return  # timed out, or a duplicate's answer came first
        kind, hlc, body = msgpack.unpackb(packed, raw=False)
        try:
            src.hlc.observe(hlc)
        except SpineError as e:
            fut.set_exception(e)
            return
        if kind == _REPLY:
            fut.set_result(body)
        else:
            fut.set_exception(_remote_error(node, body))

    def drop(self, node: str) -> None:
        pass

    async def close(self) -> None:
        pass


class SimGossip:
    """`spine.ports.GossipNet` for one node: datagrams and push-pulls over a `SimNet`."""

    def __init__(self, net: SimNet, node: str, address: str, codec: Codec,
                 on_message: Callable[[str, GossipMessage], None],
                 on_request: Callable[[str, PushPull], GossipMessage | None],
                 io_timeout: float = 1.0) -> None:
        self.net, self.node, self.address, self.codec = net, node, address, codec
        self.on_message, self.on_request = on_message, on_request
        self.io_timeout = io_timeout
        self.running = False
        self._pulling: set[str] = set()

    async def start(self) -> None:
        self.running = True

    async def close(self) -> None:
        self.running = False

    def _target(self, address: str) -> tuple[str, Endpoint] | None:
        node = self.net.by_address.get(address)
        ep = None if node is None else self.net.up.get(node)
        if node is None or ep is None or ep.gossip is None:
            return None
        return node, ep

    def _open(self, channel: Channel, data: bytes, bound_to: bytes = b"") -> Any:
        try:
            return self.codec.open(channel, data, bound_to)
        except AuthError as e:
            if e.reason != "replayed":  # a duplicated datagram is refused as a replay: fine
                self.net.bugs.append(f"{self.node}: gossip refused: {e.reason}: {e}")
            return None

    def send(self, address: str, msg: GossipMessage) -> None:
        found = self._target(address)
        if not self.running or found is None:
            return
        node, ep = found
        data = self.codec.seal(Channel.DATAGRAM, msg)
        for _ in range(self.net.copies()):
            if self.net.passes(self.node, node):
                self.net.deliver(self.node, node, ep, lambda: self._datagram(ep, data))

    def _datagram(self, ep: Endpoint, data: bytes) -> None:
        peer = ep.gossip
        if peer is None or not peer.running:
            return
        opened = peer._open(Channel.DATAGRAM, data)
        if opened is not None:
            peer.on_message(self.address, opened[0])

    def push_pull(self, address: str, msg: PushPull, local_host: str | None) -> None:
        found = self._target(address)
        if not self.running or found is None or address in self._pulling:
            return
        node, ep = found
        self._pulling.add(address)
        # Whatever happens, the exchange is over after the I/O timeout.
        self.net.loop.call_later(self.io_timeout, self._pulling.discard, address)
        data, mac = self.codec.seal_with_mac(Channel.REQUEST, msg)
        if self.net.passes(self.node, node):
            self.net.deliver(self.node, node, ep, lambda: self._request(ep, data, mac))

    def _request(self, ep: Endpoint, data: bytes, mac: bytes) -> None:
        peer = ep.gossip
        if peer is None or not peer.running:
            return
        opened = peer._open(Channel.REQUEST, data)
        if opened is None:
            return
        msg, _ = opened
        if not isinstance(msg, PushPull) or msg.is_reply:
            self.net.bugs.append(f"{peer.node}: push-pull request of kind {type(msg).__name__}")
            return
        source = next((m.address for m in msg.members if m.node_id == msg.sender), self.address)
        reply = peer.on_request(source, msg)
        if reply is None:
            return
        sealed = peer.codec.seal(Channel.REPLY, reply, mac)
        me = self.net.up.get(self.node)
        if me is not None and me.gossip is self and self.net.passes(peer.node, self.node):
            self.net.deliver(peer.node, self.node, me, lambda: self._reply(ep.gossip_address,
                                                                           sealed, mac))

    def _reply(self, address: str, data: bytes, mac: bytes) -> None:
        self._pulling.discard(address)
        if not self.running:
            return
        opened = self._open(Channel.REPLY, data, mac)
        if opened is not None and isinstance(opened[0], PushPull | Refuse):
            self.on_message(address, opened[0])
