"""Feed: writers put and delete keys while one consumer follows the change feed (DESIGN §15).

Each client process is a writer: it puts (unique content ``p<process>-<n>``, so a delivered
record names the put that wrote it) or deletes a key picked from a small key space, so that every
key gets many versions, through a node picked at random, and records the version each ok answer
names. Now and then it puts a fresh key instead, written once and never again: the promise lets
a newer delivered version stand for a lost one, so on a hot key only a loss of its last versions
shows, while a fresh key's only version must itself be delivered.

Client 0 also runs the one consumer (process :data:`CONSUMER`): it long-polls
``GET /v1/ns/{ns}/changes`` with its cursor (``wait_s`` 1 or 2, ``limit`` 200), starting from the
beginning, and moves to another node on each nemesis fault (each ``start`` on the run's
timeline) and whenever its node fails to answer, resuming there with its last cursor, which must
be valid at any node. A ``410 cursor_expired`` sends it back to the beginning in a new *epoch*.

After healing and the quiet period, ``final()`` drains: the same consumer polls on from its
cursor (moving on errors) until two consecutive polls return nothing, within ``drain_s``. The
checker is :mod:`jepsen_style.checker.feed`: lost acknowledged changes, phantom deliveries,
per-key order violations and deleted-flag mismatches.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp

from jepsen_style.checker.feed import check_feed
from jepsen_style.workloads.common import (
    CORRUPT,
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

#: The consumer's process id (writers are 0.., final-phase processes of other workloads 10 000..).
CONSUMER = 5000


def changes_path(namespace: str) -> str:
    """``/v1/ns/{ns}/changes``."""
    return f"/v1/ns/{namespace}/changes"


def compact_item(raw: Any) -> Any:
    """What the checker needs of one delivered item (the record cut to id, version, content);
    anything that is not an object is kept as it came, for the checker to call malformed."""
    if not isinstance(raw, Mapping):
        return raw
    record = raw.get("record")
    if isinstance(record, Mapping):
        record = {k: record.get(k) for k in ("id", "version", "content", "deleted")}
    return {"id": raw.get("id"), "version": raw.get("version"), "deleted": raw.get("deleted"),
            "record": record}


class Feed:
    """Options: ``keys`` (5), ``delete_fraction`` (0.25), ``fresh_fraction`` (puts of a key
    written only once, 0.1), ``delay`` (0.02 s between one
    writer's operations), ``limit`` (200), ``wait_s`` (the long-poll waits, picked at random
    per poll: ``[1, 2]``), ``drain_s`` (bound on the final drain, 60), ``drain_wait_s`` (1),
    ``timeout`` (3 s for writes; a poll gets its ``wait_s`` on top)."""

    name = "feed"
    default_level = "session"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.level = ctx.level or self.default_level
        self.ns = namespace_for("jepsen-feed", ctx, self.name)
        self.keys = [f"k{i}" for i in range(max(1, int(option(ctx, "feed", "keys", 5))))]
        self.delete_fraction = float(option(ctx, "feed", "delete_fraction", 0.25))
        self.fresh_fraction = float(option(ctx, "feed", "fresh_fraction", 0.1))
        self.limit = int(option(ctx, "feed", "limit", 200))
        waits = option(ctx, "feed", "wait_s", [1, 2])
        self.waits = [int(w) for w in (waits if isinstance(waits, list) else [waits])]
        self.drain_s = float(option(ctx, "feed", "drain_s", 60.0))
        self.drain_wait = int(option(ctx, "feed", "drain_wait_s", 1))
        self.timeout = float(option(ctx, "feed", "timeout", 3.0))
        self._seq = itertools.count()
        # The consumer's state, carried from the run into the final drain.
        self.node = ctx.rng.choice(list(ctx.nodes))
        self.cursor: str | None = None
        self.epoch = 0
        self._moved: str | None = None  # why the next poll goes to a new node

    # ------------------------------------------------------------------ the run

    async def client(self, process: int, stop: asyncio.Event) -> None:
        """A writer; client 0 runs the consumer beside it (both stop with ``stop``)."""
        if process != 0:
            await self.writer(process, stop)
            return
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.writer(process, stop))
            tg.create_task(self.consume(stop))

    async def writer(self, process: int, stop: asyncio.Event) -> None:
        """Puts and deletes of random keys through random nodes until ``stop``."""
        rng = self.ctx.rng
        async with http_client(self.ctx, self.name) as http:
            while not stop.is_set():
                node = rng.choice(list(self.ctx.nodes))
                key = rng.choice(self.keys)
                x = rng.random()
                if x < self.fresh_fraction:
                    await self.put(http, process, node, f"f{process}-{next(self._seq)}")
                elif x < self.fresh_fraction + self.delete_fraction:
                    await self.delete(http, process, node, key)
                else:
                    await self.put(http, process, node, key)
                await pause(stop, op_delay(self.ctx, self.name, 0.02))

    async def put(self, http: Http, process: int, node: str, key: str) -> None:
        """PUT unique content; ok records the version the answer names."""
        content = f"p{process}-{next(self._seq)}"
        h = self.ctx.history.invoke(process, "put", key, {"content": content}, node)
        reply = await http.call(node, "PUT", memory_path(self.ns, key),
                                json={"content": content}, headers=headers(self.level))
        kind, error = write_outcome(reply)
        value: dict[str, Any] = {"content": content}
        if kind == "ok":
            value["version"] = _version(reply)
        self.ctx.history.complete(h, kind, value=value, error=error)

    async def delete(self, http: Http, process: int, node: str, key: str) -> None:
        """DELETE; ok records the tombstone's version the answer names."""
        h = self.ctx.history.invoke(process, "delete", key, None, node)
        reply = await http.call(node, "DELETE", memory_path(self.ns, key),
                                headers=headers(self.level))
        kind, error = write_outcome(reply)
        self.ctx.history.complete(h, kind, value={"version": _version(reply)}
                                  if kind == "ok" else None, error=error)

    def _faults(self) -> int:
        """How many faults the nemesis has started so far (0 without a timeline)."""
        timeline = getattr(self.ctx, "timeline", None)
        if timeline is None:
            return 0
        return sum(1 for e in timeline.events if e.get("kind") == "start")

    def move(self, why: str) -> None:
        """Send the consumer's next poll to another node (it keeps its cursor)."""
        others = [n for n in self.ctx.nodes if n != self.node]
        if others:
            self.node = self.ctx.rng.choice(others)
        self._moved = why

    async def consume(self, stop: asyncio.Event) -> None:
        """Follow the feed until ``stop``, moving on each fault and after each failed poll."""
        faults = self._faults()
        async with self._consumer_http() as http:
            while not stop.is_set():
                now = self._faults()
                if now != faults:
                    faults = now
                    self.move("fault")
                got = await self.poll(http, "poll", self.ctx.rng.choice(self.waits))
                if got is None:
                    self.move("error")
                    await pause(stop, 0.2)

    @contextlib.asynccontextmanager
    async def _consumer_http(self) -> AsyncIterator[Http]:
        """The consumer's connection pool: its timeout covers the longest long-poll wait."""
        total = self.timeout + max([*self.waits, self.drain_wait])
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=total, connect=self.timeout))
        try:
            yield Http(session, self.ctx.urls)
        finally:
            await session.close()

    async def poll(self, http: Http, f: str, wait_s: int) -> int | None:
        """One poll from the consumer's cursor at its node: the number of items delivered, or
        None when the node did not answer usefully (the caller moves), -1 when it answered 410
        cursor_expired (the consumer starts again from the beginning, in a new epoch)."""
        params = {"limit": str(self.limit), "wait_s": str(wait_s)}
        if self.cursor is not None:
            params["cursor"] = self.cursor
        h = self.ctx.history.invoke(
            CONSUMER, f, None, {"epoch": self.epoch, "from": "start" if self.cursor is None
                                else "cursor", "limit": self.limit, "wait_s": wait_s,
                                "moved": self._moved}, self.node)
        self._moved = None
        reply = await http.call(self.node, "GET", changes_path(self.ns), params=params)
        body = reply.body if isinstance(reply.body, dict) else None
        items = body.get("items") if body is not None else None
        cursor = body.get("cursor") if body is not None else None
        if reply.ok and isinstance(items, list) and isinstance(cursor, str) and cursor:
            self.cursor = cursor
            self.ctx.history.complete(h, "ok", value={
                "epoch": self.epoch, "items": [compact_item(i) for i in items],
                "cursor": cursor})
            return len(items)
        if reply.ok:
            self.ctx.history.complete(h, "fail", value={"status": reply.status},
                                      error=f"{CORRUPT}: {reply.body!r:.200}")
            return None
        self.ctx.history.complete(h, "fail", value={"status": reply.status}, error=reply.code)
        if reply.status == 410 and reply.code == "cursor_expired":
            self.cursor = None
            self.epoch += 1
            return -1
        return None

    # ------------------------------------------------------------------ after healing

    async def final(self) -> None:
        """Drain from the consumer's cursor until two consecutive polls return nothing (moving
        on errors), within ``drain_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.drain_s
        empty = 0
        async with self._consumer_http() as http:
            while empty < 2 and loop.time() < deadline:
                got = await self.poll(http, "drain", self.drain_wait)
                if got is None:
                    self.move("error")
                    await asyncio.sleep(0.2)
                    continue
                empty = empty + 1 if got == 0 else 0  # a restart (-1) is not an empty poll

    def check(self) -> dict[str, Any]:
        """The feed checker on this workload's events."""
        return check_feed(self.ctx.history.events)


def _version(reply: Reply) -> Any:
    """The ``version`` an ok write's answer names (None if it names none: the checker counts
    that as malformed)."""
    return reply.body.get("version") if isinstance(reply.body, dict) else None
