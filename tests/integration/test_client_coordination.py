"""The client, CLI and async client's conditional writes and leases against a real 3-node cluster
(DESIGN §12): If-Match applied once and 412 with the current version, a lease held through the
context manager across more than two ttl periods while a second holder is refused, a fenced
write with an old token refused, and `spine lease` / `spine put --fence` as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from spine.client import (
    AsyncClient,
    Client,
    Conflict,
    Fenced,
    LeaseHeld,
    NotFound,
    PreconditionFailed,
)
from tests.harness.wait import wait_until
from tests.integration.cluster import LocalCluster
from tests.integration.conftest import ClusterFactory

pytestmark = pytest.mark.integration

NS = "coord"


@pytest.fixture(scope="module")
def coord_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    factory = ClusterFactory(tmp_path_factory.mktemp("coord"))
    try:
        yield factory(3)
    finally:
        factory.close()


def _client(c: LocalCluster) -> Client:
    return Client([c.url(n) for n in c.names], timeout=10.0)


@pytest.mark.timeout(90)
def test_if_match_applies_once_and_a_stale_one_gets_412_with_the_current_version(
    coord_cluster: LocalCluster,
) -> None:
    with _client(coord_cluster) as c:
        first = c.put(NS, "cas-1", "v1")
        v1 = first.version  # type: ignore[attr-defined]
        assert v1 == first["version"] and first.etag == f'"{v1}"'  # type: ignore[attr-defined]
        second = c.put(NS, "cas-1", "v2", if_match=first)
        v2 = second["version"]
        assert v2 != v1 and second["content"] == "v2"
        # A stale If-Match (the first version again) changes nothing and names the current one.
        with pytest.raises(PreconditionFailed) as info:
            c.put(NS, "cas-1", "lost update", if_match=v1)
        assert info.value.status == 412 and info.value.current == v2
        got = c.get(NS, "cas-1", consistency="strong")
        assert got["content"] == "v2" and got.etag == f'"{v2}"'  # type: ignore[attr-defined]
        # If-None-Match: * creates only.
        with pytest.raises(PreconditionFailed) as info:
            c.put(NS, "cas-1", "again", if_none_match=True)
        assert info.value.current == v2
        created = c.put(NS, "cas-new", "fresh", if_none_match=True)
        assert created["content"] == "fresh"
        # A conditional delete: refused on a stale version, applied on the current one.
        with pytest.raises(PreconditionFailed):
            c.delete(NS, "cas-1", if_match=v1)
        c.delete(NS, "cas-1", if_match=info.value.current)
        with pytest.raises(NotFound):
            c.get(NS, "cas-1", consistency="strong")
        # If-Match on a key with no live record: 412 with current null.
        with pytest.raises(PreconditionFailed) as info:
            c.put(NS, "cas-1", "x", if_match=v2)
        assert info.value.current is None


@pytest.mark.timeout(120)
def test_a_held_lease_renews_across_more_than_two_ttls_and_refuses_a_second_holder(
    coord_cluster: LocalCluster,
) -> None:
    ttl_ms = 1500
    with _client(coord_cluster) as a, _client(coord_cluster) as b:
        start = time.monotonic()
        with a.lease(NS, "task:42", "agent-a", ttl_ms) as held:
            token = held.token
            # Hold it for more than two ttl periods: only renewals can have kept it.
            wait_until(lambda: time.monotonic() - start > 2.5 * ttl_ms / 1000
                       and held.renewals >= 6, timeout=30,
                       message=lambda: f"renewals ({held.renewals}) past 2.5 ttl")
            held.check()
            assert not held.lost and held.token == token
            with pytest.raises(LeaseHeld) as info:
                b.acquire_lease(NS, "task:42", "agent-b", ttl_ms)
            assert info.value.holder == "agent-a"
            assert info.value.remaining_ms is not None and info.value.remaining_ms > 0
            shown = b.get_lease(NS, "task:42")
            assert shown.holder == "agent-a" and shown.token == token
            # The fenced write under the held lease goes through.
            assert a.put(NS, "task:42", "claimed by a", fence=held)["content"] == "claimed by a"
        assert held.release_error is None
        assert b.get_lease(NS, "task:42").holder is None
        # Released: the next holder gets it at once, with a larger token.
        taken = b.acquire_lease(NS, "task:42", "agent-b", ttl_ms)
        assert taken.holder == "agent-b" and taken.token > token
        b.release_lease(NS, "task:42", taken)
        with pytest.raises(Conflict):
            b.release_lease(NS, "task:42", taken.token)  # no longer current: released


@pytest.mark.timeout(90)
def test_a_write_fenced_by_an_old_token_is_refused(coord_cluster: LocalCluster) -> None:
    with _client(coord_cluster) as c:
        old = c.acquire_lease(NS, "job:7", "agent-a", 60_000)
        c.put(NS, "job-7-result", "a was here", fence=old)
        c.release_lease(NS, "job:7", old.token)
        new = c.acquire_lease(NS, "job:7", "agent-b", 60_000)
        assert new.token > old.token
        c.put(NS, "job-7-result", "b was here", fence=new)
        # agent-a, still believing it holds job:7, writes late: the key refuses it.
        with pytest.raises(Fenced) as info:
            c.put(NS, "job-7-result", "a overwrites b", fence=old)
        assert info.value.status == 409 and info.value.lease == "job:7"
        assert info.value.token == old.token and info.value.highest == new.token
        with pytest.raises(Fenced):
            c.delete(NS, "job-7-result", fence=("job:7", old.token))
        assert c.get(NS, "job-7-result", consistency="strong")["content"] == "b was here"
        c.release_lease(NS, "job:7", new)


@pytest.mark.timeout(90)
def test_the_async_client_holds_a_lease_and_writes_conditionally(
    coord_cluster: LocalCluster,
) -> None:
    async def go() -> None:
        async with AsyncClient([coord_cluster.url(n) for n in coord_cluster.names]) as c:
            async with c.lease(NS, "async:1", "agent-x", 900) as held:
                deadline = time.monotonic() + 30
                while held.renewals < 4:  # past 1.2 ttl periods on renewals alone
                    assert time.monotonic() < deadline, "no renewals"
                    await asyncio.sleep(0.05)
                held.check()
                rec = await c.put(NS, "async-1", "one", fence=held, if_none_match=True)
                rec = await c.put(NS, "async-1", "two", fence=held, if_match=rec)
                assert rec["content"] == "two"
                with pytest.raises(PreconditionFailed):
                    await c.put(NS, "async-1", "one again", if_none_match=True)
            assert held.release_error is None
            assert (await c.get_lease(NS, "async:1")).holder is None

    asyncio.run(go())


def spine(*argv: str, session: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPINE_")}
    env["SPINE_SESSION_FILE"] = str(session)
    return subprocess.run([sys.executable, "-m", "spine", *argv], capture_output=True,
                          text=True, timeout=60, env=env, check=False)


def _one_line_error(p: subprocess.CompletedProcess[str], rc: int, *words: str) -> None:
    assert p.returncode == rc, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and p.stderr.count("\n") == 1, p.stderr
    for w in words:
        assert w in p.stderr, p.stderr


@pytest.mark.timeout(120)
def test_cli_lease_commands_and_fenced_puts(coord_cluster: LocalCluster,
                                            tmp_path: Path) -> None:
    url = ["--url", ",".join(coord_cluster.url(n) for n in coord_cluster.names)]
    sess = tmp_path / "session"
    p = spine("lease", "acquire", NS, "cli:1", "--holder", "cli-a", "--ttl-ms", "60000", *url,
              session=sess)
    assert p.returncode == 0, p.stderr
    lease = json.loads(p.stdout)
    assert lease["holder"] == "cli-a" and lease["token"] >= 1 and lease["ttl_ms"] == 60000
    fence = f"cli:1={lease['token']}"

    p = spine("lease", "show", NS, "cli:1", *url, session=sess)
    assert p.returncode == 0 and json.loads(p.stdout)["holder"] == "cli-a", p.stderr
    p = spine("lease", "acquire", NS, "cli:1", "--holder", "cli-b", "--ttl-ms", "1000", *url,
              session=sess)
    _one_line_error(p, 1, "lease_held")

    p = spine("put", NS, "cli-1", "--content", "first", "--fence", fence, *url, session=sess)
    assert p.returncode == 0, p.stderr
    version = json.loads(p.stdout)["version"]
    p = spine("put", NS, "cli-1", "--content", "second", "--if-match", version,
              "--fence", fence, *url, session=sess)
    assert p.returncode == 0, p.stderr
    current = json.loads(p.stdout)["version"]
    p = spine("put", NS, "cli-1", "--content", "stale", "--if-match", version, *url,
              session=sess)
    _one_line_error(p, 1, "412 precondition_failed", current)
    p = spine("put", NS, "cli-1", "--content", "x", "--if-none-match", *url, session=sess)
    _one_line_error(p, 1, "412 precondition_failed")

    # Bad --fence values: one line, status 2, nothing sent.
    for bad in ("cli:1", "cli:1=0", "cli:1=abc", "bad name=1", "=3"):
        p = spine("put", NS, "cli-1", "--content", "x", "--fence", bad, *url, session=sess)
        _one_line_error(p, 2, "--fence")
    p = spine("rm", NS, "cli-1", "--if-match", 'a"b', *url, session=sess)
    _one_line_error(p, 2, "--if-match")
    # A malformed lease name is the server's 400 naming the field.
    p = spine("lease", "show", NS, "_bad", *url, session=sess)
    _one_line_error(p, 1, "400", "field: name")

    p = spine("lease", "release", NS, "cli:1", "--token", str(lease["token"] + 1), *url,
              session=sess)
    _one_line_error(p, 1, "409")
    p = spine("lease", "release", NS, "cli:1", "--token", str(lease["token"]), *url,
              session=sess)
    assert p.returncode == 0 and json.loads(p.stdout)["holder"] is None, p.stderr
    p = spine("rm", NS, "cli-1", "--if-match", current, "--fence", fence, *url, session=sess)
    assert p.returncode == 0 and json.loads(p.stdout)["deleted"] is True, p.stderr
