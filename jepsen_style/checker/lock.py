"""The lock checker: leases with fencing tokens (DESIGN §12), judged from a client history.

Kleppmann's argument ("How to do distributed locking", 2016) is that a lease alone cannot make
writers exclusive, since a holder may stall past its lease, and that the store must refuse writes
fenced by a token lower than one it has already accepted. This checker looks for the three ways
that promise can break, each from evidence that needs no knowledge of the servers' clocks:

(a) **interleaved holders**: on one key, writes of one holding (a ``(holder, token)`` pair, one
    grant and its renewals) are separated by a write of another holding. From the key's final
    applied order (its version history read after healing), or from acknowledgements: X's write
    acked, then Y's write invoked and acked, then X's write invoked and acked.
(b) **stale token applied**: a fenced write applied after a write with a higher token of the same
    lease on the same key. From the applied order, or from acknowledgements: a write acked ok
    although a write with a higher token had been acked before it was sent.
(c) **overlapping grants**: a grant made while another holding's lease was still running by the
    server's own account. Holding A counts as running from the send time of its acquire ``s_A`` to
    ``s_A + min(ttl_ms, remaining_ms)`` of the server's answer (the server started its clock no
    earlier than ``s_A``, and said that much time was left), cut short when A's holder sends its
    release (so a grant after a release is never blamed). Grant B, with a higher token than A, is
    a violation when its answer arrived (``r_B``) before A's running time ended: the token says the
    server granted B after A, and the answer that it did so before A's time was up. (A grant
    answered before A was even sent, with a higher token, is the next kind instead.) Also
    violations: two grants of one token to different holders, and a grant answered before a
    later acquire was sent whose token is not higher (tokens must grow across holdings; only a
    renewal keeps it).

The rule for (c) compares times on the harness's single clock and uses only the lower bound of
each holding, so a report is never a mere timing artefact of the client. The servers promise it
only while node clocks are within ``clock.max_offset`` of each other (DESIGN §12), so each (c)
violation names the largest clock spread the harness had set when either grant was made.

Events are the lock workload's (:mod:`jepsen_style.workloads.lock`): ``acquire`` (key: lease,
ok value ``{"holder", "token", "ttl_ms", "remaining_ms", "skew_ms"}``), ``fwrite`` (key: memory
key, value ``{"lease", "token", "holder", "content"}``), ``release`` (key: lease, value
``{"token"}``) and ``history`` (key: memory key, ok value: the versions oldest first, each
``{"content", "version", "concurrent"}``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: How many violations of each kind the result lists.
SHOWN = 10


@dataclass(frozen=True, slots=True)
class Grant:
    """One ok acquire: the holding ``(holder, token)`` of ``lease``, and the time it certainly
    runs by the server's answer: ``[sent, until]``."""

    process: int
    lease: str
    holder: str
    token: int
    sent: float
    received: float
    until: float
    skew_ms: int

    def describe(self) -> str:
        return (f"{self.holder} token {self.token} of {self.lease!r} "
                f"(sent {self.sent:.3f}, answered {self.received:.3f}, runs to {self.until:.3f})")


@dataclass(frozen=True, slots=True)
class Write:
    """One fenced write: its holding, key, interval (``t1`` inf when unknown) and outcome."""

    process: int
    key: str
    lease: str
    holder: str
    token: int
    content: str
    t0: float
    t1: float
    outcome: str

    @property
    def holding(self) -> tuple[str, int]:
        return self.holder, self.token

    def describe(self) -> str:
        end = "?" if math.isinf(self.t1) else f"{self.t1:.3f}"
        return f"{self.content!r} on {self.key!r} {self.outcome} [{self.t0:.3f}, {end}]"


@dataclass(frozen=True, slots=True)
class Applied:
    """One version in a key's applied order, parsed from its content ``<holder>:<token>:<seq>``
    (``holder`` None when the content is not of that form)."""

    content: str
    holder: str | None
    token: int | None
    concurrent: bool = False

    @property
    def holding(self) -> tuple[str, int] | None:
        return None if self.holder is None or self.token is None else (self.holder, self.token)


def parse_content(content: str) -> tuple[str, int] | None:
    """``"<holder>:<token>:<seq>"`` -> ``(holder, token)``, or None."""
    parts = content.rsplit(":", 2)
    if len(parts) != 3:
        return None
    try:
        return parts[0], int(parts[1])
    except ValueError:
        return None


# ------------------------------------------------------------------------------ reading events


def _pairs(
    events: Iterable[Mapping[str, Any]],
) -> list[tuple[Mapping[str, Any], Mapping[str, Any] | None]]:
    """Each invocation with the next completion of its process (None: never completed)."""
    pending: dict[int, int] = {}
    out: list[tuple[Mapping[str, Any], Mapping[str, Any] | None]] = []
    for e in events:
        p = int(e["process"])
        if e["type"] == "invoke":
            if p in pending:
                raise ValueError(f"process {p} invokes twice without completing: {dict(e)}")
            pending[p] = len(out)
            out.append((e, None))
        else:
            i = pending.pop(p, None)
            if i is None:
                raise ValueError(f"completion without an invocation: {dict(e)!r}")
            out[i] = (out[i][0], e)
    return out


def _kind(done: Mapping[str, Any] | None) -> str:
    return "info" if done is None else str(done["type"])


def grants(events: Iterable[Mapping[str, Any]]) -> list[Grant]:
    """The ok acquires, each running until ``sent + min(ttl_ms, remaining_ms)``, or until its
    process sends a release of that lease, whichever is first."""
    items = [pr for pr in _pairs(events) if pr[0]["f"] in ("acquire", "release")]
    out: list[Grant] = []
    for i, (inv, done) in enumerate(items):
        if inv["f"] != "acquire" or _kind(done) != "ok":
            continue
        assert done is not None
        v = done.get("value") or {}
        ms = min(float(v.get("ttl_ms", 0)), float(v.get("remaining_ms", v.get("ttl_ms", 0))))
        sent = float(inv["time"])
        until = sent + ms / 1000.0
        process, lease = int(inv["process"]), str(inv["key"])
        for later, _ in items[i + 1:]:
            if int(later["process"]) != process or str(later["key"]) != lease:
                continue
            if later["f"] == "release":
                until = min(until, float(later["time"]))
            break  # the process's next op on this lease: a release, or a renewal (its own grant)
        out.append(Grant(process, lease, str(v.get("holder", inv.get("value", {}).get("holder"))),
                         int(v["token"]), sent, float(done["time"]), until,
                         int(v.get("skew_ms") or 0)))
    return out


def writes(events: Iterable[Mapping[str, Any]]) -> list[Write]:
    """Every fenced write with its outcome (``info`` when it never completed)."""
    out: list[Write] = []
    for inv, done in _pairs(events):
        if inv["f"] != "fwrite":
            continue
        v = inv["value"]
        kind = _kind(done)
        t1 = math.inf if done is None or kind == "info" else float(done["time"])
        out.append(Write(int(inv["process"]), str(inv["key"]), str(v["lease"]),
                         str(v["holder"]), int(v["token"]), str(v["content"]),
                         float(inv["time"]), t1, kind))
    return out


def applied_orders(events: Iterable[Mapping[str, Any]]) -> dict[str, list[Applied]]:
    """Per key, the versions the final ``history`` read returned, oldest first."""
    out: dict[str, list[Applied]] = {}
    for inv, done in _pairs(events):
        if inv["f"] != "history" or _kind(done) != "ok":
            continue
        assert done is not None
        seq: list[Applied] = []
        for row in done.get("value") or []:
            content = str(row.get("content", ""))
            parsed = parse_content(content)
            holder, token = parsed if parsed is not None else (None, None)
            seq.append(Applied(content, holder, token, bool(row.get("concurrent", False))))
        out[str(inv["key"])] = seq
    return out


# ------------------------------------------------------------------------------ the three checks


def interleaved_in_order(key: str, order: Sequence[Applied]) -> list[dict[str, Any]]:
    """(a) from an applied order: a holding whose writes are split by another holding's."""
    runs: list[tuple[str, int]] = []
    for a in order:
        h = a.holding
        if h is not None and (not runs or runs[-1] != h):
            runs.append(h)
    out: list[dict[str, Any]] = []
    last_run: dict[tuple[str, int], int] = {}
    for i, h in enumerate(runs):
        if h in last_run:
            between = runs[last_run[h] + 1]
            out.append({"key": key, "evidence": "history", "holding": list(h),
                        "between": list(between),
                        "order": [a.content for a in order]})
        last_run[h] = i
    return out


def stale_in_order(key: str, order: Sequence[Applied]) -> list[dict[str, Any]]:
    """(b) from an applied order: a version whose token is below an earlier version's."""
    out: list[dict[str, Any]] = []
    top: Applied | None = None
    for a in order:
        if a.token is None:
            continue
        if top is not None and top.token is not None and a.token < top.token:
            out.append({"key": key, "evidence": "history", "applied": a.content,
                        "after": top.content, "order": [x.content for x in order]})
        if top is None or (top.token is not None and a.token > top.token):
            top = a
    return out


def interleaved_by_acks(key: str, ws: Sequence[Write]) -> list[dict[str, Any]]:
    """(a) from acknowledgements: X acked, then Y sent and acked, then X sent (and acked)."""
    ok = sorted((w for w in ws if w.outcome == "ok"), key=lambda w: w.t0)
    out: list[dict[str, Any]] = []
    for i, x1 in enumerate(ok):
        for x2 in ok[i + 1:]:
            if x2.holding != x1.holding or x2.t0 <= x1.t1:
                continue
            for y in ok:
                if y.holding != x1.holding and y.t0 > x1.t1 and y.t1 < x2.t0:
                    out.append({"key": key, "evidence": "acks", "holding": list(x1.holding),
                                "between": list(y.holding),
                                "writes": [x1.describe(), y.describe(), x2.describe()]})
                    break
            else:
                continue
            break
    return out


def stale_by_acks(key: str, ws: Sequence[Write]) -> list[dict[str, Any]]:
    """(b) from acknowledgements: a write acked ok although a higher token of its lease was
    acked on the key before it was sent."""
    ok = [w for w in ws if w.outcome == "ok"]
    out: list[dict[str, Any]] = []
    for w in ok:
        before = [v for v in ok if v.lease == w.lease and v.t1 < w.t0 and v.token > w.token]
        if before:
            top = max(before, key=lambda v: v.token)
            out.append({"key": key, "evidence": "acks", "applied": w.describe(),
                        "after": top.describe()})
    return out


def overlapping_grants(gs: Sequence[Grant], max_offset_ms: int) -> list[dict[str, Any]]:
    """(c): grants of one lease that the server's answers say could not both stand."""
    out: list[dict[str, Any]] = []
    by_lease: dict[str, list[Grant]] = {}
    for g in gs:
        by_lease.setdefault(g.lease, []).append(g)
    for lease, items in sorted(by_lease.items()):
        for a in items:
            for b in items:
                if a is b or (a.holder, a.token) == (b.holder, b.token):
                    continue
                skew = max(a.skew_ms, b.skew_ms)
                row: dict[str, Any] = {"lease": lease, "first": a.describe(),
                                       "second": b.describe(), "clock_spread_ms": skew,
                                       "beyond_max_offset": skew > max_offset_ms}
                if a.token == b.token and a.holder != b.holder:
                    if a.sent < b.sent or (a.sent == b.sent and a.process < b.process):
                        out.append({**row, "kind": "token_reused"})
                elif a.received < b.sent and b.token < a.token:
                    out.append({**row, "kind": "token_decreased"})
                elif a.token < b.token and a.sent <= b.received < a.until:
                    out.append({**row, "kind": "granted_while_held",
                                "overlap_s": round(a.until - b.received, 3)})
    return out


# ------------------------------------------------------------------------------ the verdict


def check_lock(
    events: Sequence[Mapping[str, Any]], max_offset_ms: int = 500, history_keep: int = 10
) -> dict[str, Any]:
    """The lock checker's result: ``valid`` False on any violation of (a), (b) or (c), or on an
    acked fenced write missing from its key's history when that history cannot have been
    trimmed (at most ``history_keep`` versions read: the servers keep the current version and
    ``history.keep`` superseded ones, so a shorter history is whole)."""
    mine = [e for e in events
            if e.get("f") in ("acquire", "release", "fwrite", "history")]
    gs = grants(mine)
    ws = writes(mine)
    orders = applied_orders(mine)
    by_key: dict[str, list[Write]] = {}
    for w in ws:
        by_key.setdefault(w.key, []).append(w)

    interleaved: list[dict[str, Any]] = []
    stale: list[dict[str, Any]] = []
    for key, order in sorted(orders.items()):
        interleaved += interleaved_in_order(key, order)
        stale += stale_in_order(key, order)
    for key, kws in sorted(by_key.items()):
        interleaved += interleaved_by_acks(key, kws)
        stale += stale_by_acks(key, kws)
    overlaps = overlapping_grants(gs, max_offset_ms)

    # Acked writes the final history does not hold: lost if the history is whole, else perhaps
    # trimmed by retention (reported, not counted).
    missing: list[dict[str, Any]] = []
    lost: list[dict[str, Any]] = []
    for key, order in sorted(orders.items()):
        contents = {a.content for a in order}
        for w in by_key.get(key, []):
            if w.outcome == "ok" and w.content not in contents:
                row = {"key": key, "write": w.describe(), "versions": len(order)}
                (lost if len(order) <= history_keep else missing).append(row)

    counts: dict[str, dict[str, int]] = {}
    for inv, done in _pairs(mine):
        row = counts.setdefault(str(inv["f"]), {"ok": 0, "fail": 0, "info": 0})
        row[_kind(done)] += 1
    fenced = sum(1 for w in ws if w.outcome == "fail")
    violations = len(interleaved) + len(stale) + len(overlaps) + len(lost)
    if violations:
        parts = []
        if interleaved:
            parts.append(f"{len(interleaved)} interleaved holdings")
        if stale:
            parts.append(f"{len(stale)} stale-token writes applied")
        if overlaps:
            parts.append(f"{len(overlaps)} overlapping grants")
        if lost:
            parts.append(f"{len(lost)} acked fenced writes lost")
        summary = ", ".join(parts)
    else:
        summary = (f"{len(gs)} grants, {sum(1 for w in ws if w.outcome == 'ok')} fenced writes "
                   f"acked, {fenced} refused, {len(orders)} keys' histories read")
    return {
        "valid": violations == 0,
        "summary": summary,
        "violations": violations,
        "counts": counts,
        "grants": len(gs),
        "keys_read": len(orders),
        "interleaved": interleaved[:SHOWN],
        "interleaved_count": len(interleaved),
        "stale_applied": stale[:SHOWN],
        "stale_applied_count": len(stale),
        "overlapping_grants": overlaps[:SHOWN],
        "overlapping_grants_count": len(overlaps),
        "lost": lost[:SHOWN],
        "lost_count": len(lost),
        "acked_not_in_history": missing[:SHOWN],
        "acked_not_in_history_count": len(missing),
        "max_offset_ms": max_offset_ms,
    }
