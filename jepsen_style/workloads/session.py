"""Session: read-your-writes and monotonic reads for clients that carry their token.

Each client process carries its own ``Spine-Session`` token across requests to random nodes
(a non-sticky load balancer) at level ``session``. It writes its own keys (values from a counter
that only grows, so on each key a larger value is a later write), reads its own keys, and reads
other clients' keys. The README promises, for a client that carries its token: read-your-writes
and monotonic reads, and "if no reachable replica is new enough, ``503 session_unavailable``,
never a stale answer". So:

- a **read-your-writes violation** is a read by a process, after one of its own writes to that key
  was acknowledged, returning an older value or 404;
- a **monotonic-read violation** is a read by a process returning an older value (or 404) than an
  earlier read by the same process of the same key returned;
- a **phantom read** returns a value no one ever wrote, or whose write was definitely rejected;
- a **monotonic-write violation** (Terry et al. 1994) is a read that returns, after the process
  wrote or saw a newer value, an older value whose write ended with an unknown outcome (a
  timeout, a 503): that write took effect *after* the session's later, acknowledged writes.
  Jepsen's unknown-outcome rule lets such a write land at any time, so this is not counted as a
  stale read; but it reorders one session's writes. Seen when a node paused with the request in
  its socket buffer resumes after the client gave up and wrote again elsewhere: the node stamps
  the old request's version when it finally runs it. Each write carries the process's number for
  it (``Spine-Write-Seq: p<process>:<value>``), with which Spine promises monotonic writes
  (DESIGN §4), so these make the history invalid unless the option ``monotonic_writes`` is set
  false (then they are only reported);
- ``503 session_unavailable`` is the promised refusal: counted, not a violation.

Each key has one writer and no deletes, so "older" is plain integer order on the values.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from jepsen_style.workloads.common import (
    CORRUPT,
    Context,
    Http,
    corrupt_reads,
    errors_of,
    headers,
    http_client,
    memory_path,
    namespace_for,
    op_delay,
    option,
    pairs,
    pause,
    read_outcome,
    tally,
    write_outcome,
)

_SHOWN = 10
WRITE_SEQ_HEADER = "Spine-Write-Seq"


class SessionWorkload:
    """Options: ``keys_per_client`` (2), ``write_fraction`` (0.4), ``own_read_fraction`` (0.3;
    the rest read other clients' keys), ``delay`` (0.01 s), ``timeout`` (3 s),
    ``monotonic_writes`` (true; false: reordered writes are reported, not a violation)."""

    name = "session"
    default_level = "session"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.level = ctx.level or self.default_level
        self.ns = namespace_for("jepsen-session", ctx, self.name)
        self.per_client = max(1, int(option(ctx, "session", "keys_per_client", 2)))
        self.write_fraction = float(option(ctx, "session", "write_fraction", 0.4))
        self.own_read_fraction = float(option(ctx, "session", "own_read_fraction", 0.3))
        self.tokens: dict[int, str | None] = {}
        self.owned: dict[int, list[str]] = {}
        self._counters: dict[int, int] = {}
        self._written: set[str] = set()  # keys with at least one acknowledged write

    async def client(self, process: int, stop: asyncio.Event) -> None:
        """Writes and reads of its own keys, reads of other clients' keys, with one token."""
        rng = self.ctx.rng
        mine = [f"p{process}-k{j}" for j in range(self.per_client)]
        self.owned[process] = mine
        self.tokens.setdefault(process, None)
        async with http_client(self.ctx, self.name) as http:
            while not stop.is_set():
                node = rng.choice(list(self.ctx.nodes))
                x = rng.random()
                others = sorted(k for k in self._written if k not in mine)
                if x < self.write_fraction:
                    await self.write(http, process, node, rng.choice(mine))
                elif x < self.write_fraction + self.own_read_fraction or not others:
                    await self.read(http, process, node, rng.choice(mine))
                else:
                    await self.read(http, process, node, rng.choice(others))
                await pause(stop, op_delay(self.ctx, self.name, 0.01))

    async def write(self, http: Http, process: int, node: str, key: str) -> None:
        """PUT the process's next counter value, carrying and updating its token."""
        value = self._counters.get(process, 0) + 1
        self._counters[process] = value
        h = self.ctx.history.invoke(process, "write", key, value, node)
        reply = await http.call(node, "PUT", memory_path(self.ns, key),
                                json={"content": str(value)},
                                headers={**headers(self.level, self.tokens.get(process)),
                                         WRITE_SEQ_HEADER: f"p{process}:{value}"})
        kind, error = write_outcome(reply)
        if kind == "ok":
            self._written.add(key)
            if reply.session:
                self.tokens[process] = reply.session
        self.ctx.history.complete(h, kind, error=error)

    async def read(self, http: Http, process: int, node: str, key: str) -> str:
        """GET with the token; an answer (200 or 404) updates the token. Returns the outcome."""
        h = self.ctx.history.invoke(process, "read", key, None, node)
        reply = await http.call(node, "GET", memory_path(self.ns, key),
                                headers=headers(self.level, self.tokens.get(process)))
        kind, error = read_outcome(reply)
        value: int | None = None
        if kind == "ok":
            if reply.ok:
                try:
                    value = int(reply.body["content"])
                except (KeyError, TypeError, ValueError):
                    kind, error = "fail", f"{CORRUPT}: {reply.body!r:.200}"
            if kind == "ok" and reply.session:
                self.tokens[process] = reply.session
        self.ctx.history.complete(h, kind, value=value, error=error)
        return kind

    async def final(self) -> None:
        """After healing, each process reads its own keys once more with its token."""
        async with http_client(self.ctx, self.name) as http:
            for process, keys in sorted(self.owned.items()):
                for key in keys:
                    for attempt in range(3):
                        node = self.ctx.rng.choice(list(self.ctx.nodes))
                        if await self.read(http, process, node, key) == "ok":
                            break
                        await asyncio.sleep(0.5 * (attempt + 1))

    def check(self) -> dict[str, Any]:
        """Read-your-writes and monotonic-read violations (see the module)."""
        return check_session(self.ctx.history.events, self.level,
                             bool(option(self.ctx, "session", "monotonic_writes", True)))


def check_session(
    events: Iterable[Mapping[str, Any]], level: str | None = None, monotonic_writes: bool = True
) -> dict[str, Any]:
    """The session checker on a list of events (``read`` and ``write``). ``monotonic_writes``:
    whether reordered writes (see the module) make the history invalid."""
    ops = [p for p in pairs(events) if p.f in ("read", "write")]
    outcome: dict[str, dict[int, str]] = {}  # key -> value -> how its write ended
    writer: dict[str, int] = {}
    for p in ops:
        if p.f == "write":
            outcome.setdefault(str(p.key), {})[int(p.value)] = p.outcome
            writer.setdefault(str(p.key), p.process)
    acked: dict[tuple[int, str], int] = {}  # (process, key) -> newest value it wrote, acked
    seen: dict[tuple[int, str], int] = {}  # (process, key) -> newest value it read (-1: 404)
    ryw: list[dict[str, Any]] = []
    mono: list[dict[str, Any]] = []
    phantom: list[dict[str, Any]] = []
    reordered: list[dict[str, Any]] = []
    own_reads = other_reads = reads_ok = unavailable = 0
    for p in ops:  # invocation order; each process runs one op at a time
        key = str(p.key)
        slot = (p.process, key)
        if p.f == "write":
            if p.outcome == "ok":
                acked[slot] = max(acked.get(slot, -1), int(p.value))
            continue
        if p.outcome != "ok":
            unavailable += p.error == "session_unavailable"
            continue
        reads_ok += 1
        if writer.get(key) == p.process:
            own_reads += 1
        else:
            other_reads += 1
        got = -1 if p.result is None else int(p.result)
        where = {"process": p.process, "key": key, "read": p.result, "time": p.t0}
        how = outcome.get(key, {}).get(got) if got >= 0 else None
        if got >= 0 and how in (None, "fail"):  # never written, or definitely rejected
            phantom.append({**where, "write": how or "never attempted"})
        floor = max(acked.get(slot, -1), seen.get(slot, -1))
        if got < floor and how == "info":
            # An earlier write of unknown outcome took effect after a later one: the session's
            # writes were applied out of order (monotonic writes), not a stale replica answer.
            reordered.append({**where, "own_acked_write": acked.get(slot),
                              "earlier_read": seen.get(slot)})
        else:
            if got < acked.get(slot, -1):
                ryw.append({**where, "own_acked_write": acked[slot]})
            if got < seen.get(slot, -1):
                earlier = seen[slot]
                mono.append({**where, "earlier_read": None if earlier < 0 else earlier})
        seen[slot] = max(seen.get(slot, -1), got)

    corrupt = corrupt_reads(ops)
    if ryw or mono or phantom or corrupt or (reordered and monotonic_writes):
        valid: bool | str = False
    elif reads_ok == 0:
        valid = "unknown"
    else:
        valid = True
    summary = (f"{len(ryw)} read-your-writes, {len(mono)} monotonic-read,"
               f" {len(reordered)} monotonic-write violations and {len(phantom)} phantom reads"
               f" in {reads_ok} reads; {unavailable} session_unavailable refusals")
    if corrupt:
        summary += f"; {len(corrupt)} reads returned a body no write produced"
    return {
        "valid": valid,
        "summary": summary,
        "level": level,
        "reads_ok": reads_ok,
        "own_reads": own_reads,
        "other_reads": other_reads,
        "ryw_violations": len(ryw),
        "ryw_examples": ryw[:_SHOWN],
        "monotonic_violations": len(mono),
        "monotonic_examples": mono[:_SHOWN],
        "monotonic_write_violations": len(reordered),
        "monotonic_writes_required": monotonic_writes,
        "monotonic_write_incidents": len({(r["process"], r["key"], r["read"])
                                          for r in reordered}),
        "monotonic_write_examples": reordered[:_SHOWN],
        "corrupt_reads": len(corrupt),
        "corrupt_examples": corrupt[:_SHOWN],
        "phantom_reads": len(phantom),
        "phantom_examples": phantom[:_SHOWN],
        "session_unavailable": unavailable,
        "counts": tally(ops),
        "errors": errors_of(ops),
    }
