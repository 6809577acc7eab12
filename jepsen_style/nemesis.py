"""Faults: kernel network partitions, SIGKILL/restart, SIGSTOP/SIGCONT, clock skew and forged
packets, and the seeded schedule that injects and heals them.

**Partitions** are drop rules in an nftables table of the harness's own (``inet spine_jepsen``,
or ``spine_jepsen_K`` for a second harness's address block): one chain on the ``input`` hook,
``ip saddr A ip daddr B drop`` for both directions of every cut link. Healing deletes the table;
no other table is ever touched. The shapes (which links are cut) are pure functions of the node
list and a seeded RNG: isolate one node, random halves, majorities in a ring (every node sees a
majority, no two the same one), and a bridge (two halves joined through one node).

Spine's gossip push-pull (TCP) connects without binding the node's address, so its packets leave
from 127.0.0.1 and no ``(saddr, daddr)`` rule sees them; while a partition is up, TCP from
127.0.0.1 to a partitioned node's gossip port is dropped too (``gossip_leak_rules``). The
harness's clients never connect to gossip ports, so they are not affected. SWIM's UDP, which
does carry the node's address, is cut exactly.

**Forgery** (``forge``, :mod:`jepsen_style.forge`): forged and replayed gossip and RPC packets
from an address that is no member's, while one node is paused to time failure detection; it is
also a checker (``report()``), valid when every detection came within SWIM's bound.

**The schedule** (:class:`Nemesis`) alternates heal and fault windows (10 s each by default),
cycling through the enabled faults in a seeded random order, records each start and stop in the
:class:`~jepsen_style.history.Timeline`, and always heals everything at the end, also when
cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from jepsen_style.history import Timeline

if TYPE_CHECKING:
    from jepsen_style.cluster import JepsenCluster

Link = tuple[str, str]
LOCAL_CLIENT_ADDR = "127.0.0.1"


def link(a: str, b: str) -> Link:
    """The undirected link between two nodes (sorted pair)."""
    if a == b:
        raise ValueError(f"a node has no link to itself: {a}")
    return (a, b) if a < b else (b, a)


def cut_between(groups: Sequence[Iterable[str]]) -> frozenset[Link]:
    """Every link between nodes of different groups (a node in two groups, a bridge, is cut
    from nobody in either)."""
    sets = [set(g) for g in groups]
    nodes = set().union(*sets) if sets else set()
    cuts = set()
    for a in nodes:
        for b in nodes:
            if a < b and not any(a in g and b in g for g in sets):
                cuts.add((a, b))
    return frozenset(cuts)


@dataclass(frozen=True)
class Partition:
    """A set of cut links, with the shape and groups it came from (for the timeline)."""

    shape: str
    cuts: frozenset[Link]
    groups: tuple[tuple[str, ...], ...] = ()

    def views(self, nodes: Iterable[str]) -> dict[str, set[str]]:
        """Per node, the nodes it can still reach directly (itself included)."""
        ns = list(nodes)
        return {a: {b for b in ns if a == b or link(a, b) not in self.cuts} for a in ns}

    def detail(self) -> dict[str, Any]:
        return {"shape": self.shape, "groups": [list(g) for g in self.groups],
                "cuts": sorted([list(c) for c in self.cuts])}


def majority(n: int) -> int:
    return n // 2 + 1


def isolate(nodes: Sequence[str], rng: random.Random) -> Partition:
    """One random node cut from all others."""
    lone = rng.choice(list(nodes))
    rest = tuple(n for n in nodes if n != lone)
    return Partition("isolate", cut_between([[lone], rest]), ((lone,), rest))


def halves(nodes: Sequence[str], rng: random.Random) -> Partition:
    """A random minority (⌊n/2⌋ nodes) cut from the majority."""
    shuffled = list(nodes)
    rng.shuffle(shuffled)
    k = len(shuffled) // 2
    a, b = tuple(sorted(shuffled[:k])), tuple(sorted(shuffled[k:]))
    return Partition("halves", cut_between([a, b]), (a, b))


def majorities_ring(nodes: Sequence[str], rng: random.Random) -> Partition:
    """Jepsen's majorities ring: nodes in a random ring, each seeing the nodes within ring
    distance d (the least d with 2d+1 ≥ a majority), so every node sees a majority and no two
    the same one. With 3 nodes (where that would cut nothing) one random link is cut: each node
    still sees two of three."""
    ring = list(nodes)
    rng.shuffle(ring)
    n = len(ring)
    if n < 3:
        return Partition("majorities-ring", frozenset(), (tuple(ring),))
    d = math.ceil((majority(n) - 1) / 2)
    cuts = set()
    for i, a in enumerate(ring):
        for j, b in enumerate(ring):
            dist = min((i - j) % n, (j - i) % n)
            if a < b and dist > d:
                cuts.add((a, b))
    if not cuts:  # n == 3
        cuts.add(link(ring[0], ring[1]))
    groups = tuple(tuple(ring[(i + k) % n] for k in range(-d, d + 1)) for i in range(n))
    return Partition("majorities-ring", frozenset(cuts), (tuple(ring), *groups))


def bridge(nodes: Sequence[str], rng: random.Random) -> Partition:
    """Two halves that both contain one bridge node: the bridge sees everyone, each side sees
    only itself and the bridge (Jepsen's ``bridge``)."""
    shuffled = list(nodes)
    rng.shuffle(shuffled)
    n = len(shuffled)
    if n < 3:
        return halves(nodes, rng)
    mid = n // 2
    bridge_node = shuffled[mid]
    a = tuple(sorted(shuffled[: mid + 1]))
    b = tuple(sorted(shuffled[mid:]))
    return Partition("bridge", cut_between([a, b]), (a, b, (bridge_node,)))


def region_cut(regions: Sequence[Sequence[str]], rng: random.Random) -> Partition:
    """One whole region cut from the others (a cluster run with ``--regions``)."""
    lone = tuple(sorted(rng.choice(list(regions))))
    rest = tuple(sorted(n for g in regions for n in g if n not in lone))
    return Partition("region", cut_between([lone, rest]), (lone, rest))


SHAPES: dict[str, Callable[[Sequence[str], random.Random], Partition]] = {
    "isolate": isolate,
    "halves": halves,
    "majorities-ring": majorities_ring,
    "bridge": bridge,
}


# --------------------------------------------------------------------------- nftables


def drop_rules(cuts: Iterable[Link], host_of: Mapping[str, str]) -> list[str]:
    """``ip saddr A ip daddr B drop`` for both directions of every cut link (sorted)."""
    rules = set()
    for a, b in cuts:
        ha, hb = host_of[a], host_of[b]
        rules.add(f"ip saddr {ha} ip daddr {hb} drop")
        rules.add(f"ip saddr {hb} ip daddr {ha} drop")
    return sorted(rules)


def gossip_leak_rules(cuts: Iterable[Link], host_of: Mapping[str, str],
                      gossip_port_of: Mapping[str, int]) -> list[str]:
    """Drop TCP from 127.0.0.1 to the gossip port of every node with a cut link (Spine's
    push-pull connects from there, not from the node's own address)."""
    touched = sorted({n for c in cuts for n in c})
    return [f"ip saddr {LOCAL_CLIENT_ADDR} ip daddr {host_of[n]} tcp dport {gossip_port_of[n]} drop"
            for n in touched]


def nft_script(table: str, rules: Sequence[str]) -> str:
    """An ``nft -f`` script that replaces ``inet <table>`` with one input chain holding
    ``rules``, in one atomic transaction (no moment without the old or the new rules)."""
    body = "\n".join(f"    {r}" for r in rules)
    return (
        f"add table inet {table}\n"
        f"delete table inet {table}\n"
        f"table inet {table} {{\n"
        f"  chain input {{\n"
        f"    type filter hook input priority -10; policy accept;\n"
        f"{body}\n"
        f"  }}\n"
        f"}}\n"
    )


class NftError(RuntimeError):
    pass


_INSTALL_LOCK = threading.Lock()


class Nftables:
    """The harness's own nftables table (family ``inet``). Nothing else is ever changed."""

    def __init__(self, table: str = "spine_jepsen") -> None:
        if not table.startswith("spine_jepsen"):
            raise ValueError(f"refusing to manage a table not named spine_jepsen*: {table}")
        self.table = table

    @staticmethod
    def binary() -> str | None:
        return shutil.which("nft") or next(
            (p for p in ("/usr/sbin/nft", "/sbin/nft") if shutil.which(p)), None)

    @classmethod
    def ensure_installed(cls, log: Callable[[str], None] | None = None) -> str:
        """The path of ``nft``, installing the Debian package ``nftables`` first if missing."""
        with _INSTALL_LOCK:
            found = cls.binary()
            if found:
                return found
            say = log or (lambda m: print(m, file=sys.stderr, flush=True))
            say("jepsen_style: `nft` not found; installing the Debian package nftables "
                "with apt-get")
            cmd = ["apt-get", "install", "-y", "-q", "nftables"]
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive",
                   "PATH": os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin:/sbin:/bin"}
            r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            if r.returncode != 0:
                subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env,
                               check=False)
                r = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
            found = cls.binary()
            if not found:
                raise NftError(f"could not install nftables: {r.stderr[-2000:]}")
            return found

    def _run(self, args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        nft = self.binary()
        if nft is None:
            raise NftError("nft is not installed")
        return subprocess.run([nft, *args], input=stdin, capture_output=True, text=True,
                              check=False, timeout=30)

    def apply(self, rules: Sequence[str]) -> None:
        """Make the table hold exactly ``rules`` (no rules: the table is deleted)."""
        if not rules:
            self.delete_table()
            return
        r = self._run(["-f", "-"], nft_script(self.table, rules))
        if r.returncode != 0:
            raise NftError(f"nft -f failed ({r.returncode}): {r.stderr.strip()}")

    def delete_table(self) -> bool:
        """Delete our table if it exists (heal); whether it existed. No-op without nft."""
        if self.binary() is None or not self.exists():
            return False
        r = self._run(["delete", "table", "inet", self.table])
        if r.returncode != 0 and self.exists():
            raise NftError(f"nft delete table failed: {r.stderr.strip()}")
        return True

    def exists(self) -> bool:
        if self.binary() is None:
            return False
        r = self._run(["list", "table", "inet", self.table])
        return r.returncode == 0

    def listing(self) -> str:
        """``nft list table`` output ('' when the table does not exist)."""
        if self.binary() is None:
            return ""
        r = self._run(["list", "table", "inet", self.table])
        return r.stdout if r.returncode == 0 else ""


# --------------------------------------------------------------------------- faults


class Fault(Protocol):
    """One kind of fault. ``plan`` draws what to do (pure, from the RNG), ``start`` does it,
    ``stop`` undoes whatever is active (idempotent). ``start``/``stop`` block (run them in a
    thread from asyncio)."""

    name: str

    def plan(self, rng: random.Random) -> dict[str, Any]: ...

    def start(self, plan: Mapping[str, Any]) -> dict[str, Any]: ...

    def stop(self) -> dict[str, Any]: ...

    @property
    def active(self) -> bool: ...


def minority(n: int) -> int:
    """The most nodes that can fail while a majority remains (at least 1)."""
    return max(1, (n - 1) // 2)


@dataclass
class PartitionFault:
    """Cut links with nftables in one of ``shapes``."""

    cluster: JepsenCluster
    shapes: Sequence[str] = tuple(SHAPES)
    name: str = "partition"
    current: Partition | None = None
    nft: Nftables = field(init=False)

    def __post_init__(self) -> None:
        Nftables.ensure_installed()
        self.nft = Nftables(self.cluster.table)
        for s in self.shapes:
            if s not in SHAPES:
                raise ValueError(f"unknown partition shape {s!r} (known: {', '.join(SHAPES)})")

    def plan(self, rng: random.Random) -> dict[str, Any]:
        groups = getattr(self.cluster, "region_groups", [])
        shape = rng.choice(list(self.shapes) + (["region"] if len(groups) > 1 else []))
        if shape == "region":
            return region_cut(groups, rng).detail()
        return SHAPES[shape](self.cluster.names, rng).detail()

    def start(self, plan: Mapping[str, Any]) -> dict[str, Any]:
        cuts = frozenset(link(a, b) for a, b in plan["cuts"])
        self.current = Partition(str(plan["shape"]), cuts,
                                 tuple(tuple(g) for g in plan.get("groups", ())))
        hosts = self.cluster.hosts
        ports = {n: self.cluster.gossip_port(n) for n in self.cluster.names}
        self.nft.apply(drop_rules(cuts, hosts) + gossip_leak_rules(cuts, hosts, ports))
        return dict(plan)

    def stop(self) -> dict[str, Any]:
        was = self.current
        self.current = None
        existed = self.nft.delete_table()
        return {"healed": was.shape if was else None, "table_existed": existed}

    @property
    def active(self) -> bool:
        return self.current is not None


def _pick_nodes(rng: random.Random, nodes: Sequence[str], most: int) -> list[str]:
    k = rng.randint(1, max(1, min(most, len(nodes))))
    return sorted(rng.sample(list(nodes), k))


@dataclass
class KillFault:
    """SIGKILL a random minority of nodes; restart them (same data) on stop."""

    cluster: JepsenCluster
    most: int | None = None
    name: str = "kill"
    killed: list[str] = field(default_factory=list)

    def plan(self, rng: random.Random) -> dict[str, Any]:
        most = self.most or minority(len(self.cluster.names))
        return {"nodes": _pick_nodes(rng, self.cluster.names, most)}

    def start(self, plan: Mapping[str, Any]) -> dict[str, Any]:
        codes = {}
        for n in plan["nodes"]:
            if self.cluster.is_running(n):
                self.killed.append(n)
                codes[n] = self.cluster.kill(n)
        return {"nodes": list(plan["nodes"]), "exit": codes}

    def stop(self) -> dict[str, Any]:
        restarted, errors = [], {}
        for n in list(self.killed):
            try:
                if not self.cluster.is_running(n):
                    self.cluster.start(n)
                restarted.append(n)
                self.killed.remove(n)
            except Exception as e:
                errors[n] = repr(e)[:500]
        out: dict[str, Any] = {"restarted": restarted}
        if errors:
            out["errors"] = errors
        return out

    @property
    def active(self) -> bool:
        return bool(self.killed)


@dataclass
class PauseFault:
    """SIGSTOP a random minority of nodes; SIGCONT them on stop."""

    cluster: JepsenCluster
    most: int | None = None
    name: str = "pause"
    paused: list[str] = field(default_factory=list)

    def plan(self, rng: random.Random) -> dict[str, Any]:
        most = self.most or minority(len(self.cluster.names))
        return {"nodes": _pick_nodes(rng, self.cluster.names, most)}

    def start(self, plan: Mapping[str, Any]) -> dict[str, Any]:
        for n in plan["nodes"]:
            if self.cluster.is_running(n):
                self.cluster.pause(n)
                self.paused.append(n)
        return {"nodes": list(plan["nodes"])}

    def stop(self) -> dict[str, Any]:
        resumed = list(self.paused)
        for n in resumed:
            self.cluster.resume(n)
        self.paused.clear()
        return {"resumed": resumed}

    @property
    def active(self) -> bool:
        return bool(self.paused)


SKEW_MODES = ("small", "bump", "scramble")


def skew_plan(rng: random.Random, nodes: Sequence[str], mode: str | None = None) -> dict[str, Any]:
    """Clock offsets (ms) for a skew window. ``small``: every node within ±400 ms (under
    Spine's default ``clock.max_offset``); ``bump``: a random minority jumps ±1–10 s;
    ``scramble``: every node anywhere in ±5 s. Offsets go back to 0 at the end of the window,
    so every window jumps clocks both ways."""
    mode = mode or rng.choice(SKEW_MODES)
    offsets: dict[str, int]
    if mode == "small":
        offsets = {n: rng.randint(-400, 400) for n in nodes}
    elif mode == "bump":
        chosen = _pick_nodes(rng, nodes, minority(len(nodes)))
        offsets = {n: rng.choice((-1, 1)) * rng.randint(1000, 10000) for n in chosen}
    elif mode == "scramble":
        offsets = {n: rng.randint(-5000, 5000) for n in nodes}
    else:
        raise ValueError(f"unknown skew mode {mode!r}")
    return {"mode": mode, "offsets_ms": offsets}


@dataclass
class SkewFault:
    """Move nodes' wall clocks (``JepsenCluster.set_clock``); all back to 0 on stop."""

    cluster: JepsenCluster
    modes: Sequence[str] = SKEW_MODES
    name: str = "skew"
    skewed: set[str] = field(default_factory=set)

    def plan(self, rng: random.Random) -> dict[str, Any]:
        return skew_plan(rng, self.cluster.names, rng.choice(list(self.modes)))

    def start(self, plan: Mapping[str, Any]) -> dict[str, Any]:
        for n, off in plan["offsets_ms"].items():
            self.cluster.set_clock(n, int(off))
            self.skewed.add(n)
        return dict(plan)

    def stop(self) -> dict[str, Any]:
        reset = sorted(n for n, off in self.cluster.clock_offsets.items() if off)
        for n in self.cluster.names:
            self.cluster.set_clock(n, 0)
        self.skewed.clear()
        return {"reset": reset}

    @property
    def active(self) -> bool:
        return bool(self.skewed)


FAULTS = ("partition", "kill", "pause", "skew", "forge")


def parse_faults(spec: str) -> list[str]:
    """``partition,kill`` / ``all`` / ``none`` → the fault names (validated)."""
    spec = spec.strip().lower()
    if spec in ("", "none"):
        return []
    if spec == "all":
        return list(FAULTS)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in names if s not in FAULTS]
    if bad:
        raise ValueError(f"unknown nemesis {', '.join(bad)} (known: {', '.join(FAULTS)}, "
                         "all, none)")
    return list(dict.fromkeys(names))


def make_fault(name: str, cluster: JepsenCluster) -> Fault:
    if name == "partition":
        return PartitionFault(cluster)
    if name == "kill":
        return KillFault(cluster)
    if name == "pause":
        return PauseFault(cluster)
    if name == "skew":
        return SkewFault(cluster)
    if name == "forge":
        from jepsen_style.forge import ForgeFault

        return ForgeFault(cluster)
    raise ValueError(f"unknown fault {name!r}")


# --------------------------------------------------------------------------- the schedule


def schedule_order(names: Sequence[str], rng: random.Random, count: int) -> list[str]:
    """``count`` fault names: rounds through ``names``, each round in a fresh random order, so
    every fault comes up as early as possible and equally often."""
    out: list[str] = []
    while names and len(out) < count:
        round_ = list(names)
        rng.shuffle(round_)
        out.extend(round_)
    return out[:count]


class Nemesis:
    """Alternates ``heal_s`` quiet and ``fault_s`` faulty windows until ``stop`` is set, then
    heals everything (also on error or cancellation). ``faults``: fault objects (or names, made
    with :func:`make_fault`). Every injection and heal is recorded in ``timeline``."""

    def __init__(
        self,
        cluster: JepsenCluster,
        faults: Sequence[str | Fault],
        rng: random.Random,
        timeline: Timeline,
        *,
        fault_s: float = 10.0,
        heal_s: float = 10.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.cluster = cluster
        self.faults: list[Fault] = [make_fault(f, cluster) if isinstance(f, str) else f
                                    for f in faults]
        self.rng = rng
        self.timeline = timeline
        self.fault_s = fault_s
        self.heal_s = heal_s
        self.log = log or (lambda m: None)
        self.injected = 0

    async def run(self, stop: asyncio.Event) -> None:
        try:
            await self._loop(stop)
        except BaseException:
            self.heal_all()  # blocking, but we are going down anyway
            raise
        await asyncio.to_thread(self.heal_all)

    async def _loop(self, stop: asyncio.Event) -> None:
        if not self.faults:
            await stop.wait()
            return
        by_name = {f.name: f for f in self.faults}
        order: list[str] = []
        while not stop.is_set():
            if await _sleep_or_stop(stop, self.heal_s):
                return
            if not order:
                order = schedule_order(list(by_name), self.rng, len(by_name))
            fault = by_name[order.pop(0)]
            plan = fault.plan(self.rng)
            self.timeline.start(fault.name, plan)
            self.log(f"nemesis: start {fault.name} {plan}")
            try:
                await asyncio.to_thread(fault.start, plan)
            finally:
                self.injected += 1
                await _sleep_or_stop(stop, self.fault_s)
                detail = await asyncio.to_thread(fault.stop)
                self.timeline.stop(fault.name, detail)
                self.log(f"nemesis: stop {fault.name} {detail}")

    def heal_all(self) -> dict[str, Any]:
        """Undo every fault that is active, and make sure the cluster is whole: no table,
        every node running and resumed, clocks at 0. Records a stop for each active fault.
        Raises (after trying everything) if a node cannot be restarted."""
        summary: dict[str, Any] = {}
        errors: list[str] = []
        for f in self.faults:
            if f.active:
                try:
                    detail = f.stop()
                except Exception as e:
                    detail = {"error": repr(e)}
                    errors.append(f"{f.name}: {e!r}")
                self.timeline.stop(f.name, {**detail, "final": True})
                summary[f.name] = detail
        c = self.cluster
        if not c.closed:
            with contextlib.suppress(Exception):
                Nftables(c.table).delete_table()
            for n in c.names:
                c.resume(n)
                if c.clock_offsets.get(n):
                    c.set_clock(n, 0)
            for n in c.names:
                if not c.is_running(n):
                    try:
                        c.start(n)
                        summary.setdefault("restarted", []).append(n)
                    except Exception as e:
                        errors.append(f"restart {n}: {e}")
        if errors:
            raise RuntimeError("heal failed: " + "; ".join(errors))
        return summary


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``stop`` is set first; whether it was."""
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True
