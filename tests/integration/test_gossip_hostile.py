"""Forged and hostile gossip against real nodes (issue 14, item 1), sent from 127.0.0.99, an
address that is no member's, with nothing but the gossip port.

The outsider attacks are the issue's, byte for byte as they worked before gossip was
authenticated: a bare `Refuse` datagram, a claim about the victim at incarnation 2^64-1, a flood
of 1,106 invented members, garbage datagrams and frames. Then an insider (holding the cluster
secret, as a compromised member would) sends the incarnation claims sealed, and replays a
packet. The nodes run on; every drop is counted in `spine_gossip_dropped_total`.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest

from spine.core.swim_messages import (
    Member,
    MemberState,
    Ping,
    PushPull,
    Refuse,
    Update,
    encode,
    meta_of,
)
from tests.harness.ports import GOSSIP_OFFSET, HOST
from tests.integration.cluster import LocalCluster

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

STRANGER = "127.0.0.99"  # a loopback address no member has
NODES = ("n1", "n2", "n3")


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("hostile"), 3)
    try:
        cluster.wait_peers_alive(20)
        yield cluster
    finally:
        cluster.close()


def gossip_port(c: LocalCluster, node: str) -> int:
    return c.base + GOSSIP_OFFSET + NODES.index(node)


def udp(c: LocalCluster, node: str, *datagrams: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((STRANGER, 0))
        for d in datagrams:
            s.sendto(d, (HOST, gossip_port(c, node)))


def tcp(c: LocalCluster, node: str, data: bytes) -> bytes:
    """Send `data` on a fresh connection from the stranger; what came back before it closed."""
    with socket.create_connection((HOST, gossip_port(c, node)), timeout=10,
                                  source_address=(STRANGER, 0)) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        return got


def dropped(c: LocalCluster, node: str, reason: str) -> float:
    return c.metric(node, "spine_gossip_dropped_total", reason=reason)


def alive_view(c: LocalCluster, node: str) -> dict[str, bool]:
    return {m["id"]: m["alive"] for m in c.cluster_view(node)["members"]}


def holds_for(c: LocalCluster, seconds: float, check: Any) -> None:
    """`check()` (which asserts) passes on every poll for `seconds`."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        check()
        time.sleep(0.1)


def healthy(c: LocalCluster) -> None:
    for n in NODES:
        r = c.http(n, "GET", "/v1/cluster", timeout=2.0)
        assert r.status == 200, (n, r.status, r.body[:200])
        view = {m["id"]: m for m in r.json()["members"]}
        assert {k for k, m in view.items() if m["alive"]} == set(NODES), (n, view)


def claim(c: LocalCluster, victim: str, incarnation: int) -> Ping:
    """A Ping to `victim` accusing it (SUSPECT) at `incarnation`."""
    me = Member(victim, f"{HOST}:{gossip_port(c, victim)}", incarnation, MemberState.SUSPECT)
    return Ping(1, "x", victim, (Update(me, "x"),))


# ---------------------------------------------------------------------------------- outsiders


def test_a_forged_udp_refuse_changes_nothing(c: LocalCluster) -> None:
    forged = [encode(Refuse(peer, "identity forged")) for peer in ("n2", "n3")]
    assert {len(f) for f in forged} == {21}  # the 21-byte datagram
    udp(c, "n1", *forged * 5)
    holds_for(c, 2.0, lambda: healthy(c))
    r = c.http("n1", "PUT", "/v1/ns/hostile/memories/refuse", {"content": "still writes"},
               headers={"Spine-Consistency": "strong"})
    assert r.status in (200, 201), (r.status, r.body)
    c.wait_until(lambda: dropped(c, "n1", "unauthenticated") >= 10, 5,
                 message="n1 to count the forged Refuses")


def test_a_claim_at_incarnation_2_64_does_not_stop_gossip(c: LocalCluster) -> None:
    udp(c, "n1", encode(claim(c, "n1", 2**64 - 1)))
    holds_for(c, 2.0, lambda: healthy(c))
    assert {m["id"]: m.get("incarnation") for m in c.cluster_view("n2")["members"]}["n1"] \
        < 2**32


def test_1106_forged_members_are_not_accepted(c: LocalCluster) -> None:
    rng = random.Random(14)
    view = c.cluster_view("n1")  # the identity is public: forged members pass the check
    meta = meta_of({"zone": "", "ring": "standby", "cluster": view["cluster"],
                    "shards": str(view["ring"]["shards"]),
                    "embedder": view["embedder"]["fingerprint"]})

    def fake(i: int) -> Member:
        return Member(f"forged-{i}", f"127.0.{rng.randrange(1, 250)}.{rng.randrange(1, 250)}:"
                      f"{rng.randrange(1024, 65535)}", 0, MemberState.ALIVE, meta)

    members = [fake(i) for i in range(1_106)]
    batches = [members[i:i + 8] for i in range(0, len(members), 8)]
    udp(c, "n1", *(encode(Ping(1, m[0].node_id, "n1", tuple(Update(x, x.node_id) for x in m)))
                   for m in batches))
    body = encode(PushPull("forged-0", tuple(members)))
    tcp(c, "n2", struct.pack(">I", len(body)) + body)
    holds_for(c, 2.0, lambda: healthy(c))
    for n in ("n1", "n2"):
        assert c.metric(n, "spine_members") == 3, c.metrics(n)
        assert len(c.cluster_view(n)["members"]) == 3


def test_garbage_datagrams_and_frames_are_dropped_and_counted(c: LocalCluster) -> None:
    rng = random.Random(7)
    udp(c, "n3", b"\x05" + b"\x00" * 60_000)
    # (few enough that the socket's receive buffer holds them all)
    udp(c, "n3", *(rng.randbytes(rng.randrange(1, 600)) for _ in range(50)))
    assert tcp(c, "n3", struct.pack(">I", 16 * 1024 * 1024) + b"\x00" * 1024) == b""
    assert tcp(c, "n3", struct.pack(">I", 200) + rng.randbytes(200)) == b""
    c.wait_until(lambda: dropped(c, "n3", "unauthenticated") >= 50 + 1
                 and dropped(c, "n3", "oversized") >= 2, 5,
                 message=lambda: "n3 to count the garbage: " + str(
                     {r: dropped(c, "n3", r) for r in ("unauthenticated", "oversized")}))
    healthy(c)
    assert "Traceback" not in c.log_text("n3")


# ----------------------------------------------------------------------------------- insiders


def sealed(c: LocalCluster, msg: Ping, clock_ms: int | None = None) -> bytes:
    from spine.core.swim_auth import Channel, GossipAuth

    auth = GossipAuth([c.config["cluster"]["secret"]], 10_000)
    now = time.time_ns() // 1_000_000 if clock_ms is None else clock_ms
    return auth.seal(Channel.DATAGRAM, encode(msg), now)


def test_an_insiders_absurd_incarnation_is_refused_and_gossip_goes_on(c: LocalCluster) -> None:
    from spine.core.swim_messages import MAX_INCARNATION

    udp(c, "n1", sealed(c, claim(c, "n1", 2**64 - 1)), sealed(c, claim(c, "n1", MAX_INCARNATION)))
    c.wait_until(lambda: dropped(c, "n1", "malformed") >= 1
                 and dropped(c, "n1", "absurd_incarnation") >= 1, 5,
                 message="n1 to refuse both claims")
    holds_for(c, 2.0, lambda: healthy(c))
    incs = {n: {m["id"]: m.get("incarnation") for m in c.cluster_view(n)["members"]}["n1"]
            for n in NODES}
    assert all(i is not None and i < MAX_INCARNATION for i in incs.values()), incs


def test_replayed_and_stale_packets_are_dropped(c: LocalCluster) -> None:
    ping = sealed(c, Ping(7, "x", "n2"))
    before = dropped(c, "n2", "replayed")
    udp(c, "n2", ping, ping, ping)
    udp(c, "n2", sealed(c, Ping(8, "x", "n2"), time.time_ns() // 1_000_000 - 60_000))
    c.wait_until(lambda: dropped(c, "n2", "replayed") >= before + 2
                 and dropped(c, "n2", "stale") >= 1, 5, message="n2 to drop the replays")
    healthy(c)
