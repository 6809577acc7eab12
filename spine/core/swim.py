"""SWIM membership as a pure state machine (Das et al. 2002, §4–§5; Lifeguard, Dadgar et al. 2018).

`Swim` holds one node's view of the cluster. It never reads a clock, draws from a global random
source or touches a socket: the shell passes `now` (seconds, monotonic) into every call, hands it
each decoded datagram through `receive`, calls `tick` when `next_deadline()` comes due, and sends
whatever `Outbound`s come back — `PushPull` over TCP (reply on the same connection), the rest over
UDP. The randomness (probe order, helpers, stagger) comes from the `random.Random` it is given, so
a simulation with a seed replays exactly.

Protocol, per protocol period T (scaled by Lifeguard's local health multiplier):
  1. ping the next member of a shuffled round-robin list (SWIM §4.3);
  2. no ack within `ping_timeout`: ask `ping_req_k` random helpers to ping it (SWIM §3.1), each
     answering with the relayed ack or a Nack (Lifeguard);
  3. still no ack at the end of the period: SUSPECT it at the incarnation probed (SWIM §4.2);
  4. a suspicion not refuted before its timeout becomes DEAD. The timeout starts at
     `suspicion_max_mult` × the nominal one and shrinks towards it as other nodes independently
     confirm the suspicion (Lifeguard §IV-B).
Every change is piggybacked on the next pings and acks a bounded number of times (SWIM §4.1);
every message also carries its sender's own record, so any direct contact settles a stale
suspicion. A full-state push-pull runs every `push_pull_interval`, also toward one DEAD member,
and reaps long-gone members (`spine.core.swim_sync`). The `accept` hook
vets each new member's identity (cluster, shard count, embedder): a refused one is never added
(a known one is forgotten), shows up in the events, and is told why by a `Refuse` answering its
push-pull (heeded nowhere else).

Bounded against a member that holds the secret and lies (issue 14): at most `max_members`
members and MAX_RELAYS relays; a PingReq relayed only to a live member, at the address we know;
a claim about us at MAX_INCARNATION not believed (outbidding it would overflow the wire). What a
bound refuses shows up in the events as `Dropped`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from spine.core.swim_admission import AcceptHook, Admission
from spine.core.swim_broadcast import BroadcastQueue
from spine.core.swim_config import (
    SwimConfig,
    failure_detection_bound,
    retransmit_limit,
    supersedes,
    suspicion_duration,
    suspicion_timeout,
)
from spine.core.swim_messages import (
    MAX_INCARNATION,
    Ack,
    Dropped,
    Event,
    Member,
    MemberState,
    Message,
    Meta,
    Nack,
    Outbound,
    Ping,
    PingReq,
    PushPull,
    Refusal,
    Refuse,
    Transition,
    Update,
    meta_of,
)
from spine.core.swim_probe import Probe, ProbeOrder, Relay, Relays
from spine.core.swim_suspicion import Suspicion
from spine.core.swim_sync import FullSync, as_heard_in_full_state

__all__ = [
    "MAX_INCARNATION", "AcceptHook", "Dropped", "Event", "Member", "MemberState", "Meta",
    "Outbound", "Refusal", "Swim", "SwimConfig", "Transition", "Update",
    "failure_detection_bound", "retransmit_limit", "supersedes", "suspicion_duration",
    "suspicion_timeout",
]

ALIVE, SUSPECT = MemberState.ALIVE, MemberState.SUSPECT
DEAD, LEFT = MemberState.DEAD, MemberState.LEFT
_LIVE = (ALIVE, SUSPECT)
_GONE = (DEAD, LEFT)
ANONYMOUS = ""  # the accuser of a suspicion learnt from full state: unknown, never a confirmation


# ------------------------------------------------------------------------------------------ swim


class Swim:
    """One node's SWIM membership: feed it messages and ticks, send what it returns."""

    def __init__(
        self,
        self_id: str,
        address: str,
        *,
        rng: random.Random,
        meta: Mapping[str, str] | Meta = (),
        config: SwimConfig | None = None,
        accept: AcceptHook | None = None,
        first_seq: int = 0,
    ) -> None:
        """`first_seq`: where this node's sequence numbers start (the shell draws it at random,
        so that another node's Acks replayed here do not match ours)."""
        self.self_id = self_id
        self.address = address
        self.config = config or SwimConfig()
        self._rng = rng
        self._meta = meta_of(meta)
        self._admission = Admission(accept, 2 * self.config.max_members)
        self._inc = 0
        self._left = False
        self._started = False
        self._members: dict[str, Member] = {}  # everyone but self
        self._suspicions: dict[str, Suspicion] = {}
        self._queue = BroadcastQueue()  # newest update per member, to piggyback
        self._seq = first_seq
        self._probe: Probe | None = None
        self._next_probe_at = math.inf
        self._sync = FullSync(self.config, rng)  # push-pull rounds, seeds, reaping
        self._probe_order = ProbeOrder(rng)
        self._relays = Relays()
        self._awareness = 0
        self._events: list[Event] = []

    # ------------------------------------------------------------------------------- queries

    @property
    def incarnation(self) -> int:
        """This node's own incarnation number; only it ever raises it."""
        return self._inc

    @property
    def awareness(self) -> int:
        """Lifeguard's local health score: 0 is healthy; T scales by (awareness + 1)."""
        return self._awareness

    def me(self) -> Member:
        """This node's own record, as it gossips it."""
        return Member(self.self_id, self.address, self._inc, LEFT if self._left else ALIVE,
                      self._meta)

    def members(self) -> list[Member]:
        """Every member known, self first, then by node id (DEAD/LEFT until reaped)."""
        return [self.me(), *(self._members[k] for k in sorted(self._members))]

    def member(self, node_id: str) -> Member | None:
        """The record for `node_id`, or None if unknown (or reaped)."""
        return self.me() if node_id == self.self_id else self._members.get(node_id)

    def alive_ids(self) -> list[str]:
        """Node ids currently ALIVE in this view (self included unless it left), sorted."""
        return sorted(m.node_id for m in self.members() if m.state is ALIVE)

    def is_alive(self, node_id: str) -> bool:
        """True if `node_id` is ALIVE or only SUSPECT (the `Liveness` port's question)."""
        m = self.member(node_id)
        return m is not None and m.state in _LIVE

    def drain_events(self) -> list[Event]:
        """Transitions and refusals since the last drain, oldest first."""
        events, self._events = self._events, []
        return events

    def next_deadline(self) -> float:
        """When `tick` has work next (math.inf before `join`); a message may bring it closer."""
        if not self._started:
            return math.inf
        due = [self._sync.next_round]
        if not self._left:
            p = self._probe
            due.append(self._next_probe_at if p is None else p.next_due())
        due.extend(s.deadline for s in self._suspicions.values())
        due.extend(self._relays.deadlines())
        return min(due)

    # ----------------------------------------------------------------------------- lifecycle

    def join(self, seeds: Sequence[str], now: float) -> list[Outbound]:
        """Start the protocol (timers staggered at random) and ask each seed for its state.

        Pass no seeds for the first node. Until a member is known, every push-pull round asks
        the seeds again, so the seeds need not be up first.
        """
        self._sync.seeds = [s for s in seeds if s != self.address]
        if not self._started:
            self._started = True
            self._next_probe_at = now + self._rng.uniform(0, self.config.protocol_period)
            self._sync.schedule(now)
            self._queue.enqueue(Update(self.me(), self.self_id))
        return [self._push_pull_to(s) for s in self._sync.seeds]

    def leave(self, now: float) -> list[Outbound]:
        """Leave gracefully: become LEFT (final for this incarnation), stop probing, and tell
        every live member at once; the shell should keep answering until it shuts down."""
        if self._left:
            return []
        self._left = True
        self._probe = None
        self._events.append(Transition(now, self.self_id, ALIVE, LEFT, self._inc))
        up = Update(self.me(), self.self_id)
        self._queue.enqueue(up)
        return [Outbound(m.address, Ping(self._next_seq(), self.self_id, m.node_id, (up,)))
                for m in self._live_others()]

    def update_meta(self, meta: Mapping[str, str] | Meta) -> None:
        """Change this node's meta (e.g. ring state joining → active) and gossip it under a new
        incarnation, so it overrides the old one everywhere."""
        self._meta = meta_of(meta)
        self._inc = min(self._inc + 1, MAX_INCARNATION)
        self._queue.enqueue(Update(self.me(), self.self_id))

    # ------------------------------------------------------------------------------- driving

    def tick(self, now: float) -> list[Outbound]:
        """Run every timer due by `now`: relay nacks, suspicion expiry, the probe, push-pull."""
        out: list[Outbound] = []
        if not self._started:
            return out
        out.extend(Outbound(r.requester, Nack(r.seq, self.self_id)) for r in self._relays.due(now))
        if not self._left:
            self._advance_probe(now, out)
        for node_id, s in list(self._suspicions.items()):  # after the probe: it may confirm one
            if now >= s.deadline:
                self._set(replace(self._members[node_id], state=DEAD), self.self_id, now)
        if self._sync.due(now):
            for node_id in self._sync.reapable(now):
                self._forget(node_id, now)
            if not self._left:
                out.extend(self._push_pull_to(a) for a in self._sync.peers(self._members))
        return out

    def receive(self, src_address: str, msg: Message, now: float) -> list[Outbound]:
        """Handle one message from `src_address`; returns the replies and forwards it causes.
        (A `Refuse` must be the answer to our own push-pull: the shell sees to that.)"""
        out: list[Outbound] = []
        match msg:
            case Ping():
                self._on_ping(src_address, msg, now, out)
            case PingReq():
                self._on_ping_req(src_address, msg, now, out)
            case Ack():
                self._on_ack(msg, now, out)
            case Nack():
                if self._probe is not None:
                    self._probe.nack(msg.seq, msg.sender)
            case PushPull():
                self._on_push_pull(src_address, msg, now, out)
            case Refuse():
                self._events.append(Refusal(now, msg.sender, src_address, msg.reason, True))
        return out

    # ---------------------------------------------------------------------------- push-pull

    def push_pull_state(self) -> tuple[Member, ...]:
        """The full state this node sends in a push-pull."""
        return tuple(self.members())

    def merge_state(self, remote: Iterable[Member], now: float) -> list[Outbound]:
        """Fold a peer's full state into ours under the precedence rules, a DEAD verdict on a
        member we know taken as SUSPECT (`as_heard_in_full_state`). Accusers do not travel in
        full state, so these suspicions are anonymous: they never count as a Lifeguard
        confirmation, here or wherever they are gossiped on."""
        out: list[Outbound] = []
        for m in remote:
            known = m.node_id == self.self_id or m.node_id in self._members
            self._apply(Update(as_heard_in_full_state(m, known), ANONYMOUS), now, out)
        return out

    # ------------------------------------------------------------------------------ handlers

    def _on_ping(self, src: str, msg: Ping, now: float, out: list[Outbound]) -> None:
        if msg.target != self.self_id:
            return  # meant for whoever held this address before us
        self._apply_all(msg.updates, now, out)
        if msg.sender not in self._members and self.refused(msg.sender) is not None:
            return  # it learns why from the Refuse that answers its push-pull
        out.append(Outbound(src, Ack(msg.seq, self.self_id, self._piggyback(msg.sender))))

    def _on_ping_req(self, src: str, msg: PingReq, now: float, out: list[Outbound]) -> None:
        self._apply_all(msg.updates, now, out)
        target = self._members.get(msg.target)
        if target is None or target.state not in _LIVE:  # no reflection towards strangers
            self._events.append(Dropped(now, "unknown_target", msg.sender))
            return
        seq = self._next_seq()
        if not self._relays.add(seq, Relay(src, msg.seq, now + self.config.ping_timeout,
                                           target.node_id)):
            self._events.append(Dropped(now, "relays_full", msg.sender))
            return
        ping = Ping(seq, self.self_id, target.node_id, self._piggyback(target.node_id))
        out.append(Outbound(target.address, ping))

    def _on_ack(self, msg: Ack, now: float, out: list[Outbound]) -> None:
        self._apply_all(msg.updates, now, out)
        relay = self._relays.answered(msg.seq, msg.sender)
        if relay is not None:
            ack = Ack(relay.seq, self.self_id, self._piggyback(None))
            out.append(Outbound(relay.requester, ack))
        elif self._probe is not None:
            self._probe.ack(msg.seq, msg.sender)

    def _on_push_pull(self, src: str, msg: PushPull, now: float, out: list[Outbound]) -> None:
        own = next((m for m in msg.members if m.node_id == msg.sender), None)
        if own is not None and own.node_id != self.self_id:
            reason, _ = self._verdict(own, now)
            if reason is not None:  # tell it, and show it nothing of the cluster
                if own.node_id in self._members:
                    self._forget(own.node_id, now)
                out.append(Outbound(src, Refuse(self.self_id, reason)))
                return
        out.extend(self.merge_state(msg.members, now))
        if not msg.is_reply:
            out.append(Outbound(src, PushPull(self.self_id, self.push_pull_state(), True)))

    # ---------------------------------------------------------------------------- the probe

    def _advance_probe(self, now: float, out: list[Outbound]) -> None:
        p = self._probe
        if p is not None:
            if not p.acked and not p.indirect and now >= p.ping_deadline:
                self._ask_helpers(p, now, out)
            if now >= p.period_end:
                self._conclude(p, now)
                self._probe = None
                self._next_probe_at = p.period_end
        if self._probe is None and now >= self._next_probe_at:
            self._start_probe(now, out)

    def _start_probe(self, now: float, out: list[Outbound]) -> None:
        scale = self._awareness + 1
        target = self._probe_order.next(self._members, lambda m: m.state in _LIVE)
        if target is None:
            self._next_probe_at = now + self.config.protocol_period * scale
            return
        seq = self._next_seq()
        self._probe = Probe(seq, target.node_id, target.incarnation, scale,
                             now + self.config.ping_timeout * scale,
                             now + self.config.protocol_period * scale)
        ping = Ping(seq, self.self_id, target.node_id, self._piggyback(target.node_id))
        out.append(Outbound(target.address, ping))

    def _ask_helpers(self, p: Probe, now: float, out: list[Outbound]) -> None:
        target = self._members.get(p.target)
        if target is None:
            p.indirect = True
            return
        helpers = sorted(k for k, m in self._members.items() if m.state is ALIVE and k != p.target)
        chosen = self._rng.sample(helpers, min(self.config.ping_req_k, len(helpers)))
        for h in chosen:
            req = PingReq(p.seq, self.self_id, p.target, target.address, self._piggyback(h))
            out.append(Outbound(self._members[h].address, req))
        p.go_indirect(chosen, now + self.config.ping_timeout * p.scale)

    def _conclude(self, p: Probe, now: float) -> None:
        if p.acked:
            self._nudge(-1)
            return
        # Lifeguard: missing nacks mean our own links are suspect; with no helpers, blame both.
        self._nudge(p.expected_nacks - p.nacks if p.expected_nacks else 1)
        m = self._members.get(p.target)
        if m is not None:
            accused = replace(m, incarnation=p.incarnation, state=SUSPECT)
            self._apply(Update(accused, self.self_id), now, [])

    def _nudge(self, delta: int) -> None:
        self._awareness = min(max(self._awareness + delta, 0), self.config.awareness_max - 1)

    # ------------------------------------------------------------------------------- updates

    def _apply_all(self, updates: Iterable[Update], now: float, out: list[Outbound]) -> None:
        for up in updates:
            self._apply(up, now, out)

    def _apply(self, up: Update, now: float, out: list[Outbound]) -> None:
        new = up.member
        if new.node_id == self.self_id:
            self._maybe_refute(new, now)
            return
        old = self._members.get(new.node_id)
        if (old is not None and old.state is SUSPECT and new.state is SUSPECT
                and old.incarnation == new.incarnation):
            self._confirm(old, up.by)
            return
        if not supersedes(new, old) or (old is None and new.state in _GONE):
            return  # stale, or an obituary of a stranger
        if old is None and len(self._members) + 1 >= self.config.max_members:
            self._events.append(Dropped(now, "members_full", new.node_id))
            return
        changed = old is None or old.meta != new.meta or old.address != new.address
        if changed and self._verdict(new, now)[0] is not None:
            if old is not None:  # no longer the member we knew: a stranger until it passes
                self._forget(new.node_id, now)
            return
        self._set(new, up.by, now)

    def _maybe_refute(self, claim: Member, now: float) -> None:
        """Someone asserts something about us that our record does not beat: outbid it."""
        if self._left or claim == self.me():
            return
        if claim.incarnation >= MAX_INCARNATION:  # cannot be outbid, so cannot be true
            self._events.append(Dropped(now, "absurd_incarnation", self.self_id))
            return
        if claim.incarnation < self._inc:
            if claim.state is not ALIVE:  # they missed our refutation: send it round again
                self._queue.enqueue(Update(self.me(), self.self_id))
            return
        if claim.state is not ALIVE:
            self._nudge(1)  # Lifeguard: being suspected hints that we are the slow one
        self._inc = claim.incarnation + 1
        self._queue.enqueue(Update(self.me(), self.self_id))

    def _set(self, new: Member, by: str, now: float) -> None:
        node_id = new.node_id
        old = self._members.get(node_id)
        self._members[node_id] = new
        if old is None or (old.state, old.meta, old.address) != (new.state, new.meta, new.address):
            was = None if old is None else old.state
            self._events.append(Transition(now, node_id, was, new.state, new.incarnation))
        if new.state in _GONE:
            if old is None or old.state not in _GONE:
                self._sync.gone(node_id, now)
        elif old is None or old.state in _GONE:
            self._sync.forget(node_id)
            self._probe_order.add(node_id)  # probe it this round
        if new.state is SUSPECT:
            self._suspicions[node_id] = Suspicion.begin(self.config, self._cluster_size(), by,
                                                        now)
        else:
            self._suspicions.pop(node_id, None)
        self._queue.enqueue(Update(new, by))

    def _confirm(self, m: Member, by: str) -> None:
        s = self._suspicions.get(m.node_id)
        if s is None or by in (ANONYMOUS, m.node_id) or not s.confirm(by):
            return
        self._queue.enqueue(Update(m, by))  # pass the confirmation on, as memberlist does

    def _verdict(self, m: Member, now: float) -> tuple[str | None, bool]:
        """The identity check's answer for this version of `m` (see `Admission`); a new
        refusal is reported in the events."""
        reason, first = self._admission.verdict(m)
        if first and reason is not None:
            self._events.append(Refusal(now, m.node_id, m.address, reason, False))
        return reason, first

    def refused(self, node_id: str) -> str | None:
        """Why the identity check refused the latest version of `node_id` seen, or None."""
        return self._admission.refusal(node_id)

    # ----------------------------------------------------------------------------- gossip

    def _piggyback(self, dest: str | None) -> tuple[Update, ...]:
        """Updates for one outgoing message. First our own record, so that any direct contact
        refutes a stale suspicion of us without waiting on gossip; then, to a destination we
        hold SUSPECT or DEAD, that verdict, so that it can refute at once; then up to
        `max_piggyback` queued updates that fit `max_datagram`, fewest-sent first, then newest
        (SWIM §4.1)."""
        picked = [Update(self.me(), self.self_id)]
        m = self._members.get(dest) if dest is not None else None
        if m is not None and m.state in (SUSPECT, DEAD):
            picked.append(Update(m, self.self_id))
        return self._queue.fill(picked, self.config, self._cluster_size())

    def _push_pull_to(self, address: str) -> Outbound:
        return Outbound(address, PushPull(self.self_id, self.push_pull_state(), False))

    def _forget(self, node_id: str, now: float) -> None:
        old = self._members.pop(node_id)
        self._sync.forget(node_id)
        self._suspicions.pop(node_id, None)
        self._queue.discard(node_id)
        self._events.append(Transition(now, node_id, old.state, None, old.incarnation))

    # ------------------------------------------------------------------------------- helpers

    def _live_others(self) -> list[Member]:
        return [m for m in self._members.values() if m.state in _LIVE]

    def _cluster_size(self) -> int:
        """Members ALIVE or SUSPECT, self included: the n of the formulas."""
        return 1 + len(self._live_others())

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq
