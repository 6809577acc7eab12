"""Clients of the simulated cluster: session, strong and eventual operations, and their history.

Each client is an agent behind a load balancer: every operation goes to a random live node's
real `Coordinator` (which forwards or coordinates as it would for an HTTP request). Session
clients carry a `SessionToken` and merge each reply's into it, as `spine.client` does. Every
operation is recorded with its virtual invoke and return times and what it returned, so the
checkers can judge read-your-writes, monotonic reads, linearizability and convergence.

Keys by class, so each is judged by what its level promises: `s*` session, `x*` strong
(linearizable register), `e*` eventual (convergence only). Every write's content is unique, so a
read names the write it saw.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spine.cluster.reads import Got
from spine.core.clock import Version
from spine.core.conditions import Condition
from spine.core.consistency import Level
from spine.core.errors import SpineError
from spine.core.model import Record
from spine.core.requests import ItemResult, WriteOp
from spine.core.session import SessionToken
from spine.core.validation import WriteBody
from spine.node import Node

NS = "sim"
KEYS = {Level.SESSION: [f"s{i}" for i in range(10)],
        Level.STRONG: [f"x{i}" for i in range(4)],
        Level.EVENTUAL: [f"e{i}" for i in range(4)]}


@dataclass
class Op:
    """One client operation as the client saw it."""

    client: int
    level: Level
    kind: str  # "write" | "delete" | "read" | "cas" (a conditional write: If-Match/If-None-Match)
    key: str
    value: str | None  # written content (None: delete); for a read, the content read
    invoke: float
    node: str
    end: float | None = None
    ok: bool | None = None  # None: unknown (timed out or failed after it may have applied)
    version: Version | None = None  # the version written or read
    error: str | None = None
    expect: str | None = None  # a cas: the content the key must hold (None: no live record)


@dataclass
class History:
    ops: list[Op] = field(default_factory=list)

    def acked(self) -> list[Op]:
        return [o for o in self.ops if o.ok and o.kind != "read"]


def content_of(rec: Record | None) -> str | None:
    return None if rec is None or rec.deleted else rec.content


# A node a client may send to: its name, the node, and the context its tasks run in.
Serving = tuple[str, Node, contextvars.Context]


def _consume(task: asyncio.Task[Any]) -> None:
    """A request the client gave up on may still fail later, as a server's would: seen."""
    if not task.cancelled():
        task.exception()


class Client:
    """One agent: a loop of operations through random live nodes until told to stop."""

    def __init__(self, cid: int, level: Level, rng: random.Random, history: History,
                 live: Callable[[], list[Serving]], now: Callable[[], float],
                 session_max_keys: int, timeout: float, trace: Callable[[str], None]) -> None:
        self.cid, self.level, self.rng, self.history = cid, level, rng, history
        self.live, self.now, self.timeout, self.trace = live, now, timeout, trace
        self.token = SessionToken(session_max_keys) if level is Level.SESSION else None
        self.floors: dict[str, Version] = {}  # the newest version this client wrote or read
        self.seen: dict[str, tuple[Version, str | None]] = {}  # strong: last (version, value)
        self.violations: list[str] = []
        self.seq = 0

    async def run(self, count: int, pause: tuple[float, float]) -> None:
        for _ in range(count):
            await asyncio.sleep(self.rng.uniform(*pause))
            await self.one()

    async def one(self) -> None:
        nodes = self.live()
        if not nodes:
            return
        name, node, ctx = self.rng.choice(nodes)
        key = self.rng.choice(KEYS[self.level])
        r = self.rng.random()
        kind = "read" if r < 0.35 else ("delete" if r < 0.42 else "write")
        if self.level is Level.STRONG and r > 0.7:
            kind = "cas"  # strong keys also take conditional writes (one Paxos round each)
        await self.do(name, node, ctx, kind, key)

    async def do(self, name: str, node: Node, ctx: contextvars.Context, kind: str,
                 key: str) -> None:
        """One operation `kind` on `key` through `node` (named `name`), recorded and checked."""
        self.seq += 1
        value = None if kind not in ("write", "cas") else f"c{self.cid}-{self.seq}"
        op = Op(self.cid, self.level, kind, key, value, self.now(), name)
        cond = Condition()
        if kind == "cas":  # If-Match the version last seen, or If-None-Match: * if none live
            last = self.seen.get(key)
            op.expect = None if last is None else last[1]
            cond = (Condition(if_none_match=True) if last is None or last[1] is None
                    else Condition(if_match=last[0]))
        self.history.ops.append(op)
        token = self.token
        # The token crosses the wire as the header does; what the call saw is merged after it.
        call_token = None if token is None else SessionToken.decode(token.encode(), token.max_keys)
        # The request runs as a task of the node (as a handler in its process would): a crash
        # of the node cancels it, and the client sees the connection drop.
        loop = asyncio.get_running_loop()
        got: Got | None = None
        try:
            if kind == "read":
                task = loop.create_task(node.coordinator.read(NS, key, self.level, call_token),
                                        context=ctx)
                task.add_done_callback(_consume)
                got = await asyncio.wait_for(asyncio.shield(task), self.timeout)
                rec = got.record
                op.value, op.version = content_of(rec), None if rec is None else rec.version
            else:
                body = None if value is None else WriteBody(value, (), {}, None, None)
                write = (node.coordinator.conditional(NS, WriteOp(key, body), cond, None, None)
                         if cond else self._write(node, key, body, call_token))
                wtask = loop.create_task(write, context=ctx)
                wtask.add_done_callback(_consume)
                item = await asyncio.wait_for(asyncio.shield(wtask), self.timeout)
                if item.error is not None:
                    raise item.error
                assert item.result is not None
                op.version = item.result.record.version
            op.ok = True
        except (SpineError, TimeoutError, asyncio.CancelledError) as e:
            if isinstance(e, asyncio.CancelledError) and not self._node_died(name):
                raise  # this client is being stopped
            op.error = type(e).__name__ if not isinstance(e, SpineError) else e.code
            # A read that failed changed nothing, nor did a cas whose condition failed; a write
            # may have applied anyway.
            op.ok = False if kind == "read" or op.error == "precondition_failed" else None
        op.end = self.now()
        if token is not None and call_token is not None and op.ok:
            # The reply's token as the HTTP layer makes it (the request's, less what this node
            # knows settled, plus what the call saw), merged as spine.client merges it.
            node.replicator.settlement.prune(call_token)
            if got is not None:
                got.merge_into(call_token, f"{NS}/{key}")
            elif op.version is not None:
                call_token.observe(f"{NS}/{key}", op.version)
            token.merge(call_token)
        if op.ok:
            self.check_session(op)
            if self.level is Level.STRONG and op.version is not None:
                self.seen[key] = (op.version, op.value)
            elif self.level is Level.STRONG and op.kind == "read":
                self.seen.pop(key, None)
        self.trace(f"c{self.cid} {op.kind} {key}={op.value} via {name} -> "
                   f"{'ok' if op.ok else op.error} {op.version}")

    async def _write(self, node: Node, key: str, body: WriteBody | None,
                     token: SessionToken | None) -> ItemResult:
        items = await node.coordinator.write(NS, [WriteOp(key, body)], self.level, token, None)
        return items[0]

    def _node_died(self, name: str) -> bool:
        return all(n != name for n, _, _ in self.live())

    def check_session(self, op: Op) -> None:
        """Read-your-writes and monotonic reads: a session read is never older than anything
        this client wrote or read on that key."""
        if self.level is not Level.SESSION:
            return
        floor = self.floors.get(op.key)
        if op.kind == "read" and floor is not None and (op.version is None or op.version < floor):
            self.violations.append(
                f"c{self.cid} read {op.key} at t={op.invoke:.4f} via {op.node}: got {op.version},"
                f" older than {floor} it wrote or read before")
        if op.version is not None and (floor is None or op.version > floor):
            self.floors[op.key] = op.version
