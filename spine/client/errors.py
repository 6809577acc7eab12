"""The errors a client raises: one class per server error code, each a SpineError subclass.

Each class derives from both `SpineHTTPError` (so `except SpineHTTPError` keeps catching every
non-2xx reply) and the server's own class in spine.core.errors (so `except NotFound` works with
either import). `Unreachable` is raised when no node answered at all.
"""

from __future__ import annotations

import urllib.error
from typing import Any

from spine.core import errors as core


class SpineHTTPError(core.SpineError):
    """A non-2xx reply: `status`, the decoded `body`, the error `code`, `field`, `retriable`."""

    def __init__(self, status: int, body: Any, *, retry_after: float | None = None) -> None:
        err = body.get("error", {}) if isinstance(body, dict) else {}
        err = err if isinstance(err, dict) else {}
        code = err.get("code")
        message = err.get("message", body)
        super().__init__(f"{status} {code or ''}: {message}",
                         field=err.get("field") if isinstance(err.get("field"), str) else None)
        self.status = status
        self.body = body
        # The server's code as sent ("" when the reply had none, e.g. a proxy's 502).
        self.code = code if isinstance(code, str) else ""
        self.retry_after = retry_after
        self.retriable = _retriable(type(self), status)


def _retriable(cls: type[core.SpineError], status: int) -> bool:
    # A class that knows its code says so; an unknown code is retriable when its status is.
    if cls is SpineHTTPError:
        return status in (429, 502, 503, 504)
    return bool(cls.retriable)


class InvalidInput(SpineHTTPError, core.InvalidInput):
    """400 invalid: the request is malformed (`field` names what)."""


class TooLarge(SpineHTTPError, core.TooLarge):
    """413 too_large: a field or the body is past its limit."""


class Unauthorized(SpineHTTPError, core.Unauthorized):
    """401 unauthorized: no API key, or one that matches no key."""


class Forbidden(SpineHTTPError, core.Forbidden):
    """403 forbidden: the key may not use this namespace or route."""


class NotFound(SpineHTTPError, core.NotFound):
    """404 not_found: no live record under this id."""


class Conflict(SpineHTTPError, core.Conflict):
    """409 conflict."""


def _detail(body: Any, key: str) -> Any:
    """One field of the reply's error object (None when absent)."""
    err = body.get("error") if isinstance(body, dict) else None
    return err.get(key) if isinstance(err, dict) else None


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class PreconditionFailed(SpineHTTPError, core.PreconditionFailed):
    """412 precondition_failed: If-Match or If-None-Match did not hold. `current` is the key's
    version now (a bare version string, what `if_match=` takes), None when no live record."""

    def __init__(self, status: int, body: Any, *, retry_after: float | None = None) -> None:
        super().__init__(status, body, retry_after=retry_after)
        current = _detail(body, "current")
        self.current: str | None = current if isinstance(current, str) else None


class Fenced(SpineHTTPError, core.Fenced):
    """409 fenced: the write's lease token is below one the key already accepted (`lease`,
    `token` sent, `highest` accepted): a newer holder of the lease has written. Not retriable."""

    def __init__(self, status: int, body: Any, *, retry_after: float | None = None) -> None:
        super().__init__(status, body, retry_after=retry_after)
        lease = _detail(body, "lease")
        self.lease: str | None = lease if isinstance(lease, str) else None
        self.token = _int_or_none(_detail(body, "token"))
        self.highest = _int_or_none(_detail(body, "highest"))


class LeaseHeld(SpineHTTPError, core.LeaseHeld):
    """409 lease_held: another holder has the lease (`holder`) for `remaining_ms` more (by the
    answering node's clock, with its clock margin); `token` is that grant's token."""

    def __init__(self, status: int, body: Any, *, retry_after: float | None = None) -> None:
        super().__init__(status, body, retry_after=retry_after)
        holder = _detail(body, "holder")
        self.holder: str | None = holder if isinstance(holder, str) else None
        self.remaining_ms = _int_or_none(_detail(body, "remaining_ms"))
        self.token = _int_or_none(_detail(body, "token"))


class Overloaded(SpineHTTPError, core.Overloaded):
    """429 overloaded: back off for `retry_after` seconds."""


class TooManyNamespaces(SpineHTTPError, core.TooManyNamespaces):
    """507 too_many_namespaces: the write would pass the namespace quota."""


class RequestTimeout(SpineHTTPError, core.RequestTimeout):
    """408 request_timeout: the body did not arrive in time."""


class QuorumUnavailable(SpineHTTPError, core.QuorumUnavailable):
    """503 quorum_unavailable: too few replicas answered (a write may still have landed)."""


class SessionUnavailable(SpineHTTPError, core.SessionUnavailable):
    """503 session_unavailable: no reachable replica is as new as the session token needs."""


class Timeout(SpineHTTPError, core.Timeout):
    """504 timeout: the operation missed its deadline on the server."""


class ClockSkew(SpineHTTPError, core.ClockSkew):
    """503 clock_skew: a peer's clock is too far ahead."""


class PeerUnavailable(SpineHTTPError, core.PeerUnavailable):
    """503 peer_unavailable: an internal call failed."""


class InsufficientStorage(SpineHTTPError, core.InsufficientStorage):
    """507 insufficient_storage: the node's disk or map is full."""


class StorageFailed(SpineHTTPError, core.StorageFailed):
    """503 storage_failed: the node's disk failed; another node may serve."""


class NotServing(SpineHTTPError, core.NotServing):
    """503 not_serving: the node is draining, joining or gone; another node will serve."""


class CursorExpired(SpineHTTPError, core.CursorExpired):
    """410 cursor_expired: the change feed's cursor is older than the tombstone grace, so deletes
    after it may have been purged (DESIGN §15). Not retriable: start again without a cursor
    (every key's latest state) or from now."""


BY_CODE: dict[str, type[SpineHTTPError]] = {
    "invalid": InvalidInput,
    "too_large": TooLarge,
    "frame_too_large": TooLarge,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "conflict": Conflict,
    "precondition_failed": PreconditionFailed,
    "fenced": Fenced,
    "lease_held": LeaseHeld,
    "overloaded": Overloaded,
    "too_many_namespaces": TooManyNamespaces,
    "request_timeout": RequestTimeout,
    "quorum_unavailable": QuorumUnavailable,
    "session_unavailable": SessionUnavailable,
    "timeout": Timeout,
    "clock_skew": ClockSkew,
    "peer_unavailable": PeerUnavailable,
    "insufficient_storage": InsufficientStorage,
    "storage_failed": StorageFailed,
    "not_serving": NotServing,
    "cursor_expired": CursorExpired,
}


def error_for(status: int, body: Any, retry_after: float | None = None) -> SpineHTTPError:
    """The exception for a non-2xx reply, chosen by the error body's code."""
    err = body.get("error") if isinstance(body, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    cls = BY_CODE.get(code, SpineHTTPError) if isinstance(code, str) else SpineHTTPError
    return cls(status, body, retry_after=retry_after)


class Unreachable(core.SpineError, urllib.error.URLError):
    """No node could be reached (refused, timed out, TLS refused): `reason` is the last cause,
    `urls` the nodes tried. Also an OSError / URLError, as the urllib client raised."""

    code = "unreachable"
    retriable = True

    def __init__(self, urls: list[str], reason: BaseException | str) -> None:
        super().__init__(f"cannot reach {', '.join(urls)}: {reason}")
        self.reason = reason
        self.urls = urls
        self.status = None

    def __str__(self) -> str:
        return self.message


class LeaseLost(core.SpineError):
    """A lease held through `Client.lease` may no longer be ours: a renewal was refused, or
    `ttl_ms` passed since the last renewal that succeeded was sent. Stop acting on it (writes
    fenced with its token are still refused by the store once a newer holder has written)."""

    code = "lease_lost"

    def __init__(self, name: str, token: int, reason: str) -> None:
        super().__init__(f"lease {name!r} (token {token}) lost: {reason}")
        self.name = name
        self.token = token
        self.reason = reason


class BatchFailed(core.SpineError):
    """Some items of a checked batch failed: `failures` holds (index, item result) for each,
    `results` every item's result in order (the others were applied)."""

    code = "batch_failed"

    def __init__(self, failures: list[tuple[int, Any]], results: list[Any]) -> None:
        first = failures[0][1] if failures else {}
        err = first.get("error", {}) if isinstance(first, dict) else {}
        super().__init__(
            f"{len(failures)} of {len(results)} batch items failed; first: item"
            f" {failures[0][0] if failures else '-'} {err.get('code', '')}"
            f" {err.get('message', '')}".rstrip(),
            field=err.get("field") if isinstance(err, dict) else None,
        )
        self.failures = failures
        self.results = results
        # Worth retrying (the failed items only) when every failure says so.
        self.retriable = bool(failures) and all(
            isinstance(r, dict) and isinstance(r.get("error"), dict)
            and BY_CODE.get(r["error"].get("code"), SpineHTTPError).retriable
            for _, r in failures)
