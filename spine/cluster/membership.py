"""Gossip membership: the asyncio shell around the pure SWIM state machine (DESIGN §8).

`Gossip` owns one UDP endpoint and one TCP server, both on the node's gossip port, and one timer
task. Datagrams are decoded and handed to `Swim.receive`; the timer sleeps until
`Swim.next_deadline()` (or until a message arrives, which may bring it closer) and calls
`Swim.tick`; every `Outbound` either call returns is sent — `PushPull` over a fresh TCP
connection whose reply comes back on the same connection (so does a `Refuse`), everything else
as one datagram from the bound socket, so that the receiver can answer the source address
(`gossip_transport`). SWIM's `now` is the runtime's monotonic clock; its randomness is the
runtime's rng.

`Gossip` is also the node's `Liveness` (routing, hinted handoff and search fan-out ask it):

- a member is alive while SWIM holds it ALIVE or SUSPECT (a suspect may only be slow);
- a failed call (`report_failure`) is a local hint, not a verdict: the peer is skipped for
  `hint_ttl` (two protocol periods by default), or until SWIM sees it ALIVE again or a call to it
  succeeds — so a crashed peer stops costing a timeout per request at once, and a wrong hint
  lapses by itself, leaving SWIM's verdict in charge;
- a configured peer SWIM has not heard of yet counts as alive for a start-up grace period (the
  failure-detection bound): the nodes of a cluster start in any order;
- a peer whose identity was refused, either way round, is not alive;
- `on_up` callbacks (the hand-off wake-up) run when SWIM sees a member become ALIVE, and when a
  call succeeds to a peer that a failure hint had set aside.

Each member gossips its identity as meta: zone, ring state, cluster name, shard count and
embedder fingerprint. The identity check refuses a member whose cluster, shard count or embedder
fingerprint differs from ours; both sides log `member_refused` and keep running without the
other. Gossip carries no secret: it tells who is up, never data.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

import structlog

from spine.cluster.gossip_transport import (
    TRANSPORT_ERRORS,
    DatagramEndpoint,
    frame,
    read_frame,
    request,
    resolve,
)
from spine.core.config import GossipSection
from spine.core.metrics import Registry
from spine.core.swim import (
    AcceptHook,
    Member,
    MemberState,
    Outbound,
    Refusal,
    Swim,
    SwimConfig,
    Transition,
    failure_detection_bound,
)
from spine.core.swim_messages import DecodeError, Message, PushPull, Refuse, decode, encode
from spine.runtime import Runtime

log = structlog.get_logger("spine.gossip")

__all__ = [
    "IDENTITY_KEYS", "Gossip", "identity_check", "identity_meta", "swim_config",
]

IDENTITY_KEYS = ("cluster", "shards", "embedder")
"""Meta keys that must match for two nodes to be one cluster."""

_LIVE = (MemberState.ALIVE, MemberState.SUSPECT)


def swim_config(section: GossipSection) -> SwimConfig:
    """SWIM's settings from cluster.yaml's `gossip` section (milliseconds to seconds)."""
    return SwimConfig(
        protocol_period=section.protocol_period_ms / 1000,
        ping_timeout=section.ping_timeout_ms / 1000,
        ping_req_k=section.ping_req_k,
        suspicion_mult=section.suspicion_mult,
        retransmit_mult=section.retransmit_mult,
        push_pull_interval=section.push_pull_interval_ms / 1000,
    )


def identity_meta(
    *, zone: str, ring_state: str, cluster: str, shards: int, embedder: str
) -> dict[str, str]:
    """The meta a node gossips about itself."""
    return {"zone": zone, "ring": ring_state, "cluster": cluster, "shards": str(shards),
            "embedder": embedder}


def identity_check(ours: Mapping[str, str]) -> AcceptHook:
    """SWIM's accept hook: refuse a member whose cluster, shard count or embedder fingerprint
    is not ours, saying which and both values (the reason is also sent to the member)."""

    def accept(m: Member) -> str | None:
        theirs = m.meta_dict()
        diffs = [f"{k} is {theirs.get(k, '')!r} there, {ours.get(k, '')!r} here"
                 for k in IDENTITY_KEYS if theirs.get(k, "") != ours.get(k, "")]
        return "identity mismatch: " + "; ".join(diffs) if diffs else None

    return accept


class Gossip:
    """SWIM on real sockets, and the node's `Liveness`."""

    def __init__(
        self,
        self_id: str,
        host: str,
        port: int,
        *,
        runtime: Runtime,
        config: SwimConfig,
        meta: Mapping[str, str],
        seeds: Sequence[str] = (),
        peers: Mapping[str, str] | None = None,
        registry: Registry | None = None,
        hint_ttl: float | None = None,
        leave_grace: float | None = None,
    ) -> None:
        """`peers`: the configured members' ids and gossip addresses (the static ring), each
        tried until heard of; `seeds`: further gossip addresses asked for the cluster's state."""
        self.self_id = self_id
        self.host, self.port = host, port
        self.address = f"{host}:{port}"
        self.config = config
        self._rt = runtime
        self.swim = Swim(self_id, self.address, rng=runtime.rng, meta=meta, config=config,
                         accept=identity_check(meta))
        self._peers = {k: v for k, v in (peers or {}).items() if k != self_id}
        self._seeds = list(dict.fromkeys([*seeds, *self._peers.values()]))
        t = config.protocol_period
        self.hint_ttl = 2 * t if hint_ttl is None else hint_ttl
        self.leave_grace = min(0.5, 3 * t) if leave_grace is None else leave_grace
        self.io_timeout = max(1.0, 4 * t)
        self.rejoin_interval = min(config.push_pull_interval, 4 * t)
        self.grace = failure_detection_bound(config, max(1, len(self._peers) + 1))
        self.on_up: list[Callable[[str], None]] = []
        self.refusals: deque[Refusal] = deque(maxlen=64)  # the latest, for tests and operators
        self._hinted: dict[str, float] = {}  # report_failure hints: peer -> skip until
        self._refused: set[str] = set()
        self._logged: set[tuple[str, str, bool]] = set()
        self._grace_until = math.inf
        self._next_rejoin = math.inf
        self._resolved: dict[str, tuple[str, int]] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._timer: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pulling: set[str] = set()  # addresses with a push-pull in flight
        self._wake = asyncio.Event()
        self._stopping = False
        self.events_total = None if registry is None else registry.counter(
            "spine_member_events_total",
            "membership changes seen by gossip: suspect, dead, alive, left, refused", ("event",))
        if registry is not None:
            registry.gauge("spine_members", "members in this node's gossip view, by state",
                           ("state",), self._count_states)

    # ------------------------------------------------------------------------- Liveness

    def is_alive(self, node: str) -> bool:
        """SWIM says ALIVE or SUSPECT, and no recent failure hint (self: always)."""
        if node == self.self_id:
            return True
        if node in self._refused:
            return False
        now = self._rt.monotonic()
        until = self._hinted.get(node)
        if until is not None:
            if now < until:
                return False
            del self._hinted[node]
        m = self.swim.member(node)
        if m is None:
            return node in self._peers and now < self._grace_until
        return m.state in _LIVE

    def report_failure(self, node: str) -> None:
        """A call to `node` failed: skip it for `hint_ttl` unless SWIM sees it ALIVE again."""
        if node == self.self_id:
            return
        if node not in self._hinted:
            log.info("peer_unreachable", peer=node, skip_s=self.hint_ttl)
        self._hinted[node] = self._rt.monotonic() + self.hint_ttl

    def report_success(self, node: str) -> None:
        """A call to `node` succeeded: drop any failure hint (and wake whoever waits for it)."""
        if self._hinted.pop(node, None) is not None and self.is_alive(node):
            log.info("peer_reachable", peer=node)
            self._fire_up(node)

    def down(self) -> set[str]:
        """Known or configured peers that `is_alive` says are not."""
        ids = set(self._peers) | {m.node_id for m in self.swim.members()}
        return {n for n in ids if not self.is_alive(n)}

    # --------------------------------------------------------------------------- queries

    def members(self) -> list[Member]:
        """SWIM's view: self first, then every member known by id (DEAD/LEFT until reaped)."""
        return self.swim.members()

    def member(self, node: str) -> Member | None:
        """SWIM's record for `node`, or None if never heard of."""
        return self.swim.member(node)

    def _count_states(self) -> dict[tuple[str, ...], float]:
        counts: dict[tuple[str, ...], float] = {(s.name.lower(),): 0.0 for s in MemberState}
        for m in self.swim.members():
            counts[(m.state.name.lower(),)] += 1
        return counts

    # ------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind UDP and TCP on the gossip port, join through the seeds, start the timer."""
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: DatagramEndpoint(self._on_datagram), local_addr=(self.host, self.port))
        self._transport = transport
        try:
            self._server = await asyncio.start_server(
                self._serve, self.host, self.port, reuse_address=True)
        except BaseException:
            transport.close()
            self._transport = None
            raise
        now = self._rt.monotonic()
        self._grace_until = now + self.grace
        self._next_rejoin = now + self.rejoin_interval
        self._send(self.swim.join(self._seeds, now))
        self._timer = asyncio.create_task(self._run(), name=f"gossip-{self.self_id}")
        log.info("gossip_started", address=self.address, seeds=self._seeds,
                 protocol_period_s=self.config.protocol_period)

    async def stop(self) -> None:
        """Leave (tell every live member), keep answering for `leave_grace`, then close."""
        if self._timer is None or self._stopping:
            return
        self._stopping = True
        self._send(self.swim.leave(self._rt.monotonic()))
        self._drain()
        await self._rt.sleep(self.leave_grace)
        self._timer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._timer
        if self._server is not None:
            self._server.close()
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
        log.info("gossip_stopped")

    # ----------------------------------------------------------------------------- timer

    async def _run(self) -> None:
        while True:
            now = self._rt.monotonic()
            due = min(self.swim.next_deadline(), self._next_rejoin)
            if due > now:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), due - now)
                self._wake.clear()
            try:
                now = self._rt.monotonic()
                self._send(self.swim.tick(now))
                if now >= self._next_rejoin:
                    self._rejoin(now)
                self._drain()
            except Exception:
                log.exception("gossip_tick_failed")
                await self._rt.sleep(self.config.protocol_period)

    def _rejoin(self, now: float) -> None:
        """Ask every configured peer not heard of yet for its state (it may have started
        after us, or restarted: SWIM alone would retry a DEAD one only every push-pull)."""
        self._next_rejoin = now + self.rejoin_interval
        if self._stopping:
            return
        for node, address in self._peers.items():
            if node not in self._refused and self.swim.member(node) is None:
                msg = PushPull(self.self_id, self.swim.push_pull_state(), False)
                self._send([Outbound(address, msg)])

    # ------------------------------------------------------------------------- receiving

    def _on_datagram(self, data: bytes, addr: Any) -> None:
        src = f"{addr[0]}:{addr[1]}"
        try:
            msg = decode(data)
        except DecodeError as e:
            log.warning("gossip_bad_datagram", src=src, error=str(e))
            return
        self._handle(src, msg)

    def _handle(self, src: str, msg: Message) -> None:
        """Feed one message to SWIM and send whatever it answers."""
        self._send(self.swim.receive(src, msg, self._rt.monotonic()))
        self._drain()
        self._wake.set()  # the next deadline may have moved closer

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        try:
            msg = decode(await asyncio.wait_for(read_frame(reader), self.io_timeout))
            src = self._tcp_source(msg, peer)
            outs = self.swim.receive(src, msg, self._rt.monotonic())
            reply = next((o for o in outs if o.address == src and _answers_on_connection(o.msg)),
                         None)
            if reply is not None:
                outs.remove(reply)
                writer.write(frame(encode(reply.msg)))
                await asyncio.wait_for(writer.drain(), self.io_timeout)
            self._send(outs)
            self._drain()
            self._wake.set()
        except TRANSPORT_ERRORS as e:
            log.info("gossip_tcp_failed", peer=str(peer), error=repr(e))
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._tasks.discard(task)

    @staticmethod
    def _tcp_source(msg: Message, peer: Any) -> str:
        """The sender's gossip address: its own record in a push-pull, else the socket peer."""
        if isinstance(msg, PushPull):
            for m in msg.members:
                if m.node_id == msg.sender:
                    return m.address
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    # --------------------------------------------------------------------------- sending

    def _send(self, outs: Sequence[Outbound]) -> None:
        for address, msg in outs:
            if isinstance(msg, PushPull):
                if address not in self._pulling:
                    self._spawn(self._push_pull(address, msg))
            else:
                self._sendto(address, msg)

    def _sendto(self, address: str, msg: Message) -> None:
        if self._transport is None:
            return
        try:
            target = self._udp_target(address)
        except (OSError, ValueError) as e:
            log.warning("gossip_bad_address", address=address, error=repr(e))
            return
        self._transport.sendto(encode(msg), target)

    def _udp_target(self, address: str) -> tuple[str, int]:
        hit = self._resolved.get(address)
        if hit is None:  # a host name is looked up once (blocking; names are rare here)
            hit = self._resolved[address] = resolve(address)
        return hit

    async def _push_pull(self, address: str, msg: PushPull) -> None:
        self._pulling.add(address)
        try:
            data = await asyncio.wait_for(
                request(address, encode(msg), not msg.is_reply, self.host), self.io_timeout)
            reply = None if data is None else decode(data)
        except TRANSPORT_ERRORS as e:
            log.debug("push_pull_failed", peer=address, error=repr(e))
            return
        except Exception:
            log.exception("push_pull_failed", peer=address)
            return
        finally:
            self._pulling.discard(address)
        if reply is not None:
            self._handle(address, reply)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------------------- events

    def _drain(self) -> None:
        for ev in self.swim.drain_events():
            if isinstance(ev, Transition):
                self._on_transition(ev)
            else:
                self._on_refusal(ev)

    def _on_transition(self, t: Transition) -> None:
        node = t.node_id
        if node == self.self_id:
            log.info("gossip_self", state=t.new.name.lower() if t.new else None,
                     incarnation=t.incarnation)
            return
        if t.new is None:
            log.info("member_forgotten", peer=node, was=t.old.name.lower() if t.old else None)
            return
        m = self.swim.member(node)
        address = m.address if m is not None else ""
        if t.old is t.new:
            log.info("member_updated", peer=node, address=address, incarnation=t.incarnation)
            return
        event = t.new.name.lower()
        if self.events_total is not None:
            self.events_total.inc(event)
        was = t.old.name.lower() if t.old is not None else None
        if t.new in (MemberState.SUSPECT, MemberState.DEAD):
            log.warning(f"member_{event}", peer=node, address=address, was=was,
                        incarnation=t.incarnation)
        else:
            log.info(f"member_{event}", peer=node, address=address, was=was,
                     incarnation=t.incarnation)
        if t.new is MemberState.ALIVE:
            self._hinted.pop(node, None)
            self._refused.discard(node)
            self._fire_up(node)

    def _on_refusal(self, r: Refusal) -> None:
        if self.events_total is not None:
            self.events_total.inc("refused")
        self._refused.add(r.node_id)
        self.refusals.append(r)
        key = (r.node_id, r.reason, r.by_peer)
        first = key not in self._logged
        self._logged.add(key)
        what = (f"peer {r.node_id} refused this node: {r.reason}; running without it"
                if r.by_peer else
                f"refused member {r.node_id} at {r.address}: {r.reason}")
        (log.error if first else log.debug)(
            "member_refused", peer=r.node_id, address=r.address, reason=r.reason,
            by_peer=r.by_peer, detail=what)

    def _fire_up(self, node: str) -> None:
        for cb in self.on_up:
            try:
                cb(node)
            except Exception:
                log.exception("on_up_failed", peer=node)


def _answers_on_connection(msg: Message) -> bool:
    """Whether `msg` is the answer a push-pull request waits for on its own connection."""
    return isinstance(msg, Refuse) or (isinstance(msg, PushPull) and msg.is_reply)
