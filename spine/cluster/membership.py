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
- a peer whose identity was refused, either way round, is not alive: one we refused for as long
  as the latest version of it we saw is refused; one that refused us for `refuse_ttl` (a few
  rejoin rounds, each of which asks again), so that even a lying Refuse lapses;
- `on_up` callbacks (the hand-off wake-up) run when SWIM sees a member become ALIVE, and when a
  call succeeds to a peer that a failure hint had set aside.

Each member gossips its identity as meta: zone, ring state, cluster name, shard count and
embedder fingerprint. The identity check refuses a member whose cluster, shard count or embedder
fingerprint differs from ours; both sides log `member_refused` and keep running without the
other.

Every packet is authenticated with the cluster secret (`swim_auth`: a truncated HMAC over the
whole packet, checked before anything is unpacked, any key of `cluster.keyring()` accepted,
stale and replayed packets refused) and decoded within bounds; whatever fails is dropped and
counted in `spine_gossip_dropped_total{reason}`. A datagram may carry only Ping, PingReq, Ack or
Nack; a TCP request only a push-pull; a `Refuse` is heeded only as the reply to our own
push-pull, on its connection. At most MAX_INBOUND push-pull connections are served at once, each
frame at most `frame_limit(max_members)` bytes and read within `io_timeout`. Gossip is not
encrypted: it tells who is up and where, never data; a node that holds the secret can still lie
in it, within the bounds `Swim` keeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
from collections import deque
from collections.abc import Callable, Mapping, Sequence

import structlog

from spine.cluster.gossip_transport import (
    Codec,
    Drops,
    GossipSockets,
    answers_on_connection,
    frame_limit,
)
from spine.core.config import GossipSection
from spine.core.metrics import Registry
from spine.core.swim import (
    AcceptHook,
    Dropped,
    Member,
    MemberState,
    Outbound,
    Refusal,
    Swim,
    SwimConfig,
    Transition,
    failure_detection_bound,
)
from spine.core.swim_auth import GossipAuth
from spine.core.swim_messages import Message, PushPull
from spine.ports import GossipNet, GossipNetFactory
from spine.runtime import Runtime

log = structlog.get_logger("spine.gossip")

__all__ = [
    "IDENTITY_KEYS", "Gossip", "identity_check", "identity_meta", "swim_config",
]

IDENTITY_KEYS = ("cluster", "shards", "embedder")
"""Meta keys that must match for two nodes to be one cluster."""

_LIVE = (MemberState.ALIVE, MemberState.SUSPECT)
MAX_INBOUND = 32  # push-pull connections served at once; more are closed unread
DEFAULT_WINDOW_MS = 10_500  # clock.max_offset_ms + gossip.freshness_margin_ms, by default


def swim_config(section: GossipSection) -> SwimConfig:
    """SWIM's settings from cluster.yaml's `gossip` section (milliseconds to seconds)."""
    return SwimConfig(
        protocol_period=section.protocol_period_ms / 1000,
        ping_timeout=section.ping_timeout_ms / 1000,
        ping_req_k=section.ping_req_k,
        suspicion_mult=section.suspicion_mult,
        retransmit_mult=section.retransmit_mult,
        push_pull_interval=section.push_pull_interval_ms / 1000,
        max_members=section.max_members,
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
        secrets: Sequence[str],
        window_ms: int = DEFAULT_WINDOW_MS,
        seeds: Sequence[str] = (),
        peers: Mapping[str, str] | None = None,
        registry: Registry | None = None,
        hint_ttl: float | None = None,
        leave_grace: float | None = None,
        ssl_server: ssl.SSLContext | None = None,
        ssl_client: ssl.SSLContext | None = None,
        net: GossipNetFactory | None = None,
    ) -> None:
        """`peers`: the configured members' ids and gossip addresses (the static ring), each
        tried until heard of; `seeds`: further gossip addresses asked for the cluster's state;
        `secrets`: the keyring, the signing secret first; `window_ms`: how far a packet's clock
        may be from ours (clock.max_offset plus a margin); `ssl_server` / `ssl_client`: mutual
        TLS on the TCP push-pull (`tls.gossip`; datagrams stay MAC'd plaintext); `net`: builds
        the gossip net instead of real sockets (the simulator's in-memory network)."""
        self.self_id = self_id
        self.host, self.port = host, port
        self.address = f"{host}:{port}"
        self.config = config
        self._rt = runtime
        self.swim = Swim(self_id, self.address, rng=runtime.rng, meta=meta, config=config,
                         accept=identity_check(meta),
                         first_seq=int.from_bytes(runtime.token_bytes(4), "big"))
        self.drops = Drops(registry, runtime.monotonic)
        self._peers = {k: v for k, v in (peers or {}).items() if k != self_id}
        self._seeds = list(dict.fromkeys([*seeds, *self._peers.values()]))
        t = config.protocol_period
        self.hint_ttl = 2 * t if hint_ttl is None else hint_ttl
        self.leave_grace = min(0.5, 3 * t) if leave_grace is None else leave_grace
        self.io_timeout = max(1.0, 4 * t)
        self.rejoin_interval = min(config.push_pull_interval, 4 * t)
        self.grace = failure_detection_bound(config, max(1, len(self._peers) + 1))
        self.refuse_ttl = 3 * self.rejoin_interval + self.io_timeout
        self.net: GossipNet
        if net is not None:
            self.net = net(self._handle, self._answer)
        else:
            self.net = GossipSockets(
                host, port,
                Codec(GossipAuth(secrets, window_ms), runtime.wall_ms, config.max_members),
                self.drops, io_timeout=self.io_timeout, frame_limit=frame_limit(config.max_members),
                on_message=self._handle, on_request=self._answer, max_inbound=MAX_INBOUND,
                ssl_server=ssl_server, ssl_client=ssl_client)
        self.on_up: list[Callable[[str], None]] = []
        self.refusals: deque[Refusal] = deque(maxlen=64)  # the latest, for tests and operators
        self._hinted: dict[str, float] = {}  # report_failure hints: peer -> skip until
        self._refused_by: dict[str, float] = {}  # peers that refused us -> until
        self._logged: set[tuple[str, str, bool]] = set()
        self._grace_until = math.inf
        self._next_rejoin = math.inf
        self._timer: asyncio.Task[None] | None = None
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
        now = self._rt.monotonic()
        if self._is_refused(node, now):
            return False
        until = self._hinted.get(node)
        if until is not None:
            if now < until:
                return False
            del self._hinted[node]
        m = self.swim.member(node)
        if m is None:
            return node in self._peers and now < self._grace_until
        return m.state in _LIVE

    def _is_refused(self, node: str, now: float) -> bool:
        if self.swim.refused(node) is not None:
            return True
        until = self._refused_by.get(node)
        if until is not None and now >= until:
            del self._refused_by[node]
            return False
        return until is not None

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
        await self.net.start()
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
        await self.net.close()
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
            if not self._is_refused(node, now) and self.swim.member(node) is None:
                msg = PushPull(self.self_id, self.swim.push_pull_state(), False)
                self._send([Outbound(address, msg)])

    # ------------------------------------------------------------------------- receiving

    def _handle(self, src: str, msg: Message) -> None:
        """Feed one message to SWIM and send whatever it answers."""
        self._send(self.swim.receive(src, msg, self._rt.monotonic()))
        self._drain()
        self._wake.set()  # the next deadline may have moved closer

    def _answer(self, src: str, msg: PushPull) -> Message | None:
        """Feed a push-pull request to SWIM; its answer (a push-pull or a Refuse) goes back on
        the request's connection, anything else it causes as usual."""
        outs = self.swim.receive(src, msg, self._rt.monotonic())
        reply = next((o for o in outs if o.address == src and answers_on_connection(o.msg)),
                     None)
        if reply is not None:
            outs.remove(reply)
        self._send(outs)
        self._drain()
        self._wake.set()
        return None if reply is None else reply.msg

    # --------------------------------------------------------------------------- sending

    def _send(self, outs: Sequence[Outbound]) -> None:
        for address, msg in outs:
            if isinstance(msg, PushPull):
                self.net.push_pull(address, msg, self.host)
            else:
                self.net.send(address, msg)


    # ---------------------------------------------------------------------------- events

    def _drain(self) -> None:
        for ev in self.swim.drain_events():
            if isinstance(ev, Transition):
                self._on_transition(ev)
            elif isinstance(ev, Dropped):
                self.drops(ev.reason, ev.node_id)
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
            self._refused_by.pop(node, None)
            self._fire_up(node)

    def _on_refusal(self, r: Refusal) -> None:
        if self.events_total is not None:
            self.events_total.inc("refused")
        if r.by_peer:
            if len(self._refused_by) >= self.config.max_members:
                self._refused_by.clear()  # only ever full of lies: forget them all
            self._refused_by[r.node_id] = self._rt.monotonic() + self.refuse_ttl
        self.refusals.append(r)
        key = (r.node_id, r.reason, r.by_peer)
        first = key not in self._logged
        if len(self._logged) >= 1024:
            self._logged.clear()  # (a flood of reasons is logged again, not remembered)
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
