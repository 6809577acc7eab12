"""Holding a lease from a client (DESIGN §12): acquire, renew in the background, know when it
may be lost, release.

The rule a holder lives by: the lease is ours for `ttl_ms` from the moment the request that
granted or renewed it was **sent** (not answered: the node may have granted it at any point in
between, and its clock started then). So the keeper remembers, for the last renewal that
succeeded, when it was sent, and the lease counts as lost from `sent + ttl_ms` on unless a later
renewal has succeeded by then. A renewal the cluster refuses (another holder has it, the token
moved) loses it at once; one that could not get an answer (a node down, a 503, a timeout) is
tried again sooner, until that deadline passes. A renewal whose reply carries a new token means
the lease lapsed on the server and was granted afresh: someone else may have held it in
between, so that also counts as lost.

Losing a lease is only about what the holder may *assume*; the store stays safe without it,
because a key refuses writes fenced with a token lower than one it has accepted (`fence=`).

`LeaseKeeper` is the pure part (the clock is passed in); `HeldLease` (a daemon thread) and
`AsyncHeldLease` (an asyncio task) drive it with a client.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spine.client.errors import LeaseLost
from spine.client.types import Lease
from spine.core.errors import SpineError

if TYPE_CHECKING:
    from spine.client.aio import AsyncClient
    from spine.client.sync import Client

log = logging.getLogger("spine.client")

RENEWALS_PER_TTL = 3  # renew every ttl_ms / 3: two renewals may fail before the lease lapses
RETRY_FRACTION = 0.5  # after a failed renewal, try again in half the renewal interval


@dataclass
class LeaseKeeper:
    """When to renew a held lease and whether it may be lost, on a monotonic clock in seconds.

    `deadline` is the send time of the last renewal (or the acquire) that succeeded, plus
    `ttl_ms`; `next_at` when the next renewal is due. Once `lost_reason` is set it stays set:
    a holder that may have lost the lease must start again, not carry on.
    """

    lease: Lease
    ttl_ms: int
    deadline: float
    next_at: float
    lost_reason: str | None = None
    renewals: int = 0  # renewals that succeeded (for tests and logs)

    @classmethod
    def start(cls, lease: Lease, sent_at: float, ttl_ms: int) -> LeaseKeeper:
        """The keeper of a lease granted by a request sent at `sent_at`."""
        keeper = cls(lease, ttl_ms, sent_at + ttl_ms / 1000, sent_at)
        keeper.next_at = sent_at + keeper.interval
        return keeper

    @property
    def interval(self) -> float:
        """Seconds between renewals."""
        return self.ttl_ms / 1000 / RENEWALS_PER_TTL

    def lost(self, now: float) -> str | None:
        """Why the lease may no longer be ours at `now`, or None while it surely is."""
        if self.lost_reason is None and now >= self.deadline:
            self.lost_reason = (f"no renewal succeeded within ttl_ms ({self.ttl_ms} ms) of being"
                                " sent")
        return self.lost_reason

    def wait(self, now: float) -> float:
        """Seconds until the next renewal is due (0: now)."""
        return max(0.0, self.next_at - now)

    def timeout(self, now: float, default: float) -> float:
        """How long a renewal sent at `now` may wait for its answer: no later than the deadline
        (an answer after it could not save the lease)."""
        return max(0.001, min(default, self.deadline - now))

    def renewed(self, sent_at: float, lease: Lease, now: float) -> None:
        """A renewal sent at `sent_at` succeeded with `lease`, answered at `now`."""
        if self.lost(now) is not None:
            return
        if lease.token != self.lease.token:
            self.lost_reason = (f"the lease lapsed and was granted again (token"
                                f" {self.lease.token} -> {lease.token})")
            self.lease = lease
            return
        self.lease = lease
        self.renewals += 1
        self.deadline = max(self.deadline, sent_at + self.ttl_ms / 1000)
        self.next_at = sent_at + self.interval

    def failed(self, err: BaseException, now: float) -> None:
        """A renewal failed at `now`: a refusal loses the lease; an error a retry may cure
        (no answer, 503, 504, 429) is retried sooner, and the deadline decides."""
        if self.lost(now) is not None:
            return
        if isinstance(err, SpineError) and err.retriable:
            self.next_at = now + self.interval * RETRY_FRACTION
            return
        self.lost_reason = f"a renewal was refused: {err}"


class _Held:
    """What the sync and async holders share: the keeper, its lock, the accessors."""

    def __init__(self, ns: str, name: str, holder: str, ttl_ms: int,
                 clock: Callable[[], float]) -> None:
        self.namespace = ns
        self.name = name
        self.holder = holder
        self.ttl_ms = ttl_ms
        self._clock = clock
        self._mu = threading.Lock()  # the renewer and the holder's own thread both read it
        self._keeper: LeaseKeeper | None = None
        self.release_error: BaseException | None = None

    def _kept(self) -> LeaseKeeper:
        if self._keeper is None:
            raise RuntimeError(f"lease {self.name!r} is not held yet: enter the context first")
        return self._keeper

    @property
    def lease(self) -> Lease:
        """The lease as last granted or renewed."""
        with self._mu:
            return self._kept().lease

    @property
    def token(self) -> int:
        """The fencing token of this holding (it stays the same across renewals)."""
        return self.lease.token

    @property
    def fence(self) -> tuple[str, int]:
        """`(name, token)`, what `fence=` takes."""
        return self.name, self.token

    @property
    def renewals(self) -> int:
        """Renewals that succeeded so far."""
        with self._mu:
            return self._kept().renewals

    @property
    def lost(self) -> bool:
        """Whether the lease may no longer be ours (see the module's rule)."""
        return self.lost_reason is not None

    @property
    def lost_reason(self) -> str | None:
        """Why it may be lost, or None."""
        now = self._clock()
        with self._mu:
            return self._kept().lost(now)

    def check(self) -> None:
        """Raise LeaseLost if the lease may no longer be ours; call it before acting on it."""
        reason = self.lost_reason
        if reason is not None:
            raise LeaseLost(self.name, self.token, reason)

    def _started(self, lease: Lease, sent_at: float) -> None:
        with self._mu:
            self._keeper = LeaseKeeper.start(lease, sent_at, self.ttl_ms)

    def _due(self) -> float | None:
        """Seconds to wait before the next renewal; None once lost (renewing stops)."""
        now = self._clock()
        with self._mu:
            keeper = self._kept()
            return None if keeper.lost(now) is not None else keeper.wait(now)

    def _outcome(self, sent_at: float, got: Lease | BaseException) -> None:
        now = self._clock()
        with self._mu:
            keeper = self._kept()
            was_lost = keeper.lost_reason is not None
            if isinstance(got, Lease):
                keeper.renewed(sent_at, got, now)
            else:
                keeper.failed(got, now)
            reason = keeper.lost(now)
        if reason is not None and not was_lost:
            log.warning("lease %s/%s held by %s may be lost: %s", self.namespace, self.name,
                        self.holder, reason)

    def _renew_timeout(self, default: float) -> float:
        now = self._clock()
        with self._mu:
            return self._kept().timeout(now, default)

    def _released(self, err: BaseException | None) -> None:
        if err is not None:
            self.release_error = err
            log.warning("lease %s/%s held by %s not released: %s", self.namespace, self.name,
                        self.holder, err)


class HeldLease(_Held):
    """A lease held by a `Client` inside `with client.lease(...) as lease:`. Entering acquires it
    (LeaseHeld if someone else holds it); a daemon thread renews it every ttl_ms/3; leaving
    stops the thread and releases it (a failed release is logged and kept in
    `release_error`, not raised: the lease then lapses after ttl_ms)."""

    def __init__(self, client: Client, ns: str, name: str, holder: str, ttl_ms: int) -> None:
        super().__init__(ns, name, holder, ttl_ms, client._rt.monotonic)
        self._client = client
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> Lease:
        """Acquire the lease (no background renewal: `__enter__` starts that)."""
        sent_at = self._clock()
        lease = self._client.acquire_lease(self.namespace, self.name, self.holder, self.ttl_ms)
        self._started(lease, sent_at)
        return lease

    def renew(self) -> None:
        """Send one renewal now and note its outcome (the thread calls this when one is due)."""
        sent_at = self._clock()
        timeout = self._renew_timeout(self._client.timeout)
        got: Lease | BaseException
        try:
            got = self._client.acquire_lease(self.namespace, self.name, self.holder,
                                              self.ttl_ms, timeout=timeout)
        except Exception as e:  # every failure is an outcome the keeper notes (and logs)
            got = e
        self._outcome(sent_at, got)

    def release(self) -> None:
        """Stop renewing and release the lease (best effort: see the class)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self._client.timeout)
        err: BaseException | None = None
        try:
            self._client.release_lease(self.namespace, self.name, self.token)
        except SpineError as e:
            err = e
        self._released(err)

    def _renew_loop(self) -> None:
        while True:
            wait = self._due()
            if wait is None or self._stop.wait(wait):
                return
            self.renew()

    def __enter__(self) -> HeldLease:
        self.acquire()
        self._thread = threading.Thread(target=self._renew_loop, daemon=True,
                                        name=f"spine-lease-{self.name}")
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class AsyncHeldLease(_Held):
    """A lease held by an `AsyncClient` inside `async with client.lease(...) as lease:`; an
    asyncio task renews it every ttl_ms/3 (as HeldLease)."""

    def __init__(self, client: AsyncClient, ns: str, name: str, holder: str,
                 ttl_ms: int) -> None:
        super().__init__(ns, name, holder, ttl_ms, client._rt.monotonic)
        self._client = client
        self._task: asyncio.Task[None] | None = None

    async def acquire(self) -> Lease:
        """Acquire the lease (no background renewal: `__aenter__` starts that)."""
        sent_at = self._clock()
        lease = await self._client.acquire_lease(self.namespace, self.name, self.holder,
                                                 self.ttl_ms)
        self._started(lease, sent_at)
        return lease

    async def renew(self) -> None:
        """Send one renewal now and note its outcome."""
        sent_at = self._clock()
        timeout = self._renew_timeout(self._client.timeout)
        got: Lease | BaseException
        try:
            got = await self._client.acquire_lease(self.namespace, self.name, self.holder,
                                                    self.ttl_ms, timeout=timeout)
        except Exception as e:  # every failure is an outcome the keeper notes (and logs)
            got = e
        self._outcome(sent_at, got)

    async def release(self) -> None:
        """Stop renewing and release the lease (best effort, as HeldLease.release)."""
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        err: BaseException | None = None
        try:
            await self._client.release_lease(self.namespace, self.name, self.token)
        except SpineError as e:
            err = e
        self._released(err)

    async def _renew_loop(self) -> None:
        while True:
            wait = self._due()
            if wait is None:
                return
            await self._client._rt.sleep(wait)
            await self.renew()

    async def __aenter__(self) -> AsyncHeldLease:
        await self.acquire()
        self._task = asyncio.get_running_loop().create_task(
            self._renew_loop(), name=f"spine-lease-{self.name}")
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.release()
