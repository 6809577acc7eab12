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


BY_CODE: dict[str, type[SpineHTTPError]] = {
    "invalid": InvalidInput,
    "too_large": TooLarge,
    "frame_too_large": TooLarge,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "not_found": NotFound,
    "conflict": Conflict,
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
