"""The asyncio client: the same calls as Client, awaited; its httpx2 pool is made lazily on the
first call, so it can be built outside a running loop."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, cast

import httpx2 as httpx

from spine.client import calls
from spine.client.base import Base, Call, cluster_error_ok, mint_id, sent_nothing
from spine.client.calls import DedupLike, FenceLike, VersionLike
from spine.client.errors import SpineHTTPError
from spine.client.feed import AsyncFollower, FollowState
from spine.client.leases import AsyncHeldLease
from spine.client.session import TokenStore, merge_tokens
from spine.client.types import (
    BatchResult,
    ChangesPage,
    Deleted,
    History,
    Lease,
    Page,
    Record,
    SearchResult,
)


class AsyncClient(Base):
    """An asyncio client with Client's arguments, failover, retries and merged tokens."""

    _http: httpx.AsyncClient | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    async def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._http is None or self._loop is not loop:
            # A pool belongs to one loop: a client reused under a new loop gets a new pool.
            self._http = httpx.AsyncClient(verify=self._ssl, transport=self._transport,
                                           timeout=self._timeout(None))
            self._loop = loop
        return self._http

    async def close(self) -> None:
        """Close the pooled connections."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, call: Call, *, consistency: str | None = None,
                   timeout: float | None = None,
                   headers: Mapping[str, str] | None = None) -> Any:
        http = await self._client()
        content, params, t = self._content(call), self._params(call), self._timeout(timeout)
        extra = self._numbered(call, {**call.headers, **(headers or {})})
        attempt = 0
        while True:
            tried: builtins.list[str] = []
            last: BaseException | None = None
            for url in self._order():
                try:
                    resp = await http.request(call.method, url + call.path, content=content,
                                              params=params, timeout=t,
                                              headers=self._headers(consistency, extra))
                except httpx.TransportError as e:
                    tried.append(url)
                    last = e
                    if sent_nothing(e) or call.safe_to_retry():
                        continue
                    raise self._unreachable(tried, e) from None
                value, wait = self._outcome(resp, call, attempt)
                if wait is None:
                    return value
                break
            else:
                raise self._unreachable(tried, last) from None
            await self._rt.sleep(wait)
            attempt += 1

    async def request(self, method: str, path: str, body: Any = None, *,
                      consistency: str | None = None, timeout: float | None = None,
                      params: Mapping[str, Any] | None = None,
                      headers: Mapping[str, str] | None = None,
                      idempotent: bool | None = None) -> Any:
        """Send one request (as Client.request)."""
        call = Call(method.upper(), path, body, params or {}, idempotent)
        return await self._run(call, consistency=consistency, timeout=timeout, headers=headers)

    async def text(self, path: str, *, timeout: float | None = None) -> str:
        """GET a plain-text resource (e.g. /metrics) from the next node that answers."""
        http = await self._client()
        tried: builtins.list[str] = []
        for url in self._order():
            try:
                resp = await http.get(url + path, headers=self._headers(None, None),
                                      timeout=self._timeout(timeout))
            except httpx.TransportError as e:
                tried.append(url)
                if len(tried) == len(self.urls):
                    raise self._unreachable(tried, e) from None
                continue
            if resp.status_code >= 300:
                self._outcome(resp, Call("GET", path, idempotent=False), self.retries)
            return resp.text
        raise self._unreachable(tried, None)

    async def put(self, ns: str, mid: str, content: str, *, if_match: VersionLike = None,
                  if_none_match: bool = False, fence: FenceLike = None,
                  consistency: str | None = None, timeout: float | None = None,
                  **fields: Any) -> Record:
        """Create or replace a memory; `if_match`, `if_none_match` and `fence` as in
        Client.put. A conditional or fenced write is NOT retried after a 503 or 504 (its
        outcome is unknown: read before trying again)."""
        headers = calls.condition_headers(if_match, if_none_match, fence)
        return cast(Record, await self._run(calls.put(ns, mid, content, fields, headers),
                                            consistency=consistency, timeout=timeout))

    async def create(self, ns: str, content: str, *, id: str | None = None,
                     server_mint: bool = False, dedup: DedupLike = None,
                     consistency: str | None = None, timeout: float | None = None,
                     **fields: Any) -> Record:
        """Create a memory under a client-minted UUIDv7, or with `dedup` ("exact" or a score)
        as Client.create does; the reply's `.deduplicated` says whether it already existed."""
        if server_mint or dedup is not None:
            call = calls.post_create(ns, content, fields, dedup, id)
        else:
            call = calls.put(ns, id or mint_id(self._rt), content, fields)
        return cast(Record, await self._run(call, consistency=consistency, timeout=timeout))

    async def get(self, ns: str, mid: str, *, include_vector: bool = False,
                  consistency: str | None = None, timeout: float | None = None) -> Record:
        """Read a memory (NotFound when absent)."""
        return cast(Record, await self._run(calls.get(ns, mid, include_vector),
                                            consistency=consistency, timeout=timeout))

    async def delete(self, ns: str, mid: str, *, if_match: VersionLike = None,
                     fence: FenceLike = None, consistency: str | None = None,
                     timeout: float | None = None) -> Deleted:
        """Delete a memory; `if_match` and `fence` as in Client.put (not retried after a 503
        or 504 when given)."""
        headers = calls.condition_headers(if_match, False, fence)
        return cast(Deleted, await self._run(calls.delete(ns, mid, headers),
                                             consistency=consistency, timeout=timeout))

    async def acquire_lease(self, ns: str, name: str, holder: str, ttl_ms: int, *,
                            timeout: float | None = None) -> Lease:
        """Acquire or renew a lease (as Client.acquire_lease)."""
        return Lease.from_body(await self._run(calls.lease_acquire(ns, name, holder, ttl_ms),
                                               timeout=timeout), name)

    async def get_lease(self, ns: str, name: str, *, timeout: float | None = None) -> Lease:
        """Read a lease (as Client.get_lease)."""
        return Lease.from_body(await self._run(calls.lease_get(ns, name), timeout=timeout),
                               name)

    async def release_lease(self, ns: str, name: str, token: int | Lease, *,
                            timeout: float | None = None) -> Lease:
        """Release a lease (as Client.release_lease)."""
        tok = token.token if isinstance(token, Lease) else token
        return Lease.from_body(await self._run(calls.lease_release(ns, name, tok),
                                               timeout=timeout), name)

    def lease(self, ns: str, name: str, holder: str, ttl_ms: int) -> AsyncHeldLease:
        """`async with client.lease(ns, name, holder, ttl_ms) as lease:` acquires it, renews
        it in an asyncio task every ttl_ms/3 and releases it on exit (as Client.lease)."""
        return AsyncHeldLease(self, ns, name, holder, ttl_ms)

    async def history(self, ns: str, mid: str, *, consistency: str | None = None,
                      timeout: float | None = None) -> History:
        """Versions kept for a memory."""
        return cast(History, await self._run(calls.history(ns, mid), consistency=consistency,
                                             timeout=timeout))

    async def list(self, ns: str, *, consistency: str | None = None,
                   timeout: float | None = None, **params: Any) -> Page:
        """One page of live memories."""
        return cast(Page, await self._run(calls.list_page(ns, params), consistency=consistency,
                                          timeout=timeout))

    async def iter_list(self, ns: str, *, consistency: str | None = None,
                        timeout: float | None = None, **params: Any) -> AsyncIterator[Record]:
        """Every live memory, page after page."""
        cursor = params.pop("cursor", None)
        while True:
            page = await self.list(ns, consistency=consistency, timeout=timeout, cursor=cursor,
                                   **params)
            for item in page["items"]:
                yield item
            cursor = page.get("next_cursor")
            if not cursor:
                return

    async def batch(self, ns: str, items: Sequence[Mapping[str, Any]], *,
                    raise_errors: bool = False, consistency: str | None = None,
                    timeout: float | None = None) -> BatchResult:
        """Upserts and deletes in calls of up to 1,000 items (as Client.batch)."""
        results: builtins.list[Any] = []
        for chunk in calls.chunks(items):
            reply = await self._run(calls.batch(ns, chunk), consistency=consistency,
                                    timeout=timeout)
            results.extend(reply["results"])
        return cast(BatchResult, calls.check(results, raise_errors))

    async def search(self, ns: str, query: str | None = None, *, mode: str | None = None,
                     recency: Mapping[str, float] | None = None,
                     consistency: str | None = None, timeout: float | None = None,
                     **body: Any) -> SearchResult:
        """Search; as `Client.search`."""
        return cast(SearchResult, await self._run(calls.search(ns, query, body, mode, recency),
                                                  consistency=consistency, timeout=timeout))

    async def changes(self, ns: str, cursor: str | None = None, *, from_now: bool = False,
                      limit: int = 100, wait_s: float = 0, timeout: float | None = None
                      ) -> ChangesPage:
        """One page of the change feed (as Client.changes)."""
        call = calls.changes(ns, cursor, from_now, limit, wait_s)
        t = (self.timeout if timeout is None else timeout) + wait_s
        return ChangesPage.from_body(await self._run(call, timeout=t))

    def follow(self, ns: str, cursor: str | None = None, *, from_now: bool = False,
               wait_s: float = 10, limit: int = 100,
               on_cursor: Callable[[str], None] | None = None,
               on_retry: Callable[[BaseException, float], None] | None = None,
               timeout: float | None = None) -> AsyncFollower:
        """Every change after `cursor`, forever: `async for change in client.follow(ns):`
        (as Client.follow; `.cursor` is the position to save)."""
        async def fetch(cur: str | None, now: bool) -> ChangesPage:
            return await self.changes(ns, cur, from_now=now, limit=limit, wait_s=wait_s,
                                      timeout=timeout)

        return AsyncFollower(ns, fetch, self._rt.sleep, self._rt.random, self.max_retry_wait,
                             FollowState(cursor, from_now, on_cursor), on_retry)

    async def cluster(self, *, timeout: float | None = None) -> dict[str, Any]:
        """GET /v1/cluster."""
        return cast(dict[str, Any], await self._run(Call("GET", "/v1/cluster"),
                                                    timeout=timeout))

    async def cluster_key(self) -> str:
        """The name tokens are kept under (as Client.cluster_key)."""
        if self._cluster is None:
            try:
                view: Any = await self.cluster()
            except SpineHTTPError as e:
                if not cluster_error_ok(e):
                    raise
                view = None
            self._cluster = self._cluster_key(view)
        return self._cluster

    async def load_session(self, store: TokenStore) -> None:
        """Merge the token `store` keeps for this cluster into the client's."""
        saved = store.load(await self.cluster_key())
        with self._lock:
            self.session = merge_tokens(self.session, saved)

    async def save_session(self, store: TokenStore) -> None:
        """Keep the client's token in `store` under this cluster."""
        store.save(await self.cluster_key(), self.session)
