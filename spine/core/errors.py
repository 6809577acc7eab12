"""One root error; each subclass says whether a retry may help and which HTTP status it maps to.

The status mapping lives in `spine.api.errors`; here an error only carries its code, its field and
whatever context a client needs (acks reached, shards missing) as plain data.
"""

from __future__ import annotations

from typing import Any


class SpineError(Exception):
    """Root of every error Spine raises on purpose."""

    code = "internal"
    retriable = False

    def __init__(self, message: str, *, field: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details


class InvalidInput(SpineError):
    """The request is malformed: wrong type, bad format, unknown field."""

    code = "invalid"


class TooLarge(SpineError):
    """A field or the whole body is past its configured limit."""

    code = "too_large"


class Unauthorized(SpineError):
    """No credentials, or credentials that match no key."""

    code = "unauthorized"


class Forbidden(SpineError):
    """Valid credentials without the right to this namespace or operation."""

    code = "forbidden"


class NotFound(SpineError):
    """No live record under this key (a tombstone also reads as not found)."""

    code = "not_found"


class Conflict(SpineError):
    """The request conflicts with the current state (e.g. an id that already exists)."""

    code = "conflict"


class Superseded(Conflict):
    """A write that the same session has already followed with a later one (Spine-Write-Seq):
    it arrived late and was not applied (monotonic writes, DESIGN §4)."""

    code = "superseded"


class PreconditionFailed(SpineError):
    """An If-Match or If-None-Match condition does not hold; `current` is the key's version
    (or None when it holds no live record)."""

    code = "precondition_failed"


class Fenced(SpineError):
    """A fenced write carries a lease token lower than one the key has already accepted."""

    code = "fenced"


class LeaseHeld(SpineError):
    """Another holder has the lease and it has not expired; `holder` and `remaining_ms` say who
    and for how long."""

    code = "lease_held"


class CursorExpired(SpineError):
    """A change-feed cursor older than the tombstone grace: deletes after it may have been
    purged, so the feed could no longer deliver every change after it; start again."""

    code = "cursor_expired"


class Overloaded(SpineError):
    """Too much work in flight; the client should back off and retry."""

    code = "overloaded"
    retriable = True


class TooManyNamespaces(SpineError):
    """A write would create a namespace past `limits.max_namespaces` or its key's limit."""

    code = "too_many_namespaces"


class RequestTimeout(SpineError):
    """The client did not send its request body within `limits.body_timeout_ms`."""

    code = "request_timeout"


class QuorumUnavailable(SpineError):
    """Fewer replicas answered than the level needs; the write may still have landed."""

    code = "quorum_unavailable"
    retriable = True


class SessionUnavailable(SpineError):
    """No reachable replica holds a version as new as the session token requires."""

    code = "session_unavailable"
    retriable = True


class Timeout(SpineError):
    """The operation did not finish within its deadline."""

    code = "timeout"
    retriable = True


class ClockSkew(SpineError):
    """A peer's HLC is further ahead of our wall clock than `clock.max_offset` allows."""

    code = "clock_skew"
    retriable = True


class PeerUnavailable(SpineError):
    """An internal RPC could not reach its peer or the peer failed the call."""

    code = "peer_unavailable"
    retriable = True


class FrameTooLarge(TooLarge, PeerUnavailable):
    """An internal message (request or reply) is past the RPC frame limit (`rpc.max_frame_bytes`).

    Only the call that carried it fails. It is a PeerUnavailable that carries a `code` detail, so
    callers treat it as an answer from a live peer: they neither mark the peer down nor drop
    the connection; the API answers it as TooLarge (413)."""

    code = "frame_too_large"
    retriable = False

    def __init__(self, message: str, *, field: str | None = None, **details: Any) -> None:
        super().__init__(message, field=field, **{**details, "code": self.code})


class ProtocolError(SpineError):
    """A peer broke the internal wire protocol: a bad MAC, a frame past a cap or of the wrong shape.

    The connection it came on is closed; callers waiting on it see PeerUnavailable."""

    code = "protocol_error"


# The two disk errors stay out of ERRORS_BY_CODE: a peer's disk fault reaches a coordinator as
# PeerUnavailable (that replica gets a hint), only this node's own disk answers 507 / 503.
class InsufficientStorage(SpineError):
    """The disk (or LMDB's map) is full: writes are refused until space is freed; reads go on."""

    code = "insufficient_storage"
    retriable = True


class StorageFailed(SpineError):
    """The disk failed a write or an fsync: this node acknowledges no write until it restarts."""

    code = "storage_failed"
    retriable = True


class NotServing(SpineError):
    """This node takes no client traffic now: it is shutting down, joining, has left the ring or
    was removed. Another node will serve the request."""

    code = "not_serving"
    retriable = True


class ConfigError(SpineError):
    """cluster.yaml holds an unknown key or a bad value (the message names the key path)."""

    code = "config"


ERRORS_BY_CODE: dict[str, type[SpineError]] = {
    cls.code: cls
    for cls in (
        InvalidInput, TooLarge, Unauthorized, Forbidden, NotFound, Conflict, Overloaded,
        PreconditionFailed, Fenced, LeaseHeld, Superseded,
        QuorumUnavailable, SessionUnavailable, Timeout, ClockSkew, PeerUnavailable,
        FrameTooLarge,
    )
}
