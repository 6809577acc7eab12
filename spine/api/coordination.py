"""Coordination over HTTP (DESIGN §12): the condition headers of a write and the lease routes.

A `PUT` or `DELETE` of one memory may carry `If-Match: "<version>"`, `If-None-Match: *` (PUT
only) and `Spine-Fence: <lease>=<token>`; `condition_of` turns them into a
`spine.core.conditions.Condition`, and a write with one runs as a consensus round
(`Coordinator.conditional`) instead of the quorum write path. The headers are matched against
the same regular expressions `/openapi.json` declares (`IF_MATCH_RE`, `FENCE_RE`), then parsed by
`spine.core.conditions`: a header the document forbids is a 400 naming it, and one it allows is
never refused as malformed. `_batch` takes no conditions (`refuse_batch_conditions`): an item of a
batch is not atomic with the others, so a condition on it would promise more than it gives.

The lease routes `POST|GET|DELETE /v1/ns/{ns}/leases/{name}` validate, admit like memory writes
(GET like reads), and call the node's `Leases` (`spine.cluster.leases`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from multidict import MultiMapping

from spine.core import bodies
from spine.core import leases as lease_rules
from spine.core.conditions import (
    LEASE_NAME_RE,
    Condition,
    check_lease_name,
    parse_fence,
    parse_if_match,
    parse_if_none_match,
)
from spine.core.errors import InvalidInput

if TYPE_CHECKING:
    from spine.cluster.leases import Leases

IF_MATCH = "If-Match"
IF_NONE_MATCH = "If-None-Match"
FENCE = "Spine-Fence"
CONDITION_HEADERS = (IF_MATCH, IF_NONE_MATCH, FENCE)
BATCH_ITEM_CONDITIONS = ("if_match", "if_none_match", "fence")

# Spine-Fence tokens the API takes: 1..10**18 - 1. Tokens count grants from 1, so the bound is
# never reached, and a decimal of at most 18 digits is one the document's pattern can state.
TOKEN_DIGITS = r"[1-9][0-9]{0,17}"
MAX_API_TOKEN = 10**18 - 1
# One quoted version as ETag gives it: 16 hex digits, a dot, the node id (visible ASCII).
IF_MATCH_RE = re.compile(r'(?:W/)?"[0-9a-f]{16}\.[!#-~]{1,183}"')
FENCE_RE = re.compile(f"{LEASE_NAME_RE.pattern}={TOKEN_DIGITS}")
HOLDER_RE = lease_rules.HOLDER_RE  # printable ASCII, 1..128 characters
TOKEN_RE = re.compile(TOKEN_DIGITS)
LEASE_FIELDS = tuple(bodies.LeaseFields.__struct_fields__)

NamespaceOf = Callable[[web.Request], str]
Admit = Callable[[web.Request, str], None]
ReadBody = Callable[[web.Request], Awaitable[bytes]]


def _single(headers: Mapping[str, str], name: str) -> str | None:
    """The one value of header `name`, or None; InvalidInput when it is sent twice (a second
    fence or tag silently dropped would be a condition the client believes was checked)."""
    if isinstance(headers, MultiMapping) and len(headers.getall(name, [])) > 1:
        raise InvalidInput(f"{name} may be sent once", field=name)
    return headers.get(name)


def condition_of(headers: Mapping[str, str], method: str) -> Condition:
    """The condition a write's headers ask for (a false Condition when none). InvalidInput naming
    the header when one is malformed, or not allowed with `method` (If-None-Match on DELETE: a
    delete of what must not exist; any condition on POST, which mints a new id)."""
    if method == "POST":
        for name in CONDITION_HEADERS:
            if name in headers:
                raise InvalidInput(f"POST mints a new id and takes no {name}: PUT the id with"
                                   f" {name} instead", field=name)
        return Condition()
    raw_match = _single(headers, IF_MATCH)
    raw_none = _single(headers, IF_NONE_MATCH)
    raw_fence = _single(headers, FENCE)
    if raw_none is not None and method == "DELETE":
        raise InvalidInput("If-None-Match applies to PUT only (create only)", field=IF_NONE_MATCH)
    if_match = None
    if raw_match is not None:
        if not IF_MATCH_RE.fullmatch(raw_match.strip()):
            raise InvalidInput('If-Match must be one quoted version, as ETag gives it:'
                               ' "<version>"', field=IF_MATCH)
        if_match = parse_if_match(raw_match)
    fence = None
    if raw_fence is not None:
        if not FENCE_RE.fullmatch(raw_fence.strip()):
            raise InvalidInput("Spine-Fence must be <lease>=<token>: a lease name and a token in"
                               f" 1..{MAX_API_TOKEN}", field=FENCE)
        fence = parse_fence(raw_fence)
    if_none = parse_if_none_match(raw_none) if raw_none is not None else False
    return Condition(if_match=if_match, if_none_match=if_none, fence=fence)


def refuse_condition_headers(headers: Mapping[str, str]) -> None:
    """InvalidInput naming the header when a `_batch` request carries a condition: batches are
    applied item by item, so conditions are taken on single-key writes only."""
    for name in CONDITION_HEADERS:
        if name in headers:
            raise InvalidInput(f"_batch takes no {name}: send conditional writes one key at a"
                               " time (PUT/DELETE /v1/ns/{ns}/memories/{id})", field=name)


def refuse_item_conditions(i: int, item: object) -> None:
    """InvalidInput naming the field when `_batch` item `i` carries a condition."""
    if isinstance(item, dict):
        for key in BATCH_ITEM_CONDITIONS:
            if key in item:
                raise InvalidInput(f"a _batch item takes no {key}: send conditional writes"
                                   " one key at a time", field=f"items[{i}].{key}")


def refuse_batch_conditions(headers: Mapping[str, str], items: list[Any]) -> None:
    """InvalidInput naming the header or item field when a `_batch` request carries a
    condition (`validation.decode_batch` calls `refuse_item_conditions` on items that are not
    writes, which an item with a condition never is)."""
    refuse_condition_headers(headers)
    for i, item in enumerate(items):
        refuse_item_conditions(i, item)


def release_token(query: Mapping[str, str]) -> int:
    """The `?token=T` of a lease release: a positive integer, else InvalidInput field token."""
    raw = query.get("token")
    if raw is None or not TOKEN_RE.fullmatch(raw):
        raise InvalidInput(f"token must be the lease's current token, an integer in"
                           f" 1..{MAX_API_TOKEN}", field="token")
    return int(raw)


def lease_request(body: object, max_ttl_ms: int) -> tuple[str, int]:
    """The holder and ttl_ms of an acquire body `{"holder", "ttl_ms"}` (the JSON bytes, or
    Python values), decoded into `LeaseRequest`, or InvalidInput naming the field."""
    kind = bodies.lease_type(max_ttl_ms)
    got = (bodies.decode(body, kind) if isinstance(body, bytes)
           else bodies.convert(body, kind))
    return lease_rules.check_request(got.holder, int(got.ttl_ms), max_ttl_ms)


def _reply(data: Any) -> web.Response:
    return web.Response(status=200, body=orjson.dumps(data), content_type="application/json")


class LeaseRoutes:
    """`POST|GET|DELETE /v1/ns/{ns}/leases/{name}`: acquire or renew, show, release."""

    def __init__(self, leases: Leases | None, max_ttl_ms: int, namespace: NamespaceOf,
                 admit: Admit, read_body: ReadBody) -> None:
        self.leases = leases
        self.max_ttl_ms = max_ttl_ms
        self.namespace = namespace  # validates the namespace and the caller's right to use it
        self.admit = admit  # the namespace quota, as for a memory write
        self.read_body = read_body

    def add_to(self, router: web.UrlDispatcher) -> None:
        """Register the three routes."""
        path = "/v1/ns/{ns}/leases/{name}"
        router.add_post(path, self.acquire)
        router.add_get(path, self.show)
        router.add_delete(path, self.release)

    def _target(self, request: web.Request) -> tuple[Leases, str, str]:
        ns = self.namespace(request)
        name = check_lease_name(request.match_info["name"])
        if self.leases is None:
            raise InvalidInput("leases are not available on this node", field="path")
        request["level"] = "strong"  # every lease operation is a consensus round
        return self.leases, ns, name

    async def acquire(self, request: web.Request) -> web.Response:
        """Grant the lease to `holder` for `ttl_ms` (or renew it): 200, or 409 lease_held."""
        leases, ns, name = self._target(request)
        holder, ttl_ms = lease_request(await self.read_body(request), self.max_ttl_ms)
        self.admit(request, ns)
        lease = await leases.acquire(ns, name, holder, ttl_ms)
        return _reply(lease.public())

    async def show(self, request: web.Request) -> web.Response:
        """The lease: its holder (null when free), token and time left; 404 if never granted."""
        leases, ns, name = self._target(request)
        return _reply((await leases.get(ns, name)).public())

    async def release(self, request: web.Request) -> web.Response:
        """Free the lease if `?token=` is current: 200, 409 conflict otherwise, 404 unknown."""
        leases, ns, name = self._target(request)
        token = release_token(request.query)
        return _reply((await leases.release(ns, name, token)).public())
