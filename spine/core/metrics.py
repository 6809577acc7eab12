"""A small Prometheus registry: counters, gauges and histograms with labels, rendered as text.

Kept dependency-free and allocation-light because every request touches it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

LabelKey = tuple[str, ...]


def _fmt_labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(v: float) -> str:
    """A sample value exactly as Prometheus reads it."""
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    if float(v).is_integer() and abs(v) < 2**53:
        return str(int(v))
    return repr(float(v))


def _series(name: str, labels: Sequence[str], values: dict[LabelKey, float]) -> list[str]:
    return [f"{name}{_fmt_labels(labels, k)} {_num(v)}" for k, v in sorted(values.items())]


class Counter:
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help_: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.labels = name, help_, tuple(labels)
        self.values: dict[LabelKey, float] = {}

    def inc(self, *labels: str, by: float = 1.0) -> None:
        """Add `by` to the series with these label values."""
        self.values[labels] = self.values.get(labels, 0.0) + by

    def get(self, *labels: str) -> float:
        """The current value of one series."""
        return self.values.get(labels, 0.0)

    def render(self) -> list[str]:
        return _series(self.name, self.labels, self.values)


class Gauge:
    """A value read from a callback at scrape time (or set directly)."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_: str,
        labels: Sequence[str] = (),
        read: Callable[[], dict[LabelKey, float]] | None = None,
    ) -> None:
        self.name, self.help, self.labels = name, help_, tuple(labels)
        self.values: dict[LabelKey, float] = {}
        self._read = read

    def set(self, value: float, *labels: str) -> None:
        """Set one series."""
        self.values[labels] = value

    def render(self) -> list[str]:
        values = self._read() if self._read is not None else self.values
        return _series(self.name, self.labels, values)


class Histogram:
    """Observations bucketed cumulatively, per label set."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        self.name, self.help, self.labels = name, help_, tuple(labels)
        self.buckets = tuple(buckets)
        self.series: dict[LabelKey, list[float]] = {}  # bucket counts..., +Inf, sum

    def observe(self, value: float, *labels: str) -> None:
        """Record one observation."""
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = [0.0] * (len(self.buckets) + 2)
        s[bisect.bisect_left(self.buckets, value)] += 1
        s[-1] += value

    def count(self, *labels: str) -> int:
        """How many observations one series holds."""
        s = self.series.get(labels)
        return 0 if s is None else int(sum(s[:-1]))

    def render(self) -> list[str]:
        out: list[str] = []
        for k, s in sorted(self.series.items()):
            acc = 0.0
            for b, c in zip((*self.buckets, float("inf")), s[:-1], strict=True):
                acc += c
                le = "+Inf" if b == float("inf") else f"{b:g}"
                bucket = _fmt_labels(self.labels, k, 'le="' + le + '"')
                out.append(f"{self.name}_bucket{bucket} {_num(acc)}")
            out.append(f"{self.name}_sum{_fmt_labels(self.labels, k)} {_num(s[-1])}")
            out.append(f"{self.name}_count{_fmt_labels(self.labels, k)} {_num(acc)}")
        return out


Metric = Counter | Gauge | Histogram


class Registry:
    """Every metric a node exports; `render()` is the /metrics body."""

    def __init__(self, const_labels: dict[str, str] | None = None) -> None:
        self.metrics: list[Metric] = []
        self.const = const_labels or {}

    def counter(self, name: str, help_: str, labels: Sequence[str] = ()) -> Counter:
        m = Counter(name, help_, labels)
        self.metrics.append(m)
        return m

    def gauge(
        self,
        name: str,
        help_: str,
        labels: Sequence[str] = (),
        read: Callable[[], dict[LabelKey, float]] | None = None,
    ) -> Gauge:
        m = Gauge(name, help_, labels, read)
        self.metrics.append(m)
        return m

    def histogram(self, name: str, help_: str, labels: Sequence[str] = ()) -> Histogram:
        m = Histogram(name, help_, labels)
        self.metrics.append(m)
        return m

    def render(self) -> str:
        lines: list[str] = []
        for m in self.metrics:
            escaped = m.help.replace("\\", "\\\\").replace("\n", "\\n")
            lines.append(f"# HELP {m.name} {escaped}")
            lines.append(f"# TYPE {m.name} {m.kind}")
            lines.extend(m.render())
        return "\n".join(lines) + "\n"


class SpineMetrics:
    """The metrics every Spine node exports (names are part of the operator contract)."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.requests = r.counter(
            "spine_requests_total", "HTTP requests by route, level and status",
            ("route", "level", "status"))
        self.latency = r.histogram(
            "spine_request_seconds", "HTTP request latency by route and level", ("route", "level"))
        self.quorum_failures = r.counter(
            "spine_quorum_failures_total", "writes or reads that missed their quorum",
            ("op", "level"))
        self.conflicts = r.counter(
            "spine_conflicts_total", "concurrent writes that lost the LWW merge (kept in history)")
        self.read_repairs = r.counter(
            "spine_read_repairs_total", "stale replicas repaired by a read")
        self.hints_written = r.counter("spine_hints_written_total", "hints stored for a replica")
        self.hints_delivered = r.counter(
            "spine_hints_delivered_total", "hints replayed to their replica")
        self.hints_expired = r.counter(
            "spine_hints_expired_total", "hints dropped after handoff.window")
        self.forwards = r.counter(
            "spine_forwards_total", "requests forwarded to a replica coordinator")
        self.forwards_expired = r.counter(
            "spine_forwards_expired_total",
            "forwarded writes refused because they arrived after their deadline")
        self.session_waits = r.counter(
            "spine_session_escalations_total", "session reads that had to ask more replicas")
        self.replication_lag = r.histogram(
            "spine_replication_lag_seconds",
            "how long a write this node coordinated took to reach a replica in another region",
            ("region",))
        self.settled_reads = r.counter(
            "spine_session_settled_reads_total",
            "reads answered by this replica alone with a version every owner holds (left out of "
            "the session token)")
        self.feed_items = r.counter(
            "spine_feed_items_total", "change-feed items this node delivered to consumers, by how"
            " each was made safe: logged (the logs showed it on a quorum), settled (a strong"
            " read first)", ("how",))
        self.feed_repeats = r.counter(
            "spine_feed_repeats_total", "change-feed items not sent again: a replica logged the"
            " change late, and the consumer's cursor shows it has it already")
        self.feed_held = r.counter(
            "spine_feed_held_total", "change-feed keys held back for a poll: no quorum could be"
            " read or written for them (their positions stay)")
        self.paxos_rounds = r.counter(
            "spine_paxos_rounds_total",
            "Paxos rounds (strong and conditional writes, lease changes) by how they ended: "
            "chosen, warm (chosen by a round with no prepare on the network: this node led the "
            "key's last round), warm_refused (a warm round's guard refused; a full round "
            "followed), reproposed (an interrupted change completed), contended (a higher ballot "
            "won; retried), refused (the condition failed; on a warm key confirmed by the last "
            "round's two acceptors without a round), queue_full (refused 429: too many "
            "changes of the key waiting their turn on this node)", ("outcome",))
        self.rpc_errors = r.counter("spine_rpc_errors_total", "failed internal calls", ("peer",))
        self.read_speculative = r.counter(
            "spine_read_speculative_total", "replica reads sent because the replicas asked first"
            " had not answered within their recent p95 (speculative retry)")
        self.search_speculative = r.counter(
            "spine_search_speculative_total", "search fan-out nodes asked because a node of the"
            " covering set had not answered within its recent p95")
        self.clock_rejects = r.counter(
            "spine_clock_skew_rejects_total", "messages refused for a clock too far ahead")
        self.overloaded = r.counter("spine_overloaded_total", "requests refused with 429")
