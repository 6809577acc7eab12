"""CAS register: strong reads and writes, compare-and-set through ``If-Match``, creates through
``If-None-Match: *``, on a few keys; checked per key for linearizability.

Each key is a register of unique integers (``content = str(value)``; 404 is ``None``). The
operations map onto the cas-register model of :mod:`jepsen_style.checker.linearizability`:

- ``read``: ``GET`` at ``strong``, the value read;
- ``write``: ``PUT`` at ``strong``, the value written;
- ``cas``: ``PUT`` with ``If-Match: "<version>"`` is ``cas(from -> to)``, ``from`` being the value
  of the version named (every write writes a value no other write used, so a version and its
  value stand for each other); ``PUT`` with ``If-None-Match: *`` is ``cas(None -> to)``.

The version named is the last one this workload saw for the key, from any reply (the body's
``version`` is the ``ETag``'s content); with none known, the process reads first. A 412
``precondition_failed`` is a definite failed cas: the compare ran and the register did not hold
``from``, which the checker keeps as an observation. A 503 is unknown unless the error says
nothing was applied (:func:`nothing_applied`); a 504 or no answer is unknown; a request never
sent or any other definite rejection changes nothing and is removed. Each unknown write or cas
may land at any later time, which the search must try at every point: a partition that leaves
dozens of them on one key is what exhausts its budget, hence the definite 503s.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from jepsen_style.workloads.common import (
    CORRUPT,
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
    read_outcome,
    write_outcome,
)
from jepsen_style.workloads.register import check_register

#: The completion error of a cas whose compare ran and did not match (the checker keeps these).
MISMATCH = "mismatch"

#: What this workload knows of a key: its last seen ``(version, value)``, ``ABSENT`` (a read
#: found nothing), or nothing (absent from the dict).
ABSENT = ("", None)


def nothing_applied(reply: Reply) -> bool:
    """A 503 whose error says the change was applied nowhere: ``"applied": false``, or (until
    the servers send that field) the message of a consensus round that had no quorum to take
    part, ``"…; nothing was applied"`` (spine/cluster/paxos.py says a 503 only then; a change
    it sent for acceptance and could not see through is a 504)."""
    if reply.status != 503 or not isinstance(reply.body, dict):
        return False
    err = reply.body.get("error")
    if not isinstance(err, dict) or err.get("code") != "quorum_unavailable":
        return False
    if "applied" in err:
        return err["applied"] is False
    return "nothing was applied" in str(err.get("message", ""))


def paxos_write_outcome(reply: Reply) -> tuple[str, str | None]:
    """ok / fail / info for a write that runs as a consensus round (strong or conditional):
    :func:`~jepsen_style.workloads.common.write_outcome`, except that a 503 whose error says
    nothing was applied is a definite fail."""
    if nothing_applied(reply):
        return "fail", reply.code
    return write_outcome(reply)


def cas_outcome(reply: Reply) -> tuple[str, str | None]:
    """:func:`paxos_write_outcome` for a conditional PUT; a fail with :data:`MISMATCH` is a
    compare that ran and did not match (412)."""
    if reply.status == 412 and reply.code == "precondition_failed":
        return "fail", MISMATCH
    return paxos_write_outcome(reply)


def _value_of(reply: Reply) -> tuple[str, int] | None:
    """``(version, value)`` from a record body, None when the body is not one."""
    body = reply.body
    if not isinstance(body, dict):
        return None
    try:
        return str(body["version"]), int(body["content"])
    except (KeyError, TypeError, ValueError):
        return None


class CasRegister:
    """Options: ``keys`` (keys in use at once, 3), ``ops_per_key`` (a key is retired for a fresh
    one after this many operations, 100: keeps each key's search small, and fresh keys exercise
    creates), ``read_fraction`` (0.3), ``write_fraction`` (0.15; the rest are cas),
    ``create_fraction`` (share of cas sent as ``If-None-Match: *`` although the key is known to
    exist, 0.05), ``delay`` (0.02 s), ``budget`` (checker steps per key, 1,000,000),
    ``timeout`` (3 s)."""

    name = "cas-register"
    default_level = "strong"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.level = ctx.level or self.default_level
        self.ns = namespace_for("jepsen-cas", ctx, self.name)
        count = max(1, int(option(ctx, self.name, "keys", 3)))
        self.keys = [f"c{i}" for i in range(count)]
        self.used = list(self.keys)
        self.ops_per_key = int(option(ctx, self.name, "ops_per_key", 100))
        self._ops: dict[str, int] = {}
        self._next_key = itertools.count(count)
        self.read_fraction = float(option(ctx, self.name, "read_fraction", 0.3))
        self.write_fraction = float(option(ctx, self.name, "write_fraction", 0.15))
        self.create_fraction = float(option(ctx, self.name, "create_fraction", 0.05))
        # How often a client goes to its own node rather than a random one: a key's next change
        # from the node that led its last round is a warm round (no prepare on the network),
        # and this keeps those in the history beside full rounds and their races.
        self.sticky_fraction = float(option(ctx, self.name, "sticky_fraction", 0.5))
        self._values = itertools.count(1)
        self.seen: dict[str, tuple[str, int | None]] = {}

    def pick_key(self) -> str:
        """A random key in use; one that reaches ``ops_per_key`` is replaced by a fresh one."""
        i = self.ctx.rng.randrange(len(self.keys))
        key = self.keys[i]
        self._ops[key] = self._ops.get(key, 0) + 1
        if self.ops_per_key > 0 and self._ops[key] >= self.ops_per_key:
            self.keys[i] = f"c{next(self._next_key)}"
            self.used.append(self.keys[i])
        return key

    async def client(self, process: int, stop: asyncio.Event) -> None:
        """Random reads, writes and cas of random keys, through this client's own node or a
        random one (`sticky_fraction`), until ``stop``."""
        rng = self.ctx.rng
        nodes = list(self.ctx.nodes)
        home = nodes[process % len(nodes)]
        async with http_client(self.ctx, self.name) as http:
            while not stop.is_set():
                key = self.pick_key()
                node = home if rng.random() < self.sticky_fraction else rng.choice(nodes)
                r = rng.random()
                if r < self.read_fraction:
                    await self.read(http, process, node, key)
                elif r < self.read_fraction + self.write_fraction:
                    await self.write(http, process, node, key, next(self._values))
                else:
                    if key not in self.seen:
                        await self.read(http, process, node, key)
                        node = home if rng.random() < self.sticky_fraction else rng.choice(nodes)
                    known = self.seen.get(key)
                    if known is not None:
                        create = known == ABSENT or rng.random() < self.create_fraction
                        await self.cas(http, process, node, key, None if create else known,
                                       next(self._values))
                await pause(stop, op_delay(self.ctx, self.name, 0.02))

    async def read(self, http: Http, process: int, node: str, key: str) -> str:
        """GET the key at strong: its content as an int, or None for a 404."""
        h = self.ctx.history.invoke(process, "read", key, None, node)
        reply = await http.call(node, "GET", memory_path(self.ns, key),
                                headers=headers(self.level))
        kind, error = read_outcome(reply)
        value: int | None = None
        if kind == "ok" and reply.ok:
            got = _value_of(reply)
            if got is None:
                kind, error = "fail", f"{CORRUPT}: {reply.body!r:.200}"
            else:
                self.seen[key] = got
                value = got[1]
        elif kind == "ok":
            self.seen[key] = ABSENT
        self.ctx.history.complete(h, kind, value=value, error=error)
        return kind

    async def write(self, http: Http, process: int, node: str, key: str, value: int) -> None:
        """PUT ``content = str(value)`` at strong."""
        h = self.ctx.history.invoke(process, "write", key, value, node)
        reply = await http.call(node, "PUT", memory_path(self.ns, key),
                                json={"content": str(value)}, headers=headers(self.level))
        kind, error = paxos_write_outcome(reply)
        if kind == "ok" and (got := _value_of(reply)) is not None:
            self.seen[key] = got
        self.ctx.history.complete(h, kind, error=error)

    async def cas(self, http: Http, process: int, node: str, key: str,
                  expect: tuple[str, int | None] | None, value: int) -> None:
        """PUT ``value`` if the key holds ``expect`` (``(version, value)``; None: create only)."""
        hdrs = headers(self.level)
        if expect is None:
            hdrs["If-None-Match"] = "*"
            old: int | None = None
        else:
            hdrs["If-Match"] = f'"{expect[0]}"'
            old = expect[1]
        h = self.ctx.history.invoke(process, "cas", key, [old, value], node)
        reply = await http.call(node, "PUT", memory_path(self.ns, key),
                                json={"content": str(value)}, headers=hdrs)
        kind, error = cas_outcome(reply)
        if kind == "ok" and (got := _value_of(reply)) is not None:
            self.seen[key] = got
        elif error == MISMATCH:
            self.seen.pop(key, None)  # stale: read before the next cas of this key
        self.ctx.history.complete(h, kind, error=error)

    async def final(self) -> None:
        """After healing, one strong read of every key used (checked with the rest)."""
        async with http_client(self.ctx, self.name) as http:
            for i, key in enumerate(self.used):
                for attempt in range(3):
                    node = self.ctx.rng.choice(list(self.ctx.nodes))
                    if await self.read(http, FINAL_PROCESS + i, node, key) == "ok":
                        break
                    await asyncio.sleep(0.5 * (attempt + 1))

    def check(self) -> dict[str, Any]:
        """Per-key linearizability of the reads, writes and cas (``"unknown"`` past budget)."""
        return check_register(self.ctx.history.events,
                              budget=int(option(self.ctx, self.name, "budget", 1_000_000)))
