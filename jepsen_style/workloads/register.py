"""Register: a handful of keys read and written at ``strong``, checked for linearizability.

Each key is a register holding a small integer (``content = str(value)``; a 404 reads as
``None``, the initial register). Every write writes a value no other write used, so a read names
the write it observed. The history is checked per key with Wing–Gong–Lowe
(:mod:`jepsen_style.checker`), which is what the README promises for ``strong``: "linearizable
per key". Writes of unknown outcome (503, timeouts) may take effect at any later time or never;
those whose value no read returned are removed before the search (see
:func:`drop_unobserved_writes`).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from jepsen_style.checker import Op, Verdict, check, ops_from_events
from jepsen_style.workloads.common import (
    CORRUPT,
    FINAL_PROCESS,
    Context,
    Http,
    corrupt_reads,
    headers,
    http_client,
    memory_path,
    namespace_for,
    op_delay,
    option,
    pairs,
    pause,
    read_outcome,
    write_outcome,
)

#: How many failing operations the result lists beside the message.
_SHOWN = 10


class Register:
    """Options: ``keys`` (keys in use at once, 5), ``ops_per_key`` (a key is retired for a fresh
    one after this many operations, so each key's search stays small, as Jepsen's independent
    keys do; 300, 0 for never), ``read_fraction`` (0.5), ``delay`` (0.02 s between a process's
    operations), ``budget`` (checker steps per key, 1,000,000), ``timeout`` (3 s)."""

    name = "register"
    default_level = "strong"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.level = ctx.level or self.default_level
        self.ns = namespace_for("jepsen-register", ctx, self.name)
        count = max(1, int(option(ctx, "register", "keys", 5)))
        self.keys = [f"r{i}" for i in range(count)]  # in use now
        self.used = list(self.keys)  # every key ever used
        self.ops_per_key = int(option(ctx, "register", "ops_per_key", 300))
        self._ops: dict[str, int] = {}
        self._next_key = itertools.count(count)
        self.read_fraction = float(option(ctx, "register", "read_fraction", 0.5))
        self._values = itertools.count(1)

    async def client(self, process: int, stop: asyncio.Event) -> None:
        """Random reads and writes of random keys through random nodes until ``stop``."""
        rng = self.ctx.rng
        async with http_client(self.ctx, self.name) as http:
            while not stop.is_set():
                key = self.pick_key()
                node = rng.choice(list(self.ctx.nodes))
                if rng.random() < self.read_fraction:
                    await self.read(http, process, node, key)
                else:
                    await self.write(http, process, node, key, next(self._values))
                await pause(stop, op_delay(self.ctx, self.name, 0.02))

    def pick_key(self) -> str:
        """A random key in use; one that reaches ``ops_per_key`` is replaced by a fresh one."""
        i = self.ctx.rng.randrange(len(self.keys))
        key = self.keys[i]
        self._ops[key] = self._ops.get(key, 0) + 1
        if self.ops_per_key > 0 and self._ops[key] >= self.ops_per_key:
            self.keys[i] = f"r{next(self._next_key)}"
            self.used.append(self.keys[i])
        return key

    async def read(self, http: Http, process: int, node: str, key: str) -> str:
        """GET the key: its content as an int, or None for a 404."""
        h = self.ctx.history.invoke(process, "read", key, None, node)
        reply = await http.call(node, "GET", memory_path(self.ns, key),
                                headers=headers(self.level))
        kind, error = read_outcome(reply)
        value: int | None = None
        if kind == "ok" and reply.ok:
            try:
                value = int(reply.body["content"])
            except (KeyError, TypeError, ValueError):
                kind, error = "fail", f"{CORRUPT}: {reply.body!r:.200}"
        self.ctx.history.complete(h, kind, value=value, error=error)
        return kind

    async def write(self, http: Http, process: int, node: str, key: str, value: int) -> None:
        """PUT ``content = str(value)``."""
        h = self.ctx.history.invoke(process, "write", key, value, node)
        reply = await http.call(node, "PUT", memory_path(self.ns, key),
                                json={"content": str(value)}, headers=headers(self.level))
        kind, error = write_outcome(reply)
        self.ctx.history.complete(h, kind, error=error)

    async def final(self) -> None:
        """After healing, one more read of every key used (also checked for linearizability)."""
        async with http_client(self.ctx, self.name) as http:
            for i, key in enumerate(self.used):
                for attempt in range(3):
                    node = self.ctx.rng.choice(list(self.ctx.nodes))
                    if await self.read(http, FINAL_PROCESS + i, node, key) == "ok":
                        break
                    await asyncio.sleep(0.5 * (attempt + 1))

    def check(self) -> dict[str, Any]:
        """``valid`` from the linearizability verdict (``"unknown"`` when the budget ran out)."""
        return check_register(self.ctx.history.events,
                              budget=int(option(self.ctx, "register", "budget", 1_000_000)))


def drop_unobserved_writes(ops: list[Op]) -> tuple[list[Op], int]:
    """Remove writes of unknown outcome whose value no read returned, on keys without cas.

    Sound and complete for a read/write register with unique written values: such a write may be
    taken to have never happened (an unknown outcome allows that), and no linearization needs it,
    since any read after it would have to return its value. Each one left in doubles the search
    space (it may be linearized at any point, or never), which is what exhausts the budget when a
    partition leaves dozens of writes indeterminate.
    """
    seen: dict[str, set[Any]] = {}
    has_cas: set[str] = set()
    for op in ops:
        if op.f == "read":
            seen.setdefault(op.key, set()).add(op.value)
        elif op.f == "cas":
            has_cas.add(op.key)
    kept = [op for op in ops
            if not (op.f == "write" and op.outcome == "info" and op.key not in has_cas
                    and op.value not in seen.get(op.key, set()))]
    return kept, len(ops) - len(kept)


def check_register(events: Any, budget: int = 1_000_000) -> dict[str, Any]:
    """The register checker on a list of events (only read / write / cas events count)."""
    mine = [e for e in events if e.get("f") in ("read", "write", "cas")]
    counts: dict[str, dict[str, int]] = {}
    pending: dict[int, str] = {}
    for e in mine:
        if e["type"] == "invoke":
            pending[int(e["process"])] = e["f"]
        else:
            f = pending.pop(int(e["process"]), e["f"])
            row = counts.setdefault(f, {"ok": 0, "fail": 0, "info": 0})
            row[e["type"]] += 1
    ops, dropped = drop_unobserved_writes(ops_from_events(mine))
    result = check(ops, budget=budget)
    corrupt = corrupt_reads(pairs(mine))
    valid: bool | str = ("unknown" if result.verdict is Verdict.UNKNOWN
                         else result.verdict is Verdict.LINEARIZABLE)
    if corrupt:
        valid = False
    out: dict[str, Any] = {
        "valid": valid,
        "summary": f"{result.verdict} ({len(result.keys)} keys, {len(ops)} ops)",
        "verdict": str(result.verdict),
        "keys": len(result.keys),
        "ops": len(ops),
        "unobserved_info_writes_dropped": dropped,
        "counts": counts,
        "failing_keys": result.failing_keys,
        "unknown_keys": result.unknown_keys,
        "corrupt_reads": len(corrupt),
        "corrupt_examples": corrupt[:_SHOWN],
        "steps": {k: r.steps for k, r in result.keys.items()},
    }
    if result.failing_keys:
        bad = result.keys[result.failing_keys[0]]
        out["first_bad_key"] = bad.key
        out["explanation"] = bad.message
        out["summary"] = bad.message
        out["ops_involved"] = [op.describe() for op in bad.explanation[:_SHOWN]]
    elif corrupt:
        out["summary"] = f"{len(corrupt)} reads returned a body no write produced"
    elif result.unknown_keys:
        bad = result.keys[result.unknown_keys[0]]
        out["first_unknown_key"] = bad.key
        out["explanation"] = bad.message
        out["summary"] = f"key {bad.key!r}: {bad.message}"
    return out
