"""The public HTTP API of DESIGN §11 (aiohttp).

Handlers parse and validate, call the coordinator, and shape the reply. Errors become statuses
only in `spine.api.errors`; bad input never reaches the coordinator.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import structlog
from aiohttp import web

from spine.api import decode, dedup
from spine.api.auth import ANONYMOUS, Authenticator, Principal
from spine.api.changes import ChangeRoutes
from spine.api.coordination import LeaseRoutes, condition_of
from spine.api.errors import error_body, error_response, status_of
from spine.api.limits import CLOSE_AFTER, HttpLimits, LimitedRequestHandler
from spine.cluster.coordinator import Coordinator
from spine.cluster.fanout import FanOut
from spine.core import validation as v
from spine.core.conditions import Condition, etag
from spine.core.config import FeedSection
from spine.core.consistency import Level
from spine.core.errors import (
    InvalidInput,
    NotFound,
    NotServing,
    Overloaded,
    QuorumUnavailable,
    RequestTimeout,
    SpineError,
    TooLarge,
)
from spine.core.ids import uuid7
from spine.core.metrics import SpineMetrics
from spine.core.model import Record
from spine.core.quota import NamespaceQuota
from spine.core.ratelimit import ClientLimiter
from spine.core.readiness import NotReady
from spine.core.requests import ItemResult, WriteOp
from spine.core.session import HEADER as SESSION
from spine.core.session import WRITE_SEQ_HEADER, SessionToken, WriteSeq
from spine.core.settlement import Settlement
from spine.runtime import Runtime

if TYPE_CHECKING:
    from spine.cluster.feed import FeedService
    from spine.cluster.leases import Leases

log = structlog.get_logger("spine.api")

PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
UNCOUNTED = ("/healthz", "/readyz", "/metrics")  # probes: no slot, no per-client limit

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# the body: a decoded SearchBody, or Python values (semantic dedup's query)
SearchFn = Callable[[str, Any, SessionToken | None, Level | None], Awaitable[Any]]


@dataclass
class Services:
    """What the HTTP layer needs from the node."""

    node_id: str
    coordinator: Coordinator
    fanout: FanOut
    metrics: SpineMetrics
    auth: Authenticator
    limits: v.Limits
    dim: int
    session_max_keys: int
    body_bytes: int
    max_inflight: int
    cluster_view: Callable[[], dict[str, Any]]
    shards_view: Callable[[], dict[str, Any]]
    # Why this node should take no client traffic now (/readyz answers 503), or None.
    readiness: Callable[[], NotReady | None]
    mint_id: Callable[[], str]
    search: SearchFn | None = None
    admin: dict[str, Callable[[str], Awaitable[dict[str, Any]]]] = field(default_factory=dict)
    inflight: int = 0
    http: HttpLimits = field(default_factory=HttpLimits)
    # Monotonic seconds, the node's Runtime's: rate limits and request latencies.
    clock: Callable[[], float] = field(default_factory=lambda: Runtime().monotonic)
    quota: NamespaceQuota | None = None
    list_page_bytes: int = 4 * 1024 * 1024
    # Why this node's disk takes no write until restart (StorageFailed), for /readyz.
    storage_problem: Callable[[], SpineError | None] | None = None
    # False once this node has left the ring or was removed: it refuses client requests.
    serves_clients: Callable[[], bool] = lambda: True
    leases: Leases | None = None  # the lease service (DESIGN §12)
    max_lease_ttl_ms: int = 600_000  # the longest ttl_ms a lease request may ask for
    feed: FeedService | None = None  # the change feed (DESIGN §15)
    feed_limits: FeedSection = field(default_factory=FeedSection)
    # What this node knows every owner holds: reply tokens leave those versions out.
    settlement: Settlement = field(default_factory=Settlement)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(data), content_type="application/json", headers=headers
    )


async def read_body(request: web.Request, timeout: float) -> None:
    """Read the whole body (aiohttp keeps it for `request.read()`) within `timeout` seconds, or
    RequestTimeout and the connection closes after the reply: a slow sender cannot hold a slot."""
    if not request.body_exists:
        return
    try:
        await asyncio.wait_for(request.read(), timeout)
    except TimeoutError:
        request[CLOSE_AFTER] = True
        raise RequestTimeout(f"the request body did not arrive within {timeout:g} s"
                             " (limits.body_timeout_ms)", field="body") from None
    except web.HTTPRequestEntityTooLarge:
        raise TooLarge("request body is past limits.body_bytes", field="body") from None


def _level(request: web.Request) -> Level | None:
    raw = request.headers.get("Spine-Consistency")
    return None if raw is None else Level.parse(raw)


def _token(request: web.Request, max_keys: int) -> SessionToken | None:
    raw = request.headers.get(SESSION)
    return None if raw is None else SessionToken.decode(raw, max_keys)


def _write_seq(request: web.Request) -> WriteSeq | None:
    raw = request.headers.get(WRITE_SEQ_HEADER)
    return None if raw is None else WriteSeq.parse(raw)


def _flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise InvalidInput(f"{name} must be true or false", field=name)
    return raw in ("true", "1")


def build_app(svc: Services) -> web.Application:
    """The aiohttp application serving the public API."""

    http = svc.http
    limiter = ClientLimiter(http.client_rate, http.client_burst, http.client_inflight,
                            http.max_clients)
    clock = svc.clock

    async def admit_and_run(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Authenticate, admit per client, read the body, take a slot, run the handler.

        The body is read before the request takes one of the `max_inflight` slots, so clients
        that send slowly hold a connection (bounded per address) but never a slot."""
        if isinstance(request.protocol, LimitedRequestHandler):
            request.protocol.request_started()
        if request.path in PUBLIC_PATHS:  # load balancers probe these without credentials
            request["principal"] = ANONYMOUS
        else:
            request["principal"] = svc.auth.authenticate(request.headers.get("Authorization"))
        if request.path.startswith(UNCOUNTED):
            return await handler(request)
        if request.path.startswith("/v1/ns/") and not svc.serves_clients():
            raise NotServing("this node has left the ring: send requests to a member")
        principal: Principal = request["principal"]
        client = f"key:{principal.name}" if svc.auth.enabled else f"addr:{request.remote}"
        admission = limiter.admit(client, clock())
        if not admission.ok:
            svc.metrics.overloaded.inc()
            raise Overloaded(f"this client has {admission.reason}; retry shortly",
                             retry_after=max(1, math.ceil(admission.retry_after)))
        try:
            await read_body(request, http.body_timeout)
            if svc.inflight >= svc.max_inflight:
                svc.metrics.overloaded.inc()
                raise Overloaded("too many requests in flight; retry shortly")
            svc.inflight += 1
            try:
                return await handler(request)
            finally:
                svc.inflight -= 1
        finally:
            limiter.release(client)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route.resource
        route_name = route.canonical if route is not None else "unmatched"
        started = clock()
        resp: web.StreamResponse
        try:
            resp = await admit_and_run(request, handler)
        except SpineError as e:
            retry = e.details.get("retry_after")
            resp = error_response(e, {"Retry-After": str(retry)} if retry else None)
        except web.HTTPRequestEntityTooLarge:
            resp = error_response(TooLarge("request body is past limits.body_bytes", field="body"))
        except web.HTTPException as e:
            code = "not_found" if e.status == 404 else "invalid"
            allow = {"Allow": e.headers["Allow"]} if "Allow" in e.headers else None  # RFC 9110
            resp = _json({"error": {"code": code, "message": e.reason}}, e.status, allow)
        except ConnectionError as e:  # the client went away: nothing to answer, nothing wrong
            log.debug("client_disconnected", path=request.path, method=request.method,
                      error=repr(e))
            request[CLOSE_AFTER] = True
            resp = _json({"error": {"code": "invalid", "message": "connection lost"}}, 400)
        except Exception:
            log.exception("request_failed", path=request.path, method=request.method)
            resp = _json({"error": {"code": "internal", "message": "internal error"}}, 500)
        resp.headers["Spine-Coordinator"] = request.get("coordinator", svc.node_id)
        _observe(svc, route_name, request, resp, started)
        return resp

    app = web.Application(middlewares=[middleware], client_max_size=svc.body_bytes)
    h = _Handlers(svc)
    r = app.router
    r.add_post("/v1/ns/{ns}/memories/_batch", h.batch)
    r.add_route("*", "/v1/ns/{ns}/memories/_batch", _post_only)  # not a memory id: 405
    r.add_put("/v1/ns/{ns}/memories/{id}", h.put)
    r.add_post("/v1/ns/{ns}/memories", h.create)
    r.add_get("/v1/ns/{ns}/memories/{id}/history", h.history)
    r.add_get("/v1/ns/{ns}/memories/{id}", h.get)
    r.add_delete("/v1/ns/{ns}/memories/{id}", h.delete)
    r.add_get("/v1/ns/{ns}/memories", h.list)
    r.add_post("/v1/ns/{ns}/search", h.search)
    LeaseRoutes(svc.leases, svc.max_lease_ttl_ms, h._ns, h._admit_namespace,
                decode.raw_body).add_to(r)
    ChangeRoutes(svc.feed, svc.feed_limits, h._ns).add_to(r)
    r.add_get("/v1/cluster", h.cluster)
    r.add_get("/v1/cluster/shards", h.shards)
    r.add_post("/v1/cluster/nodes/{node}/{action}", h.admin)
    r.add_get("/healthz", h.healthz)
    r.add_get("/readyz", h.readyz)
    r.add_get("/metrics", h.metrics)
    r.add_get("/openapi.json", h.openapi)
    return app


async def _post_only(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMethodNotAllowed(request.method, ["POST"])


def _observe(
    svc: Services, route: str, request: web.Request, resp: web.StreamResponse, started: float
) -> None:
    level = request.get("level", "")
    svc.metrics.requests.inc(route, level, str(resp.status))
    svc.metrics.latency.observe(svc.clock() - started, route, level)


class _Handlers:
    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self.c = svc.coordinator

    # -------------------------------------------------------------- helpers

    def _ns(self, request: web.Request) -> str:
        ns = v.namespace(request.match_info["ns"])
        principal: Principal = request["principal"]
        Authenticator.require_namespace(principal, ns)
        return ns

    def _admit_namespace(self, request: web.Request, ns: str) -> None:
        """TooManyNamespaces when writing to `ns` would create a namespace past a limit."""
        if self.svc.quota is not None:
            p: Principal = request["principal"]
            key = p.name if self.svc.auth.enabled else None
            self.svc.quota.admit(ns, key, p.max_namespaces)

    def _agent(self, request: web.Request) -> str | None:
        principal: Principal = request["principal"]
        return principal.name if self.svc.auth.enabled and principal.role == "agent" else None

    def _session(self, token: SessionToken | None) -> SessionToken:
        """The reply's token: the request's, less the entries settled since (held by every
        owner: `spine.core.settlement`), or a new one."""
        if token is None:
            return SessionToken(self.svc.session_max_keys)
        token.forgotten.clear()  # a client's echo of an earlier reply's list means nothing here
        return self.svc.settlement.prune(token)

    def _reply(
        self, request: web.Request, data: Any, token: SessionToken, status: int = 200,
        record: Record | None = None,
    ) -> web.Response:
        """A JSON reply with the session token and, for one record, its ETag."""
        headers = {SESSION: token.encode()}
        if record is not None:
            headers["ETag"] = etag(record.version)
        return _json(data, status, headers)

    async def _write_one(
        self, request: web.Request, ns: str, op: WriteOp, cond: Condition | None = None
    ) -> tuple[ItemResult, SessionToken]:
        """One write: a consensus round when `cond` holds a condition, else the quorum path."""
        requested = _level(request)
        token = _token(request, self.svc.session_max_keys)
        by = _write_seq(request)
        if cond:  # a conditional write is always strong: the level header is only validated
            item = await self.c.conditional(ns, op, cond, token, self._agent(request), by)
        else:
            item = (await self.c.write(ns, [op], requested, token, self._agent(request),
                                       by=by))[0]
        if item.error is not None:
            raise item.error
        assert item.result is not None
        request["level"] = item.result.level.label
        request["coordinator"] = item.result.coordinator or self.svc.node_id
        out = self._session(token)
        out.wrote(f"{ns}/{op.id}", item.result.record.version, by)
        return item, out

    # -------------------------------------------------------------- memories

    async def put(self, request: web.Request) -> web.Response:
        ns = self._ns(request)
        mid = v.memory_id(request.match_info["id"])
        include_vector = _flag(request, "include_vector")
        cond = condition_of(request.headers, "PUT")
        body = decode.put_body(await decode.raw_body(request), self.svc.limits, self.svc.dim)
        self._admit_namespace(request, ns)
        item, token = await self._write_one(request, ns, WriteOp(mid, body), cond)
        assert item.result is not None
        rec = item.result.record
        status = 201 if item.result.created else 200
        return self._reply(request, rec.public(include_vector), token, status, rec)

    async def create(self, request: web.Request) -> web.Response:
        ns = self._ns(request)
        condition_of(request.headers, "POST")  # 400 for any: a minted id has no state to match
        body, spec = decode.create_body(await decode.raw_body(request), self.svc.limits,
                                        self.svc.dim)
        self._admit_namespace(request, ns)
        if spec is not None:
            return await dedup.create(self, request, ns, body, spec)
        item, token = await self._write_one(request, ns, WriteOp(self.svc.mint_id(), body))
        assert item.result is not None
        return self._reply(request, item.result.record.public(), token, 201, item.result.record)

    async def delete(self, request: web.Request) -> web.Response:
        ns = self._ns(request)
        mid = v.memory_id(request.match_info["id"])
        cond = condition_of(request.headers, "DELETE")
        item, token = await self._write_one(request, ns, WriteOp(mid, None), cond)
        assert item.result is not None
        rec = item.result.record
        return self._reply(request, {"id": mid, "version": rec.version.encode(), "deleted": True},
                           token, record=rec)

    async def get(self, request: web.Request) -> web.Response:
        ns = self._ns(request)
        mid = v.memory_id(request.match_info["id"])
        include_vector = _flag(request, "include_vector")
        token = _token(request, self.svc.session_max_keys)
        got = await self.c.read(ns, mid, _level(request), token)
        rec = got.record
        request["level"] = got.level.label
        request["coordinator"] = got.coordinator
        out = self._session(token)
        got.merge_into(out, f"{ns}/{mid}")
        if rec is None or rec.deleted:
            err = NotFound(f"no memory {mid!r} in namespace {ns!r}", field="id")
            return error_response(err, {SESSION: out.encode()})
        return self._reply(request, rec.public(include_vector), out, record=rec)

    async def history(self, request: web.Request) -> web.Response:
        ns = self._ns(request)
        mid = v.memory_id(request.match_info["id"])
        versions = await self.c.history(ns, mid)
        if not versions:
            raise NotFound(f"no memory {mid!r} in namespace {ns!r}", field="id")
        return _json({"versions": [
            {**rec.public(), "concurrent": concurrent} for rec, concurrent in versions
        ]})

    async def list(self, request: web.Request) -> web.Response:
        ns = self._ns(request)
        q = request.query
        for name in q:
            if name not in ("tag", "agent_id", "limit", "cursor"):
                raise InvalidInput(f"unknown query parameter {name!r}", field=name)
        try:
            limit = int(q.get("limit", "100"))
        except ValueError:
            raise InvalidInput("limit must be an integer", field="limit") from None
        if not 1 <= limit <= self.svc.limits.list_limit:
            raise InvalidInput(f"limit must be in 1..{self.svc.limits.list_limit}", field="limit")
        tag = v.tag(q["tag"], "tag") if "tag" in q else None
        agent = v.agent_id(q["agent_id"]) if "agent_id" in q else None
        cursor = v.memory_id(q["cursor"], "cursor") if "cursor" in q else None
        page = await self.svc.fanout.list_page(ns, cursor, limit, tag, agent,
                                               self.svc.list_page_bytes)
        return _json({
            "items": [r.public() for r in page.items],
            "next_cursor": page.next_cursor,
            "partial": bool(page.missing_shards),
            "missing_shards": page.missing_shards,
        })

    async def batch(self, request: web.Request) -> web.Response:
        ns = self._ns(request)
        ops = decode.batch_ops(await decode.raw_body(request), request.headers,
                               self.svc.limits, self.svc.dim)
        if any(op.body is not None for op in ops):
            self._admit_namespace(request, ns)
        token = _token(request, self.svc.session_max_keys)
        by = _write_seq(request)
        items = await self.c.write(ns, ops, _level(request), token, self._agent(request), by=by)
        out = self._session(token)
        results = []
        for item in items:
            if item.result is not None:
                rec = item.result.record
                out.wrote(f"{ns}/{item.id}", rec.version, by)
                results.append({"id": item.id, "status": 201 if item.result.created else 200,
                                "version": rec.version.encode()})
            else:
                assert item.error is not None
                results.append({"id": item.id, "status": status_of(item.error),
                                **error_body(item.error)})
        return self._reply(request, {"results": results}, out)

    async def search(self, request: web.Request) -> web.Response:
        ns = self._ns(request)
        if self.svc.search is None:
            raise InvalidInput("search is not available on this node", field="path")
        body = v.decode_search(await decode.raw_body(request), self.svc.limits, self.svc.dim)
        token = _token(request, self.svc.session_max_keys)
        result = await self.svc.search(ns, body, token, _level(request))
        return self._reply(request, result, self._session(token))

    # -------------------------------------------------------------- cluster

    async def cluster(self, request: web.Request) -> web.Response:
        self.svc.auth.require_cluster_view(request["principal"])
        return _json(self.svc.cluster_view())

    async def shards(self, request: web.Request) -> web.Response:
        self.svc.auth.require_cluster_view(request["principal"])
        return _json(self.svc.shards_view())

    async def admin(self, request: web.Request) -> web.Response:
        Authenticator.require_admin(request["principal"])
        action = request.match_info["action"]
        fn = self.svc.admin.get(action)
        if fn is None:
            raise InvalidInput(f"unknown cluster action {action!r}", field="action")
        return _json(await fn(request.match_info["node"]), status=202)

    async def healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok", "node": self.svc.node_id})

    async def readyz(self, request: web.Request) -> web.Response:
        verdict = self.svc.readiness()
        if verdict is None:
            return _json({"status": "ready", "node": self.svc.node_id})
        if verdict.kind == "storage" and self.svc.storage_problem is not None:
            problem = self.svc.storage_problem()
            if problem is not None:  # 503 storage_failed, with the reason
                raise problem
        if verdict.kind == "quorum":
            raise QuorumUnavailable(f"not ready: {verdict.reason}")
        raise NotServing(f"not ready: {verdict.reason}")

    async def metrics(self, request: web.Request) -> web.Response:
        self.svc.auth.require_cluster_view(request["principal"])
        return web.Response(
            text=self.svc.metrics.registry.render(), content_type="text/plain", charset="utf-8"
        )

    async def openapi(self, request: web.Request) -> web.Response:
        from spine.api.openapi import openapi_document  # only this path needs it: not at start

        return _json(openapi_document(self.svc.dim, self.svc.limits, self.svc.max_lease_ttl_ms,
                                      feed=self.svc.feed_limits))


def mint_id(wall_ms: Callable[[], int], rand: Callable[[int], bytes]) -> Callable[[], str]:
    """A UUIDv7 minter bound to a clock and a random source."""
    return lambda: uuid7(wall_ms(), rand(10))
