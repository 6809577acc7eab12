"""Time and randomness reach the ring keeper, anti-entropy and the HTTP layer only through what
the node's Runtime hands them (issue 18 §1): a seeded run draws the same choices, and a virtual
clock is the only clock they read."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from spine.api.auth import Authenticator
from spine.api.http import Services, build_app
from spine.cluster.antientropy import AntiEntropy
from spine.cluster.ringkeeper import RingKeeper
from spine.core.messages import Message, RingSync
from spine.core.metrics import SpineMetrics
from spine.core.ring import Ring
from spine.core.ringmap import ACTIVE, JOINING, Entry, genesis
from spine.core.validation import Limits

pytestmark = pytest.mark.timeout(30)

PEERS = ["n2", "n3", "n4", "n5"]


class MetaStore:
    """The little of a RecordStore a ring keeper touches."""

    def __init__(self) -> None:
        self.meta: dict[str, bytes] = {}

    def meta_get(self, name: str) -> bytes | None:
        return self.meta.get(name)

    async def meta_put(self, name: str, value: bytes) -> None:
        self.meta[name] = value


class Peers:
    """A transport that answers every RING sync with the caller's own map, and records who."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def call(self, node: str, msg: Message, timeout: float) -> Any:
        assert isinstance(msg, RingSync)
        self.asked.append(node)
        return msg.entries

    def drop(self, node: str) -> None:
        pass

    async def close(self) -> None:
        pass


class AllAlive:
    def is_alive(self, node: str) -> bool:
        return True

    def report_failure(self, node: str) -> None:
        pass

    def report_success(self, node: str) -> None:
        pass


class Rounds:
    """A sleep that lets `n` rounds run, then stops the loop."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.slept: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)
        if self.left == 0:
            raise asyncio.CancelledError
        self.left -= 1


def _keeper(rng: random.Random, peers: Peers, sleep: Rounds) -> RingKeeper:
    nodes = ["n1", *PEERS]
    return RingKeeper(
        "n1", MetaStore(), peers, AllAlive(),  # type: ignore[arg-type]
        genesis=genesis({"id": n, "zone": "", "host": "127.0.0.1", "port": 1, "rpc_port": 2,
                         "gossip_port": 3} for n in nodes),
        me=Entry("n1", JOINING, 0, "", "127.0.0.1", 1, 2, 3),
        shards=8, vnodes=4, n=3, interval=1.0, rpc_timeout=1.0, now_version=lambda: 1,
        sleep=sleep, monotonic=lambda: 0.0, rng=rng, trailing_window=1.0,
    )


@pytest.mark.asyncio
async def test_the_ring_keeper_syncs_with_the_peers_its_rng_draws() -> None:
    peers, sleep = Peers(), Rounds(30)
    keeper = _keeper(random.Random(7), peers, sleep)
    assert keeper.map.state("n2") == ACTIVE
    random.seed(12345)  # the global generator must play no part
    with pytest.raises(asyncio.CancelledError):
        await keeper._loop()
    expect = random.Random(7)
    assert peers.asked == [expect.choice(PEERS) for _ in range(30)]
    assert sleep.slept == [1.0] * 31


def _anti_entropy(rng: random.Random | None, sleep: Rounds) -> AntiEntropy:
    ring = Ring({"n1": ""}, shards=8, vnodes=4, n=1)
    nothing: Any = None
    return AntiEntropy(
        "n1", nothing, nothing, nothing, AllAlive(), lambda: ring, SpineMetrics(), interval=10.0,
        shards_per_round=1, max_keys_per_s=10, grace_ms=1, rpc_timeout=1.0, wall_ms=lambda: 0,
        monotonic=lambda: 0.0, sleep=sleep, rng=rng,
    )


@pytest.mark.asyncio
async def test_anti_entropy_starts_and_jitters_from_the_rng_it_is_given() -> None:
    sleep = Rounds(5)
    ae = _anti_entropy(random.Random(3), sleep)
    expect = random.Random(3)
    assert ae._cursor == expect.randrange(1 << 16)

    async def built() -> None:
        pass

    async def no_round() -> int:
        return 0

    ae.build = built  # type: ignore[method-assign]
    ae.run_round = no_round  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        await ae._loop()
    assert sleep.slept == [10.0 * expect.uniform(0.75, 1.25) for _ in range(6)]
    # Without one (unit tests), a stream fixed by the node id: the same on every run.
    assert _anti_entropy(None, Rounds(0))._cursor == _anti_entropy(None, Rounds(0))._cursor


@pytest.mark.asyncio
@pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning")
async def test_request_latency_and_rate_limits_read_the_clock_the_node_gives() -> None:
    ticks = iter(float(t) for t in range(100, 200, 3))
    metrics = SpineMetrics()
    nothing: Any = None
    svc = Services(node_id="n1", coordinator=nothing, fanout=nothing, metrics=metrics,
                   auth=Authenticator({}), limits=Limits(), dim=8, session_max_keys=32,
                   body_bytes=1024, max_inflight=4, cluster_view=dict, shards_view=dict,
                   readiness=lambda: None, mint_id=lambda: "x", clock=lambda: next(ticks))
    app = build_app(svc)
    app.freeze()  # as a runner does: the middleware chain is set up
    resp = await app._handle(make_mocked_request("GET", "/v1/cluster", app=app))
    assert resp.status == 200
    # Read three times: the start (100), the client's admission (103), the end (106).
    assert metrics.latency.series[("/v1/cluster", "")][-1] == 6.0
