"""Hybrid logical clocks, versions and version vectors (Kulkarni et al. 2014; Dynamo §4.4).

An HLC timestamp is one 64-bit integer: 48 bits of wall milliseconds and a 16-bit logical counter.
Packing it keeps comparison and `max` trivial, and `+ 1` is the HLC "tick" (a counter overflow
carries into the milliseconds, which only moves logical time 1 ms ahead).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from spine.core.errors import ClockSkew

COUNTER_BITS = 16
_HEX = re.compile(r"[0-9a-f]{16}")


def hlc_ms(hlc: int) -> int:
    """The wall-clock milliseconds part of an HLC timestamp."""
    return hlc >> COUNTER_BITS


def hlc_from_ms(ms: int) -> int:
    """The smallest HLC timestamp at wall time `ms`."""
    return ms << COUNTER_BITS


class HLC:
    """A hybrid logical clock: strictly increasing, and always ahead of every message it has seen.

    Invariant: every value returned by `now()` or `observe()` is larger than every value returned
    before it and every remote value observed before it.
    """

    def __init__(self, wall_ms: Callable[[], int], max_offset_ms: int, last: int = 0) -> None:
        self._wall_ms = wall_ms
        self._max_offset_ms = max_offset_ms
        self._last = last
        self.rejected = 0

    @property
    def last(self) -> int:
        """The largest timestamp issued so far (the high-water mark to persist)."""
        return self._last

    def now(self) -> int:
        """A timestamp for a local event."""
        self._last = max(self._last + 1, hlc_from_ms(self._wall_ms()))
        return self._last

    def check(self, remote: int) -> None:
        """Refuse a remote timestamp too far ahead of our wall clock (CockroachDB's max offset)."""
        wall = self._wall_ms()
        if hlc_ms(remote) > wall + self._max_offset_ms:
            self.rejected += 1
            raise ClockSkew(
                f"remote clock is {hlc_ms(remote) - wall} ms ahead (max {self._max_offset_ms} ms)",
                ahead_ms=hlc_ms(remote) - wall,
            )

    def observe(self, remote: int) -> int:
        """Merge a timestamp received in a message; the result is larger than both clocks."""
        self.check(remote)
        self._last = max(self._last + 1, remote + 1, hlc_from_ms(self._wall_ms()))
        return self._last


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """The total order used for last-write-wins: HLC first, then the writing node's id."""

    hlc: int
    node: str

    def encode(self) -> str:
        """An opaque string that sorts like the (hlc, node) pair."""
        return f"{self.hlc:016x}.{self.node}"

    @classmethod
    def decode(cls, text: str) -> Version:
        """Inverse of `encode`; raises ValueError on anything else."""
        hexpart, sep, node = text.partition(".")
        if not sep or len(hexpart) != 16 or not node or not _HEX.fullmatch(hexpart):
            raise ValueError(f"not a version: {text!r}")
        return cls(int(hexpart, 16), node)


ZERO = Version(0, "")


class Ordering(enum.Enum):
    """How two version vectors relate."""

    EQUAL = "equal"
    BEFORE = "before"
    AFTER = "after"
    CONCURRENT = "concurrent"


VectorClock = Mapping[str, int]


def vv_compare(a: VectorClock, b: VectorClock) -> Ordering:
    """Compare two version vectors: is `a` before, after, equal to or concurrent with `b`."""
    a_bigger = b_bigger = False
    for node in a.keys() | b.keys():
        x, y = a.get(node, 0), b.get(node, 0)
        if x > y:
            a_bigger = True
        elif y > x:
            b_bigger = True
        if a_bigger and b_bigger:
            return Ordering.CONCURRENT
    if a_bigger:
        return Ordering.AFTER
    if b_bigger:
        return Ordering.BEFORE
    return Ordering.EQUAL


def vv_merge(a: VectorClock, b: VectorClock) -> dict[str, int]:
    """Pointwise maximum: the smallest vector that dominates both."""
    out = dict(a)
    for node, n in b.items():
        if n > out.get(node, 0):
            out[node] = n
    return out


def vv_increment(a: VectorClock, node: str) -> dict[str, int]:
    """A copy of `a` with `node`'s counter advanced by one."""
    out = dict(a)
    out[node] = out.get(node, 0) + 1
    return out
