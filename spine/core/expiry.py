"""Expiry of memories (DESIGN §13): when a version expires, whether it has, and the sweep's
decisions. Pure: "now" is always an HLC reading passed in.

A write's expiry is part of its version (`Record.expires_hlc`, 0 = never), computed once by the
coordinator that mints it: `ttl_s` from the request, else the shortest `lifecycle.ttl_s_by_tag`
default among the record's tags. Every node judges it on its own HLC at read time, so a replica
that never heard of the sweep still hides an expired record, and a copy of the expired version
arriving late (read repair, hints, anti-entropy) is exactly as expired as the original.

The sweep turns an expired version into a tombstone stamped at the expiry instant itself,
`Version(expires_hlc, sweeper)`: newer than the version it retires (its HLC is past that
version's, its clock dominates), older than any write minted after the instant of expiry, so a
client's later write always wins over the sweep's tombstone, whichever reaches a replica first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from spine.core.clock import Version, hlc_from_ms, hlc_ms, vv_increment
from spine.core.model import Record

# The longest expiry any setting may ask for (100 years): far inside the HLC's 48 bits of ms.
HARD_MAX_TTL_S = 100 * 365 * 24 * 3600
DEFAULT_MAX_TTL_S = 10 * 365 * 24 * 3600


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """The operator's expiry settings (`lifecycle` in cluster.yaml)."""

    ttl_s_by_tag: Mapping[str, int] = field(default_factory=dict)
    max_ttl_s: int = DEFAULT_MAX_TTL_S

    def ttl_s(self, requested: int | None, tags: tuple[str, ...]) -> int | None:
        """The TTL a write gets: the one it asked for, else the shortest default among its
        tags (the most cautious: a tag that says "forget within an hour" is never overridden
        by a tag that allows a day), else None (it never expires)."""
        if requested is not None:
            return requested
        defaults = [self.ttl_s_by_tag[t] for t in tags if t in self.ttl_s_by_tag]
        return min(defaults) if defaults else None


def expires_hlc(version_hlc: int, ttl_s: int | None) -> int:
    """The HLC at which a version minted at `version_hlc` expires: `ttl_s` seconds of wall time
    after it (0 when there is no TTL). Always larger than `version_hlc` for ttl_s >= 1."""
    if not ttl_s:
        return 0
    return hlc_from_ms(hlc_ms(version_hlc) + ttl_s * 1000)


def is_expired(rec: Record | None, now_hlc: int) -> bool:
    """Whether `rec` is a live version whose expiry has passed at `now_hlc` (a node's HLC
    reading). A tombstone is never "expired": it is already absent."""
    return (rec is not None and not rec.deleted and rec.expires_hlc != 0
            and rec.expires_hlc <= now_hlc)


def masked(rec: Record | None, now_hlc: int) -> Record | None:
    """`rec` as a reader at `now_hlc` may see it: unchanged, or, when expired, a tombstone view
    of it with the same version, clock, tags and fences and no payload.

    The view keeps the version so that a session token still records that this version was
    seen (read-your-writes and monotonic reads hold: a later read anywhere returns this version
    or something newer, and both read as absent), and so that a write over an expired record
    builds on its clock and fences while counting as a create. It is never stored."""
    if rec is None or not is_expired(rec, now_hlc):
        return rec
    return replace(rec, content="", metadata={}, vector=None, deleted=True)


# ------------------------------------------------------------------ the sweep


def sweep_due(rec: Record, now_hlc: int, margin_ms: int) -> bool:
    """Whether the sweep should retire `rec` now: expired at least `margin_ms` ago. The margin
    (a write's timeout plus the clocks' allowed offset) lets every write minted before the
    instant of expiry finish reaching its quorum first, so the sweep's quorum read sees it."""
    return is_expired(rec, hlc_from_ms(max(0, hlc_ms(now_hlc) - margin_ms)))


def sweep_tombstone(newest: Record, node_id: str) -> Record | None:
    """The tombstone that retires `newest` (the key's newest version a quorum held), or None
    when it has nothing to retire (it is a tombstone, or does not expire).

    Stamped `Version(newest.expires_hlc, node_id)`: see the module docstring. Tags and fences
    are kept, as any delete keeps them; deletes carry no expiry."""
    if newest.deleted or not newest.expires_hlc:
        return None
    return Record(
        namespace=newest.namespace, id=newest.id,
        version=Version(newest.expires_hlc, node_id),
        clock=vv_increment(newest.clock, node_id),
        tags=newest.tags, agent_id=newest.agent_id,
        created_hlc=newest.created_hlc, deleted=True, fences=dict(newest.fences),
    )


def sweeper_of(owners: Sequence[str], is_alive: Callable[[str], bool]) -> str | None:
    """The one replica that sweeps a key: the first live owner in preference order (one
    sweeper, so replicas do not each mint a concurrent tombstone; two that disagree on who is
    alive both sweep, and the two tombstones merge like any concurrent deletes). None when no
    owner is live."""
    return next((node for node in owners if is_alive(node)), None)
