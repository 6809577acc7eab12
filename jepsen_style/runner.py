"""One harness run: start a cluster, run the workloads' clients while the nemesis injects faults,
heal, let the cluster settle, run the final reads and the checkers, and write the output dir.

Output (``--out DIR``, default ``runs/jepsen/<time>-s<seed>``, git-ignored):

- ``history.jsonl``: every operation event of every workload (tagged ``workload``), time order;
- ``nemesis.jsonl``: the fault timeline ``{time, kind: start|stop, fault, detail}``;
- ``results.json``: each checker's dict under ``checkers``, plus counts, options and seed;
- ``latency.png``: latency and throughput over time with the fault windows shaded;
- ``verdict.txt``: one line, ``VALID`` / ``INVALID: …`` / ``UNKNOWN: …`` (also printed);
- ``cluster/``: the config and each node's log (``cluster/data`` is removed unless
  ``--keep-data``).

Exit status: 0 when every checker is valid, 1 when any found an anomaly, 2 when none did but
some could not decide (or the harness failed).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import random
import shutil
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from jepsen_style.cluster import JepsenCluster
from jepsen_style.history import History, Timeline, dumps, merge, write_jsonl
from jepsen_style.nemesis import FAULTS, Nemesis, Nftables, parse_faults
from spine.core.config_env import merge_settings

EXIT_VALID, EXIT_INVALID, EXIT_UNKNOWN = 0, 1, 2
LEVELS = ("eventual", "local_session", "session", "local_strong", "strong")


@dataclass
class RunContext:
    """What a workload is built with. ``history`` is the workload's own (tagged with its name,
    on the run's clock); ``rng`` its own, seeded from the run's seed and its name."""

    cluster: JepsenCluster
    history: History
    level: str | None
    rng: random.Random
    nodes: list[str]
    urls: dict[str, str]
    out: Path
    options: dict[str, Any] = field(default_factory=dict)
    #: The nemesis's fault timeline (the ``feed`` consumer moves to another node on each start).
    timeline: Timeline | None = None


@dataclass
class RunOptions:
    time: float = 60.0
    workloads: list[str] = field(default_factory=lambda: ["all"])
    nemesis: list[str] = field(default_factory=lambda: list(FAULTS))
    level: str | None = None
    nodes: int = 5
    regions: int = 0
    region_delay_ms: float = 60.0
    out: Path | None = None
    seed: int | None = None
    no_repair: bool = False
    concurrency: int = 3
    fault_s: float = 10.0
    heal_s: float = 10.0
    quiet_s: float = 10.0
    final_timeout_s: float = 120.0
    client_grace_s: float = 15.0
    keep_data: bool = False
    sync: bool = False
    plot: bool = True
    workload_options: dict[str, Any] = field(default_factory=dict)
    #: ``cluster.yaml`` settings deep-merged over the harness's (``--config``), e.g. the
    #: test-only teeth ``{"paxos": {"unsafe_ignore_fences": True}}``.
    cluster_config: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- arguments


def _kv(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        value: Any = json.loads(v)
    except ValueError:
        value = v
    return k.strip(), value


def dotted(pairs: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """``[("paxos.unsafe_ignore_fences", True)]`` -> ``{"paxos": {"unsafe_ignore_fences":
    True}}``: the nested mapping ``cluster.yaml`` spells with dotted keys."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        *path, leaf = key.split(".")
        if not leaf or not all(path):
            raise ValueError(f"bad config key {key!r}")
        node = out
        for part in path:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"config key {key!r} conflicts with a value set before it")
            node = child
        if isinstance(node.get(leaf), dict):
            raise ValueError(f"config key {key!r} conflicts with a section set before it")
        node[leaf] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jepsen_style",
                                description="Fault-injection tests of a real Spine cluster.")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="start a cluster, run workloads under faults, check")
    r.add_argument("--time", type=float, default=60.0, help="seconds of load (default 60)")
    r.add_argument("--workload", default="all",
                   help="comma-separated workloads, or all (default all)")
    r.add_argument("--nemesis", default="all",
                   help=f"comma-separated faults ({','.join(FAULTS)}), all or none")
    r.add_argument("--level", choices=LEVELS, default=None,
                   help="consistency level for every workload (default: each workload's own)")
    r.add_argument("--nodes", type=int, default=5)
    r.add_argument("--regions", type=int, default=0,
                   help="spread the nodes over this many regions (node i in r{i %% regions}), "
                        "links between regions delayed; partitions may cut a whole region")
    r.add_argument("--region-delay-ms", type=float, default=60.0,
                   help="one-way delay of every link between two regions (default 60)")
    r.add_argument("--out", type=Path, default=None, help="output directory")
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--concurrency", type=int, default=3, help="client processes per workload")
    r.add_argument("--fault-s", type=float, default=10.0, help="length of a fault window")
    r.add_argument("--heal-s", type=float, default=10.0, help="length of a healthy window")
    r.add_argument("--quiet-s", type=float, default=10.0,
                   help="settling time after the final heal, before the final reads")
    r.add_argument("--final-timeout", type=float, default=120.0,
                   help="bound on each workload's final phase")
    r.add_argument("--test-no-repair", action="store_true",
                   help="test only: disable hinted handoff replay and anti-entropy")
    r.add_argument("--keep-data", action="store_true", help="keep the nodes' data directories")
    r.add_argument("--sync", action="store_true", help="storage.sync (fsync) on the nodes")
    r.add_argument("--no-plot", action="store_true", help="skip latency.png")
    r.add_argument("--opt", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="a workload option (JSON value), e.g. --opt keys=3; repeatable")
    r.add_argument("--config", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="a cluster.yaml setting for every node (dotted key, JSON value), e.g. "
                        "--config paxos.unsafe_ignore_fences=true (the lock teeth); repeatable")
    return p


def parse_args(argv: Sequence[str] | None = None) -> RunOptions:
    a = build_parser().parse_args(argv)
    try:
        nemesis = parse_faults(a.nemesis)
    except ValueError as e:
        build_parser().error(str(e))
    if a.nodes < 1 or a.concurrency < 1 or a.time <= 0:
        build_parser().error("--nodes, --concurrency and --time must be positive")
    if not 0 <= a.regions <= a.nodes or not 0 <= a.region_delay_ms <= 10_000:
        build_parser().error("--regions must be in 0..--nodes, --region-delay-ms in 0..10000")
    try:
        cluster_config = dotted(a.config)
    except ValueError as e:
        build_parser().error(str(e))
    return RunOptions(
        time=a.time, workloads=[w.strip() for w in a.workload.split(",") if w.strip()],
        nemesis=nemesis, level=a.level, nodes=a.nodes, out=a.out, seed=a.seed,
        regions=a.regions, region_delay_ms=a.region_delay_ms,
        no_repair=a.test_no_repair, concurrency=a.concurrency, fault_s=a.fault_s,
        heal_s=a.heal_s, quiet_s=a.quiet_s, final_timeout_s=a.final_timeout,
        keep_data=a.keep_data, sync=a.sync, plot=not a.no_plot, workload_options=dict(a.opt),
        cluster_config=cluster_config,
    )


# --------------------------------------------------------------------------- workloads


def load_registry() -> dict[str, type]:
    """``jepsen_style.workloads.WORKLOADS``."""
    mod = importlib.import_module("jepsen_style.workloads")
    registry = getattr(mod, "WORKLOADS", None)
    if not isinstance(registry, Mapping):
        raise RuntimeError("jepsen_style.workloads has no WORKLOADS registry")
    return dict(registry)


def select_workloads(names: Sequence[str], registry: Mapping[str, type]) -> list[str]:
    if not names or "all" in names:
        return list(registry)
    unknown = [n for n in names if n not in registry]
    if unknown:
        raise ValueError(f"unknown workload {', '.join(unknown)} (known: {', '.join(registry)})")
    return list(dict.fromkeys(names))


# --------------------------------------------------------------------------- verdict


def verdict(checkers: Mapping[str, Mapping[str, Any]],
            errors: Sequence[str] = ()) -> tuple[str, int]:
    """The one-line verdict and the exit status for the checkers' results."""
    invalid = [n for n, r in checkers.items() if r.get("valid") is False]
    unknown = [n for n, r in checkers.items() if r.get("valid") is not True
               and r.get("valid") is not False]
    if invalid:
        parts = []
        for n in invalid:
            why = _why(checkers[n])
            parts.append(f"{n} ({why})" if why else n)
        return "INVALID: " + "; ".join(parts), EXIT_INVALID
    if unknown or errors or not checkers:
        parts = [f"{n} ({_why(checkers[n]) or 'undecided'})" for n in unknown]
        parts += [f"harness: {e.splitlines()[0][:200]}" for e in errors]
        if not checkers and not errors:
            parts.append("no checker ran")
        return "UNKNOWN: " + "; ".join(parts), EXIT_UNKNOWN
    return "VALID", EXIT_VALID


def _why(result: Mapping[str, Any]) -> str:
    for k in ("summary", "message", "explanation", "error"):
        v = result.get(k)
        if isinstance(v, str) and v:
            return v.splitlines()[0][:200]
    for k in ("lost", "failing_keys", "violations", "anomalies"):
        v = result.get(k)
        if isinstance(v, list | dict) and v:
            return f"{k}: {len(v)}"
        if isinstance(v, int) and v:
            return f"{k}: {v}"
    return ""


# --------------------------------------------------------------------------- the run


class Log:
    """Progress lines on stdout, stamped with the run's clock."""

    def __init__(self, origin: float | None = None) -> None:
        self.origin = origin

    def __call__(self, msg: str) -> None:
        t = "" if self.origin is None else f"[{time.monotonic() - self.origin:7.1f}s] "
        print(f"{t}{msg}", flush=True)


def default_out(seed: int) -> Path:
    return Path("runs") / "jepsen" / f"{time.strftime('%Y%m%d-%H%M%S')}-s{seed}"


def _stats(events: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for e in events:
        if e.get("type") == "invoke":
            continue
        row = out.setdefault(str(e.get("workload")), {"ok": 0, "fail": 0, "info": 0})
        row[str(e["type"])] = row.get(str(e["type"]), 0) + 1
    return out


@dataclass
class _Run:
    opts: RunOptions
    registry: Mapping[str, type]
    log: Log
    out: Path
    seed: int
    errors: list[str] = field(default_factory=list)
    histories: dict[str, History] = field(default_factory=dict)
    timeline: Timeline | None = None
    checkers: dict[str, dict[str, Any]] = field(default_factory=dict)
    cluster: JepsenCluster | None = None
    injected: int = 0

    def error(self, what: str, exc: BaseException | None = None) -> None:
        text = what if exc is None else f"{what}: {exc!r}"
        self.errors.append(text)
        self.log(f"ERROR {text}")
        if exc is not None:
            tb = "".join(traceback.format_exception(exc))
            with (self.out / "harness-errors.txt").open("a") as fh:
                fh.write(f"{text}\n{tb}\n")

    async def drive(self, cluster: JepsenCluster, names: list[str], origin: float) -> None:
        opts = self.opts
        self.timeline = Timeline(origin)
        workloads: dict[str, Any] = {}
        options = {"no_repair": opts.no_repair, "time": opts.time, "seed": self.seed,
                   "concurrency": opts.concurrency, **opts.workload_options}
        for name in names:
            h = History(origin, workload=name)
            self.histories[name] = h
            ctx = RunContext(cluster=cluster, history=h, level=opts.level,
                             rng=random.Random(f"{self.seed}/{name}"), nodes=list(cluster.names),
                             urls=cluster.urls, out=self.out, options=dict(options),
                             timeline=self.timeline)
            workloads[name] = w = self.registry[name](ctx)
            lvl = getattr(w, "level", None) or opts.level
            h.default_level = lvl if isinstance(lvl, str) else None

        stop = asyncio.Event()
        nemesis = Nemesis(cluster, opts.nemesis, random.Random(f"{self.seed}/nemesis"),
                          self.timeline, fault_s=opts.fault_s, heal_s=opts.heal_s, log=self.log)
        clients: dict[asyncio.Task[None], str] = {}
        for name, w in workloads.items():
            for p in range(opts.concurrency):
                clients[asyncio.create_task(w.client(p, stop), name=f"{name}/{p}")] = name
        nem_task = asyncio.create_task(nemesis.run(stop), name="nemesis")
        self.log(f"running {', '.join(names)} x{opts.concurrency} for {opts.time:g}s; "
                 f"nemesis: {', '.join(opts.nemesis) or 'none'}")
        try:
            done, _ = await asyncio.wait([*clients, nem_task], timeout=opts.time,
                                         return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                if t.exception() is not None and t is not nem_task:
                    self.error(f"client {t.get_name()} crashed", t.exception())
        finally:
            stop.set()
            pending = [t for t in clients if not t.done()]
            if pending:
                _, late = await asyncio.wait(pending, timeout=opts.client_grace_s)
                for t in late:
                    t.cancel()
                await asyncio.gather(*late, return_exceptions=True)
            try:
                await nem_task
            except Exception as e:
                self.error("nemesis failed", e)
            self.injected = nemesis.injected
            for f in nemesis.faults:  # a fault that measures something (forge) is a checker too
                report = getattr(f, "report", None)
                if callable(report):
                    try:
                        result = report()
                    except Exception as e:
                        result = {"valid": "unknown", "error": repr(e)}
                    if result is not None:  # None: the fault never came up in this run
                        self.checkers[f.name] = result
        for t in clients:
            if t.done() and not t.cancelled() and t.exception() is not None:
                msg = f"client {t.get_name()} crashed"
                if not any(e.startswith(msg) for e in self.errors):
                    self.error(msg, t.exception())
        for h in self.histories.values():
            n = h.close_open("client stopped before completing")
            if n:
                self.log(f"{n} operation(s) left open in {h.tags.get('workload')} → info")

        # Final heal (the nemesis already did it; this makes sure, and records nothing new).
        try:
            await asyncio.to_thread(nemesis.heal_all)
        except Exception as e:
            self.error("final heal failed", e)
        self.log(f"healed; quiet for {opts.quiet_s:g}s")
        await asyncio.sleep(opts.quiet_s)
        try:
            await asyncio.to_thread(cluster.wait_peers_alive, 30.0)
        except Exception as e:
            self.error("nodes do not all see each other alive after healing", e)

        for name, w in workloads.items():
            self.log(f"final phase: {name}")
            try:
                await asyncio.wait_for(w.final(), timeout=opts.final_timeout_s)
            except Exception as e:
                self.error(f"final phase of {name} failed", e)
        for h in self.histories.values():
            h.close_open("final phase did not complete")
        for name, w in workloads.items():
            self.log(f"checking {name}")
            try:
                result = await asyncio.to_thread(w.check)
                if not isinstance(result, dict) or "valid" not in result:
                    raise TypeError(f"check() returned {result!r:.200}")
                self.checkers[name] = result
            except Exception as e:
                self.checkers[name] = {"valid": "unknown", "error": f"checker crashed: {e!r}"}
                self.error(f"checker {name} crashed", e)
            self.log(f"  {name}: valid={self.checkers[name].get('valid')}")

    def write_outputs(self) -> tuple[str, int]:
        out = self.out
        events = merge(self.histories.values())
        write_jsonl(out / "history.jsonl", events)
        tl_events = self.timeline.events if self.timeline else []
        write_jsonl(out / "nemesis.jsonl", tl_events)
        line, code = verdict(self.checkers, self.errors)
        c = self.cluster
        opts = asdict(self.opts)
        opts["out"] = str(out)
        results = {
            "verdict": line,
            "exit_code": code,
            "seed": self.seed,
            "options": opts,
            "cluster": None if c is None else {
                "nodes": c.names, "hosts": c.hosts, "base_port": c.base, "table": c.table,
                "root": str(c.root)},
            "checkers": self.checkers,
            "stats": _stats(events),
            "nemesis": {"injected": self.injected, "events": len(tl_events)},
            "errors": self.errors,
        }
        (out / "results.json").write_text(json.dumps(json.loads(dumps(results)), indent=2) + "\n")
        if self.opts.plot:
            try:
                from jepsen_style.plot import plot_run

                plot_run(events, tl_events, out / "latency.png",
                         title=f"{', '.join(self.histories) or 'no workload'} · "
                               f"nemesis {', '.join(self.opts.nemesis) or 'none'} · "
                               f"seed {self.seed}")
            except Exception as e:
                self.error("plot failed", e)
                line, code = verdict(self.checkers, self.errors)
                results["verdict"], results["exit_code"] = line, code
                (out / "results.json").write_text(
                    json.dumps(json.loads(dumps(results)), indent=2) + "\n")
        (out / "verdict.txt").write_text(line + "\n")
        return line, code


def run(opts: RunOptions, registry: Mapping[str, type] | None = None) -> int:
    """One run; the exit status (0 valid, 1 anomaly, 2 unknown or harness failure)."""
    seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(2**31)
    out = (opts.out or default_out(seed)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    logger = Log()
    if registry is None:
        registry = load_registry()
    names = select_workloads(opts.workloads, registry)
    state = _Run(opts, registry, logger, out, seed)
    logger(f"jepsen_style run: seed {seed}, out {out}")
    overrides: dict[str, Any] = {}
    if opts.no_repair:
        overrides = {"handoff": {"enabled": False}, "antientropy": {"enabled": False}}
        logger("test-no-repair: hinted handoff replay and anti-entropy are OFF")
    if opts.cluster_config:
        overrides = merge_settings(overrides, opts.cluster_config)
        logger(f"cluster.yaml overrides: {json.dumps(opts.cluster_config, sort_keys=True)}")
    cluster: JepsenCluster | None = None
    try:
        try:
            if "partition" in opts.nemesis:
                Nftables.ensure_installed(logger)
            where = (f" in {opts.regions} regions, {opts.region_delay_ms:g} ms apart"
                     if opts.regions else "")
            logger(f"starting {opts.nodes} nodes{where}")
            cluster = JepsenCluster(out / "cluster", opts.nodes, overrides, sync=opts.sync,
                                    rng=random.Random(f"{seed}/ports"), regions=opts.regions,
                                    region_delay_ms=opts.region_delay_ms)
            state.cluster = cluster
            logger(f"cluster up: {', '.join(f'{n}={u}' for n, u in cluster.urls.items())}")
            origin = time.monotonic()
            logger.origin = origin
            asyncio.run(state.drive(cluster, names, origin))
        except KeyboardInterrupt:
            state.error("interrupted")
        except Exception as e:
            state.error("run failed", e)
        finally:
            if cluster is not None:
                try:
                    cluster.close()
                except Exception as e:
                    state.error("cluster close failed", e)
                if not opts.keep_data:
                    shutil.rmtree(cluster.data_dir, ignore_errors=True)
    finally:
        line, code = state.write_outputs()
        print(line, flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    try:
        return run(opts)
    except ValueError as e:  # a bad workload name
        print(f"error: {e}", file=sys.stderr)
        return 64


if __name__ == "__main__":
    sys.exit(main())
