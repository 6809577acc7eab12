"""What the sync and async clients share: settings, node order, headers, ids, and the pure
decisions on each reply (return it, fail over, wait and retry, or raise)."""

from __future__ import annotations

import json
import os
import secrets
import ssl
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx2 as httpx

from spine.client.errors import SpineHTTPError, Unreachable, error_for
from spine.client.session import HEADER, WRITE_SEQ_HEADER, merge_tokens
from spine.client.types import Reply
from spine.runtime import Runtime

DEFAULT_URL = "http://127.0.0.1:8788"
BATCH_LIMIT = 1000  # items per _batch call the server accepts (DESIGN §11)
# Methods a retry cannot apply twice; a POST is retried only when the caller says it is safe
# (search, _batch, and create with a client-minted id are; a server-minted create is not).
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
RETRY_STATUSES = frozenset({429, 503})
# Codes a node answers before it does anything with the request (admission control, a node that
# is draining or left): a call whose outcome must not be guessed (a conditional write) may still
# be retried after one of these, since nothing can have been applied.
REFUSED_BEFORE_WORK = frozenset({"overloaded", "not_serving"})


def tls_context(verify: bool | str = True) -> ssl.SSLContext:
    """The context for https URLs: `verify` True checks the server against the system CAs, a
    path against that CA bundle (PEM), False checks nothing (testing only)."""
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def ns_path(ns: str, *parts: str) -> str:
    """`/v1/ns/{ns}/...` with every part percent-encoded."""
    return "/v1/ns/" + quote(ns, safe="") + "".join("/" + quote(p, safe="") for p in parts)


def mint_id(rt: Runtime) -> str:
    """A UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then 74 random bits, so ids minted
    by one client sort by time and a retried create reuses the same id."""
    rand = int.from_bytes(rt.token_bytes(10), "big")
    value = (rt.wall_ms() & (2**48 - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64
    value |= 0b10 << 62 | rand & (2**62 - 1)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from a Retry-After header (the delay form; a date or junk gives None)."""
    raw = headers.get("Retry-After")
    try:
        secs = float(raw) if raw is not None else None
    except ValueError:
        return None
    return secs if secs is not None and 0 <= secs < 86_400 else None


def root_cause(exc: BaseException) -> BaseException:
    """The innermost OS or TLS error under an httpx exception (what urllib called `reason`)."""
    seen: BaseException | None = exc
    found: BaseException = exc
    for _ in range(10):
        if seen is None:
            break
        if isinstance(seen, OSError):
            found = seen
        seen = seen.__cause__ or seen.__context__
    return found


def sent_nothing(exc: httpx.TransportError) -> bool:
    """Whether the request cannot have reached the server (so any method may go elsewhere)."""
    return isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)


@dataclass(frozen=True, slots=True)
class Call:
    """One API call: the route, its body and query, and whether a retry is safe."""

    method: str
    path: str
    body: Any = None
    params: Mapping[str, Any] = field(default_factory=dict)
    idempotent: bool | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def safe_to_retry(self) -> bool:
        """Idempotent by method, or as the caller declared."""
        return self.method in IDEMPOTENT if self.idempotent is None else self.idempotent

    def may_retry(self, code: str) -> bool:
        """Whether a retriable error with this code may be retried: any, for a call safe to
        repeat; for one that is not, only a refusal that came before any work was done."""
        return self.safe_to_retry() or (self.idempotent is False and code in REFUSED_BEFORE_WORK)


class Base:
    """Settings and state both clients keep; see Client for the arguments."""

    def __init__(
        self,
        urls: str | Sequence[str] | None = None,
        *,
        api_key: str | None = None,
        session: str | None = None,
        consistency: str | None = None,
        timeout: float = 10.0,
        verify: bool | str = True,
        retries: int = 3,
        max_retry_wait: float = 10.0,
        transport: Any = None,
        runtime: Runtime | None = None,
    ) -> None:
        if urls is None:
            urls = os.environ.get("SPINE_URL") or DEFAULT_URL
        if isinstance(urls, str):
            urls = urls.split(",")
        self.urls = [u.strip().rstrip("/") for u in urls if u.strip()]
        if not self.urls:
            raise ValueError("no node URL given")
        self.api_key = api_key if api_key is not None else os.environ.get("SPINE_API_KEY")
        self.session = session
        self.consistency = consistency
        self.timeout = timeout
        self.retries = retries
        self.max_retry_wait = max_retry_wait
        self.last_coordinator: str | None = None
        self._ssl = tls_context(verify)
        self._transport = transport
        self._rt = runtime or Runtime()
        self._lock = threading.Lock()  # guards the token, write numbers, round-robin position
        self._next = 0
        # Monotonic writes (DESIGN §4): this client's writes are numbered, so one that times out
        # and lands late cannot undo a later one. A retry of one call keeps its number.
        self.writer = secrets.token_urlsafe(12)
        self._writes = 0
        self._cluster: str | None = None

    def _order(self) -> list[str]:
        """Every node, starting one further each call (a non-sticky balancer's spread)."""
        with self._lock:
            i = self._next
            self._next = (i + 1) % len(self.urls)
        return self.urls[i:] + self.urls[:i]

    def _headers(self, consistency: str | None, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        with self._lock:
            if self.session:
                headers[HEADER] = self.session
        level = consistency or self.consistency
        if level:
            headers["Spine-Consistency"] = level
        headers.update(extra or {})
        return headers

    def _numbered(self, call: Call, extra: dict[str, str]) -> dict[str, str]:
        """`extra` plus the call's Spine-Write-Seq when it writes memories."""
        if call.method == "GET" or "/memories" not in call.path:
            return extra
        with self._lock:
            self._writes += 1
            n = self._writes
        return {WRITE_SEQ_HEADER: f"{self.writer}:{n}", **extra}

    def _absorb(self, resp: httpx.Response) -> None:
        """Merge the reply's token into ours (under the lock: replies race each other)."""
        token = resp.headers.get(HEADER)
        if token:
            with self._lock:
                self.session = merge_tokens(self.session, token)
        coordinator = resp.headers.get("Spine-Coordinator")
        if coordinator:
            self.last_coordinator = coordinator

    @staticmethod
    def _content(call: Call) -> bytes | None:
        return None if call.body is None else json.dumps(call.body).encode()

    def _timeout(self, timeout: float | None) -> httpx.Timeout:
        return httpx.Timeout(self.timeout if timeout is None else timeout)

    @staticmethod
    def _params(call: Call) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in call.params.items():
            if v is None or v is False:
                continue
            out[k] = "true" if v is True else str(v)
        return out

    def _outcome(self, resp: httpx.Response, call: Call, attempt: int) -> tuple[Any, float | None]:
        """(decoded body, None) on success; (error, seconds to wait) when a retry may help;
        raises the error otherwise."""
        self._absorb(resp)
        raw = resp.content
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        if resp.status_code < 300:
            return with_etag(body, resp.headers.get("ETag")), None
        err = error_for(resp.status_code, body, retry_after(resp.headers))
        if (call.may_retry(err.code) and err.retriable and resp.status_code in RETRY_STATUSES
                and attempt < self.retries):
            wait = err.retry_after if err.retry_after is not None else 0.5 * 2**attempt
            return err, min(wait, self.max_retry_wait)
        raise err

    def _unreachable(self, tried: list[str], exc: BaseException | None) -> Unreachable:
        return Unreachable(tried, root_cause(exc) if exc else "no node tried")

    def _cluster_key(self, view: Any) -> str:
        name = view.get("cluster") if isinstance(view, dict) else None
        return f"cluster:{name}" if isinstance(name, str) and name else self._urls_key()

    def _urls_key(self) -> str:
        return "urls:" + ",".join(sorted(self.urls))


def with_etag(body: Any, etag: str | None) -> Any:
    """A record reply as a `Reply` (a dict with `.etag` and `.version`); other bodies as they
    are. A reply is a record when the node sent an ETag or the body names a version."""
    if isinstance(body, dict) and (etag or isinstance(body.get("version"), str)):
        return Reply(body, etag=etag)
    return body


def cluster_error_ok(err: SpineHTTPError) -> bool:
    """Whether /v1/cluster's refusal means 'not allowed to look' (key by URLs instead)."""
    return err.status in (401, 403, 404)
