"""An in-memory network on virtual time for whole-cluster SWIM simulations.

memberlist's MockNetwork with faults added: one priority queue of timed events (deliveries, node
ticks, scheduled actions), a seeded `random.Random` for every draw, per-datagram loss, a delay
distribution, directional partitions, and nodes that can be killed (stop receiving and sending)
or paused (SIGSTOP: inbound buffered, timers frozen, all replayed on resume). Every message goes
through the real codec, sealed and opened by the real gossip authentication (`swim_auth`, each
node with its own replay cache, on virtual time): with no attacker on the network, any packet it
refuses is a bug, and raises. Nothing reads a clock: `Network.now` is the only time there is.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from spine.core.swim import Event, Outbound, Swim
from spine.core.swim_auth import Channel, GossipAuth
from spine.core.swim_messages import Message, PushPull, decode, encode

Delay = Callable[[random.Random], float]


def uniform_delay(lo: float = 0.001, hi: float = 0.010) -> Delay:
    """One-way latency drawn uniformly from [lo, hi] seconds."""
    return lambda rng: rng.uniform(lo, hi)


@dataclass
class SimNode:
    """One SWIM instance on the network, with its fault flags and the events it emitted."""

    swim: Swim
    auth: GossipAuth = field(default_factory=lambda: GossipAuth(["sim-secret"], 10_500))
    killed: bool = False
    paused: bool = False
    inbox: list[tuple[str, bytes]] = field(default_factory=list)  # buffered while paused
    tick_at: float = math.inf
    events: list[Event] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.swim.address


@dataclass
class Stats:
    """What the network did, for sanity checks on a scenario."""

    sent: int = 0
    lost: int = 0
    blocked: int = 0
    delivered: int = 0


class Network:
    """Virtual time, a seeded RNG and a queue of deliveries between `Swim` nodes."""

    def __init__(self, seed: int, *, loss: float = 0.0, delay: Delay | None = None) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.loss = loss
        self.delay = delay or uniform_delay()
        self.nodes: dict[str, SimNode] = {}  # by address
        self.blocked: set[tuple[str, str]] = set()  # (from address, to address)
        self.stats = Stats()
        self.after_step: list[Callable[[SimNode], None]] = []
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._count = 0

    # -------------------------------------------------------------------------- building

    def add(self, swim: Swim) -> SimNode:
        """Put a node on the network (it does nothing until it joins)."""
        node = SimNode(swim)
        self.nodes[swim.address] = node
        return node

    def node(self, node_id: str) -> SimNode:
        """The node whose SWIM id is `node_id`."""
        return next(n for n in self.nodes.values() if n.swim.self_id == node_id)

    # --------------------------------------------------------------------------- faults

    def at(self, when: float, action: Callable[[], None]) -> None:
        """Run `action` at virtual time `when`."""
        self._push(when, action)

    def join(self, address: str, seeds: list[str], when: float) -> None:
        """Have the node at `address` join through `seeds` at `when`."""

        def go() -> None:
            node = self.nodes[address]
            self._send(node, node.swim.join(seeds, self.now))
            self._after(node)

        self.at(when, go)

    def leave(self, address: str, when: float) -> None:
        """Have the node at `address` leave gracefully at `when` (it keeps running)."""

        def go() -> None:
            node = self.nodes[address]
            self._send(node, node.swim.leave(self.now))
            self._after(node)

        self.at(when, go)

    def kill(self, address: str, when: float) -> None:
        """Crash the node at `when`: it never receives, sends or ticks again."""

        def go() -> None:
            node = self.nodes[address]
            node.killed = True
            node.inbox.clear()

        self.at(when, go)

    def pause(self, address: str, when: float, until: float) -> None:
        """Freeze the node from `when` to `until`, buffering what reaches it meanwhile."""
        node = self.nodes[address]

        def stop() -> None:
            node.paused = True

        def resume() -> None:
            node.paused = False
            inbox, node.inbox = node.inbox, []
            for src, data in inbox:
                self._receive(node, src, data)
            self._tick(node)

        self.at(when, stop)
        self.at(until, resume)

    def partition(self, groups: Iterable[Collection[str]], when: float) -> None:
        """From `when`, block every datagram and connection between different groups."""
        sides = [set(g) for g in groups]

        def go() -> None:
            self.blocked = {(a, b) for i, ga in enumerate(sides) for j, gb in enumerate(sides)
                            if i != j for a in ga for b in gb}

        self.at(when, go)

    def heal(self, when: float) -> None:
        """From `when`, no partition."""

        def go() -> None:
            self.blocked = set()

        self.at(when, go)

    def set_loss(self, loss: float, when: float) -> None:
        """From `when`, lose each datagram with probability `loss`."""

        def go() -> None:
            self.loss = loss

        self.at(when, go)

    # ---------------------------------------------------------------------------- running

    def run_until(self, until: float) -> None:
        """Process every event due up to and including `until`; then `now == until`."""
        while self._heap and self._heap[0][0] <= until:
            when, _, action = heapq.heappop(self._heap)
            self.now = when
            action()
        self.now = until

    # ---------------------------------------------------------------------------- internals

    def _ms(self) -> int:
        return int(self.now * 1000)

    def _push(self, when: float, action: Callable[[], None]) -> None:
        self._count += 1
        heapq.heappush(self._heap, (when, self._count, action))

    def _send(self, node: SimNode, outs: list[Outbound]) -> None:
        for address, msg in outs:
            self.stats.sent += 1
            # Push-pull rides TCP: never lost, but a partition still cuts it.
            if not isinstance(msg, PushPull) and self.rng.random() < self.loss:
                self.stats.lost += 1
                continue
            data = node.auth.seal(Channel.DATAGRAM, encode(msg), self._ms())
            when = self.now + self.delay(self.rng)
            self._push(when, self._deliver_later(node.address, address, data))

    def _deliver_later(self, src: str, dst: str, data: bytes) -> Callable[[], None]:
        def go() -> None:
            target = self.nodes.get(dst)
            if (src, dst) in self.blocked:
                self.stats.blocked += 1
            elif target is not None and not target.killed:
                if target.paused:
                    target.inbox.append((src, data))
                else:
                    self._receive(target, src, data)

        return go

    def _receive(self, node: SimNode, src: str, data: bytes) -> None:
        self.stats.delivered += 1
        msg: Message = decode(node.auth.open(Channel.DATAGRAM, data, self._ms())[0])
        self._send(node, node.swim.receive(src, msg, self.now))
        self._after(node)

    def _tick(self, node: SimNode) -> None:
        if node.killed or node.paused:
            return
        self._send(node, node.swim.tick(self.now))
        if node.swim.next_deadline() <= self.now:
            raise AssertionError(f"{node.swim.self_id}: tick at {self.now} left work due")
        self._after(node)

    def _after(self, node: SimNode) -> None:
        node.events.extend(node.swim.drain_events())
        for check in self.after_step:
            check(node)
        due = max(node.swim.next_deadline(), self.now)
        if due != node.tick_at and due < math.inf:
            node.tick_at = due
            self._push(due, self._tick_if_current(node, due))

    def _tick_if_current(self, node: SimNode, due: float) -> Callable[[], None]:
        def go() -> None:
            if node.tick_at == due:  # else superseded by a later schedule
                node.tick_at = math.inf
                self._tick(node)

        return go
