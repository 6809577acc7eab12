"""How fast each peer answers lately: the ranking behind reads that prefer fast replicas.

Cassandra's dynamic snitch scores each replica by its recent latency and sends reads to the
best-scored ones; "The Tail at Scale" (Dean & Barroso, 2013) asks one more replica when the
first has not answered within the latency most requests meet (its p95), which trims the tail
for a few percent more requests. `PeerStats` keeps, per peer, an exponentially weighted moving
average of its call latency, the number of calls in flight to it, and a small window of recent
latencies for the p95. Pure: the caller times the calls (`spine.cluster.peer_latency`) and
passes the seconds in; nothing here reads a clock.

A score is `ewma * (1 + outstanding)`: a peer that stopped answering (paused, overloaded) ranks
last as soon as calls pile up on it, before any of them time out. A peer with no samples yet
is scored as the median known peer, so it is neither preferred nor starved. State is bounded:
at most `max_peers` peers (the least recently used idle one is forgotten for a new one), each
with a window of `window` samples.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_PEERS = 1024
WINDOW = 64
ALPHA = 0.2  # weight of the newest sample in the EWMA
MIN_SAMPLES = 8  # a p95 from fewer samples is noise: fall back to twice the EWMA
HEDGE_MIN = 0.005  # seconds: never hedge sooner (a hedge is one more request)
HEDGE_MAX = 1.0  # seconds: never wait longer before hedging
HEDGE_DEFAULT = 0.05  # seconds: the hedge delay for a peer with no samples
EWMA_CAP = 4.0  # the hedge delay is at most this many times the peer's EWMA


@dataclass(slots=True)
class _Peer:
    ewma: float | None = None
    outstanding: int = 0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=WINDOW))


class PeerStats:
    """Per-peer EWMA latency, calls in flight and a recent-latency window (Cassandra's dynamic
    snitch, "The Tail at Scale"'s hedge delay)."""

    def __init__(
        self,
        *,
        alpha: float = ALPHA,
        window: int = WINDOW,
        max_peers: int = MAX_PEERS,
        hedge_min: float = HEDGE_MIN,
        hedge_max: float = HEDGE_MAX,
        hedge_default: float = HEDGE_DEFAULT,
        quantile: float = 0.95,
    ) -> None:
        if not 0 < alpha <= 1 or window < 1 or max_peers < 1 or not 0 < quantile <= 1:
            raise ValueError("alpha in (0, 1], window >= 1, max_peers >= 1, quantile in (0, 1]")
        self.alpha = alpha
        self.window = window
        self.max_peers = max_peers
        self.hedge_min = hedge_min
        self.hedge_max = max(hedge_min, hedge_max)
        self.hedge_default = hedge_default
        self.quantile = quantile
        self._peers: OrderedDict[str, _Peer] = OrderedDict()  # least recently used first

    def tracked(self) -> int:
        """How many peers have state here (at most `max_peers`)."""
        return len(self._peers)

    def __contains__(self, node: object) -> bool:
        return node in self._peers

    def _get(self, node: str, create: bool) -> _Peer | None:
        p = self._peers.get(node)
        if p is not None:
            self._peers.move_to_end(node)
            return p
        if not create:
            return None
        if len(self._peers) >= self.max_peers:
            idle = next((n for n, q in self._peers.items() if q.outstanding == 0), None)
            if idle is None:
                return None  # every tracked peer has calls in flight: this one goes untracked
            del self._peers[idle]
        p = self._peers[node] = _Peer(recent=deque(maxlen=self.window))
        return p

    def started(self, node: str) -> None:
        """A call to `node` went out."""
        p = self._get(node, create=True)
        if p is not None:
            p.outstanding += 1

    def finished(self, node: str, seconds: float, *, sample: bool = True) -> None:
        """A call to `node` ended after `seconds` (a failure: pass at least its timeout, so it
        counts as slow). `sample=False`: it only leaves the in-flight count."""
        p = self._get(node, create=False)
        if p is None:
            return  # forgotten (or never tracked) while the call was out
        p.outstanding = max(0, p.outstanding - 1)
        if not sample or not math.isfinite(seconds):
            return
        seconds = max(0.0, seconds)
        p.ewma = seconds if p.ewma is None else p.ewma + self.alpha * (seconds - p.ewma)
        p.recent.append(seconds)

    def forget(self, node: str) -> None:
        """Drop what is known of `node` (it left the cluster)."""
        self._peers.pop(node, None)

    def outstanding(self, node: str) -> int:
        """Calls to `node` in flight."""
        p = self._peers.get(node)
        return 0 if p is None else p.outstanding

    def ewma(self, node: str) -> float | None:
        """`node`'s smoothed latency in seconds, or None before its first sample."""
        p = self._peers.get(node)
        return None if p is None else p.ewma

    def score(self, node: str) -> float | None:
        """Lower is faster: ewma * (1 + outstanding); None without a sample."""
        p = self._peers.get(node)
        if p is None or p.ewma is None:
            return None
        return p.ewma * (1 + p.outstanding)

    def rank(self, nodes: Iterable[str]) -> list[str]:
        """`nodes`, fastest first (stable: ties keep their order). A node with no sample yet is
        scored as the median of the known ones (times its own calls in flight)."""
        nodes = list(nodes)
        known = sorted(s for n in nodes if (s := self.score(n)) is not None)
        median = known[len(known) // 2] if known else 0.0
        keys: list[float] = []
        for n in nodes:
            s = self.score(n)
            keys.append(s if s is not None else median * (1 + self.outstanding(n)))
        order = sorted(range(len(nodes)), key=keys.__getitem__)
        return [nodes[i] for i in order]

    def percentile(self, node: str) -> float | None:
        """The `quantile` (p95 by default) of `node`'s recent latencies, or None with fewer than
        MIN_SAMPLES of them."""
        p = self._peers.get(node)
        if p is None or len(p.recent) < min(MIN_SAMPLES, self.window):
            return None
        xs = sorted(p.recent)
        return xs[max(0, math.ceil(self.quantile * len(xs)) - 1)]

    def hedge_after(self, node: str) -> float:
        """Seconds to wait on `node` before asking one more replica: its recent p95, at most
        EWMA_CAP times its EWMA (twice its EWMA with few samples; `hedge_default` with none),
        clamped to [hedge_min, hedge_max]."""
        q = self.percentile(node)
        e = self.ewma(node)
        if q is None:
            q = self.hedge_default if e is None else 2 * e
        elif e is not None:
            # The window can hold a slow spell the EWMA has forgotten (a peer that was slowed
            # and recovered): never wait much longer than the peer now takes.
            q = min(q, EWMA_CAP * e)
        return min(self.hedge_max, max(self.hedge_min, q))


class HedgeBudget:
    """At most `ratio` extra requests per request, plus a burst ("The Tail at Scale" keeps
    hedges to a few percent of the load: on a box whose peers are all slow because all are
    busy, hedging only adds work). A token bucket counted in requests, not time."""

    def __init__(self, ratio: float = 0.05, burst: float = 5.0) -> None:
        if ratio < 0 or burst < 1:
            raise ValueError("ratio >= 0, burst >= 1")
        self.ratio = ratio
        self.burst = burst
        self.tokens = burst

    def request(self) -> None:
        """One request went out: earn `ratio` of a hedge."""
        self.tokens = min(self.burst, self.tokens + self.ratio)

    def take(self) -> bool:
        """Whether one hedge may be sent now (and spend it)."""
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
