"""The feed checker: a change-feed consumer's deliveries against the writes (DESIGN §15).

The promise: every acknowledged write and delete after the consumer's cursor is delivered at
least once, unless a newer version of the same key is delivered after it; per key, delivered
versions only increase for one consumer following its cursor, across polls and across nodes;
duplicates are allowed, and ``(id, version)`` names a change. From the history alone:

(a) **lost**: an acknowledged put or delete ``(key, V)`` (``V`` the version its answer named)
    such that no delivered item of that key has a version ``>= V``. Judged only when the
    consumer's final drain completed (two consecutive empty polls after healing); before that
    a missing change may simply not have been read yet, and the verdict is ``unknown``.
(b) **phantom**: a delivered change no writer attempted. Each put writes unique content, so a
    delivered live item is explained by an ok put of exactly that version (with that content),
    or by a put of unknown outcome (no version known) with that content; a delivered deletion by
    an ok delete of exactly that version, or by any delete of unknown outcome on that key. A
    definitely failed write explains nothing.
(c) **order**: per key, a delivered version lower than one the same consumer had delivered
    before it (an equal one is a **duplicate**: allowed, counted apart). The consumer restarts
    its order only when the server refused its cursor as expired (410), which starts a new
    *epoch* from the beginning.
(d) **deleted mismatch**: an item with ``deleted: true`` whose version is that of an ok put, or
    ``deleted: false`` whose version is that of an ok delete.

Also counted as anomalies: *malformed* items (a version that does not parse, a live item with no
record, or a record whose id or version is not the item's) and *cursor rejected* (a poll given a
cursor the server itself issued answered 400: cursors must be valid at any node).

Versions are ``"<16 hex hlc>.<node>"`` and compare as ``(int(hlc, 16), node)``.

Events are the feed workload's (:mod:`jepsen_style.workloads.feed`): ``put`` (key; value
``{"content"}``; ok value ``{"content", "version"}``), ``delete`` (key; ok value
``{"version"}``), and ``poll`` / ``drain`` (the consumer's polls while the load runs and after
healing; invoke value ``{"epoch", "from", "limit", "wait_s", "moved"}``; ok value
``{"epoch", "items", "cursor"}``, each item ``{"id", "version", "deleted", "record"}`` with
``record`` ``{"id", "version", "content", ...}`` or None; a failed poll's value is
``{"status"}``, its HTTP status).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

#: How many examples of each anomaly the result lists.
SHOWN = 10

#: The operation names of the writers and of the consumer.
WRITES = ("put", "delete")
POLLS = ("poll", "drain")


@dataclass(frozen=True, slots=True)
class Pair:
    """An invocation and its completion (None: never completed, so of unknown outcome). The
    checker keeps its own pairing, as the lock checker does, so that importing it never imports
    the workloads (which import it)."""

    invoke: Mapping[str, Any]
    complete: Mapping[str, Any] | None

    @property
    def f(self) -> str:
        return str(self.invoke["f"])

    @property
    def process(self) -> int:
        return int(self.invoke["process"])

    @property
    def key(self) -> Any:
        return self.invoke.get("key")

    @property
    def outcome(self) -> str:
        return "info" if self.complete is None else str(self.complete["type"])

    @property
    def value(self) -> Any:
        return self.invoke.get("value")

    @property
    def result(self) -> Any:
        return None if self.complete is None else self.complete.get("value")

    @property
    def error(self) -> Any:
        return None if self.complete is None else self.complete.get("error")

    @property
    def t0(self) -> float:
        return float(self.invoke["time"])

    @property
    def t1(self) -> float:
        return math.inf if self.complete is None else float(self.complete["time"])


def pairs(events: Iterable[Mapping[str, Any]]) -> list[Pair]:
    """Each invocation with the next completion of its process, in invocation order."""
    pending: dict[int, int] = {}
    out: list[Pair] = []
    for e in events:
        process = int(e["process"])
        if e["type"] == "invoke":
            if process in pending:
                raise ValueError(f"process {process} invokes twice without completing: {e}")
            pending[process] = len(out)
            out.append(Pair(e, None))
        else:
            i = pending.pop(process, None)
            if i is None:
                raise ValueError(f"completion without an invocation: {dict(e)!r}")
            out[i] = Pair(out[i].invoke, e)
    return out


def _tally(ops: Iterable[Pair]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for p in ops:
        row = out.setdefault(p.f, {"ok": 0, "fail": 0, "info": 0})
        row[p.outcome] = row.get(p.outcome, 0) + 1
    return out


def _errors(ops: Iterable[Pair]) -> dict[str, int]:
    out: dict[str, int] = {}
    for p in ops:
        if p.outcome != "ok" and p.error is not None:
            out[str(p.error)] = out.get(str(p.error), 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def parse_version(text: Any) -> tuple[int, str] | None:
    """``"<hlc hex>.<node>"`` -> ``(hlc, node)``; None for anything else."""
    if not isinstance(text, str):
        return None
    hexpart, sep, node = text.partition(".")
    if not sep or not node or not hexpart:
        return None
    try:
        return int(hexpart, 16), node
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Delivery:
    """One item of one ok poll, in the order the consumer received it."""

    seq: int  # position among all deliveries
    time: float  # completion time of its poll
    f: str  # poll | drain
    node: str | None
    epoch: int
    key: str
    version: str
    deleted: bool
    content: Any  # the record's content (None: no record)
    problem: str | None  # why the item is malformed, or None

    def describe(self) -> dict[str, Any]:
        return {"key": self.key, "version": self.version, "deleted": self.deleted,
                "content": self.content, "f": self.f, "node": self.node,
                "epoch": self.epoch, "time": round(self.time, 3)}


@dataclass(frozen=True, slots=True)
class Write:
    """One put or delete attempt: its outcome, and for ok ones the version its answer named."""

    f: str
    key: str
    content: Any
    outcome: str
    version: str | None
    process: int
    t0: float
    t1: float

    def describe(self) -> dict[str, Any]:
        return {"f": self.f, "key": self.key, "content": self.content, "outcome": self.outcome,
                "version": self.version, "process": self.process, "time": round(self.t0, 3)}


def _item(raw: Any) -> tuple[str, str, bool, Any, str | None]:
    """``(key, version, deleted, content, problem)`` of one delivered item."""
    if not isinstance(raw, Mapping):
        return "?", "?", False, None, f"not an object: {raw!r:.100}"
    key, version = str(raw.get("id")), raw.get("version")
    deleted = raw.get("deleted")
    record = raw.get("record")
    content = record.get("content") if isinstance(record, Mapping) else None
    problem: str | None = None
    if parse_version(version) is None:
        problem = f"version {version!r:.60} does not parse"
    elif not isinstance(deleted, bool):
        problem = f"deleted is {deleted!r:.20}"
    elif not deleted and not isinstance(record, Mapping):
        problem = "a live item without a record"
    elif isinstance(record, Mapping) and (str(record.get("id")) != key
                                          or record.get("version") != version):
        problem = (f"record {record.get('id')!r:.60} {record.get('version')!r:.40} is not "
                   f"the item's")
    return key, str(version), bool(deleted), content, problem


def deliveries(ops: Iterable[Pair]) -> list[Delivery]:
    """Every item of every ok poll, in delivery order."""
    out: list[Delivery] = []
    for p in ops:
        if p.f not in POLLS or p.outcome != "ok" or not isinstance(p.result, Mapping):
            continue
        epoch = int(p.result.get("epoch", 0))
        node = p.complete.get("node") if p.complete is not None else None
        for raw in p.result.get("items") or []:
            key, version, deleted, content, problem = _item(raw)
            out.append(Delivery(len(out), p.t1, p.f, node, epoch, key, version, deleted,
                                content, problem))
    return out


def writes(ops: Iterable[Pair]) -> list[Write]:
    """Every put and delete attempt, with the version of the ok ones."""
    out: list[Write] = []
    for p in ops:
        if p.f not in WRITES:
            continue
        value = p.value if isinstance(p.value, Mapping) else {}
        result = p.result if isinstance(p.result, Mapping) else {}
        version = result.get("version") if p.outcome == "ok" else None
        out.append(Write(p.f, str(p.key), value.get("content"), p.outcome,
                         None if version is None else str(version), p.process, p.t0, p.t1))
    return out


def drained(ops: Iterable[Pair]) -> bool:
    """Whether the consumer's final drain ended with two consecutive ok polls, both empty."""
    ok = [p for p in ops if p.f == "drain" and p.outcome == "ok" and isinstance(p.result, Mapping)]
    if len(ok) < 2:
        return False
    return all(not (p.result.get("items") or []) for p in ok[-2:])


def check_feed(events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The feed checker's result (see the module): ``valid`` False on any lost, phantom, order,
    mismatch, malformed or cursor-rejected anomaly; ``unknown`` when there is none but the
    final drain never completed, or nothing was acknowledged."""
    ops = pairs(e for e in events if e.get("f") in WRITES + POLLS)
    ws = writes(ops)
    ds = deliveries(ops)
    done = drained(ops)

    by_version: dict[tuple[str, str], Write] = {}
    unknown_puts: dict[tuple[str, Any], Write] = {}
    unknown_deletes: set[str] = set()
    failed_puts: dict[tuple[str, Any], Write] = {}
    for w in ws:
        if w.outcome == "ok" and w.version is not None:
            by_version[(w.key, w.version)] = w
        elif w.outcome == "info":
            if w.f == "put":
                unknown_puts[(w.key, w.content)] = w
            else:
                unknown_deletes.add(w.key)
        elif w.f == "put":
            failed_puts[(w.key, w.content)] = w

    malformed = [{**d.describe(), "problem": d.problem} for d in ds if d.problem is not None]
    good = [d for d in ds if d.problem is None]

    # (b) and (d): is each delivered change one a writer made, and of the right kind?
    phantom: list[dict[str, Any]] = []
    mismatch: list[dict[str, Any]] = []
    explained_unknown = 0
    for d in good:
        made = by_version.get((d.key, d.version))
        if made is not None:
            if (made.f == "delete") != d.deleted:
                mismatch.append({**d.describe(), "write": made.describe()})
            elif made.f == "put" and d.content != made.content:
                phantom.append({**d.describe(), "why": "the put of this version wrote "
                                f"{made.content!r:.60}"})
            continue
        if d.deleted:
            if d.key in unknown_deletes:
                explained_unknown += 1
                continue
            phantom.append({**d.describe(), "why": "no delete of this version, none of "
                            "unknown outcome on this key"})
            continue
        if (d.key, d.content) in unknown_puts:
            explained_unknown += 1
            continue
        fail = failed_puts.get((d.key, d.content))
        phantom.append({**d.describe(), "why": "its put definitely failed" if fail else
                        "no put of this version or content",
                        **({"write": fail.describe()} if fail else {})})

    # (c): per epoch, per key, versions delivered in order.
    top: dict[tuple[int, str], tuple[tuple[int, str], Delivery]] = {}
    order: list[dict[str, Any]] = []
    duplicates = 0
    seen_changes: set[tuple[str, str]] = set()
    for d in good:
        v = parse_version(d.version)
        assert v is not None
        if (d.key, d.version) in seen_changes:
            duplicates += 1
        seen_changes.add((d.key, d.version))
        slot = (d.epoch, d.key)
        prev = top.get(slot)
        if prev is not None and v < prev[0]:
            order.append({**d.describe(), "after": prev[1].describe()})
        if prev is None or v > prev[0]:
            top[slot] = (v, d)

    # (a): acknowledged changes not delivered and not superseded by a delivered newer version.
    newest: dict[str, tuple[int, str]] = {}
    for d in good:
        v = parse_version(d.version)
        assert v is not None
        if d.key not in newest or v > newest[d.key]:
            newest[d.key] = v
    acked = [w for w in ws if w.outcome == "ok"]
    missing: list[dict[str, Any]] = []
    superseded = delivered_exact = 0
    bad_ack: list[dict[str, Any]] = []
    for w in acked:
        v = parse_version(w.version)
        if v is None:
            bad_ack.append(w.describe())
            continue
        if (w.key, str(w.version)) in seen_changes:
            delivered_exact += 1
        elif w.key in newest and newest[w.key] >= v:
            superseded += 1
        else:
            missing.append({**w.describe(),
                            "newest_delivered": None if w.key not in newest
                            else f"{newest[w.key][0]:016x}.{newest[w.key][1]}"})
    lost = missing if done else []
    unresolved = [] if done else missing

    rejected = [{"node": p.complete.get("node") if p.complete else None, "time": round(p.t0, 3),
                 "error": p.error} for p in ops
                if p.f in POLLS and p.outcome == "fail" and isinstance(p.value, Mapping)
                and p.value.get("from") == "cursor" and isinstance(p.result, Mapping)
                and p.result.get("status") == 400]
    expired = sum(1 for p in ops if p.f in POLLS and p.error == "cursor_expired")
    malformed += [{"problem": "an acknowledged write named no parsable version", **b}
                  for b in bad_ack]

    anomalies = len(lost) + len(phantom) + len(order) + len(mismatch) + len(malformed) \
        + len(rejected)
    if anomalies:
        valid: bool | str = False
    elif not done or not acked:
        valid = "unknown"
    else:
        valid = True
    summary = (f"{len(lost)} lost, {len(phantom)} phantom, {len(order)} order violations,"
               f" {len(mismatch)} deleted mismatches in {len(ds)} deliveries"
               f" ({duplicates} duplicates) of {len(acked)} acknowledged changes"
               f" ({delivered_exact} delivered, {superseded} superseded)")
    if malformed:
        summary += f"; {len(malformed)} malformed items"
    if rejected:
        summary += f"; {len(rejected)} polls refused a server-issued cursor"
    if not done:
        summary += f"; the final drain never completed ({len(unresolved)} undelivered unresolved)"
    polls = [p for p in ops if p.f in POLLS]
    return {
        "valid": valid,
        "summary": summary,
        "attempted": len(ws),
        "acknowledged": len(acked),
        "indeterminate": sum(1 for w in ws if w.outcome == "info"),
        "failed": sum(1 for w in ws if w.outcome == "fail"),
        "deliveries": len(ds),
        "distinct_changes": len(seen_changes),
        "keys": len({w.key for w in ws}),
        "delivered_exact": delivered_exact,
        "superseded": superseded,
        "explained_by_unknown_writes": explained_unknown,
        "duplicates": duplicates,
        "drained": done,
        "lost_count": len(lost),
        "lost": lost[:SHOWN],
        "unresolved_count": len(unresolved),
        "unresolved": unresolved[:SHOWN],
        "phantom_count": len(phantom),
        "phantom": phantom[:SHOWN],
        "order_count": len(order),
        "order": order[:SHOWN],
        "mismatch_count": len(mismatch),
        "mismatch": mismatch[:SHOWN],
        "malformed_count": len(malformed),
        "malformed": malformed[:SHOWN],
        "cursor_rejected_count": len(rejected),
        "cursor_rejected": rejected[:SHOWN],
        "cursor_expired": expired,
        "epochs": len({d.epoch for d in ds}),
        "polls": len(polls),
        "nodes_polled": sorted({str(p.invoke.get("node")) for p in polls}),
        "moves": {why: sum(1 for p in polls if isinstance(p.value, Mapping)
                           and p.value.get("moved") == why)
                  for why in ("fault", "error")},
        "counts": _tally(ops),
        "errors": _errors(ops),
    }
