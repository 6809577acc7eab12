"""The nemesis: partition shapes (pure, seeded), nftables scripts, the fault schedule (with fake
faults), and, on real processes, that nft partitions cut gossip and heal, and that the clock
control moves a node's clock."""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import pytest

from jepsen_style.cluster import JepsenCluster
from jepsen_style.history import Timeline, windows
from jepsen_style.nemesis import (
    FAULTS,
    SHAPES,
    Nemesis,
    Nftables,
    PartitionFault,
    bridge,
    cut_between,
    drop_rules,
    gossip_leak_rules,
    halves,
    isolate,
    link,
    majorities_ring,
    majority,
    nft_script,
    parse_faults,
    region_cut,
    schedule_order,
    skew_plan,
)
from tests.harness.wait import wait_until


def names(n: int) -> list[str]:
    return [f"n{i + 1}" for i in range(n)]


# ----------------------------------------------------------------------------- shapes


def test_cut_between_groups() -> None:
    assert cut_between([["a"], ["b", "c"]]) == {("a", "b"), ("a", "c")}
    # A node in both groups (a bridge) is cut from nobody.
    assert cut_between([["a", "b"], ["b", "c"]]) == {("a", "c")}
    assert cut_between([["a", "b", "c"]]) == frozenset()
    assert link("n3", "n1") == ("n1", "n3")
    with pytest.raises(ValueError):
        link("n1", "n1")


def test_region_cut_cuts_one_whole_region_from_the_rest() -> None:
    regions = [["n1", "n4"], ["n2", "n5"], ["n3", "n6"]]
    seen = set()
    for seed in range(20):
        p = region_cut(regions, random.Random(seed))
        lone, rest = p.groups
        assert sorted(lone) in [sorted(g) for g in regions]
        assert p.cuts == cut_between([lone, rest]) and len(p.cuts) == 2 * 4
        assert p.shape == "region"
        seen.add(lone)
    assert len(seen) == 3


@pytest.mark.parametrize("n", [3, 4, 5, 7])
def test_isolate(n: int) -> None:
    nodes = names(n)
    for seed in range(20):
        p = isolate(nodes, random.Random(seed))
        (lone,), rest = p.groups
        assert p.cuts == {link(lone, o) for o in rest}
        views = p.views(nodes)
        assert views[lone] == {lone}
        assert all(views[o] == set(rest) for o in rest)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 9])
def test_halves(n: int) -> None:
    nodes = names(n)
    for seed in range(20):
        p = halves(nodes, random.Random(seed))
        a, b = p.groups
        assert len(a) == n // 2 and len(b) == n - n // 2 and not set(a) & set(b)
        assert len(b) >= majority(n) or n % 2 == 0
        assert len(p.cuts) == len(a) * len(b)
        views = p.views(nodes)
        assert all(views[x] == set(a) for x in a) and all(views[x] == set(b) for x in b)


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7, 8, 9])
def test_majorities_ring_every_node_sees_a_distinct_majority(n: int) -> None:
    nodes = names(n)
    for seed in range(20):
        p = majorities_ring(nodes, random.Random(seed))
        views = p.views(nodes)
        assert p.cuts, "something must be cut"
        for node, seen in views.items():
            assert len(seen) >= majority(n), (node, seen)
            assert len(seen) < n or n == 3, "each node must miss someone (n > 3)"
        if n > 3:
            assert len({frozenset(v) for v in views.values()}) == n, "majorities are distinct"
        # No component of "sees" is a clique containing everyone: a real partition.
        assert any(len(v) < n for v in views.values())


def test_majorities_ring_five_nodes_is_a_ring() -> None:
    p = majorities_ring(names(5), random.Random(7))
    ring = list(p.groups[0])
    for i, a in enumerate(ring):
        near = {ring[(i - 1) % 5], ring[(i + 1) % 5]}
        far = set(ring) - near - {a}
        assert p.views(ring)[a] == near | {a}
        assert all(link(a, f) in p.cuts for f in far)
    assert len(p.cuts) == 5


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7])
def test_bridge(n: int) -> None:
    nodes = names(n)
    for seed in range(20):
        p = bridge(nodes, random.Random(seed))
        a, b, (mid,) = p.groups
        assert set(a) & set(b) == {mid} and set(a) | set(b) == set(nodes)
        views = p.views(nodes)
        assert views[mid] == set(nodes), "the bridge sees everyone"
        for x in set(a) - {mid}:
            assert views[x] == set(a)
        for x in set(b) - {mid}:
            assert views[x] == set(b)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_shapes_are_seeded_and_vary(shape: str) -> None:
    nodes = names(5)
    fn = SHAPES[shape]
    assert fn(nodes, random.Random(42)) == fn(nodes, random.Random(42))
    seen = {fn(nodes, random.Random(s)).cuts for s in range(40)}
    assert len(seen) > 3, "different seeds cut different links"
    touched = {x for cuts in seen for c in cuts for x in c}
    assert touched == set(nodes)


# ----------------------------------------------------------------------------- nft rules


HOSTS = {"n1": "127.0.0.11", "n2": "127.0.0.12", "n3": "127.0.0.13"}


def test_drop_rules_cut_both_directions() -> None:
    rules = drop_rules({("n1", "n2")}, HOSTS)
    assert rules == ["ip saddr 127.0.0.11 ip daddr 127.0.0.12 drop",
                     "ip saddr 127.0.0.12 ip daddr 127.0.0.11 drop"]
    leak = gossip_leak_rules({("n1", "n2")}, HOSTS, {"n1": 2001, "n2": 2002, "n3": 2003})
    assert leak == ["ip saddr 127.0.0.1 ip daddr 127.0.0.11 tcp dport 2001 drop",
                    "ip saddr 127.0.0.1 ip daddr 127.0.0.12 tcp dport 2002 drop"]


def test_nft_script_replaces_only_our_table() -> None:
    script = nft_script("spine_jepsen", ["ip saddr 127.0.0.11 ip daddr 127.0.0.12 drop"])
    lines = script.splitlines()
    assert lines[:3] == ["add table inet spine_jepsen", "delete table inet spine_jepsen",
                         "table inet spine_jepsen {"]
    assert "hook input" in script and "policy accept" in script
    assert "flush" not in script and "ruleset" not in script
    assert all("spine_jepsen" in ln for ln in lines if "table" in ln)
    with pytest.raises(ValueError):
        Nftables("filter")


def test_parse_faults_and_skew_plans() -> None:
    assert parse_faults("all") == list(FAULTS)
    assert parse_faults("none") == []
    assert parse_faults("partition, kill,partition") == ["partition", "kill"]
    with pytest.raises(ValueError, match="unknown nemesis"):
        parse_faults("partition,flood")
    nodes = names(5)
    for seed in range(30):
        plan = skew_plan(random.Random(seed), nodes)
        offs = plan["offsets_ms"]
        assert offs and set(offs) <= set(nodes)
        if plan["mode"] == "small":
            assert all(abs(v) <= 400 for v in offs.values())
        elif plan["mode"] == "bump":
            assert len(offs) <= 2 and all(1000 <= abs(v) <= 10000 for v in offs.values())
        else:
            assert all(abs(v) <= 5000 for v in offs.values())
    signs = {v > 0 for s in range(30) for v in skew_plan(random.Random(s), nodes,
                                                          "bump")["offsets_ms"].values()}
    assert signs == {True, False}, "clocks jump both ways"


def test_schedule_order_rounds() -> None:
    order = schedule_order(["a", "b", "c"], random.Random(1), 9)
    for i in range(0, 9, 3):
        assert sorted(order[i:i + 3]) == ["a", "b", "c"]
    assert schedule_order([], random.Random(1), 3) == []


# ----------------------------------------------------------------------------- the schedule


class FakeCluster:
    names: ClassVar[list[str]] = ["n1", "n2", "n3"]
    table = "spine_jepsen_unit_test_fake"
    closed = False

    def __init__(self) -> None:
        self.clock_offsets = {n: 0 for n in self.names}
        self.resumed: list[str] = []

    def resume(self, node: str) -> None:
        self.resumed.append(node)

    def is_running(self, node: str) -> bool:
        return True

    def set_clock(self, node: str, offset: int) -> None:
        self.clock_offsets[node] = offset


class FakeFault:
    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        self.name = name
        self.log = log
        self.on = False

    def plan(self, rng: random.Random) -> dict[str, Any]:
        return {"x": rng.randint(0, 9)}

    def start(self, plan: Mapping[str, Any]) -> dict[str, Any]:
        self.log.append(("start", self.name))
        self.on = True
        return dict(plan)

    def stop(self) -> dict[str, Any]:
        self.log.append(("stop", self.name))
        self.on = False
        return {}

    @property
    def active(self) -> bool:
        return self.on


def _nemesis(seed: int) -> tuple[Nemesis, list[tuple[str, str]], Timeline]:
    log: list[tuple[str, str]] = []
    tl = Timeline()
    faults = [FakeFault("partition", log), FakeFault("kill", log)]
    nem = Nemesis(FakeCluster(), faults, random.Random(seed), tl,  # type: ignore[arg-type]
                  fault_s=0.05, heal_s=0.03)
    return nem, log, tl


def test_schedule_alternates_and_heals_at_the_end() -> None:
    async def go() -> tuple[list[tuple[str, str]], Timeline]:
        nem, log, tl = _nemesis(3)
        stop = asyncio.Event()
        task = asyncio.create_task(nem.run(stop))
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.wait_for(task, 5)
        return log, tl

    log, tl = asyncio.run(go())
    assert len(log) >= 6
    # Strict alternation: start X, stop X, start Y, stop Y, ...
    for i in range(0, len(log), 2):
        assert log[i][0] == "start" and log[i + 1] == ("stop", log[i][1])
    assert {f for _, f in log} == {"partition", "kill"}
    ws = tl.windows()
    assert all(w.stop is not None for w in ws) and len(ws) == len(log) // 2
    for w1, w2 in itertools.pairwise(ws):
        assert w1.stop is not None and w2.start - w1.stop >= 0.02, "a heal window in between"
    assert [e["kind"] for e in tl.events] == ["start", "stop"] * len(ws)


def test_cancelled_schedule_still_heals() -> None:
    async def go() -> tuple[Nemesis, list[tuple[str, str]], Timeline]:
        nem, log, tl = _nemesis(5)
        nem.fault_s = 30.0  # cancel in the middle of a fault window
        task = asyncio.create_task(nem.run(asyncio.Event()))
        while not log:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return nem, log, tl

    nem, log, tl = asyncio.run(go())
    assert log[-1][0] == "stop" and log.count(("stop", log[0][1])) == 1
    assert not any(f.active for f in nem.faults)
    assert tl.events[-1]["kind"] == "stop" and tl.events[-1]["detail"].get("final")
    assert windows(tl.events)[0].stop is not None


# ----------------------------------------------------------------------------- real processes


@pytest.fixture
def cluster3(tmp_path: Path) -> Iterator[JepsenCluster]:
    c = JepsenCluster(tmp_path / "c", nodes=3)
    try:
        yield c
    finally:
        c.close()


def _alive(c: JepsenCluster, observer: str) -> set[str]:
    return c.alive_seen_by(observer)


@pytest.mark.integration
def test_nft_partition_cuts_gossip_and_heals(cluster3: JepsenCluster) -> None:
    c = cluster3
    assert [c.host(n) for n in c.names] == [f"127.0.{c.hosts['n1'].split('.')[2]}.{11 + i}"
                                            for i in range(3)]
    fault = PartitionFault(c)
    nft = Nftables(c.table)
    plan = isolate(c.names, random.Random(0)).detail()
    lone = plan["groups"][0][0]
    others = [n for n in c.names if n != lone]
    fault.start(plan)
    assert nft.exists()
    listing = nft.listing()
    assert f"ip saddr {c.host(lone)} ip daddr {c.host(others[0])} drop" in listing
    # The harness (from 127.0.0.1) still reaches every node, the cut one included.
    assert all(c.healthy(n) for n in c.names)
    wait_until(lambda: lone not in _alive(c, others[0]), 30, 0.2,
               f"{others[0]} to see {lone} down")
    wait_until(lambda: not set(others) & _alive(c, lone), 30, 0.2,
               f"{lone} to see {others} down")
    assert others[1] in _alive(c, others[0]), "the majority side still sees itself"
    fault.stop()
    assert not nft.exists()
    c.wait_peers_alive(timeout=30)
    # A partition left in place is removed by close().
    fault.start(plan)
    assert nft.exists()
    c.close()
    assert not nft.exists()
    assert not any(c.is_running(n) for n in c.names)


def _uuid7_ms(mid: str) -> int:
    return uuid.UUID(mid).int >> 80


def _iso_ms(stamp: str) -> int:
    return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000)


@pytest.mark.integration
def test_clock_skew_moves_a_nodes_wall_clock(tmp_path: Path) -> None:
    with JepsenCluster(tmp_path / "c", nodes=1) as c:
        def mint(offset_ms: int) -> tuple[int, dict[str, Any]]:
            now = int(time.time() * 1000)
            status, body, _ = c.http("n1", "POST", "/v1/ns/skew/memories",
                                     {"content": f"at {offset_ms}"})
            assert status == 201, (status, body)
            return _uuid7_ms(body["id"]) - now, body

        def minted(offset_ms: int) -> tuple[int, dict[str, Any]]:
            """Set the offset, then mint until the node has read the file (every 50 ms)."""
            c.set_clock("n1", offset_ms)

            def followed() -> tuple[int, dict[str, Any]] | None:
                got = mint(offset_ms)
                return got if abs(got[0] - offset_ms) <= 5_000 else None

            return wait_until(followed, 10.0, 0.05, f"n1 to follow {offset_ms} ms")

        ahead, rec = minted(90_000)
        assert 89_000 <= ahead <= 91_000, ahead
        assert _iso_ms(rec["created_at"]) - int(time.time() * 1000) > 85_000
        behind, _ = minted(-90_000)  # a jump back of three minutes
        assert -91_000 <= behind <= -89_000, behind
        back, _ = minted(0)
        assert abs(back) <= 1_000, back
        # Kill, pause and restart keep working on the same data.
        c.pause("n1")
        with pytest.raises(OSError):
            c.healthy("n1", timeout=0.5)
        c.resume("n1")
        assert c.healthy("n1")
        assert c.kill("n1") == -9
        c.start("n1")
        status, body, _ = c.http("n1", "GET", f"/v1/ns/skew/memories/{rec['id']}")
        assert status == 200 and body["content"] == "at 90000"


@pytest.mark.integration
@pytest.mark.parametrize("level", ["strong", "eventual"])
def test_regression_timed_out_forward_is_not_replayed_after_heal(tmp_path: Path,
                                                                 level: str) -> None:
    with JepsenCluster(tmp_path / "c", nodes=4) as c:
        hdrs = {"Spine-Consistency": level}
        entry = "n1"
        path = ""
        coordinator = None
        for i in range(100):  # a key the entry node forwards to another coordinator
            path = f"/v1/ns/zombie/memories/k{i}"
            status, _, h = c.http(entry, "PUT", path, {"content": "v0"}, hdrs)
            coordinator = h.get("Spine-Coordinator")
            if status in (200, 201) and coordinator not in (None, entry):
                break
        assert coordinator is not None and coordinator != entry
        nft = Nftables(c.table)
        cuts = {link(entry, coordinator)}
        nft.apply(drop_rules(cuts, c.hosts))
        try:
            # The forward went out and got no answer: the outcome is unknown, so the entry node
            # answers 504 rather than writing v1 a second time itself (a second, newer version
            # of one client write could undo writes acknowledged in between).
            status, body, _ = c.http(entry, "PUT", path, {"content": "v1"}, hdrs, timeout=15)
            assert (status, body["error"]["code"]) == (504, "timeout"), (status, body)
            status, body, _ = c.http(coordinator, "PUT", path, {"content": "v2"}, hdrs)
            assert status in (200, 201), (status, body)
            status, body, _ = c.http(coordinator, "GET", path, headers={
                "Spine-Consistency": "strong"})
            assert (status, body["content"]) == (200, "v2")
        finally:
            nft.delete_table()
        # TCP retransmits what the partition held back; the coordinator must refuse it.
        wait_until(lambda: _counter(c, coordinator, "spine_forwards_expired_total") >= 1, 30.0,
                   interval=0.25, message="the late forward to arrive and be refused")
        status, body, _ = c.http(coordinator, "GET", path,
                                 headers={"Spine-Consistency": "strong"})
        assert (status, body["content"]) == (200, "v2"), "the acknowledged later write was lost"


def _counter(c: JepsenCluster, node: str, name: str) -> float:
    """The sum of a Prometheus counter's samples in ``node``'s ``/metrics``."""
    status, text, _ = c.http(node, "GET", "/metrics")
    assert status == 200 and isinstance(text, str)
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def test_missing_nft_is_installed_with_apt_get(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess as sp

    installed: list[bool] = []
    calls: list[list[str]] = []
    said: list[str] = []

    def fake_binary() -> str | None:
        return "/usr/sbin/nft" if installed else None

    def fake_run(cmd: list[str], **kw: Any) -> sp.CompletedProcess[str]:
        calls.append(cmd)
        if cmd[:2] == ["apt-get", "install"]:
            installed.append(True)
        return sp.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(Nftables, "binary", staticmethod(fake_binary))
    monkeypatch.setattr("jepsen_style.nemesis.subprocess.run", fake_run)
    assert Nftables.ensure_installed(said.append) == "/usr/sbin/nft"
    assert calls == [["apt-get", "install", "-y", "-q", "nftables"]]
    assert said and "installing" in said[0] and "nftables" in said[0]
    # Present: nothing is run, nothing said.
    assert Nftables.ensure_installed(said.append) == "/usr/sbin/nft"
    assert len(calls) == 1 and len(said) == 1


# ----------------------------------------------------------------------------- forge


class ForgeCluster:
    """What the forge fault reads of a cluster, without processes."""

    names: ClassVar[list[str]] = ["n1", "n2", "n3"]
    hosts: ClassVar[dict[str, str]] = {"n1": "127.0.3.11", "n2": "127.0.3.12",
                                       "n3": "127.0.3.13"}
    config: ClassVar[dict[str, Any]] = {"cluster": {"secret": "forge-test-secret-0123456789"},
                                        "gossip": {"protocol_period_ms": 500}}

    def host(self, node: str) -> str:
        return self.hosts[node]

    def gossip_port(self, node: str) -> int:
        return 30000 + self.names.index(node)

    def rpc_port(self, node: str) -> int:
        return 29000 + self.names.index(node)


def test_forge_is_a_fault_of_the_all_schedule() -> None:
    assert "forge" in FAULTS and parse_faults("forge") == ["forge"]
    assert parse_faults("all")[-1] == "forge"


def test_forge_comes_from_a_non_member_address_in_the_clusters_block() -> None:
    from jepsen_style.forge import detection_bound, forge_host

    c = ForgeCluster()
    assert forge_host(c) == "127.0.3.99"  # type: ignore[arg-type]
    assert forge_host(c) not in c.hosts.values()  # type: ignore[arg-type]
    # SWIM's bound for 3 members at T = 0.5 s, plus the polling slack.
    assert 10 < detection_bound(c) < 30  # type: ignore[arg-type]


def test_forger_mixes_every_kind_and_replays_only_what_it_captured() -> None:
    from jepsen_style.forge import Forger, Sealer
    from spine.core import swim_messages as sm
    from spine.core.swim_auth import Channel, GossipAuth

    c = ForgeCluster()
    secret = c.config["cluster"]["secret"]
    forger = Forger(c, Sealer(secret), "127.0.3.99")  # type: ignore[arg-type]
    rng = random.Random(5)
    forger.capture(rng)
    assert len(forger.captured) == 4
    member = GossipAuth([secret], window_ms=60_000)
    now = time.time_ns() // 1_000_000
    for node, packet in forger.captured:  # a real member would accept each capture once
        assert node in c.names
        payload, _ = member.open(Channel.DATAGRAM, packet, now)
        assert isinstance(sm.decode(payload), sm.Ping)
    seen = set()
    for _ in range(300):
        node, data = forger.datagram(rng)
        assert node in c.names and data
        if (node, data) in forger.captured:
            seen.add("replay")
    assert {k.removeprefix("udp-") for k in forger.sent} == {
        "random", "refuse", "claim", "claim-wrong-key", "replay"}
    assert "replay" in seen
    # A claim at 2^64-1 is structurally a Ping; the bounded decoder refuses it.
    wrong = forger.sealer.datagram(forger.claim(random.Random(1)), wrong_key=True)
    with pytest.raises(sm.DecodeError):
        member.open(Channel.DATAGRAM, wrong, now)
    frames = {forger.push_pull(rng)[:4] for _ in range(40)}
    assert b"\xff\xff\xff\xf0" in frames  # the huge length prefix is among them


def test_forge_report_is_valid_only_when_every_failure_was_detected_in_time() -> None:
    from jepsen_style.forge import ForgeFault

    f = ForgeFault(ForgeCluster())  # type: ignore[arg-type]
    assert f.report() is None, "never injected: no checker"
    f.windows = 1
    assert f.report()["valid"] == "unknown"
    f.detections.append({"victim": "n1", "detected": True, "seconds": 4.0, "undetected_by": []})
    assert f.report()["valid"] is True
    f.detections.append({"victim": "n2", "detected": True, "seconds": f.bound_s + 1,
                         "undetected_by": []})
    r = f.report()
    assert r["valid"] is False and "late" in r["summary"]
    f.detections.pop()
    f.view_errors.append("n2: /v1/cluster answered 500")
    assert f.report()["valid"] is False


class _Sink:
    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass


def test_forged_rpc_replay_is_a_members_answer_to_an_old_challenge() -> None:
    """The forge's captured handshake answer is genuine (the server accepts it for the
    challenge it answered), so replaying it tests replay, not merely a bad proof."""
    from jepsen_style.forge import _auth_answer
    from spine.cluster import rpc_handshake as hs
    from spine.cluster.rpc_frames import pack_plain

    secret = "forge-test-secret-0123456789"
    old_nonce = b"\x01" * 32
    hello = [hs.HANDSHAKE_VERSION, hs.PROTOCOL_VERSION, old_nonce, "n1"]
    answer = _auth_answer(hello, secret, "n2", b"\x02" * 32)

    async def accept(server_nonce: bytes) -> hs.Session:
        reader = asyncio.StreamReader()
        reader.feed_data(pack_plain(answer))
        reader.feed_eof()
        return await hs.accept(reader, _Sink(), "n1", [hs.root_key(secret)],  # type: ignore[arg-type]
                               server_nonce)

    assert asyncio.run(accept(old_nonce)).peer == "n2"
    with pytest.raises(hs.HandshakeRefused):
        asyncio.run(accept(b"\x03" * 32))  # a fresh challenge: the replay is refused
