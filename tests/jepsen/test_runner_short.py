"""The runner end to end: a stand-in workload in-process (fast, independent of the real
workloads), the verdict's exit codes, the CLI's argument parsing, the CI short schedule
(`python -m jepsen_style run --time 40 --workload all --nemesis partition,kill --nodes 5`) as a
subprocess once the workloads exist, and the coordination teeth: a cluster started with a
test-only unsafe Paxos switch (`--config`) must be caught by its workload."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from jepsen_style.checker import Verdict, check, ops_from_events
from jepsen_style.history import load_jsonl, windows
from jepsen_style.runner import (
    EXIT_INVALID,
    EXIT_UNKNOWN,
    EXIT_VALID,
    RunContext,
    RunOptions,
    parse_args,
    run,
    verdict,
)

ROOT = Path(__file__).resolve().parents[2]


class StandInRegister:
    """A trivial register workload: strong writes and reads of two keys through random nodes,
    checked with the WGL checker. ``options["force"]`` overrides the verdict (for exit codes)."""

    name = "standin"
    level = "strong"

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.counter = 0

    async def _op(self, http: aiohttp.ClientSession, process: int) -> None:
        rng, ctx = self.ctx.rng, self.ctx
        node = rng.choice(ctx.nodes)
        key = rng.choice(["a", "b"])
        url = f"{ctx.urls[node]}/v1/ns/standin/memories/{key}"
        hdrs = {"Spine-Consistency": self.level}
        if rng.random() < 0.5:
            self.counter += 1
            value = self.counter
            h = ctx.history.invoke(process, "write", key, value, node)
            try:
                async with http.put(url, json={"content": str(value)}, headers=hdrs) as r:
                    await r.read()
                    kind = "ok" if r.status < 300 else "fail" if r.status < 500 else "info"
            except (aiohttp.ClientError, TimeoutError):
                kind = "info"
            ctx.history.complete(h, kind)
        else:
            h = ctx.history.invoke(process, "read", key, None, node)
            try:
                async with http.get(url, headers=hdrs) as r:
                    body = await r.json(content_type=None)
                    if r.status == 200:
                        ctx.history.complete(h, "ok", value=int(body["content"]))
                    elif r.status == 404:
                        ctx.history.complete(h, "ok", value=None)
                    else:
                        ctx.history.complete(h, "fail", error=str(r.status))
            except (aiohttp.ClientError, TimeoutError):
                ctx.history.complete(h, "fail", error="transport")

    async def client(self, process: int, stop: asyncio.Event) -> None:
        timeout = aiohttp.ClientTimeout(total=3)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not stop.is_set():
                await self._op(http, process)
                await asyncio.sleep(0.02)

    async def final(self) -> None:
        timeout = aiohttp.ClientTimeout(total=3)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            await self._op(http, 1000)

    def check(self) -> dict[str, Any]:
        force = self.ctx.options.get("force")
        if force is not None:
            return {"valid": force, "summary": f"forced {force!r}"}
        result = check(ops_from_events(self.ctx.history.events))
        verdicts: dict[Verdict, bool | str] = {
            Verdict.LINEARIZABLE: True, Verdict.NOT_LINEARIZABLE: False,
            Verdict.UNKNOWN: "unknown"}
        valid = verdicts[result.verdict]
        return {"valid": valid, "summary": str(result.verdict),
                "ops": len(self.ctx.history.events)}


def test_verdict_and_exit_codes() -> None:
    assert verdict({"a": {"valid": True}, "b": {"valid": True}}) == ("VALID", EXIT_VALID)
    line, code = verdict({"a": {"valid": True}, "b": {"valid": False, "summary": "3 lost"}})
    assert (line, code) == ("INVALID: b (3 lost)", EXIT_INVALID)
    line, code = verdict({"a": {"valid": "unknown", "summary": "budget"}, "b": {"valid": True}})
    assert line.startswith("UNKNOWN: a (budget)") and code == EXIT_UNKNOWN
    # An anomaly outranks an undecided checker; a harness error makes a pass unknown.
    assert verdict({"a": {"valid": "unknown"}, "b": {"valid": False}})[1] == EXIT_INVALID
    assert verdict({"a": {"valid": True}}, ["cluster died"])[1] == EXIT_UNKNOWN
    assert verdict({})[1] == EXIT_UNKNOWN


def test_parse_args() -> None:
    o = parse_args(["run", "--time", "40", "--workload", "register,set", "--nemesis",
                    "partition,kill", "--nodes", "3", "--seed", "7", "--test-no-repair",
                    "--level", "eventual", "--opt", "keys=3", "--opt", "name=x"])
    assert (o.time, o.workloads, o.nemesis, o.nodes, o.seed) == (
        40.0, ["register", "set"], ["partition", "kill"], 3, 7)
    assert o.no_repair and o.level == "eventual"
    assert o.workload_options == {"keys": 3, "name": "x"}
    assert parse_args(["run", "--nemesis", "none"]).nemesis == []
    assert parse_args(["run", "--nemesis", "all"]).nemesis == ["partition", "kill", "pause",
                                                                 "skew", "forge"]
    assert parse_args(["run", "--nemesis", "forge"]).nemesis == ["forge"]
    o = parse_args(["run", "--nodes", "6", "--regions", "3", "--region-delay-ms", "40"])
    assert (o.regions, o.region_delay_ms) == (3, 40.0)
    assert parse_args(["run"]).regions == 0
    for bad in (["--nodes", "2", "--regions", "3"], ["--region-delay-ms", "-1"]):
        with pytest.raises(SystemExit):
            parse_args(["run", *bad])
    with pytest.raises(SystemExit):
        parse_args(["run", "--nemesis", "meteor"])


def _outputs_ok(out: Path) -> dict[str, Any]:
    for name in ("history.jsonl", "nemesis.jsonl", "results.json", "latency.png",
                 "verdict.txt"):
        assert (out / name).is_file(), name
        assert (out / name).stat().st_size > 0 or name == "nemesis.jsonl", name
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "verdict.txt").read_text().splitlines()) == 1
    results: dict[str, Any] = json.loads((out / "results.json").read_text())
    return results


@pytest.mark.integration
def test_run_with_a_standin_workload(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    opts = RunOptions(time=9.0, workloads=["all"], nemesis=["kill"], nodes=3, out=out, seed=11,
                      concurrency=2, fault_s=3.0, heal_s=2.0, quiet_s=1.0)
    code = run(opts, registry={"standin": StandInRegister})
    printed = capsys.readouterr().out
    results = _outputs_ok(out)
    assert code == EXIT_VALID, (printed, results)
    assert printed.rstrip().endswith("VALID")
    assert (out / "verdict.txt").read_text() == "VALID\n"
    assert results["checkers"]["standin"]["valid"] is True
    assert results["seed"] == 11 and results["errors"] == []
    events = load_jsonl(out / "history.jsonl")
    assert events and all(e["workload"] == "standin" and e["level"] == "strong" for e in events)
    assert results["stats"]["standin"]["ok"] > 20
    ws = windows(load_jsonl(out / "nemesis.jsonl"))
    assert ws and all(w.fault == "kill" and w.stop is not None for w in ws)
    assert not (out / "cluster" / "data").exists(), "data removed unless --keep-data"
    assert (out / "cluster" / "logs" / "n1.log").is_file()

    # The exit code follows the checkers (nothing else to run: no time, no faults).
    for force, want in ((False, EXIT_INVALID), ("unknown", EXIT_UNKNOWN)):
        o = RunOptions(time=1.0, nemesis=[], nodes=1, out=tmp_path / f"f{force}", seed=1,
                       concurrency=1, quiet_s=0.0, plot=False,
                       workload_options={"force": force})
        assert run(o, registry={"standin": StandInRegister}) == want
        first = (tmp_path / f"f{force}" / "verdict.txt").read_text()
        assert first.startswith("INVALID: standin" if force is False else "UNKNOWN: standin")


def _have_workloads() -> bool:
    try:
        return importlib.util.find_spec("jepsen_style.workloads") is not None
    except ImportError:
        return False


@pytest.mark.integration
@pytest.mark.timeout(280)
@pytest.mark.skipif(not _have_workloads(), reason="jepsen_style.workloads is not written yet")
def test_ci_short_schedule(tmp_path: Path) -> None:
    """The CI short schedule: every workload, partitions and kills, 5 nodes, 40 s of load."""
    out = tmp_path / "short"
    cmd = [sys.executable, "-m", "jepsen_style", "run", "--time", "40", "--workload", "all",
           "--nemesis", "partition,kill", "--nodes", "5", "--seed", "2", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=270,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False)
    tail = (proc.stdout + proc.stderr)[-6000:]
    results = _outputs_ok(out)
    assert set(results["checkers"]) == {"register", "set", "session", "convergence",
                                        "cas-register", "lock", "feed"}, tail
    assert proc.returncode == 0, f"exit {proc.returncode}\n{tail}"
    # The feed's consumer followed across nodes, was moved by faults and was fed; and the feed
    # checker has teeth on this very run (tests/jepsen/test_feed_short.py plants each anomaly).
    from tests.jepsen.test_feed_short import assert_feed_run_and_teeth
    # Its 40 s bring two fault starts, the second near the end: one move is what it can promise.
    assert_feed_run_and_teeth(out, results, fault_moves=1)


@pytest.mark.integration
@pytest.mark.timeout(200)
def test_regions_short_schedule(tmp_path: Path) -> None:
    """Issue 17's regions topology, short: 3 regions x 2 nodes, 60 ms between regions (the
    nodes' link layer), a partition that cuts one whole region, the session and register
    workloads: valid, with no monotonic-write violation, and writes paying the delay."""
    out = tmp_path / "regions"
    cmd = [sys.executable, "-m", "jepsen_style", "run", "--time", "16", "--workload",
           "session,register", "--nemesis", "partition", "--nodes", "6", "--regions", "3",
           "--seed", "1", "--fault-s", "6", "--heal-s", "4", "--quiet-s", "4", "--no-plot",
           "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"exit {proc.returncode}\n{tail}"
    results = json.loads((out / "results.json").read_text())
    session = results["checkers"]["session"]
    assert session["valid"] is True and session["monotonic_write_violations"] == 0, session
    assert session["monotonic_writes_required"] is True
    assert results["checkers"]["register"]["valid"] is True
    shapes = [json.loads(x).get("detail", {}).get("shape")
              for x in (out / "nemesis.jsonl").read_text().splitlines()]
    assert "region" in shapes, shapes
    cfg = (out / "cluster" / "cluster.yaml").read_text()
    assert all(f"region: r{i}" in cfg for i in range(3)), cfg
    started: dict[tuple[str, int], float] = {}
    took = []
    for line in (out / "history.jsonl").read_text().splitlines():
        e = json.loads(line)
        who = (e["workload"], e["process"])
        if e["type"] == "invoke":
            started[who] = e["time"] if e["f"] == "write" else -1.0
        elif started.get(who, -1.0) >= 0 and e["type"] == "ok":
            took.append(e["time"] - started.pop(who))
    took.sort()
    assert took and took[len(took) // 2] >= 0.060, took[:20]  # a quorum crosses a region


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_forge_schedule_stays_valid_and_detects_in_time(tmp_path: Path) -> None:
    """The acceptance's `forge` nemesis, short: forged and replayed gossip and RPC packets from
    127.0.K.99 while one node is paused; the stand-in register stays linearizable and every
    peer sees the paused node down within SWIM's bound."""
    out = tmp_path / "forge"
    opts = RunOptions(time=6.0, workloads=["all"], nemesis=["forge"], nodes=3, out=out, seed=5,
                      concurrency=2, fault_s=3.0, heal_s=2.0, quiet_s=1.0, plot=False)
    code = run(opts, registry={"standin": StandInRegister})
    results = json.loads((out / "results.json").read_text())
    forge = results["checkers"]["forge"]
    assert code == EXIT_VALID, (results["verdict"], forge, results["errors"])
    assert forge["valid"] is True and forge["detections"], forge
    assert all(d["detected"] and d["seconds"] <= forge["bound_s"] for d in forge["detections"])
    kinds = {k.split("-")[0] for k in forge["sent"]}
    assert {"udp", "tcp", "rpc"} <= kinds, forge["sent"]
    assert forge["sent"].get("udp-replay", 0) > 0, forge["sent"]


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("workload", "setting", "evidence"), [
    # acceptors that promise and accept any ballot: two rounds both commit from one value
    ("cas-register", "paxos.unsafe_accept_any_ballot=true", "failing_keys"),
    # a store that forgets fencing: a stalled holder's stale token is applied
    ("lock", "paxos.unsafe_ignore_fences=true", "stale_applied"),
])
def test_coordination_teeth_are_caught(
    tmp_path: Path, workload: str, setting: str, evidence: str
) -> None:
    """A short run on 3 healthy nodes with one unsafe switch on exits 1 with its anomaly."""
    out = tmp_path / workload
    cmd = [sys.executable, "-m", "jepsen_style", "run", "--time", "8", "--workload", workload,
           "--nemesis", "none", "--nodes", "3", "--seed", "1", "--quiet-s", "1", "--no-plot",
           "--config", setting, "--opt", "lock.stall_fraction=0.5", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=110,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, check=False)
    tail = (proc.stdout + proc.stderr)[-4000:]
    results = json.loads((out / "results.json").read_text())
    key, _, value = setting.partition("=")
    section, name = key.split(".")
    assert results["options"]["cluster_config"] == {section: {name: json.loads(value)}}
    assert proc.returncode == EXIT_INVALID, f"exit {proc.returncode}\n{tail}"
    checker = results["checkers"][workload]
    assert checker["valid"] is False and checker[evidence], checker["summary"]
