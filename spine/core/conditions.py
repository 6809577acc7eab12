"""Conditional and fenced writes (DESIGN §12): what a request asks for, and whether it holds. Pure.

A write may carry a **condition**: `If-Match: "<version>"` (the key's current version must be that
one), `If-None-Match: *` (no live record may exist: create only), and a **fence**
`Spine-Fence: <lease>=<token>` (the key must never have accepted a write fenced by that lease with
a higher token). `check` judges a condition against the key's current record, the one a consensus
round read from a majority of its replicas (`spine.core.paxos`); the round commits the write only
when `check` returns None. A record remembers the highest token of each lease that fenced a write
to it in `Record.fences`, merged by maximum like the version vector, so no later write, fenced or
not, can make it forget.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from spine.core.clock import Version
from spine.core.errors import Fenced, InvalidInput, PreconditionFailed, SpineError
from spine.core.model import Record

LEASE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
MAX_TOKEN = 2**63 - 1
_ETAG_RE = re.compile(r'(?:W/)?"([^"]{1,200})"')


@dataclass(frozen=True, slots=True)
class Fence:
    """`Spine-Fence: <lease>=<token>`: a write made under lease `lease` with fencing `token`."""

    lease: str
    token: int


@dataclass(frozen=True, slots=True)
class Condition:
    """What a conditional write requires of the key's current record."""

    if_match: Version | None = None
    if_none_match: bool = False
    fence: Fence | None = None

    def __bool__(self) -> bool:
        return self.if_match is not None or self.if_none_match or self.fence is not None


def etag(version: Version) -> str:
    """The `ETag` header value of a record's version: its encoded form, quoted."""
    return f'"{version.encode()}"'


def parse_if_match(raw: str) -> Version:
    """An `If-Match` header: one quoted version (as `ETag` gives it). InvalidInput naming the
    header otherwise (a list of tags or `*` is not supported: say so rather than guess)."""
    m = _ETAG_RE.fullmatch(raw.strip())
    if m is None:
        raise InvalidInput('If-Match must be one quoted version, as ETag gives it: "<version>"',
                           field="If-Match")
    try:
        return Version.decode(m.group(1))
    except ValueError:
        raise InvalidInput("If-Match does not hold a version", field="If-Match") from None


def parse_if_none_match(raw: str) -> bool:
    """An `If-None-Match` header: only `*` (create only) is supported."""
    if raw.strip() != "*":
        raise InvalidInput("If-None-Match supports only *", field="If-None-Match")
    return True


def check_lease_name(name: object, field: str = "name") -> str:
    """A lease name, validated like a memory id."""
    if not isinstance(name, str) or not LEASE_NAME_RE.fullmatch(name):
        raise InvalidInput("a lease name must match ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$",
                           field=field)
    return name


def parse_fence(raw: str) -> Fence:
    """A `Spine-Fence` header: `<lease name>=<token>`, the token a positive integer."""
    name, sep, tok = raw.strip().partition("=")
    if not sep:
        raise InvalidInput("Spine-Fence must be <lease>=<token>", field="Spine-Fence")
    check_lease_name(name, "Spine-Fence")
    if not tok.isdigit() or len(tok) > 19 or not 0 < int(tok) <= MAX_TOKEN:
        raise InvalidInput("the Spine-Fence token must be a positive integer",
                           field="Spine-Fence")
    return Fence(name, int(tok))


def condition_to_wire(cond: Condition) -> list[Any]:
    """A condition on the internal wire (a conditional write forwarded to the node that leads
    its key's rounds): [If-Match version or None, If-None-Match, [lease, token] or None]."""
    fence = None if cond.fence is None else [cond.fence.lease, cond.fence.token]
    return [None if cond.if_match is None else cond.if_match.encode(), cond.if_none_match, fence]


def condition_from_wire(w: Any) -> Condition:
    """Inverse of `condition_to_wire`, as hostile as any peer's bytes: InvalidInput naming
    `condition` for anything else (sizes and ranges as the headers' own parsers bound them)."""
    bad = InvalidInput("a forwarded condition is malformed", field="condition")
    if not isinstance(w, list) or len(w) != 3 or not isinstance(w[1], bool):
        raise bad
    raw_match, if_none, raw_fence = w
    if_match = None
    if raw_match is not None:
        if not isinstance(raw_match, str) or len(raw_match) > 200:
            raise bad
        try:
            if_match = Version.decode(raw_match)
        except ValueError:
            raise bad from None
    fence = None
    if raw_fence is not None:
        if (not isinstance(raw_fence, list) or len(raw_fence) != 2
                or not isinstance(raw_fence[0], str) or not LEASE_NAME_RE.fullmatch(raw_fence[0])
                or type(raw_fence[1]) is not int or not 0 < raw_fence[1] <= MAX_TOKEN):
            raise bad
        fence = Fence(raw_fence[0], raw_fence[1])
    cond = Condition(if_match, if_none, fence)
    if not cond:
        raise bad  # a forwarded write with no condition is not a conditional write
    return cond


def live(rec: Record | None) -> Record | None:
    """The record if it is live (a tombstone counts as no record)."""
    return None if rec is None or rec.deleted else rec


def check(cond: Condition, current: Record | None) -> SpineError | None:
    """Why `cond` fails against `current` (412 precondition_failed, 409 fenced), or None."""
    now = live(current)
    if cond.fence is not None and current is not None:
        highest = current.fences.get(cond.fence.lease, 0)
        if cond.fence.token < highest:
            return Fenced(
                f"lease {cond.fence.lease!r} token {cond.fence.token} is below {highest},"
                " which this key has already accepted",
                lease=cond.fence.lease, token=cond.fence.token, highest=highest,
            )
    version = None if now is None else now.version.encode()
    if cond.if_none_match and now is not None:
        return PreconditionFailed("a live record exists (If-None-Match: *)", current=version)
    if cond.if_match is not None and (now is None or now.version != cond.if_match):
        return PreconditionFailed("the key's current version is not the one If-Match names",
                                  current=version)
    return None


def fences_after(cond: Condition, current: Record | None) -> Mapping[str, int]:
    """The fences the written record carries: the current ones and this write's."""
    out = dict(current.fences) if current is not None else {}
    if cond.fence is not None:
        out[cond.fence.lease] = max(out.get(cond.fence.lease, 0), cond.fence.token)
    return out
