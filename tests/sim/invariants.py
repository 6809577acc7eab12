"""What must hold during and after every simulated run, judged from the nodes' real stores.

- **Quorum**: every acknowledged session or strong write is held (that version or a newer one)
  by enough owners, under every ring map a serving node uses, that a quorum read under that map
  meets it: of the owners that can answer, fewer than R lack it.
- **Sessions**: read-your-writes and monotonic reads (checked by each client, `workload`).
- **Linearizability** of the strong keys: the project's WGL checker (jepsen_style.checker).
- **Convergence** after heal: every owner under the final map holds the same version of every
  key, never older than an acknowledged write (so no acknowledged write is lost and no tombstone
  resurrects), and only content some client wrote (nothing invented).
"""

from __future__ import annotations

from collections.abc import Iterable

from jepsen_style.checker import linearizability
from jepsen_style.checker.history import Op as RegisterOp
from spine.api.readiness import serves_clients
from spine.core.clock import Version
from spine.core.consistency import Level
from spine.node import Node
from tests.sim.workload import KEYS, NS, History


def serving(live: dict[str, Node]) -> dict[str, Node]:
    """The live nodes that coordinate client requests (not left, not removed)."""
    return {name: node for name, node in live.items() if serves_clients(node)}


def newest_acked(history: History, levels: Iterable[Level], now: float) -> dict[str, Version]:
    """Per key, the newest version an acknowledged write (of those levels) returned by `now`."""
    wanted = set(levels)
    out: dict[str, Version] = {}
    for op in history.acked():
        if op.level in wanted and op.version is not None and op.end is not None \
                and op.end <= now and (op.key not in out or op.version > out[op.key]):
            out[op.key] = op.version
    return out


def stored_version(node: Node, key: str) -> Version | None:
    rec = node.store.get(NS, key)
    return None if rec is None else rec.version


def quorum_breaches(live: dict[str, Node], history: History, r: int, now: float) -> list[str]:
    """Acknowledged writes a quorum read under some serving node's map could miss."""
    out: list[str] = []
    acked = newest_acked(history, (Level.SESSION, Level.STRONG), now)
    if not acked:
        return out
    held: dict[tuple[str, str], Version | None] = {}
    for viewer, node in serving(live).items():
        placement = node.keeper.placement
        for key, version in acked.items():
            owners = placement.owners(placement.shard(NS, key))
            lacking = []
            for o in owners:
                if o not in live:
                    continue  # cannot answer: it makes a quorum harder, never a stale one
                if (o, key) not in held:
                    held[(o, key)] = stored_version(live[o], key)
                have = held[(o, key)]
                if have is None or have < version:
                    lacking.append(o)
            if len(lacking) >= r:
                out.append(f"t={now:.4f}: acked {key}@{version} is missing on {lacking} of"
                           f" owners {list(owners)} under {viewer}'s ring"
                           f" {node.keeper.map.digest()}")
    return out


def linearizability_report(history: History) -> str | None:
    """None when the strong keys' history is linearizable, else the checker's explanation."""
    ops: list[RegisterOp] = []
    for o in history.ops:
        if o.level is not Level.STRONG or o.end is None:
            continue
        if o.kind == "read":
            if o.ok:
                ops.append(RegisterOp(o.client, o.key, "read", o.value, o.invoke, o.end, "ok"))
            continue
        if o.kind == "cas":  # 412: the key did not hold `expect` (values are unique per write)
            cas = (o.expect, o.value)
            if o.ok is None:
                ops.append(RegisterOp(o.client, o.key, "cas", cas, o.invoke, None, "info"))
            else:
                ops.append(RegisterOp(o.client, o.key, "cas", cas, o.invoke, o.end,
                                      "ok" if o.ok else "fail"))
            continue
        if o.ok:
            ops.append(RegisterOp(o.client, o.key, "write", o.value, o.invoke, o.end, "ok"))
        else:  # unknown: it may take effect at any time after its invocation, or never
            ops.append(RegisterOp(o.client, o.key, "write", o.value, o.invoke, None, "info"))
    if not ops:
        return None
    result = linearizability.check(ops)
    if result.verdict is linearizability.Verdict.NOT_LINEARIZABLE:
        bad = [k for k, v in result.keys.items()
               if v.verdict is linearizability.Verdict.NOT_LINEARIZABLE]
        return f"strong keys not linearizable: {bad}: {result.keys[bad[0]]}"
    return None


def convergence_gaps(live: dict[str, Node], history: History, *, eventual: bool = True
                     ) -> list[str]:
    """Empty once every owner of every key, under the map the serving nodes share, holds the
    same version, at least the newest acknowledged one, with content some client wrote.
    `eventual`: hold eventual writes to that too (not after a remove: an eventual write is
    acknowledged by one replica, which may be the one removed)."""
    nodes = serving(live)
    if not nodes:
        return ["no serving node"]
    digests = {n.keeper.map.digest() for n in nodes.values()}
    if len(digests) > 1:
        return [f"ring maps still differ: {sorted(digests)}"]
    placement = next(iter(nodes.values())).keeper.placement
    if placement.moves():
        return [f"ring change not settled: {len(placement.moves())} moves left"]
    levels = list(Level) if eventual else [Level.SESSION, Level.STRONG]
    acked = newest_acked(history, levels, float("inf"))
    written = {o.value for o in history.ops if o.kind in ("write", "cas")}
    out: list[str] = []
    for key in (k for keys in KEYS.values() for k in keys):
        owners = placement.owners(placement.shard(NS, key))
        missing = [o for o in owners if o not in live]
        if missing:
            out.append(f"{key}: owners {missing} are not running")
            continue
        recs = {o: live[o].store.get(NS, key) for o in owners}
        versions = {None if r is None else r.version for r in recs.values()}
        if len(versions) > 1:
            seen = {o: None if r is None else r.version for o, r in recs.items()}
            out.append(f"{key}: owners disagree: {seen}")
            continue
        rec = next(iter(recs.values()))
        if key in acked and (rec is None or rec.version < acked[key]):
            out.append(f"{key}: holds {None if rec is None else rec.version}, older than the"
                       f" acknowledged {acked[key]} (a lost write or a resurrection)")
        if rec is not None and not rec.deleted and rec.content not in written:
            out.append(f"{key}: holds content {rec.content!r} no client wrote")
    return out
