"""A change-feed consumer in the simulated cluster, and what it must have seen (DESIGN §15).

The consumer follows the namespace's feed with its cursor through a different random live node
at each poll (a load balancer's choice; a poll that fails moves it too), while the clients write
and the faults strike; after the heal it drains the feed until two polls in a row bring nothing.
The checks, on its deliveries and the clients' history:

- lost: an acknowledged write or delete whose version was never delivered, and no newer
  version of its key was either;
- order: per key, a delivered version older than one delivered before it (an equal one is a
  duplicate, allowed);
- deleted: an item whose `deleted` disagrees with the acknowledged operation of that version.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from spine.core.clock import Version
from spine.core.errors import SpineError
from spine.core.feed import Cursor
from spine.node import Node
from tests.sim.workload import NS, History, Serving, _consume


@dataclass
class Delivered:
    key: str
    version: Version
    deleted: bool
    at: float
    via: str


@dataclass
class FeedConsumer:
    rng: random.Random
    live: Callable[[], list[Serving]]
    now: Callable[[], float]
    trace: Callable[[str], None]
    timeout: float = 3.0
    cursor: Cursor | None = None
    delivered: list[Delivered] = field(default_factory=list)
    polls: int = 0
    failures: int = 0

    async def poll(self, wait_s: float = 0.2) -> int | None:
        """One poll through a random live node: how many items it brought (None: it failed)."""
        nodes = self.live()
        if not nodes:
            return None
        name, node, ctx = self.rng.choice(nodes)
        self.polls += 1
        task = asyncio.get_running_loop().create_task(self._poll(node, wait_s), context=ctx)
        task.add_done_callback(_consume)
        try:
            records, cursor = await asyncio.wait_for(asyncio.shield(task), self.timeout)
        except (SpineError, TimeoutError, asyncio.CancelledError) as e:
            if isinstance(e, asyncio.CancelledError) and all(n != name for n, _, _ in
                                                             self.live()):
                pass  # the node crashed under the poll: move on
            elif isinstance(e, asyncio.CancelledError):
                raise
            self.failures += 1
            self.trace(f"feed poll via {name} failed: {e!r}")
            return None
        self.cursor = cursor
        at = self.now()
        for r in records:
            self.delivered.append(Delivered(r.id, r.version, r.deleted, at, name))
        self.trace(f"feed poll via {name}: {len(records)} items")
        return len(records)

    async def _poll(self, node: Node, wait_s: float) -> tuple[list[object], Cursor]:
        records, cursor = await node.feed.poll(NS, self.cursor, limit=50, wait_s=wait_s)
        return list(records), cursor  # type: ignore[return-value]

    async def follow(self, stop: asyncio.Event, pause: float = 0.05) -> None:
        while not stop.is_set():
            await self.poll()
            await asyncio.sleep(pause)

    async def drain(self, within: float) -> bool:
        """Poll until two polls in a row bring nothing (True), or `within` seconds pass."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        empty = 0
        while loop.time() < deadline:
            got = await self.poll(wait_s=0.0)
            empty = empty + 1 if got == 0 else 0
            if empty >= 2:
                return True
            await asyncio.sleep(0.05)
        return False


def feed_violations(consumer: FeedConsumer, history: History) -> list[str]:
    """Lost, out-of-order and mislabelled deliveries (see the module docstring)."""
    out: list[str] = []
    newest: dict[str, Version] = {}
    kinds: dict[tuple[str, Version], bool] = {}
    for d in consumer.delivered:
        last = newest.get(d.key)
        if last is not None and d.version < last:
            out.append(f"feed order: {d.key} {d.version} delivered at t={d.at:.3f} via {d.via}"
                       f" after {last}")
        if last is None or d.version > last:
            newest[d.key] = d.version
        kinds[(d.key, d.version)] = d.deleted
    for op in history.acked():
        if op.version is None:
            continue
        best = newest.get(op.key)
        if best is None or best < op.version:
            out.append(f"feed lost: {op.kind} {op.key} {op.version} acknowledged at"
                       f" t={op.end:.3f}, newest delivered {best}")
        deleted = kinds.get((op.key, op.version))
        if deleted is not None and deleted != (op.value is None):
            out.append(f"feed deleted mismatch: {op.key} {op.version} delivered with"
                       f" deleted={deleted} for a {op.kind}")
    return out
