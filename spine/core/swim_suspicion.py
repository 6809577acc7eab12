"""Lifeguard's suspicion with a shrinking timeout (Dadgar et al. 2018, §IV-B; memberlist's
`suspicion.go`).

A suspicion starts at `suspicion_max_mult` × the nominal SWIM timeout and shrinks
logarithmically towards the nominal one as other members independently accuse the same
incarnation: a lone, possibly slow, accuser waits long; a suspicion the cluster agrees on ends
quickly. A cluster too small to give the expected confirmations expects none, and waits only the
nominal timeout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from spine.core.swim_config import SwimConfig, suspicion_duration, suspicion_timeout

__all__ = ["Suspicion"]


@dataclass(slots=True)
class Suspicion:
    """One member's suspicion: when it started, its bounds, and who has confirmed it."""

    started: float
    expected: int  # independent confirmations that bring the timeout down to `lo`
    lo: float
    hi: float
    deadline: float
    confirmers: set[str] = field(default_factory=set)

    @classmethod
    def begin(cls, config: SwimConfig, n_members: int, by: str, now: float) -> Suspicion:
        """A suspicion raised by `by` at `now`, in a cluster of `n_members` live members."""
        # Expect mult-2 confirmations, unless the cluster is too small to give them.
        k = config.suspicion_mult - 2
        k = k if n_members - 2 >= k else 0
        lo = suspicion_timeout(config.suspicion_mult, n_members, config.protocol_period)
        hi = config.suspicion_max_mult * lo
        return cls(now, k, lo, hi, now + suspicion_duration(0, k, lo, hi), {by})

    def confirm(self, by: str) -> bool:
        """Count `by`'s accusation; False if it had already been counted."""
        if by in self.confirmers:
            return False
        self.confirmers.add(by)
        n = len(self.confirmers) - 1
        self.deadline = self.started + suspicion_duration(n, self.expected, self.lo, self.hi)
        return True
