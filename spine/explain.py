"""One line that tells a user what went wrong talking to a cluster.

The CLI prints it (no traceback for a user's mistake or an unreachable node) and the MCP server
returns it as a tool error, so both say the same thing: the status, the error code, the field
to fix, and a hint when the cure is known (an API key, a CA bundle).
"""

from __future__ import annotations

import importlib
import ssl
import urllib.error
from collections.abc import Sequence
from typing import Any

from spine.core.errors import SpineError

_CERT_HINT = " (pass the node's CA bundle with --cacert or SPINE_CACERT)"
_HINTS = {
    401: "pass an API key with --api-key or SPINE_API_KEY",
    403: "this API key may not use that namespace or operation",
}


def _clip(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def http_error(status: int | None, body: Any) -> str:
    """`404 not_found: no memory 'x' (field: id)` from a reply's status and JSON error body."""
    err = body.get("error") if isinstance(body, dict) else None
    head = f"{status} " if status else ""
    if not isinstance(err, dict):
        return f"{head}{_clip(str(body)) if body else 'error'}".strip()
    line = f"{head}{err.get('code', 'error')}: {err.get('message', '')}"
    if err.get("field"):
        line += f" (field: {err['field']})"
    hint = _HINTS.get(status or 0)
    if hint:
        line += f"; {hint}"
    return _clip(line, 500)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP library's transport errors, whichever the client is built on."""
    out: list[type[BaseException]] = [OSError, urllib.error.URLError]
    for name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        out.append(module.TransportError)
    return tuple(out)


def _is_cert_problem(e: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(
                cur):
            return True
        reason = getattr(cur, "reason", None)
        if isinstance(reason, BaseException):
            cur = reason
            continue
        cur = cur.__cause__ or cur.__context__
    return False


def explain(e: BaseException, urls: Sequence[str] = ()) -> str | None:
    """The one-line account of an error a user can act on; None for a bug (let it raise)."""
    status = getattr(e, "status", None)
    if status is not None and hasattr(e, "body"):  # the client's SpineHTTPError family
        return http_error(status, e.body)
    if isinstance(e, SpineError) and e.code == "unreachable":  # the client tried every URL
        line = _clip(e.message)
        return line + _CERT_HINT if _is_cert_problem(e) else line
    if isinstance(e, SpineError):  # a typed client error raised without a reply body
        line = f"{e.code}: {e.message}"
        return line + (f" (field: {e.field})" if e.field else "")
    if isinstance(e, TimeoutError) or type(e).__name__.endswith("Timeout") or (
            type(e).__name__ == "TimeoutException"):
        return f"no answer from {_where(urls)} in time: {e or type(e).__name__}"
    if isinstance(e, _transport_errors()):
        reason = getattr(e, "reason", None) or e
        line = f"cannot reach {_where(urls)}: {_clip(str(reason)) or type(e).__name__}"
        if _is_cert_problem(e):
            line += _CERT_HINT
        return line
    return None


def _where(urls: Sequence[str]) -> str:
    return ", ".join(urls) if urls else "the node"
