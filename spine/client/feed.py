"""Following the change feed (DESIGN §15) from a client: poll after poll, keeping the cursor.

The feed promises at-least-once delivery after a cursor that is valid at any node, so a
follower needs no state but its cursor: when a poll fails on every node (all unreachable, or
all answering 503) it waits and polls again with the same cursor, through the client's failover;
it misses nothing and may see some changes twice (`Change.key` tells them apart). Only a cursor
the cluster can no longer serve (410 cursor_expired) or a request it refuses (400, 401, 403)
ends it.

`.cursor` is the position a consumer may save: resuming from it redelivers every change not yet
handed out. It moves to a page's cursor when the page's last change is handed out (or when a
poll finds nothing), so a consumer that saves it after handling each change never saves a
position past a change it has not handled.

The feed delivers a change once per replica that logs it late, so a follower also drops a change
it has already handed out: per key, a version no newer than the last one handed out (the feed
never delivers an older one after a newer, so such an item is a repeat). It remembers the last
`SEEN_KEYS` keys; a repeat of a key older than that is handed out again.

`FollowState` and `retry_wait` are the pure part (no I/O, no clock); `Follower` and
`AsyncFollower` drive them with a client's fetch and sleep.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable

from spine.client.errors import CursorExpired, SpineHTTPError, Unreachable
from spine.client.types import Change, ChangesPage
from spine.core.errors import SpineError

log = logging.getLogger("spine.client")

BACKOFF_BASE_S = 0.5  # the first wait after a poll failed on every node
SEEN_KEYS = 100_000  # keys whose last handed-out version a follower remembers (to drop repeats)


def backoff(attempt: int, rand: float, cap: float, base: float = BACKOFF_BASE_S) -> float:
    """Seconds to wait before poll retry `attempt` (0 for the first): `base * 2**attempt`
    capped at `cap`, then between half and all of it by `rand` in [0, 1), so consumers cut off
    by the same failure do not all come back at the same moment."""
    full = min(cap, base * 2.0 ** min(attempt, 32))
    return full * (0.5 + 0.5 * rand)


def retry_wait(err: BaseException, attempt: int, rand: float, cap: float) -> float | None:
    """Seconds to wait before polling again after `err`, or None when `err` ends the follow:
    no node reachable, or a retriable refusal (503, 429, 504: after its Retry-After if it gave
    one), is waited out; an expired cursor or a refused request is not."""
    if isinstance(err, CursorExpired):
        return None
    if isinstance(err, Unreachable):
        return backoff(attempt, rand, cap)
    if isinstance(err, SpineHTTPError) and err.retriable:
        if err.retry_after is not None:
            return min(cap, err.retry_after)
        return backoff(attempt, rand, cap)
    return None


class FollowState:
    """Where a follower is: the cursor handed-out changes are covered by, the changes of the
    last page not yet handed out, and how many polls in a row have failed."""

    def __init__(self, cursor: str | None, from_now: bool,
                 on_cursor: Callable[[str], None] | None = None) -> None:
        if cursor is not None and from_now:
            raise ValueError("follow: give a cursor or from_now, not both")
        self.cursor = cursor
        self.from_now = from_now
        self.pending: deque[Change] = deque()
        self.failures = 0  # polls failed in a row (the backoff's attempt)
        self.retries = 0  # polls retried in all (for logs and tests)
        self.repeats = 0  # changes dropped as already handed out
        self._seen: OrderedDict[str, str] = OrderedDict()  # id -> last version handed out
        self._page_cursor: str | None = None
        self._on_cursor = on_cursor

    def request(self) -> tuple[str | None, bool]:
        """`(cursor, from_now)` for the next poll (asked only once every change of the last
        page is out, so the cursor covers them all)."""
        return self.cursor, self.from_now

    def took(self, page: ChangesPage) -> None:
        """A poll answered `page`."""
        self.failures = 0
        fresh = [c for c in page.items if self._first(c)]
        self.repeats += len(page.items) - len(fresh)
        if fresh:
            self.pending.extend(fresh)
            self._page_cursor = page.cursor
        else:
            self._advance(page.cursor)

    def _first(self, change: Change) -> bool:
        """Whether `change` is newer than what was handed out of its key (and remember it).
        Version strings sort as the (hlc, node) pairs they encode."""
        last = self._seen.get(change.id)
        if last is not None and change.version <= last:
            return False
        self._seen[change.id] = change.version
        self._seen.move_to_end(change.id)
        if len(self._seen) > SEEN_KEYS:
            self._seen.popitem(last=False)
        return True

    def failed(self, err: BaseException, rand: float, cap: float) -> float:
        """A poll raised `err`: the seconds to wait before the next one; re-raises `err` when it
        ends the follow."""
        wait = retry_wait(err, self.failures, rand, cap)
        if wait is None:
            raise err
        self.failures += 1
        self.retries += 1
        return wait

    def pop(self) -> Change:
        """The next change to hand out; the cursor moves once the page's last one is out."""
        change = self.pending.popleft()
        if not self.pending and self._page_cursor is not None:
            self._advance(self._page_cursor)
        return change

    def _advance(self, cursor: str) -> None:
        self._page_cursor = None
        self.from_now = False
        if cursor != self.cursor:
            self.cursor = cursor
            if self._on_cursor is not None:
                self._on_cursor(cursor)


def _say_retry(ns: str, err: BaseException, wait: float) -> None:
    log.warning("change feed of %s: poll failed (%s); polling again in %.1f s", ns, err, wait)


class Follower:
    """An endless iterator of a namespace's changes (sync); see the module docstring. Made by
    `Client.follow`. `cursor` is the position to save; `retries` counts polls retried."""

    def __init__(self, ns: str, fetch: Callable[[str | None, bool], ChangesPage],
                 sleep: Callable[[float], None], rand: Callable[[], float], cap: float,
                 state: FollowState,
                 on_retry: Callable[[BaseException, float], None] | None = None) -> None:
        self.ns = ns
        self._fetch = fetch
        self._sleep = sleep
        self._rand = rand
        self._cap = cap
        self._state = state
        self._on_retry = on_retry or (lambda err, wait: _say_retry(ns, err, wait))

    @property
    def cursor(self) -> str | None:
        """Resume here to get every change not handed out yet (None: none polled yet)."""
        return self._state.cursor

    @property
    def retries(self) -> int:
        """Polls retried after a failure, in all."""
        return self._state.retries

    def __iter__(self) -> Follower:
        return self

    def __next__(self) -> Change:
        state = self._state
        while not state.pending:
            try:
                page = self._fetch(*state.request())
            except SpineError as e:
                wait = state.failed(e, self._rand(), self._cap)
                self._on_retry(e, wait)
                self._sleep(wait)
                continue
            state.took(page)
        return state.pop()


class AsyncFollower:
    """An endless async iterator of a namespace's changes; as Follower, made by
    `AsyncClient.follow`."""

    def __init__(self, ns: str, fetch: Callable[[str | None, bool], Awaitable[ChangesPage]],
                 sleep: Callable[[float], Awaitable[None]], rand: Callable[[], float],
                 cap: float, state: FollowState,
                 on_retry: Callable[[BaseException, float], None] | None = None) -> None:
        self.ns = ns
        self._fetch = fetch
        self._sleep = sleep
        self._rand = rand
        self._cap = cap
        self._state = state
        self._on_retry = on_retry or (lambda err, wait: _say_retry(ns, err, wait))

    @property
    def cursor(self) -> str | None:
        """Resume here to get every change not handed out yet (None: none polled yet)."""
        return self._state.cursor

    @property
    def retries(self) -> int:
        """Polls retried after a failure, in all."""
        return self._state.retries

    def __aiter__(self) -> AsyncFollower:
        return self

    async def __anext__(self) -> Change:
        state = self._state
        while not state.pending:
            try:
                page = await self._fetch(*state.request())
            except SpineError as e:
                wait = state.failed(e, self._rand(), self._cap)
                self._on_retry(e, wait)
                await self._sleep(wait)
                continue
            state.took(page)
        return state.pop()
