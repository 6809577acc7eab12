"""What every workload shares: the run context it is given, one HTTP client, outcome classes.

A workload talks to Spine like a user behind a non-sticky load balancer: each request goes to a
node picked at random, through aiohttp with a short timeout. Every operation is recorded in the
run's history as a Jepsen-style invoke/complete pair, and each completion is classified honestly:

- ``ok``: the request took effect (2xx), or a read observed something (a read's 404 ``not_found``
  is an observation of absence, so it is ``ok`` with value ``None``);
- ``fail``: it definitely did not take effect: a definite rejection (400, 401, 403, 404, 409, 413,
  429), a request that never left (the connection was refused or could not be opened), or any
  read that got no answer (a read changes nothing);
- ``info``: unknown. A write answered 503 (``quorum_unavailable``: it may still land, README
  "Consistency"), 504, 5xx, or not answered once sent (timeout, connection reset) may take
  effect at any later time, or never.

``check()`` methods work on ``ctx.history.events`` alone, so a saved history can be checked again
and the unit tests feed hand-made ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json as json_lib
import math
import random
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, Protocol, TypeAlias

import aiohttp

Outcome: TypeAlias = Literal["ok", "fail", "info"]

#: Process ids from here on are used by ``final()`` (clients are numbered from 0).
FINAL_PROCESS = 10_000

#: The header that picks a request's consistency level, and the session token header.
LEVEL_HEADER = "Spine-Consistency"
SESSION_HEADER = "Spine-Session"

#: The error of a read whose 2xx body is not what any write could have produced (recorded as a
#: ``fail`` so no checker builds on it, and counted by every checker as an anomaly).
CORRUPT = "unexpected body"

#: Statuses that are a definite rejection: the request changed nothing.
DEFINITE = frozenset({400, 401, 403, 404, 405, 409, 413, 422, 429})


class Recorder(Protocol):
    """The harness's history recorder (``jepsen_style.history.History``)."""

    @property
    def events(self) -> Sequence[Mapping[str, Any]]: ...

    def invoke(self, process: int, f: str, key: Any, value: Any, node: str | None) -> Any: ...

    def complete(
        self, handle: Any, type: str, value: Any = None, error: Any = None
    ) -> Any: ...


class Context(Protocol):
    """The run context a workload is built with (``jepsen_style.runner.RunContext``)."""

    @property
    def history(self) -> Recorder: ...

    @property
    def level(self) -> str | None: ...

    @property
    def rng(self) -> random.Random: ...

    @property
    def nodes(self) -> Sequence[str]: ...

    @property
    def urls(self) -> Mapping[str, str]: ...

    @property
    def out(self) -> Path: ...

    @property
    def options(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP exchange: ``status`` None when no answer came (``error`` says why)."""

    node: str
    status: int | None
    body: Any = None
    session: str | None = None
    error: str | None = None
    sent: bool = True  # False: no connection was made, so the node never saw the request

    @property
    def ok(self) -> bool:
        """A 2xx answer."""
        return self.status is not None and 200 <= self.status < 300

    @property
    def code(self) -> str | None:
        """Spine's error code (``{"error": {"code"}}``), or the transport error, or None."""
        if isinstance(self.body, dict):
            err = self.body.get("error")
            if isinstance(err, dict) and isinstance(err.get("code"), str):
                return str(err["code"])
        if self.error is not None:
            return self.error
        return None if self.status is None or self.ok else f"http_{self.status}"


def write_outcome(reply: Reply) -> tuple[Outcome, str | None]:
    """ok / fail / info for a request that may change state (PUT, DELETE, batch)."""
    if reply.ok:
        return "ok", None
    if reply.status is not None and reply.status in DEFINITE:
        return "fail", reply.code
    if reply.status is None and not reply.sent:
        return "fail", reply.code  # the connection was refused or never opened
    # 503 quorum_unavailable may still land; 504, 5xx and no answer at all: unknown.
    return "info", reply.code


def read_outcome(reply: Reply) -> tuple[Outcome, str | None]:
    """ok / fail for a read: a 404 ``not_found`` observed absence (ok); anything else failed."""
    if reply.ok:
        return "ok", None
    if reply.status == 404 and reply.code == "not_found":
        return "ok", None
    return "fail", reply.code


class Http:
    """One client process's HTTP connection pool (aiohttp), with a short total timeout."""

    def __init__(self, session: aiohttp.ClientSession, urls: Mapping[str, str]) -> None:
        self._session = session
        self._urls = urls

    async def call(
        self,
        node: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> Reply:
        """Send one request to ``node``; transport failures become a Reply without a status."""
        url = self._urls[node].rstrip("/") + path
        attempt = SimpleNamespace(sent=False)
        try:
            async with self._session.request(
                method, url, json=json, headers=dict(headers or {}), params=params,
                trace_request_ctx=attempt,
            ) as resp:
                raw = await resp.read()
                body: Any = None
                if raw:
                    try:
                        body = json_lib.loads(raw)
                    except ValueError:
                        body = raw.decode("utf-8", "replace")
                return Reply(node, resp.status, body, resp.headers.get(SESSION_HEADER))
        except aiohttp.ConnectionTimeoutError:
            return Reply(node, None, error="connect timeout", sent=False)
        except TimeoutError:
            return Reply(node, None, error="timeout")
        except aiohttp.ClientConnectorError as e:
            if attempt.sent:  # aiohttp retried a request it had sent: it may have landed
                return Reply(node, None, error=f"connection: resent, {type(e).__name__}")
            return Reply(node, None, error=f"connect: {type(e).__name__}", sent=False)
        except aiohttp.ClientError as e:
            return Reply(node, None, error=f"connection: {type(e).__name__}")
        except OSError as e:
            return Reply(node, None, error=f"connection: {type(e).__name__}")


async def _headers_sent(
    session: aiohttp.ClientSession,
    ctx: SimpleNamespace,
    params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    """Mark the request as having left: a failure after this may not be a definite ``fail``."""
    attempt = getattr(ctx, "trace_request_ctx", None)
    if isinstance(attempt, SimpleNamespace):
        attempt.sent = True


@contextlib.asynccontextmanager
async def http_client(ctx: Context, workload: str) -> AsyncIterator[Http]:
    """An :class:`Http` for one process; closed on exit.

    Options: ``timeout`` (total seconds per request, default 3: Spine's own read and write
    timeouts are 2 s), ``client_addr`` (a local address to connect from).
    """
    timeout = float(option(ctx, workload, "timeout", 3.0))
    local = option(ctx, workload, "client_addr", None)
    connector = aiohttp.TCPConnector(
        limit=8, local_addr=(str(local), 0) if local else None, enable_cleanup_closed=True
    )
    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(_headers_sent)
    session = aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout, connect=timeout),
        trace_configs=[trace],
    )
    # aiohttp resends an idempotent request (PUT, DELETE) once when the connection drops before
    # the answer, which would apply one history operation twice. A Jepsen client never retries
    # on its own; aiohttp has no public switch, so use the one its own test client uses.
    if hasattr(session, "_retry_connection"):
        session._retry_connection = False
    try:
        yield Http(session, ctx.urls)
    finally:
        await session.close()


def option(ctx: Context, workload: str, key: str, default: Any) -> Any:
    """A workload option: ``options["<workload>.<key>"]`` if given, else ``options[key]``, else
    ``default`` (the harness passes one options dict to every workload of a run)."""
    scoped = f"{workload}.{key}"
    if scoped in ctx.options:
        return ctx.options[scoped]
    return ctx.options.get(key, default)


def headers(level: str | None, session: str | None = None) -> dict[str, str]:
    """Request headers: the consistency level and the session token, when given."""
    out: dict[str, str] = {}
    if level is not None:
        out[LEVEL_HEADER] = level
    if session:
        out[SESSION_HEADER] = session
    return out


def memory_path(namespace: str, mid: str) -> str:
    """``/v1/ns/{ns}/memories/{id}``."""
    return f"/v1/ns/{namespace}/memories/{mid}"


def namespace_for(prefix: str, ctx: Context, workload: str) -> str:
    """The run's namespace: ``options["<workload>.namespace"]``, else ``prefix`` plus a random
    suffix (so two runs, or two workloads, against one cluster never share keys)."""
    given = ctx.options.get(f"{workload}.namespace")
    if given:
        return str(given)
    return f"{prefix}-{ctx.rng.randrange(16**8):08x}"


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Sleep ``seconds`` (returning early once ``stop`` is set)."""
    if seconds <= 0:
        await asyncio.sleep(0)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


def op_delay(ctx: Context, workload: str, default: float) -> float:
    """The pause between one process's operations: ``options["delay"]`` seconds, jittered."""
    mean = float(option(ctx, workload, "delay", default))
    return ctx.rng.uniform(0.5 * mean, 1.5 * mean) if mean > 0 else 0.0


# ----------------------------------------------------------------------------- history reading


@dataclass(frozen=True, slots=True)
class Pair:
    """An invocation and its completion (``complete`` None: never completed, i.e. unknown)."""

    invoke: Mapping[str, Any]
    complete: Mapping[str, Any] | None

    @property
    def process(self) -> int:
        """The process that ran it."""
        return int(self.invoke["process"])

    @property
    def f(self) -> str:
        """The operation's name."""
        return str(self.invoke["f"])

    @property
    def key(self) -> Any:
        """The key it touched."""
        return self.invoke.get("key")

    @property
    def outcome(self) -> Outcome:
        """ok | fail | info (no completion counts as info)."""
        if self.complete is None:
            return "info"
        kind = self.complete["type"]
        if kind not in ("ok", "fail", "info"):
            raise ValueError(f"unknown completion type {kind!r}")
        return kind  # type: ignore[no-any-return]

    @property
    def value(self) -> Any:
        """The invocation's value (what a write wrote)."""
        return self.invoke.get("value")

    @property
    def result(self) -> Any:
        """The completion's value (what a read saw; None when it never completed)."""
        return None if self.complete is None else self.complete.get("value")

    @property
    def error(self) -> Any:
        """The completion's error, if any."""
        return None if self.complete is None else self.complete.get("error")

    @property
    def t0(self) -> float:
        """Invocation time."""
        return float(self.invoke["time"])

    @property
    def t1(self) -> float:
        """Completion time (+inf when it never completed)."""
        return math.inf if self.complete is None else float(self.complete["time"])


def pairs(events: Iterable[Mapping[str, Any]]) -> list[Pair]:
    """Pair each invocation with the next completion of its process, in invocation order."""
    pending: dict[int, int] = {}
    out: list[Pair] = []
    for event in events:
        process, kind = int(event["process"]), event["type"]
        if kind == "invoke":
            if process in pending:
                raise ValueError(f"process {process} invokes twice without completing: {event}")
            pending[process] = len(out)
            out.append(Pair(event, None))
        else:
            i = pending.pop(process, None)
            if i is None:
                raise ValueError(f"completion without an invocation: {dict(event)!r}")
            out[i] = Pair(out[i].invoke, event)
    return out


def corrupt_reads(items: Iterable[Pair]) -> list[dict[str, Any]]:
    """Reads answered 2xx with a body no write could have produced (see :data:`CORRUPT`)."""
    return [{"process": p.process, "f": p.f, "key": p.key, "time": p.t0, "error": p.error}
            for p in items if str(p.error or "").startswith(CORRUPT)]


def quantiles(values: Sequence[float]) -> dict[str, float | int | None]:
    """count, mean, p50, p90, p99 and max of ``values`` (seconds, rounded to ms)."""
    if not values:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    xs = sorted(values)

    def at(q: float) -> float:
        return round(xs[min(len(xs) - 1, math.ceil(q * len(xs)) - 1)], 3)

    return {"count": len(xs), "mean": round(sum(xs) / len(xs), 3), "p50": at(0.5),
            "p90": at(0.9), "p99": at(0.99), "max": round(xs[-1], 3)}


def tally(items: Iterable[Pair]) -> dict[str, dict[str, int]]:
    """Per operation name, how many completed ok / fail / info."""
    out: dict[str, dict[str, int]] = {}
    for p in items:
        row = out.setdefault(p.f, {"ok": 0, "fail": 0, "info": 0})
        row[p.outcome] += 1
    return out


def errors_of(items: Iterable[Pair]) -> dict[str, int]:
    """How often each error code ended an operation that did not complete ok."""
    out: dict[str, int] = {}
    for p in items:
        if p.outcome != "ok" and p.error is not None:
            out[str(p.error)] = out.get(str(p.error), 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


# --------------------------------------------------------------------------- replica agreement

#: How many diverged shards a ``roots`` op keeps as examples.
ROOTS_SHOWN = 10


def shard_divergence(
    views: Mapping[str, Mapping[str, Any]],
) -> tuple[int, list[dict[str, Any]]]:
    """From each answering node's ``GET /v1/cluster/shards``: the number of shards, and those
    whose preference-list members (among the nodes that answered) do not all report one root.

    A member that answered but reports no root for a shard it owns counts as diverged (its tree
    is not built yet, or it does not think it holds the shard).
    """
    by_shard: dict[int, dict[str, Any]] = {}
    prefs: dict[int, list[str]] = {}
    for node, view in views.items():
        for entry in view.get("shards", []):
            s = int(entry["shard"])
            prefs.setdefault(s, list(entry.get("preference_list", [])))
            if node in entry.get("preference_list", []):
                by_shard.setdefault(s, {})[node] = entry.get("root")
    diverged: list[dict[str, Any]] = []
    for s in sorted(prefs):
        members = [n for n in prefs[s] if n in views]
        roots = {n: by_shard.get(s, {}).get(n) for n in members}
        if any(r is None for r in roots.values()) or len(set(roots.values())) > 1:
            diverged.append({"shard": s, "roots": roots,
                             "silent": [n for n in prefs[s] if n not in views]})
    return len(prefs), diverged


async def wait_roots(ctx: Context, http: Http, process: int, deadline_s: float) -> dict[str, Any]:
    """Poll every node's ``GET /v1/cluster/shards`` until, for every shard, the live members of
    its preference list report one anti-entropy root, or ``deadline_s`` passes. One ``roots``
    op (key ``*``) records the outcome; its value is returned."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    h = ctx.history.invoke(process, "roots", "*", None, None)
    polls = 0
    nshards = 0
    diverged: list[dict[str, Any]] = []
    answered: list[str] = []
    while True:
        polls += 1
        nodes = list(ctx.nodes)
        replies = await asyncio.gather(*(http.call(n, "GET", "/v1/cluster/shards") for n in nodes))
        views = {r.node: r.body for r in replies if r.ok and isinstance(r.body, dict)}
        answered = sorted(views)
        if views:
            nshards, diverged = shard_divergence(views)
            if not diverged:
                break
        if loop.time() - start >= deadline_s:
            break
        await asyncio.sleep(1.0)
    value = {
        "converged": bool(answered) and not diverged,
        "elapsed_s": round(loop.time() - start, 3),
        "polls": polls,
        "shards": nshards,
        "diverged_count": len(diverged),
        "diverged": diverged[:ROOTS_SHOWN],
        "nodes_answered": answered,
        "nodes_silent": sorted(set(ctx.nodes) - set(answered)),
    }
    if answered:
        ctx.history.complete(h, "ok", value=value)
    else:
        ctx.history.complete(h, "fail", value=value, error="no node answered")
    return value
