"""Leases with fencing tokens (DESIGN §12): the state a lease record holds and the decisions a
consensus round takes on it. Pure.

A lease `name` of namespace `ns` is one record in the reserved namespace `~leases` (no client
namespace can be named so), id `<ns>/<name>`, replicated and stored like any record; its metadata
holds the state: `holder` (None once released), `token`, `granted_hlc` and `ttl_ms`. It is never
a tombstone, so its token survives a release and only ever grows.

- **Acquire** grants the lease when it is free (never granted, released, or expired) or already
  held by the same holder (a renewal: the token stays). Expiry is judged on the deciding node's
  clock with `clock.max_offset` of margin: a lease granted at `g` by some node's clock is taken
  from its holder only once `now > g + ttl_ms + max_offset` here.
- A new grant's token is one more than the last (so tokens strictly increase across grants to
  different holders, or to the same holder after its lease lapsed).
- **Release** frees the lease if the token presented is the current one and it is held.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from spine.core.clock import hlc_ms
from spine.core.errors import Conflict, InvalidInput, LeaseHeld, NotFound, SpineError
from spine.core.model import Record

LEASE_NAMESPACE = "~leases"
HOLDER_RE = re.compile(r"[ -~]{1,128}")  # printable ASCII, as /openapi.json can say it


def lease_key(namespace: str, name: str) -> tuple[str, str]:
    """The (namespace, id) of the record that holds lease `name` of `namespace`."""
    return LEASE_NAMESPACE, f"{namespace}/{name}"


@dataclass(frozen=True, slots=True)
class LeaseState:
    """One lease as its record holds it."""

    holder: str | None
    token: int
    granted_hlc: int
    ttl_ms: int

    def expires_ms(self, max_offset_ms: int) -> int:
        """When (ms, by a node's clock) another holder may be granted it."""
        return hlc_ms(self.granted_hlc) + self.ttl_ms + max_offset_ms

    def held_at(self, now_ms: int, max_offset_ms: int) -> bool:
        """Whether someone holds it at `now_ms` (by this node's clock)."""
        return self.holder is not None and now_ms <= self.expires_ms(max_offset_ms)

    def metadata(self) -> dict[str, Any]:
        """The record metadata that stores this state."""
        return {"holder": self.holder, "token": self.token, "granted_hlc": self.granted_hlc,
                "ttl_ms": self.ttl_ms}


def state_of(rec: Record | None) -> LeaseState | None:
    """The lease state a record holds (None: never granted, or not a lease record)."""
    if rec is None or rec.deleted:
        return None
    m = rec.metadata
    try:
        holder = m.get("holder")
        return LeaseState(None if holder is None else str(holder), int(m["token"]),
                          int(m["granted_hlc"]), int(m["ttl_ms"]))
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class LeaseView:
    """A lease as the API answers it."""

    name: str
    holder: str | None
    token: int
    ttl_ms: int
    remaining_ms: int

    def public(self) -> dict[str, Any]:
        """The JSON body of DESIGN §12."""
        return {"name": self.name, "holder": self.holder, "token": self.token,
                "ttl_ms": self.ttl_ms, "remaining_ms": self.remaining_ms}


def view(name: str, state: LeaseState, now_ms: int, max_offset_ms: int) -> LeaseView:
    """What GET answers: the holder while held (by this node's clock), else None, and
    `remaining_ms` as a 409 lease_held says it: how long until another holder may be granted it
    (`ttl_ms + clock.max_offset` after the grant). The holder itself must count its `ttl_ms` from
    when it sent its request, not from this figure."""
    held = state.held_at(now_ms, max_offset_ms)
    remaining = max(0, state.expires_ms(max_offset_ms) - now_ms) if held else 0
    return LeaseView(name, state.holder if held else None, state.token, state.ttl_ms, remaining)


def check_request(holder: object, ttl_ms: object, max_ttl_ms: int) -> tuple[str, int]:
    """A lease request's body fields, validated: 400 naming the field otherwise."""
    if not isinstance(holder, str) or not HOLDER_RE.fullmatch(holder):
        raise InvalidInput("holder must be 1 to 128 printable ASCII characters", field="holder")
    if isinstance(ttl_ms, bool) or not isinstance(ttl_ms, int):
        raise InvalidInput("ttl_ms must be an integer", field="ttl_ms")
    if not 0 < ttl_ms <= max_ttl_ms:
        raise InvalidInput(f"ttl_ms must be in 1..{max_ttl_ms}", field="ttl_ms")
    return holder, ttl_ms


def decide_acquire(
    current: LeaseState | None, holder: str, ttl_ms: int, now_hlc: int, max_offset_ms: int
) -> LeaseState | SpineError:
    """The state an acquire (or renewal) writes, or 409 lease_held."""
    now_ms = hlc_ms(now_hlc)
    last = 0 if current is None else current.token
    if current is not None and current.held_at(now_ms, max_offset_ms):
        if current.holder != holder:
            return LeaseHeld(
                f"lease held by {current.holder!r}", holder=current.holder,
                remaining_ms=max(0, current.expires_ms(max_offset_ms) - now_ms),
                token=current.token,
            )
        # A renewal keeps the token, unless the holder's own lease lapsed by its clock margin:
        # held_at already said it has not.
        return LeaseState(holder, current.token, now_hlc, ttl_ms)
    return LeaseState(holder, last + 1, now_hlc, ttl_ms)


def decide_release(current: LeaseState | None, token: int) -> LeaseState | SpineError:
    """The state a release writes (holder cleared, token kept), or why it cannot."""
    if current is None:
        return NotFound("no such lease")
    if current.token != token or current.holder is None:
        return Conflict(f"token {token} is not the lease's current token ({current.token})",
                        field="token", token=current.token)
    return LeaseState(None, current.token, current.granted_hlc, 0)
