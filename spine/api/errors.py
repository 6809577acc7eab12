"""The one place where errors become HTTP statuses and the JSON error shape of DESIGN §11."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from spine.core import errors as e

STATUS: dict[type[e.SpineError], int] = {
    e.InvalidInput: 400,
    e.Unauthorized: 401,
    e.Forbidden: 403,
    e.NotFound: 404,
    e.Conflict: 409,
    e.PreconditionFailed: 412,
    e.Fenced: 409,
    e.LeaseHeld: 409,
    e.CursorExpired: 410,
    e.TooLarge: 413,
    e.Overloaded: 429,
    e.TooManyNamespaces: 507,
    e.RequestTimeout: 408,
    e.QuorumUnavailable: 503,
    e.SessionUnavailable: 503,
    e.PeerUnavailable: 503,
    e.ClockSkew: 503,
    e.InsufficientStorage: 507,
    e.StorageFailed: 503,
    e.NotServing: 503,
    e.Timeout: 504,
    e.ConfigError: 500,
}


def status_of(err: e.SpineError) -> int:
    """The HTTP status an error maps to."""
    for cls in type(err).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def error_body(err: e.SpineError) -> dict[str, Any]:
    """`{"error": {"code", "message", "field"?, ...details}}`."""
    body: dict[str, Any] = {"code": err.code, "message": err.message}
    if err.field is not None:
        body["field"] = err.field
    for k, v in err.details.items():
        if k not in body and (isinstance(v, str | int | float | bool | list) or k == "current"):
            body[k] = v
    return {"error": body}


def error_response(err: e.SpineError, headers: dict[str, str] | None = None) -> web.Response:
    """The HTTP response for an error."""
    status = status_of(err)
    hdrs = dict(headers or {})
    if status in (429, 503):
        hdrs.setdefault("Retry-After", "1")
    return web.Response(
        status=status,
        body=orjson.dumps(error_body(err)),
        content_type="application/json",
        headers=hdrs,
    )
