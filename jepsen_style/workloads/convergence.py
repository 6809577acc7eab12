"""Convergence: after healing, do the replicas agree, and does search show exactly the live set?

Clients write records with explicit unit vectors (the embedder's dimension, read from
``GET /v1/cluster``) and delete some, at ``eventual`` unless told otherwise; each client carries
its own session token so its own writes to a key are ordered. Each key has one writer. The README
promises for ``eventual``: "every replica converges to the same winner once faults heal", and
DESIGN §10: "after a partition heals, all replicas converge without any read touching the keys".
After the harness heals every fault, ``final()``:

(a) polls ``GET /v1/cluster/shards`` on every node until, for every shard, the anti-entropy roots
    reported by the live members of its preference list are all equal (or the deadline passes);
(b) reads every key ever written at ``strong`` and searches with the vector of each live record
    (it must come back, with its newest content), and with the vectors a deleted record had (it
    must not come back);
(c) checks each key's final state against the history: it must be the effect of the key's last
    acknowledged operation or of an operation of unknown outcome (which may land at any time);
    anything else means an acknowledged write or delete was lost.

Valid iff (a), (b) and (c) hold.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
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
    read_outcome,
    tally,
    wait_roots,
    write_outcome,
)

_SHOWN = 10
#: A search hit on a record's own vector should score about 1 (cosine of a vector with itself).
SELF_SCORE = 0.99


def unit_vector(seed: int, dim: int) -> list[float]:
    """A random unit vector of ``dim`` floats, the same for the same seed."""
    rng = random.Random(seed)
    v = [rng.gauss(0.0, 1.0) for _ in range(dim)]
    norm = math.sqrt(sum(x * x for x in v)) or 1.0
    return [round(x / norm, 6) for x in v]


class Convergence:
    """Options: ``keys_per_client`` (20: below ``session.max_keys``, 32, so a client's token
    never forgets one of its keys and its writes to a key stay ordered), ``delete_fraction``
    (0.3), ``delay`` (0.02 s), ``deadline`` (seconds for the roots to agree, 60), ``k`` (search
    depth, 5), ``dim`` (fallback when ``GET /v1/cluster`` does not answer, 384),
    ``final_concurrency`` (16), ``final_attempts`` (5), ``timeout`` (3 s). Any option may be
    scoped, ``convergence.<name>``."""

    name = "convergence"
    default_level = "eventual"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.level = ctx.level or self.default_level
        self.ns = namespace_for("jepsen-conv", ctx, self.name)
        self.per_client = max(1, int(option(ctx, "convergence", "keys_per_client", 20)))
        self.delete_fraction = float(option(ctx, "convergence", "delete_fraction", 0.3))
        self.k = int(option(ctx, "convergence", "k", 5))
        self.dim: int | None = None
        self._dim_lock = asyncio.Lock()
        self._seeds = itertools.count(1)
        self.tokens: dict[int, str | None] = {}

    async def ensure_dim(self, http: Http) -> int:
        """The embedder's dimension from ``GET /v1/cluster`` (asked once)."""
        async with self._dim_lock:
            if self.dim is None:
                for _ in range(10):
                    node = self.ctx.rng.choice(list(self.ctx.nodes))
                    reply = await http.call(node, "GET", "/v1/cluster")
                    if reply.ok and isinstance(reply.body, dict):
                        self.dim = int(reply.body["embedder"]["dim"])
                        break
                    await asyncio.sleep(0.2)
                else:
                    self.dim = int(option(self.ctx, "convergence", "dim", 384))
            return self.dim

    # ------------------------------------------------------------------ the run

    async def client(self, process: int, stop: asyncio.Event) -> None:
        """Writes (create or overwrite, new vector each time) and deletes of its own keys."""
        rng = self.ctx.rng
        live: dict[str, bool] = {}  # what this client believes; only picks the op
        async with http_client(self.ctx, self.name) as http:
            dim = await self.ensure_dim(http)
            while not stop.is_set():
                node = rng.choice(list(self.ctx.nodes))
                key = f"v{process}-{rng.randrange(self.per_client)}"
                if live.get(key) and rng.random() < self.delete_fraction:
                    kind = await self.delete(http, process, node, key)
                    if kind != "fail":
                        live[key] = False
                else:
                    kind = await self.write(http, process, node, key, dim)
                    if kind != "fail":
                        live[key] = True
                await pause(stop, op_delay(self.ctx, self.name, 0.02))

    async def write(self, http: Http, process: int, node: str, key: str, dim: int) -> str:
        """PUT ``content = str(seed)`` with ``unit_vector(seed)``; the event's value is the seed."""
        seed = next(self._seeds)
        h = self.ctx.history.invoke(process, "write", key, seed, node)
        reply = await http.call(
            node, "PUT", memory_path(self.ns, key),
            json={"content": str(seed), "vector": unit_vector(seed, dim)},
            headers=headers(self.level, self.tokens.get(process)),
        )
        return self._done(h, process, reply)

    async def delete(self, http: Http, process: int, node: str, key: str) -> str:
        """DELETE the key (a tombstone)."""
        h = self.ctx.history.invoke(process, "delete", key, None, node)
        reply = await http.call(node, "DELETE", memory_path(self.ns, key),
                                headers=headers(self.level, self.tokens.get(process)))
        return self._done(h, process, reply)

    def _done(self, h: Any, process: int, reply: Any) -> str:
        kind, error = write_outcome(reply)
        if kind == "ok" and reply.session:
            self.tokens[process] = reply.session
        self.ctx.history.complete(h, kind, error=error)
        return kind

    # ------------------------------------------------------------------ after healing

    async def final(self) -> None:
        """(a) wait for the roots to agree, (b) read every key and search for it."""
        conc = max(1, int(option(self.ctx, "convergence", "final_concurrency", 16)))
        attempts = max(1, int(option(self.ctx, "convergence", "final_attempts", 5)))
        async with http_client(self.ctx, self.name) as http:
            dim = await self.ensure_dim(http)
            await wait_roots(self.ctx, http, FINAL_PROCESS,
                             float(option(self.ctx, "convergence", "deadline", 60.0)))
            seeds: dict[str, list[int]] = {}
            for e in self.ctx.history.events:
                if e["type"] == "invoke" and e.get("f") in ("write", "delete"):
                    got = seeds.setdefault(str(e["key"]), [])
                    if e["f"] == "write":
                        got.append(int(e["value"]))
            keys = sorted(seeds)

            async def worker(w: int) -> None:
                process = FINAL_PROCESS + 1 + w
                for key in keys[w::conc]:
                    state: dict[str, Any] | None = None
                    for attempt in range(attempts):
                        state = await self.final_read(http, process, key)
                        if state is not None:
                            break
                        await asyncio.sleep(0.2 * (attempt + 1))
                    if state is None:
                        continue
                    if state["live"]:
                        probes = [int(state["seed"])]
                    else:
                        probes = list(dict.fromkeys(reversed(seeds[key])))[:3]
                    for seed in probes:
                        for attempt in range(attempts):
                            if await self.search(http, process, key, seed, dim,
                                                 last=attempt == attempts - 1):
                                break
                            await asyncio.sleep(0.2 * (attempt + 1))

            await asyncio.gather(*(worker(w) for w in range(conc)))

    async def final_read(self, http: Http, process: int, key: str) -> dict[str, Any] | None:
        """A ``strong`` read: ``{"live", "seed"}``, or None when it failed."""
        node = self.ctx.rng.choice(list(self.ctx.nodes))
        h = self.ctx.history.invoke(process, "final-read", key, None, node)
        reply = await http.call(node, "GET", memory_path(self.ns, key),
                                headers=headers("strong"))
        kind, error = read_outcome(reply)
        state: dict[str, Any] | None = None
        if kind == "ok":
            if reply.ok:
                try:
                    state = {"live": True, "seed": int(reply.body["content"])}
                except (KeyError, TypeError, ValueError):
                    kind, error = "fail", f"{CORRUPT}: {reply.body!r:.200}"
            else:
                state = {"live": False, "seed": None}
        self.ctx.history.complete(h, kind, value=state, error=error)
        return state

    async def search(
        self, http: Http, process: int, key: str, seed: int, dim: int, last: bool
    ) -> bool:
        """Search with ``unit_vector(seed)``; a ``search`` op whose value is the top k. False
        (to retry) when it failed, or was partial and this is not the last attempt."""
        node = self.ctx.rng.choice(list(self.ctx.nodes))
        h = self.ctx.history.invoke(process, "search", key, seed, node)
        reply = await http.call(node, "POST", f"/v1/ns/{self.ns}/search",
                                json={"vector": unit_vector(seed, dim), "k": self.k})
        if not reply.ok or not isinstance(reply.body, dict):
            self.ctx.history.complete(h, "fail", error=reply.code)
            return False
        results = reply.body.get("results", [])
        value = {
            "seed": seed,
            "ids": [r["id"] for r in results],
            "scores": [round(float(r["score"]), 4) for r in results],
            "contents": [r.get("record", {}).get("content") for r in results],
            "partial": bool(reply.body.get("partial")),
        }
        if value["partial"] and not last:
            self.ctx.history.complete(h, "fail", value=value, error="partial")
            return False
        self.ctx.history.complete(h, "ok", value=value)
        return True

    def check(self) -> dict[str, Any]:
        """(a) roots agreed, (b) search shows the live set, (c) final states fit the history."""
        return check_convergence(self.ctx.history.events, self.level)


def allowed_states(ops: list[Pair]) -> set[tuple[bool, int | None]]:
    """The final states ``(live, seed)`` one key's history allows: the effect of its last
    acknowledged op, or of any op of unknown outcome; absent too when none was acknowledged."""
    def effect(p: Pair) -> tuple[bool, int | None]:
        return (True, int(p.value)) if p.f == "write" else (False, None)

    acked = [p for p in ops if p.outcome == "ok"]
    out = {effect(p) for p in ops if p.outcome == "info"}
    if acked:
        out.add(effect(max(acked, key=lambda p: p.t0)))
    else:
        out.add((False, None))
    return out


def check_convergence(
    events: Iterable[Mapping[str, Any]], level: str | None = None
) -> dict[str, Any]:
    """The convergence checker on a list of events (``write``, ``delete``, ``roots``,
    ``final-read``, ``search``)."""
    all_ops = pairs(events)
    history: dict[str, list[Pair]] = {}
    roots: Mapping[str, Any] | None = None
    final: dict[str, tuple[bool, int | None]] = {}
    searches: list[Pair] = []
    partial_searches = 0
    for p in all_ops:
        if p.f in ("write", "delete"):
            history.setdefault(str(p.key), []).append(p)
        elif p.f == "roots" and p.outcome == "ok":  # fail: no node answered; cannot tell
            roots = p.result
        elif p.f == "final-read" and p.outcome == "ok":
            final[str(p.key)] = (bool(p.result["live"]), p.result.get("seed"))
        elif p.f == "search" and p.outcome == "ok":
            searches.append(p)
            partial_searches += bool(p.result.get("partial"))

    unexplained: list[dict[str, Any]] = []
    unread: list[str] = []
    for key, ops in sorted(history.items()):
        if key not in final:
            unread.append(key)
            continue
        allowed = allowed_states(ops)
        if final[key] not in allowed:
            unexplained.append({"key": key, "final": _show(final[key]),
                                "allowed": sorted(_show(s) for s in allowed)})

    missing: list[dict[str, Any]] = []
    stale: list[dict[str, Any]] = []
    deleted_returned: list[dict[str, Any]] = []
    not_first = 0
    self_scores: list[float] = []
    probed_live: set[str] = set()
    for s in searches:
        key, got = str(s.key), s.result
        ids: list[str] = list(got["ids"])
        live, seed = final.get(key, (False, None))
        if live and seed == got["seed"]:
            probed_live.add(key)
            if key not in ids:
                missing.append({"key": key, "seed": seed, "top": ids[:3]})
            else:
                i = ids.index(key)
                not_first += i != 0
                self_scores.append(float(got["scores"][i]))
                if got["contents"][i] != str(seed):
                    stale.append({"key": key, "content": got["contents"][i],
                                  "expected": str(seed)})
        for i, other in enumerate(ids):
            state = final.get(other)
            if state is not None and not state[0]:
                deleted_returned.append({"key": other, "probe": key,
                                         "content": got["contents"][i]})
            elif state is not None and got["contents"][i] != str(state[1]) and other != key:
                stale.append({"key": other, "content": got["contents"][i],
                              "expected": str(state[1])})
    never_probed = sorted(k for k, (live, _) in final.items() if live and k not in probed_live)

    converged = bool(roots and roots.get("converged"))
    corrupt = corrupt_reads(all_ops)
    search_ok = not missing and not deleted_returned and not stale and not corrupt
    if (roots is not None and not converged) or not search_ok or unexplained:
        valid: bool | str = False
    elif roots is None or unread or never_probed or partial_searches or not history:
        valid = "unknown"
    else:
        valid = True
    if roots is None:
        where = "roots never polled"
    elif converged:
        where = f"roots agreed after {roots.get('elapsed_s')}s"
    else:
        where = f"roots of {roots.get('diverged_count')} shards still differ"
    summary = (f"{where}; {len(missing)} live records missing from search,"
               f" {len(deleted_returned)} deleted ones returned, {len(stale)} stale;"
               f" {len(unexplained)} final states the history does not explain"
               f" ({len(unread)} unread)")
    return {
        "valid": valid,
        "summary": summary,
        "level": level,
        "keys": len(history),
        "roots": roots,
        "roots_converged": converged,
        "live_at_end": sum(1 for live, _ in final.values() if live),
        "deleted_at_end": sum(1 for live, _ in final.values() if not live),
        "unread_count": len(unread),
        "unread": unread[:_SHOWN],
        "unexplained_count": len(unexplained),
        "unexplained": unexplained[:_SHOWN],
        "searches": len(searches),
        "partial_searches": partial_searches,
        "missing_from_search_count": len(missing),
        "missing_from_search": missing[:_SHOWN],
        "deleted_returned_count": len(deleted_returned),
        "deleted_returned": deleted_returned[:_SHOWN],
        "stale_search_records_count": len(stale),
        "stale_search_records": stale[:_SHOWN],
        "corrupt_reads": len(corrupt),
        "corrupt_examples": corrupt[:_SHOWN],
        "live_never_searched": len(never_probed),
        "self_hit_not_first": not_first,
        "self_score_min": min(self_scores) if self_scores else None,
        "self_score_below_0.99": sum(1 for x in self_scores if x < SELF_SCORE),
        "counts": tally(all_ops),
        "errors": errors_of(p for p in all_ops if p.f in ("write", "delete")),
    }


def _show(state: tuple[bool, int | None]) -> str:
    live, seed = state
    return f"live:{seed}" if live else "absent"
