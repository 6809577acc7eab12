"""Set: unique adds at one level, then, after healing, is every acknowledged add still there?

Jepsen's set-full, on Spine: each ``add`` writes a new key (``content`` = the key) at the run's
level (``session`` unless told otherwise; run it with ``eventual`` too). Clients also read
recently added keys through random nodes at the same level, which times how long an add takes to
become visible. After the harness heals every fault, ``final()`` waits (bounded) for every
shard's replicas to report one anti-entropy root, then reads every key ever attempted
(acknowledged or not) once at ``strong`` and lists the namespace.

- **lost**: an acknowledged add the final strong read does not return (the README: "Every
  acknowledged write at session or strong level is on at least W replicas' disks … and
  survives"; at ``eventual`` "every replica converges", so once the replicas agree an
  acknowledged add must be visible at every level). The list reads every replica, so it can
  show a key that only a minority of replicas hold: such a key still counts as lost (no quorum
  read returns it) and is reported under ``final.listed_but_read_absent``. The list decides
  only for a key whose strong read never answered.
- **unexpected**: a key present that was never attempted, or whose add definitely failed.
- **recovered**: an add of unknown outcome (503, timeout) that is present at the end (allowed).

**Visibility** (``visibility_s``): for each acknowledged add, from its acknowledgement to the
completion of the first read that saw it (an upper bound: reads probe the newest unseen adds
again and again, so it includes up to one probe interval), with ``lower_bound`` the latest read
invoked after the ack that still missed it, and ``seen_by_first_read`` how many no read missed.

Also reported, not counted against validity: *stale reads* (a read invoked after the add was
acknowledged that did not see it: allowed at ``eventual``, which promises nothing about recent
writes, but not at ``session`` without a token, which reads a quorum) and *flickers* (a read that
missed a key an earlier read had already seen).
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from jepsen_style.workloads.common import (
    CORRUPT,
    FINAL_PROCESS,
    Context,
    Http,
    Pair,
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
    quantiles,
    read_outcome,
    tally,
    wait_roots,
    write_outcome,
)

#: How many example keys each list in the result shows.
_SHOWN = 20


class SetWorkload:
    """Options: ``read_fraction`` (0.5), ``delay`` (0.01 s), ``probe_window`` (reads pick
    among the newest this many adds not seen yet, 10), ``tracked`` (adds kept for visibility
    reads, 500), ``final_concurrency`` (16), ``final_attempts`` (5), ``converge_deadline`` (seconds
    to wait for the replicas' roots to agree before the final reads, 60), ``timeout`` (3 s)."""

    name = "set"
    default_level = "session"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.level = ctx.level or self.default_level
        self.ns = namespace_for("jepsen-set", ctx, self.name)
        self.read_fraction = float(option(ctx, "set", "read_fraction", 0.5))
        self.tracked = int(option(ctx, "set", "tracked", 500))
        self.window = max(1, int(option(ctx, "set", "probe_window", 10)))
        self._ids = itertools.count()
        # Adds that returned (ok or info) and that no read has seen yet, oldest first.
        self._unseen: dict[str, None] = {}
        # Keys some read has seen: re-read now and then to catch one disappearing.
        self._seen: deque[str] = deque(maxlen=200)

    # ------------------------------------------------------------------ the run

    async def client(self, process: int, stop: asyncio.Event) -> None:
        """Adds, and reads of recent adds, until ``stop``: mostly one of the newest adds no read
        has seen yet (so each is probed again and again until it shows), sometimes one already
        seen (to catch one disappearing)."""
        rng = self.ctx.rng
        async with http_client(self.ctx, self.name) as http:
            while not stop.is_set():
                node = rng.choice(list(self.ctx.nodes))
                if (self._unseen or self._seen) and rng.random() < self.read_fraction:
                    if self._unseen and (not self._seen or rng.random() < 0.8):
                        key = rng.choice(list(self._unseen)[-self.window:])
                    else:
                        key = rng.choice(list(self._seen))
                    found = await self.read(http, process, node, key, "read", self.level)
                    if found and key in self._unseen:
                        del self._unseen[key]
                        self._seen.append(key)
                else:
                    await self.add(http, process, node)
                await pause(stop, op_delay(self.ctx, self.name, 0.01))

    async def add(self, http: Http, process: int, node: str) -> None:
        """PUT a new key whose content is the key."""
        key = f"e{next(self._ids)}"
        h = self.ctx.history.invoke(process, "add", key, key, node)
        reply = await http.call(node, "PUT", memory_path(self.ns, key),
                                json={"content": key}, headers=headers(self.level))
        kind, error = write_outcome(reply)
        self.ctx.history.complete(h, kind, error=error)
        if kind != "fail":
            self._unseen[key] = None
            while len(self._unseen) > self.tracked:
                del self._unseen[next(iter(self._unseen))]

    async def read(
        self, http: Http, process: int, node: str, key: str, f: str, level: str
    ) -> bool | None:
        """GET one key: True present, False absent (404), None when the read failed."""
        h = self.ctx.history.invoke(process, f, key, None, node)
        reply = await http.call(node, "GET", memory_path(self.ns, key), headers=headers(level))
        kind, error = read_outcome(reply)
        found: bool | None = None
        if kind == "ok":
            found = reply.ok
            if found and not (isinstance(reply.body, dict) and reply.body.get("content") == key):
                kind, error, found = "fail", f"{CORRUPT}: {reply.body!r:.200}", None
        self.ctx.history.complete(h, kind, value=found, error=error)
        return found

    # ------------------------------------------------------------------ after healing

    async def final(self) -> None:
        """Wait for the replicas to agree, read every key ever attempted at ``strong`` (trying
        other nodes only when a read gets no answer), then list the namespace."""
        keys = sorted({str(e["key"]) for e in self.ctx.history.events
                       if e.get("f") == "add" and e["type"] == "invoke"},
                      key=lambda k: (len(k), k))
        conc = max(1, int(option(self.ctx, "set", "final_concurrency", 16)))
        attempts = max(1, int(option(self.ctx, "set", "final_attempts", 5)))

        async def worker(w: int, http: Http) -> None:
            for key in keys[w::conc]:
                for attempt in range(attempts):
                    node = self.ctx.rng.choice(list(self.ctx.nodes))
                    got = await self.read(http, FINAL_PROCESS + w, node, key, "final-read",
                                          "strong")
                    if got is not None:
                        break
                    await asyncio.sleep(0.2 * (attempt + 1))

        async with http_client(self.ctx, self.name) as http:
            await wait_roots(self.ctx, http, FINAL_PROCESS + conc + 1,
                             float(option(self.ctx, "set", "converge_deadline", 60.0)))
            await asyncio.gather(*(worker(w, http) for w in range(conc)))
            for attempt in range(attempts):
                if await self.list_all(http, FINAL_PROCESS + conc, attempt == attempts - 1):
                    break
                await asyncio.sleep(0.5 * (attempt + 1))

    async def list_all(self, http: Http, process: int, last: bool) -> bool:
        """Page through ``GET …/memories``; recorded as one ``final-list`` op whose value is
        ``{"ids", "partial"}``. False (to retry) when a page failed or was partial."""
        node = self.ctx.rng.choice(list(self.ctx.nodes))
        h = self.ctx.history.invoke(process, "final-list", "*", None, node)
        ids: list[str] = []
        partial = False
        cursor: str | None = None
        while True:
            params = {"limit": "1000"}
            if cursor:
                params["cursor"] = cursor
            reply = await http.call(node, "GET", f"/v1/ns/{self.ns}/memories", params=params)
            if not reply.ok or not isinstance(reply.body, dict):
                self.ctx.history.complete(h, "fail", error=reply.code)
                return False
            ids.extend(str(item["id"]) for item in reply.body.get("items", []))
            partial = partial or bool(reply.body.get("partial"))
            cursor = reply.body.get("next_cursor")
            if not cursor:
                break
        if partial and not last:
            self.ctx.history.complete(h, "fail", error="partial")
            return False
        self.ctx.history.complete(h, "ok", value={"ids": sorted(ids), "partial": partial})
        return True

    def check(self) -> dict[str, Any]:
        """Lost and unexpected adds, recovered ones, and visibility lag (see the module)."""
        return check_set(self.ctx.history.events, self.level)


def _state(final: bool | None, listed: bool) -> str:
    """present / absent / unknown: the final strong read decides; the list only when that read
    never answered."""
    if final is not None:
        return "present" if final else "absent"
    return "present" if listed else "unknown"


def check_set(events: Iterable[Mapping[str, Any]], level: str | None = None) -> dict[str, Any]:
    """The set checker on a list of events (``add``, ``read``, ``final-read``, ``final-list``)."""
    ops = pairs(events)
    adds: dict[str, Pair] = {}
    reads: dict[str, list[Pair]] = {}
    final: dict[str, bool] = {}
    listing: Mapping[str, Any] | None = None
    roots: Mapping[str, Any] | None = None
    for p in ops:
        if p.f == "add":
            adds[str(p.key)] = p
        elif p.f == "read" and p.outcome == "ok":
            reads.setdefault(str(p.key), []).append(p)
        elif p.f == "final-read" and p.outcome == "ok":
            final[str(p.key)] = bool(p.result)
        elif p.f == "final-list" and p.outcome == "ok":
            listing = p.result
        elif p.f == "roots" and p.outcome == "ok":
            roots = p.result
    listed: set[str] = set(listing["ids"]) if listing is not None else set()

    states = {k: _state(final.get(k), k in listed) for k in adds}
    acked = sorted((k for k, p in adds.items() if p.outcome == "ok"), key=_natural)
    lost = [k for k in acked if states[k] == "absent"]
    unresolved = [k for k in acked if states[k] == "unknown"]
    never_attempted = sorted(listed - set(adds), key=_natural)
    failed_present = sorted((k for k, p in adds.items()
                             if p.outcome == "fail" and states[k] == "present"), key=_natural)
    unexpected = never_attempted + failed_present
    indeterminate = [k for k, p in adds.items() if p.outcome == "info"]
    recovered = [k for k in indeterminate if states[k] == "present"]
    # The list and the strong read disagree: read absent but listed, or read present but not
    # in a complete listing.
    listed_not_read = sorted((k for k in adds if final.get(k) is False and k in listed),
                             key=_natural)
    read_not_listed = (sorted((k for k in adds if final.get(k) is True and k not in listed),
                              key=_natural)
                       if listing is not None and not listing.get("partial") else [])

    lags: list[float] = []  # ack → completion of the first read that saw it (upper bound)
    lower: list[float] = []  # ack → the last read invoked before then that missed it
    never_seen: list[str] = []
    stale: list[dict[str, Any]] = []
    flickers: list[dict[str, Any]] = []
    for key in acked:
        add = adds[key]
        saw = [r for r in reads.get(key, []) if r.result]
        # The earliest moment some read had certainly seen it: its completion.
        seen_at = min((r.t1 for r in saw), default=math.inf)
        missed_at = 0.0  # the last moment after the ack a read certainly did not see it
        for r in reads.get(key, []):
            if r.result:
                continue
            if r.t0 > add.t1:
                stale.append({"key": key, "acked_at": add.t1, "read_at": r.t0,
                              "process": r.process})
                if r.t0 < seen_at:
                    missed_at = max(missed_at, r.t0 - add.t1)
            if r.t0 > seen_at:
                flickers.append({"key": key, "seen_by": seen_at, "missed_at": r.t0,
                                 "process": r.process})
        if saw:
            lags.append(max(0.0, seen_at - add.t1))
            lower.append(missed_at)
        else:
            never_seen.append(key)

    corrupt = corrupt_reads(ops)
    if lost or unexpected or corrupt:
        valid: bool | str = False
    elif unresolved or listing is None or not acked:
        valid = "unknown"
    else:
        valid = True
    counts = tally(ops)
    summary = (f"{len(lost)} lost and {len(unexpected)} unexpected of {len(acked)} acknowledged"
               f" adds ({len(recovered)} of {len(indeterminate)} indeterminate recovered")
    summary += f", {len(unresolved)} unresolved)" if unresolved else ")"
    hidden = sum(1 for k in lost if k in listed)
    if hidden:
        summary += f"; {hidden} of the lost are on a minority of replicas only"
    if roots is not None and not roots.get("converged"):
        summary += f"; replicas of {roots.get('diverged_count')} shards never agreed"
    if listing is None:
        summary += "; the final list never succeeded"
    if corrupt:
        summary += f"; {len(corrupt)} reads returned a body no add wrote"
    return {
        "valid": valid,
        "summary": summary,
        "level": level,
        "attempted": len(adds),
        "acknowledged": len(acked),
        "failed": sum(1 for p in adds.values() if p.outcome == "fail"),
        "indeterminate": len(indeterminate),
        "lost_count": len(lost),
        "lost": lost[:_SHOWN],
        "unexpected_count": len(unexpected),
        "unexpected": unexpected[:_SHOWN],
        "unexpected_never_attempted": len(never_attempted),
        "unexpected_failed_adds": len(failed_present),
        "recovered_count": len(recovered),
        "recovered": sorted(recovered, key=_natural)[:_SHOWN],
        "unresolved_count": len(unresolved),
        "unresolved": unresolved[:_SHOWN],
        "replicas_agreed": None if roots is None else bool(roots.get("converged")),
        "agreed_after_s": None if roots is None else roots.get("elapsed_s"),
        "final": {
            "read": len(final),
            "present": sum(1 for s in states.values() if s == "present"),
            "absent": sum(1 for s in states.values() if s == "absent"),
            "listed": len(listed),
            "list_ok": listing is not None,
            "list_partial": bool(listing.get("partial")) if listing is not None else None,
            "listed_but_read_absent": listed_not_read[:_SHOWN],
            "read_present_but_not_listed": read_not_listed[:_SHOWN],
        },
        "visibility_s": {**quantiles(lags), "never_seen_by_a_read": len(never_seen),
                         "seen_by_first_read": sum(1 for x in lower if x == 0.0),
                         "lower_bound": quantiles(lower)},
        "corrupt_reads": len(corrupt),
        "corrupt_examples": corrupt[:5],
        "stale_reads": len(stale),
        "stale_reads_allowed": level == "eventual",
        "stale_examples": stale[:5],
        "flickers": len(flickers),
        "flicker_examples": flickers[:5],
        "counts": counts,
        "errors": errors_of(p for p in ops if p.f in ("add", "read")),
    }


def _natural(key: str) -> tuple[int, str]:
    """``e9`` sorts before ``e10``."""
    return len(key), key
