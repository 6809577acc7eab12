"""The Python client against real nodes: failover past a dead node, concurrent writers that
keep every key in the session token, tokens kept per cluster, the async client's calls."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from spine.client import AsyncClient, Client
from spine.core.session import SessionToken
from tests.integration.cluster import LocalCluster
from tests.integration.conftest import ClusterFactory

pytestmark = pytest.mark.integration


def _content(mid: str) -> str:
    return mid[1:].replace("-", "/")  # what writer w put in key w{w}-{i}: "{w}/{i}"


WRITES_PER_WRITER = 12  # two writers: 24 keys, under session.max_keys (32), so none may drop


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LocalCluster]]:
    factory = ClusterFactory(tmp_path_factory.mktemp("client"))
    try:
        yield {"alpha": factory(3, cluster={"name": "alpha"}),
               "beta": factory(1, cluster={"name": "beta"})}
    finally:
        factory.close()


def _dead_url() -> str:
    with socket.socket() as s:  # a port nothing listens on once this socket is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _keys(token: str | None) -> set[str]:
    # Read with the server's own decoder (this runs unchanged against older clients too).
    assert token, "the client kept no token"
    return set(SessionToken.decode(token, 1024).entries)


def _unsettled(c: LocalCluster, keys: set[str], content: Callable[[str], str]) -> set[str]:
    """Those of `keys` some replica does not hold yet: a token may leave out only a version
    every replica holds (settled), so each of these must still be in it. Each node is asked
    at the eventual level, which answers from its own copy."""
    out = set()
    for key in keys:
        ns, mid = key.split("/", 1)
        for node in c.names:
            r = c.read(node, ns, mid, "eventual")
            if r.status != 200 or r.json()["content"] != content(mid):
                out.add(key)
    return out


@pytest.mark.timeout(60)
def test_a_dead_node_first_in_the_list_fails_over(clusters: dict[str, LocalCluster]) -> None:
    c = clusters["alpha"]
    client = Client([_dead_url(), c.url("n1")], timeout=5.0)
    for i in range(4):  # every call, whichever node the rotation starts at
        assert client.put("cl-failover", f"k{i}", f"v{i}")["content"] == f"v{i}"
        assert client.get("cl-failover", f"k{i}")["content"] == f"v{i}"
    assert client.last_coordinator in c.names


@pytest.mark.timeout(90)
def test_two_threads_writing_through_one_client_keep_every_key(
    clusters: dict[str, LocalCluster],
) -> None:
    c = clusters["alpha"]
    client = Client([c.url("n1"), c.url("n2")], consistency="session", timeout=10.0)
    start = threading.Barrier(2, timeout=10)
    errors: list[BaseException] = []

    def writer(w: int) -> None:
        try:
            start.wait()
            for i in range(WRITES_PER_WRITER):
                client.put("cl-conc", f"w{w}-{i}", f"{w}/{i}")
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and not any(t.is_alive() for t in threads)
    expected = {f"cl-conc/w{w}-{i}" for w in range(2) for i in range(WRITES_PER_WRITER)}
    missing = _unsettled(c, expected - _keys(client.session), _content)
    assert missing == set(), f"the token lost {len(missing)} of its writes: {sorted(missing)[:5]}"
    # And the token is honoured by a node that coordinated none of the writes.
    reader = Client(c.url("n3"), session=client.session)
    for key in sorted(expected):
        mid = key.split("/", 1)[1]
        assert reader.get("cl-conc", mid)["content"] == mid[1:].replace("-", "/")


@pytest.mark.timeout(90)
def test_two_tasks_writing_through_one_async_client_keep_every_key(
    clusters: dict[str, LocalCluster],
) -> None:
    c = clusters["alpha"]

    async def run() -> str | None:
        async with AsyncClient([c.url("n1"), c.url("n2")], timeout=10.0) as client:
            async def writer(w: int) -> None:
                for i in range(WRITES_PER_WRITER):
                    await client.put("cl-aconc", f"w{w}-{i}", f"{w}/{i}")

            await asyncio.gather(writer(0), writer(1))
            return client.session

    token = asyncio.run(run())
    expected = {f"cl-aconc/w{w}-{i}" for w in range(2) for i in range(WRITES_PER_WRITER)}
    missing = _unsettled(c, expected - _keys(token), _content)
    assert missing == set(), f"the token lost {len(missing)} of its writes: {sorted(missing)[:5]}"


@pytest.mark.timeout(90)
def test_tokens_are_kept_per_cluster(clusters: dict[str, LocalCluster], tmp_path: Path) -> None:
    from spine.client import TokenStore

    alpha, beta = clusters["alpha"], clusters["beta"]
    store = TokenStore(tmp_path / "session")
    # The same key on both clusters; alpha's copy is written last, so its version is newer
    # than anything beta has: alpha's token sent to beta would demand a version beta lacks.
    b = Client(beta.url("n1"), timeout=5.0)
    b.put("cl-store", "k", "on beta")
    b.save_session(store)
    a = Client([alpha.url("n1"), alpha.url("n2")], timeout=5.0)
    a.put("cl-store", "k", "on alpha")
    a.save_session(store)
    assert a.cluster_key() == "cluster:alpha" and b.cluster_key() == "cluster:beta"

    fresh_b = Client(beta.url("n1"), timeout=5.0)
    fresh_b.load_session(store)
    loaded_b = SessionToken.decode(fresh_b.session or "", 64).entries
    assert set(loaded_b) == {"cl-store/k"}
    assert fresh_b.get("cl-store", "k")["content"] == "on beta"
    fresh_a = Client(alpha.url("n3"), timeout=5.0)
    fresh_a.load_session(store)
    assert SessionToken.decode(fresh_a.session or "", 64).entries != loaded_b
    assert fresh_a.get("cl-store", "k")["content"] == "on alpha"


@pytest.mark.timeout(60)
def test_async_client_calls_against_a_node(clusters: dict[str, LocalCluster]) -> None:
    c = clusters["alpha"]
    client = AsyncClient([_dead_url(), c.url("n2")], timeout=5.0)  # built outside the loop

    async def run() -> None:
        async with client:
            rec = await client.create("cl-async", "first", tags=["t"])
            assert (await client.get("cl-async", rec["id"]))["content"] == "first"
            await client.put("cl-async", rec["id"], "second", consistency="strong")
            hist = await client.history("cl-async", rec["id"])
            assert [v["content"] for v in hist["versions"]][:2] == ["second", "first"]
            out = await client.batch("cl-async", [{"id": f"b{i}", "content": f"b {i}"}
                                                  for i in range(5)])
            assert [r["status"] for r in out["results"]] == [201] * 5
            ids = [r["id"] async for r in client.iter_list("cl-async", limit=2)]
            assert sorted(ids) == sorted([rec["id"], *(f"b{i}" for i in range(5))])
            found = await client.search("cl-async", "b 3", k=3)
            assert found["results"]
            assert (await client.delete("cl-async", "b0"))["deleted"] is True

    asyncio.run(run())
