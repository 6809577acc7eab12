"""SWIM's knobs and its pure formulas (SWIM §4–§5; Lifeguard §IV; memberlist's `util.go`).

`SwimConfig` holds the protocol's settings, in seconds; the formulas are plain functions of their
arguments (suspicion timeout, Lifeguard's shrinking suspicion, retransmit limit, the precedence of
two records, and the failure-detection bound an operator can expect), so that each is tested on
its own with a table. `spine.core.swim` re-exports all of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from spine.core.errors import ConfigError
from spine.core.swim_messages import Member, MemberState

__all__ = [
    "SwimConfig", "failure_detection_bound", "retransmit_limit", "supersedes",
    "suspicion_duration", "suspicion_timeout",
]

_RANK = {MemberState.ALIVE: 0, MemberState.SUSPECT: 1, MemberState.DEAD: 2, MemberState.LEFT: 3}


# -------------------------------------------------------------------------------------- formulas


def suspicion_timeout(suspicion_mult: float, n_members: int, protocol_period: float) -> float:
    """Nominal suspicion timeout (memberlist): mult × max(1, log10(n)) × T, in seconds."""
    return suspicion_mult * max(1.0, math.log10(max(1, n_members))) * protocol_period


def suspicion_duration(confirmations: int, expected: int, lo: float, hi: float) -> float:
    """Lifeguard's shrinking timeout: `hi` with no independent confirmation, falling
    logarithmically to `lo` once `expected` other nodes have confirmed the suspicion."""
    if expected < 1 or hi <= lo:
        return lo
    frac = math.log(confirmations + 1) / math.log(expected + 1)
    return max(lo, hi - frac * (hi - lo))


def retransmit_limit(retransmit_mult: int, n_members: int) -> int:
    """How many times one update is piggybacked: mult × ceil(log10(n + 1)) (SWIM §4.1)."""
    return retransmit_mult * math.ceil(math.log10(n_members + 1))


def supersedes(new: Member, old: Member | None) -> bool:
    """SWIM's precedence (§4.2), as one order on (incarnation, ALIVE < SUSPECT < DEAD < LEFT).

    alive(i) beats alive/suspect(j < i); suspect(i) beats alive(j <= i) and suspect(j < i);
    dead(i) beats everything of incarnation <= i; left(i) is final for incarnation i. Only a
    higher incarnation, which only the member itself can mint, brings a DEAD or LEFT one back.
    """
    if old is None:
        return True
    return (new.incarnation, _RANK[new.state]) > (old.incarnation, _RANK[old.state])


# ---------------------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class SwimConfig:
    """SWIM's knobs, times in seconds. The defaults suit a LAN: memberlist's LAN preset with
    a protocol period twice as fast and push-pull every 10 s instead of 30."""

    protocol_period: float = 0.5  # T: one probe per period
    ping_timeout: float = 0.2  # wait for a direct ack before asking helpers; < T/2
    ping_req_k: int = 3  # helpers asked to probe indirectly
    suspicion_mult: int = 4  # nominal suspicion timeout = mult × max(1, log10 n) × T
    suspicion_max_mult: float = 6.0  # Lifeguard: a lone suspicion waits this × the nominal one
    retransmit_mult: int = 4  # each update is piggybacked mult × ceil(log10(n+1)) times
    push_pull_interval: float = 10.0  # full-state TCP exchange with one random member
    max_piggyback: int = 6  # queued updates per message, besides the sender's own record
    max_datagram: int = 1400  # piggyback stops short of this many bytes (fits a 1500 MTU)
    awareness_max: int = 8  # Lifeguard: T and ping_timeout scale by up to this factor
    dead_reap_after: float = 86_400.0  # a DEAD/LEFT record is forgotten after this long
    max_members: int = 1024  # members in the view, self included; newcomers past it refused

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ConfigError:
            return ConfigError(f"swim.{name}: {why}", field=f"swim.{name}")

        if not self.protocol_period > 0:
            raise bad("protocol_period", "must be > 0")
        if not 0 < 2 * self.ping_timeout < self.protocol_period:
            raise bad("ping_timeout", "must be > 0 and < protocol_period / 2")
        for name in ("ping_req_k", "suspicion_mult", "retransmit_mult", "max_piggyback",
                     "awareness_max"):
            if getattr(self, name) < 1:
                raise bad(name, "must be >= 1")
        if self.max_members < 2:
            raise bad("max_members", "must be >= 2")
        if self.max_datagram < 576:
            raise bad("max_datagram", "must be >= 576 (the smallest datagram IPv4 must carry)")
        if self.suspicion_max_mult < 1:
            raise bad("suspicion_max_mult", "must be >= 1")
        for name in ("push_pull_interval", "dead_reap_after"):
            if not getattr(self, name) > 0:
                raise bad(name, "must be > 0")

    @classmethod
    def local(cls) -> SwimConfig:
        """Faster timings for a cluster on one host (`spine up`, integration tests)."""
        return cls(protocol_period=0.2, ping_timeout=0.08, push_pull_interval=5.0)


def failure_detection_bound(config: SwimConfig, n_members: int) -> float:
    """Worst case from a member's crash to a healthy observer's DEAD verdict, without loss,
    membership otherwise steady (a degraded observer's periods stretch by its awareness + 1).

    The observer's round-robin reaches the crashed member within 2(n-1)-1 periods (it may just
    have been probed at the start of one shuffled round and come last in the next), that probe
    fails at the end of its period, and the observer's own suspicion then expires at the latest
    `suspicion_max_mult` × the nominal timeout later (gossip can only make any step sooner).
    """
    probe = 2 * (n_members - 1) * config.protocol_period
    lo = suspicion_timeout(config.suspicion_mult, n_members, config.protocol_period)
    return probe + config.suspicion_max_mult * lo
