"""The synchronous client: pooled connections (httpx2), failover, retries, merged tokens."""

from __future__ import annotations

import builtins
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, cast

import httpx2 as httpx

from spine.client import calls
from spine.client.base import Base, Call, cluster_error_ok, mint_id, sent_nothing
from spine.client.calls import DedupLike, FenceLike, VersionLike
from spine.client.errors import SpineHTTPError
from spine.client.feed import Follower, FollowState
from spine.client.leases import HeldLease
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


class Client(Base):
    """A thread-safe client of any number of nodes.

    `urls`: one URL, a comma-separated string or a list (default $SPINE_URL, else
    http://127.0.0.1:8788); calls start one node further each time and move on to the next
    node when one cannot be reached. `api_key` defaults to $SPINE_API_KEY; `session` is a token
    to start from; `consistency` the default level (sent as the Spine-Consistency header);
    `timeout` seconds per request; `verify` as in tls_context; idempotent calls that answer
    429/503 with a retriable code are retried up to `retries` times, after the reply's
    Retry-After (at most `max_retry_wait` s). `transport` and `sleep` are for tests.
    """

    def __init__(
        self,
        urls: str | Sequence[str] | None = None,
        *,
        sleep: Callable[[float], None] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(urls, **kw)
        self._sleep = sleep or time.sleep
        self._http = httpx.Client(verify=self._ssl, transport=self._transport,
                                  timeout=self._timeout(None))
        # Close the pool when the client is dropped without close() (no unclosed sockets).
        self._closer = weakref.finalize(self, self._http.close)

    def close(self) -> None:
        """Close the pooled connections."""
        self._closer()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, call: Call, *, consistency: str | None = None, timeout: float | None = None,
             headers: Mapping[str, str] | None = None) -> Any:
        content, params, t = self._content(call), self._params(call), self._timeout(timeout)
        extra = self._numbered(call, {**call.headers, **(headers or {})})
        attempt = 0
        while True:
            tried: builtins.list[str] = []
            last: BaseException | None = None
            for url in self._order():
                try:
                    resp = self._http.request(call.method, url + call.path, content=content,
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
            self._sleep(wait)
            attempt += 1

    def request(self, method: str, path: str, body: Any = None, *,
                consistency: str | None = None, timeout: float | None = None,
                params: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None,
                idempotent: bool | None = None) -> Any:
        """Send one request; returns the decoded JSON, raises a SpineHTTPError subclass on
        non-2xx and Unreachable when no node answers. POSTs are not retried unless
        `idempotent`."""
        call = Call(method.upper(), path, body, params or {}, idempotent)
        return self._run(call, consistency=consistency, timeout=timeout, headers=headers)

    def text(self, path: str, *, timeout: float | None = None) -> str:
        """GET a plain-text resource (e.g. /metrics) from the next node that answers."""
        tried: builtins.list[str] = []
        for url in self._order():
            try:
                resp = self._http.get(url + path, headers=self._headers(None, None),
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

    def put(self, ns: str, mid: str, content: str, *, if_match: VersionLike = None,
            if_none_match: bool = False, fence: FenceLike = None,
            consistency: str | None = None, timeout: float | None = None,
            **fields: Any) -> Record:
        """Create or replace a memory (fields: tags, metadata, vector, agent_id, ttl_s: whole
        seconds until it expires); the reply is a `Reply` whose `.version` / `.etag` a later
        `if_match=` takes.

        Conditions (DESIGN §12): `if_match` (a version, bare or quoted, or a record carrying
        one) writes only if the key's current version is that one; `if_none_match` only if no
        live record exists; else PreconditionFailed, whose `.current` is the version now.
        `fence` (`(lease, token)`, "lease=token", or a Lease / held lease) writes only if the
        key never accepted a write fenced by that lease with a higher token; else Fenced.

        A conditional or fenced write is one consensus round: it is NOT retried after a 503
        or 504 (nor moved to another node once sent), since it may have been applied and a
        repeat could fail its own condition or apply twice. On QuorumUnavailable, Timeout or
        Unreachable the outcome is unknown: read the key before trying again. It is retried
        only after a refusal that came before any work (429 overloaded, 503 not_serving).
        """
        headers = calls.condition_headers(if_match, if_none_match, fence)
        return cast(Record, self._run(calls.put(ns, mid, content, fields, headers),
                                      consistency=consistency, timeout=timeout))

    def create(self, ns: str, content: str, *, id: str | None = None, server_mint: bool = False,
               dedup: DedupLike = None, consistency: str | None = None,
               timeout: float | None = None, **fields: Any) -> Record:
        """Create a memory under a new UUIDv7 minted here (so a retry is the same PUT), or
        under `id`; `server_mint` POSTs and lets the node mint it (then never retried). Fields
        as for `put` (`ttl_s=3600`: it expires an hour later).

        `dedup` (DESIGN §13) POSTs and lets the node choose the id: "exact" derives it from the
        normalised content and creates only if absent (so concurrent identical creates make one
        memory; retried like a PUT), a score `s` (or `{"min_score": s, "tags_all": [...],
        "agent_id": ...}`) answers the nearest live memory scoring at least `s` instead of
        writing (best effort under concurrency; not retried). The reply's `.deduplicated` says
        whether an existing memory was answered (200) rather than one created (201)."""
        if server_mint or dedup is not None:
            call = calls.post_create(ns, content, fields, dedup, id)
        else:
            call = calls.put(ns, id or mint_id(self._rt), content, fields)
        return cast(Record, self._run(call, consistency=consistency, timeout=timeout))

    def get(self, ns: str, mid: str, *, include_vector: bool = False,
            consistency: str | None = None, timeout: float | None = None) -> Record:
        """Read a memory (NotFound when absent)."""
        return cast(Record, self._run(calls.get(ns, mid, include_vector),
                                      consistency=consistency, timeout=timeout))

    def delete(self, ns: str, mid: str, *, if_match: VersionLike = None,
               fence: FenceLike = None, consistency: str | None = None,
               timeout: float | None = None) -> Deleted:
        """Delete a memory (a tombstone); `if_match` and `fence` as in `put` (and, as there,
        a conditional or fenced delete is not retried after a 503 or 504)."""
        headers = calls.condition_headers(if_match, False, fence)
        return cast(Deleted, self._run(calls.delete(ns, mid, headers), consistency=consistency,
                                       timeout=timeout))

    def acquire_lease(self, ns: str, name: str, holder: str, ttl_ms: int, *,
                      timeout: float | None = None) -> Lease:
        """Acquire lease `name` for `holder` for `ttl_ms`, or renew it if `holder` has it
        (the token stays); LeaseHeld (`.holder`, `.remaining_ms`) if someone else does. Count
        the lease as yours for `ttl_ms` from when you SENT this call, not from the answer.
        `lease()` does the renewing and the counting for you."""
        return Lease.from_body(self._run(calls.lease_acquire(ns, name, holder, ttl_ms),
                                         timeout=timeout), name)

    def get_lease(self, ns: str, name: str, *, timeout: float | None = None) -> Lease:
        """Lease `name` as the answering node sees it (`holder` None when free); NotFound if
        it was never granted."""
        return Lease.from_body(self._run(calls.lease_get(ns, name), timeout=timeout), name)

    def release_lease(self, ns: str, name: str, token: int | Lease, *,
                      timeout: float | None = None) -> Lease:
        """Release lease `name` if `token` (or a Lease's) is its current token; Conflict if
        not (also when a retried release had already succeeded), NotFound if never granted."""
        tok = token.token if isinstance(token, Lease) else token
        return Lease.from_body(self._run(calls.lease_release(ns, name, tok), timeout=timeout),
                               name)

    def lease(self, ns: str, name: str, holder: str, ttl_ms: int) -> HeldLease:
        """`with client.lease(ns, name, holder, ttl_ms) as lease:` acquires it, renews it in a
        daemon thread every ttl_ms/3, and releases it on exit. `lease.token` / `lease.fence`
        are for fenced writes (`fence=lease`); `lease.check()` raises LeaseLost (and
        `lease.lost` is True) once a renewal was refused or ttl_ms passed since the last
        successful renewal was sent. See spine.client.leases."""
        return HeldLease(self, ns, name, holder, ttl_ms)

    def history(self, ns: str, mid: str, *, consistency: str | None = None,
                timeout: float | None = None) -> History:
        """Versions kept for a memory, newest first."""
        return cast(History, self._run(calls.history(ns, mid), consistency=consistency,
                                       timeout=timeout))

    def list(self, ns: str, *, consistency: str | None = None, timeout: float | None = None,
             **params: Any) -> Page:
        """One page of live memories (params: tag, agent_id, limit, cursor)."""
        return cast(Page, self._run(calls.list_page(ns, params), consistency=consistency,
                                    timeout=timeout))

    def iter_list(self, ns: str, *, consistency: str | None = None,
                  timeout: float | None = None, **params: Any) -> Iterator[Record]:
        """Every live memory, page after page (following next_cursor)."""
        cursor = params.pop("cursor", None)
        while True:
            page = self.list(ns, consistency=consistency, timeout=timeout, cursor=cursor,
                             **params)
            yield from page["items"]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def batch(self, ns: str, items: Sequence[Mapping[str, Any]], *, raise_errors: bool = False,
              consistency: str | None = None, timeout: float | None = None) -> BatchResult:
        """Upserts (`{id, content, ...}`) and deletes (`{id, delete: true}`) in calls of up to
        1,000 items; one result per item in order. With `raise_errors`, BatchFailed when any
        item failed (the others are applied); without, failures are only in the results."""
        results: builtins.list[Any] = []
        for chunk in calls.chunks(items):
            reply = self._run(calls.batch(ns, chunk), consistency=consistency, timeout=timeout)
            results.extend(reply["results"])
        return cast(BatchResult, calls.check(results, raise_errors))

    def search(self, ns: str, query: str | None = None, *, mode: str | None = None,
               recency: Mapping[str, float] | None = None, consistency: str | None = None,
               timeout: float | None = None, **body: Any) -> SearchResult:
        """Search (body: k, vector, tags_all, tags_any, agent_id, metadata, min_score); `mode`
        is vector, keyword or hybrid, `recency` {"half_life_s": H, "weight": w} (DESIGN §14)."""
        return cast(SearchResult, self._run(calls.search(ns, query, body, mode, recency),
                                            consistency=consistency, timeout=timeout))

    def changes(self, ns: str, cursor: str | None = None, *, from_now: bool = False,
                limit: int = 100, wait_s: float = 0, timeout: float | None = None
                ) -> ChangesPage:
        """One page of the namespace's change feed (DESIGN §15): the writes and deletes after
        `cursor` (None: from the beginning, every key's latest change; `from_now`: only later
        ones), at most `limit`, waiting up to `wait_s` seconds (0..30) for one when there are
        none yet. Pass the page's `cursor` back for the next page, at any node. CursorExpired
        when the cursor is too old to serve (start again). The read timeout is `timeout` (the
        client's by default) plus `wait_s`."""
        call = calls.changes(ns, cursor, from_now, limit, wait_s)
        t = (self.timeout if timeout is None else timeout) + wait_s
        return ChangesPage.from_body(self._run(call, timeout=t))

    def follow(self, ns: str, cursor: str | None = None, *, from_now: bool = False,
               wait_s: float = 10, limit: int = 100,
               on_cursor: Callable[[str], None] | None = None,
               on_retry: Callable[[BaseException, float], None] | None = None,
               timeout: float | None = None) -> Follower:
        """Every change of the namespace after `cursor` (as `changes`), forever:
        `for change in client.follow(ns): ...`. Long-polls `wait_s` seconds at a time; when
        no node answers (or all answer 503) it waits (backoff up to `max_retry_wait`, after
        calling `on_retry(error, seconds)`; by default a logged warning) and polls again with
        its last cursor, so nothing is missed. The iterator's `.cursor` (also passed to
        `on_cursor` each time it moves) is the position to save: resuming there redelivers
        whatever was not yet handed out. Raises CursorExpired, or any refusal (400, 401,
        403)."""
        def fetch(cur: str | None, now: bool) -> ChangesPage:
            return self.changes(ns, cur, from_now=now, limit=limit, wait_s=wait_s,
                                timeout=timeout)

        return Follower(ns, fetch, self._sleep, self._rt.random, self.max_retry_wait,
                        FollowState(cursor, from_now, on_cursor), on_retry)

    def cluster(self, *, timeout: float | None = None) -> dict[str, Any]:
        """GET /v1/cluster: the answering node's view."""
        return cast(dict[str, Any], self._run(Call("GET", "/v1/cluster"), timeout=timeout))

    def cluster_key(self) -> str:
        """The name tokens are kept under: the cluster's name from /v1/cluster (asked once), or
        the node URLs when this key may not read it."""
        if self._cluster is None:
            try:
                view: Any = self.cluster()
            except SpineHTTPError as e:
                if not cluster_error_ok(e):
                    raise
                view = None
            self._cluster = self._cluster_key(view)
        return self._cluster

    def load_session(self, store: TokenStore) -> None:
        """Merge the token `store` keeps for this client's cluster into the client's."""
        saved = store.load(self.cluster_key())
        with self._lock:
            self.session = merge_tokens(self.session, saved)

    def save_session(self, store: TokenStore) -> None:
        """Keep the client's token in `store` under this client's cluster."""
        store.save(self.cluster_key(), self.session)
