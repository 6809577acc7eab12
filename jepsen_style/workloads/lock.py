"""Lock: clients take a lease, make fenced writes to the keys it guards, and release it.

Each client process is a holder (``c<process>``). It acquires a lease
(``POST /v1/ns/{ns}/leases/{name}``, a short ``ttl_ms``), writes ``"<holder>:<token>:<seq>"`` to a
few of the lease's keys with ``Spine-Fence: <name>=<token>``, and releases it
(``DELETE …?token=T``). Some holdings stall on purpose for longer than the lease lasts before
their last write (a process paused by GC or a stop-the-world, Kleppmann's example): by then
another holder may have the lease and have written, and the store must refuse the stale token.
Without the stall a healthy run never sends a stale write and fencing would go untested.

After healing, ``final()`` reads each key's version history (``GET …/memories/{id}/history``),
which is its applied order. A key is retired for a fresh one after ``writes_per_key`` write
attempts, so the history (the current version and ``history.keep``, 10 by default, superseded
ones) holds every version ever applied to it. The checker is :mod:`jepsen_style.checker.lock`.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from jepsen_style.checker.lock import check_lock
from jepsen_style.workloads.cas_register import paxos_write_outcome
from jepsen_style.workloads.common import (
    FINAL_PROCESS,
    Context,
    Http,
    Reply,
    headers,
    http_client,
    memory_path,
    namespace_for,
    op_delay,
    option,
    pause,
    write_outcome,
)

FENCE_HEADER = "Spine-Fence"


def lease_path(namespace: str, name: str) -> str:
    """``/v1/ns/{ns}/leases/{name}``."""
    return f"/v1/ns/{namespace}/leases/{name}"


def clock_spread(ctx: Context) -> int:
    """The largest difference between two nodes' clock offsets the harness has set now (ms);
    0 when the context has no cluster (unit tests)."""
    offsets = getattr(getattr(ctx, "cluster", None), "clock_offsets", None)
    if not offsets:
        return 0
    values = [int(v) for v in offsets.values()]
    return max(values) - min(values)


class Lock:
    """Options: ``leases`` (lease names in use, 2), ``keys`` (keys per lease in use at once, 2),
    ``writes_per_key`` (a key is retired after this many write attempts, 8: keep it below the
    servers' ``history.keep``), ``ttl_ms`` (1500), ``writes_per_hold`` (3), ``stall_fraction``
    (share of holdings that stall before their last write, 0.2), ``stall_s`` (how long: 2.6 s,
    past ``ttl_ms`` plus the default ``clock.max_offset`` of 500 ms, the earliest another holder
    can have the lease, plus time for it to write), ``max_offset_ms`` (the servers'
    ``clock.max_offset``, 500, only to annotate reports), ``history_keep`` (the servers'
    ``history.keep``, 10: a key's history no longer than that is whole), ``delay`` (0.02 s
    between writes), ``retry_s`` (0.1 s after a refused acquire; a holder waits twice that after
    releasing, so the others get their turn), ``timeout`` (3 s)."""

    name = "lock"
    default_level = "strong"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.level = ctx.level or self.default_level
        self.ns = namespace_for("jepsen-lock", ctx, self.name)
        self.leases = [f"lock{i}" for i in range(max(1, int(option(ctx, "lock", "leases", 2))))]
        per = max(1, int(option(ctx, "lock", "keys", 2)))
        self._fresh = itertools.count()
        self.keys: dict[str, list[str]] = {
            lease: [self._new_key(lease) for _ in range(per)] for lease in self.leases}
        self.used: list[str] = [k for ks in self.keys.values() for k in ks]
        self.writes_per_key = int(option(ctx, "lock", "writes_per_key", 8))
        self._writes: dict[str, int] = {}
        self.ttl_ms = int(option(ctx, "lock", "ttl_ms", 1500))
        self.writes_per_hold = max(1, int(option(ctx, "lock", "writes_per_hold", 3)))
        self.stall_fraction = float(option(ctx, "lock", "stall_fraction", 0.2))
        self.stall_s = float(option(ctx, "lock", "stall_s", 2.6))
        self.retry_s = float(option(ctx, "lock", "retry_s", 0.1))
        self.max_offset_ms = int(option(ctx, "lock", "max_offset_ms", 500))
        self._seq = itertools.count(1)

    def _new_key(self, lease: str) -> str:
        return f"{lease}-k{next(self._fresh)}"

    def pick_key(self, lease: str) -> str:
        """A random key of ``lease``; one that reaches ``writes_per_key`` attempts is replaced."""
        ks = self.keys[lease]
        i = self.ctx.rng.randrange(len(ks))
        key = ks[i]
        self._writes[key] = self._writes.get(key, 0) + 1
        if self.writes_per_key > 0 and self._writes[key] >= self.writes_per_key:
            ks[i] = self._new_key(lease)
            self.used.append(ks[i])
        return key

    def node(self) -> str:
        return self.ctx.rng.choice(list(self.ctx.nodes))

    async def client(self, process: int, stop: asyncio.Event) -> None:
        """Acquire, write under the fence (stalling sometimes), release; until ``stop``."""
        rng = self.ctx.rng
        holder = f"c{process}"
        async with http_client(self.ctx, self.name) as http:
            while not stop.is_set():
                lease = rng.choice(self.leases)
                token = await self.acquire(http, process, self.node(), lease, holder)
                if token is None:
                    await pause(stop, rng.uniform(0.5, 1.5) * self.retry_s)
                    continue
                stall = rng.random() < self.stall_fraction
                for i in range(self.writes_per_hold):
                    if stall and i == self.writes_per_hold - 1:
                        await pause(stop, self.stall_s)
                    if stop.is_set():
                        break
                    kind = await self.write(http, process, self.node(), lease, holder, token)
                    if kind == "fenced":
                        break  # someone holds a newer token: this holding is over
                    await pause(stop, op_delay(self.ctx, self.name, 0.02))
                await self.release(http, process, self.node(), lease, token)
                await pause(stop, rng.uniform(1.5, 2.5) * self.retry_s)

    async def acquire(self, http: Http, process: int, node: str, lease: str,
                      holder: str) -> int | None:
        """POST the lease; its token when granted."""
        skew = clock_spread(self.ctx)
        h = self.ctx.history.invoke(process, "acquire", lease,
                                    {"holder": holder, "ttl_ms": self.ttl_ms}, node)
        reply = await http.call(node, "POST", lease_path(self.ns, lease),
                                json={"holder": holder, "ttl_ms": self.ttl_ms})
        skew = max(skew, clock_spread(self.ctx))
        kind, error = write_outcome(reply)
        body = reply.body if isinstance(reply.body, dict) else {}
        if kind == "ok":
            try:
                token = int(body["token"])
                value = {"holder": body.get("holder"), "token": token,
                         "ttl_ms": int(body.get("ttl_ms", self.ttl_ms)),
                         "remaining_ms": int(body.get("remaining_ms", self.ttl_ms)),
                         "skew_ms": skew}
            except (KeyError, TypeError, ValueError):
                self.ctx.history.complete(h, "info", error=f"unexpected body {body!r:.200}")
                return None
            if value["holder"] != holder:
                self.ctx.history.complete(h, "info", error=f"granted to {value['holder']!r}")
                return None
            self.ctx.history.complete(h, "ok", value=value)
            return token
        err = body.get("error") if isinstance(body.get("error"), dict) else {}
        self.ctx.history.complete(h, kind, error=error, value={
            k: err.get(k) for k in ("holder", "remaining_ms", "token") if k in err} or None)
        return None

    async def write(self, http: Http, process: int, node: str, lease: str, holder: str,
                    token: int) -> str:
        """PUT ``"<holder>:<token>:<seq>"`` fenced by ``lease=token``; ok / fail / info, or
        ``fenced`` for a 409 fenced."""
        key = self.pick_key(lease)
        content = f"{holder}:{token}:{next(self._seq)}"
        h = self.ctx.history.invoke(process, "fwrite", key, {
            "lease": lease, "token": token, "holder": holder, "content": content}, node)
        hdrs = headers(self.level)
        hdrs[FENCE_HEADER] = f"{lease}={token}"
        reply = await http.call(node, "PUT", memory_path(self.ns, key),
                                json={"content": content}, headers=hdrs)
        kind, error = paxos_write_outcome(reply)
        self.ctx.history.complete(h, kind, error=error)
        return "fenced" if reply.status == 409 and reply.code == "fenced" else kind

    async def release(self, http: Http, process: int, node: str, lease: str, token: int) -> None:
        """DELETE the lease with the token held."""
        h = self.ctx.history.invoke(process, "release", lease, {"token": token}, node)
        reply: Reply = await http.call(node, "DELETE", lease_path(self.ns, lease),
                                       params={"token": str(token)})
        kind, error = write_outcome(reply)
        self.ctx.history.complete(h, kind, error=error)

    async def final(self) -> None:
        """After healing, read the version history of every key used (its applied order)."""
        async with http_client(self.ctx, self.name) as http:
            for i, key in enumerate(self.used):
                for attempt in range(3):
                    if await self.read_history(http, FINAL_PROCESS + i, self.node(), key):
                        break
                    await asyncio.sleep(0.5 * (attempt + 1))

    async def read_history(self, http: Http, process: int, node: str, key: str) -> bool:
        """GET the key's history; ok with the versions oldest first (a 404: none)."""
        h = self.ctx.history.invoke(process, "history", key, None, node)
        reply = await http.call(node, "GET", memory_path(self.ns, key) + "/history")
        if reply.status == 404 and reply.code == "not_found":
            self.ctx.history.complete(h, "ok", value=[])
            return True
        rows = reply.body.get("versions") if reply.ok and isinstance(reply.body, dict) else None
        if not isinstance(rows, list):
            self.ctx.history.complete(h, "fail", value=None, error=reply.code or "bad body")
            return False
        versions = [{"content": r.get("content"), "version": r.get("version"),
                     "concurrent": bool(r.get("concurrent", False)),
                     "deleted": bool(r.get("deleted", False))}
                    for r in reversed(rows) if isinstance(r, dict)]
        self.ctx.history.complete(h, "ok", value=versions)
        return True

    def check(self) -> dict[str, Any]:
        """The lock checker on this workload's events."""
        return check_lock(self.ctx.history.events, self.max_offset_ms,
                          int(option(self.ctx, "lock", "history_keep", 10)))
