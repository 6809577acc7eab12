"""Session tokens in the clients: merged from every reply (never replaced), in agreement with
the server's SessionToken, and persisted per cluster."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import threading
from pathlib import Path

import httpx2 as httpx
import pytest

from spine.client import AsyncClient, Client, TokenStore, merge_tokens, token_keys
from spine.core.clock import Version
from spine.core.session import HEADER, SessionToken

SERVER_MAX_KEYS = 32


def _token(entries: dict[str, Version], overflowed: bool = False) -> str:
    tok = SessionToken(max_keys=SERVER_MAX_KEYS, overflowed=overflowed)
    for k, v in entries.items():
        tok.observe(k, v)
    return tok.encode()


def _decode(text: str | None) -> SessionToken:
    assert text
    return SessionToken.decode(text, SERVER_MAX_KEYS)


def test_merge_keeps_every_key_at_its_newest_version_as_the_server_reads_it() -> None:
    a = _token({"ns/a": Version(10, "n1"), "ns/b": Version(5, "n1")})
    b = _token({"ns/b": Version(7, "n2"), "ns/c": Version(3, "n3")})
    merged = _decode(merge_tokens(a, b))
    assert merged.entries == {"ns/a": Version(10, "n1"), "ns/b": Version(7, "n2"),
                              "ns/c": Version(3, "n3")}
    assert not merged.overflowed
    # Commutative, and a merge never goes back in time.
    assert _decode(merge_tokens(b, a)).entries == merged.entries
    assert _decode(merge_tokens(merge_tokens(a, b), a)).entries == merged.entries


def test_overflow_is_sticky_and_a_full_token_stays_sendable() -> None:
    a = _token({"ns/a": Version(1, "n1")}, overflowed=True)
    b = _token({"ns/b": Version(2, "n1")})
    assert _decode(merge_tokens(b, a)).overflowed
    big = None
    for i in range(300):  # far past the header's byte bound
        big = merge_tokens(big, _token({f"ns/{i:03d}" + "x" * 100: Version(i + 1, "n1")}))
    tok = _decode(big)
    assert tok.overflowed and len(big or "") < 4500
    assert f"ns/{299:03d}" + "x" * 100 in tok.entries  # the newest kept


def test_a_malformed_reply_token_is_ignored_and_none_changes_nothing() -> None:
    a = _token({"ns/a": Version(1, "n1")})
    assert merge_tokens(a, "!!not a token") == a
    assert merge_tokens(a, None) == a
    assert merge_tokens(None, a) == a
    assert token_keys(a) == {"ns/a"} and token_keys(None) == set()


class _Server:
    """A mock node that answers like the real one (the request's token plus the key written)
    and holds each reply until `width` requests are in flight, so they surely overlap."""

    def __init__(self, width: int) -> None:
        self.barrier = threading.Barrier(width, timeout=10)

    def reply(self, req: httpx.Request) -> httpx.Response:
        raw = req.headers.get(HEADER)
        tok = SessionToken.decode(raw, SERVER_MAX_KEYS) if raw else SessionToken(SERVER_MAX_KEYS)
        ns, mid = req.url.path.split("/")[3], req.url.path.split("/")[-1]
        tok.observe(f"{ns}/{mid}", Version(int(mid[1:]) + 1, "n1"))
        return httpx.Response(200, json={"id": mid}, headers={HEADER: tok.encode()})

    def handler(self, req: httpx.Request) -> httpx.Response:
        self.barrier.wait()
        return self.reply(req)


def test_two_threads_writing_through_one_client_keep_both_keys() -> None:
    server = _Server(2)
    c = Client(["http://n1", "http://n2"], transport=httpx.MockTransport(server.handler))
    threads = [threading.Thread(target=c.put, args=("ns", f"k{i}", "x")) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert token_keys(c.session) == {"ns/k0", "ns/k1"}


def test_two_tasks_writing_through_one_async_client_keep_both_keys() -> None:
    server = _Server(1)
    in_flight: list[asyncio.Event] = []

    async def handler(req: httpx.Request) -> httpx.Response:
        gate = asyncio.Event()
        in_flight.append(gate)
        if len(in_flight) == 2:
            for g in in_flight:
                g.set()
        await asyncio.wait_for(gate.wait(), 10)
        return server.reply(req)

    client = AsyncClient(["http://n1"], transport=httpx.MockTransport(handler))  # no loop yet

    async def run() -> None:
        async with client:
            await asyncio.gather(client.put("ns", "k0", "x"), client.put("ns", "k1", "y"))

    asyncio.run(run())
    assert token_keys(client.session) == {"ns/k0", "ns/k1"}


def test_the_token_is_sent_on_the_next_request() -> None:
    server = _Server(1)
    sent: list[str | None] = []

    def handler(req: httpx.Request) -> httpx.Response:
        sent.append(req.headers.get(HEADER))
        return server.reply(req)

    c = Client("http://n1", transport=httpx.MockTransport(handler))
    c.put("ns", "k1", "x")
    c.put("ns", "k2", "x")
    assert sent[0] is None and token_keys(sent[1]) == {"ns/k1"}


def _cluster_handler(name: str | None, status: int = 200) -> httpx.MockTransport:
    asked: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        asked.append(req.url.path)
        if req.url.path == "/v1/cluster":
            if status != 200:
                return httpx.Response(status, json={"error": {"code": "forbidden",
                                                              "message": "agent key"}})
            return httpx.Response(200, json={"node": "n1", "cluster": name, "members": []})
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "m"}})

    transport = httpx.MockTransport(handler)
    transport.asked = asked  # type: ignore[attr-defined]
    return transport


def test_token_store_keeps_one_token_per_cluster(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "d" / "session")
    t_a = _token({"ns/a": Version(1, "n1")})
    t_b = _token({"ns/b": Version(2, "n1")})
    a = Client("http://a", transport=_cluster_handler("alpha"), session=t_a)
    b = Client("http://b", transport=_cluster_handler("beta"), session=t_b)
    a.save_session(store)
    b.save_session(store)
    assert a.cluster_key() == "cluster:alpha"
    assert a._transport.asked.count("/v1/cluster") == 1  # asked once per client
    fresh_b = Client("http://b", transport=_cluster_handler("beta"))
    fresh_b.load_session(store)
    assert token_keys(fresh_b.session) == {"ns/b"}  # never alpha's key
    fresh_c = Client("http://c", transport=_cluster_handler("gamma"))
    fresh_c.load_session(store)
    assert fresh_c.session is None
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert set(json.loads(store.path.read_text())) == {"cluster:alpha", "cluster:beta"}


def test_token_store_merges_with_what_another_shell_saved(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "session")
    store.save("cluster:x", _token({"ns/a": Version(1, "n1")}))
    store.save("cluster:x", _token({"ns/b": Version(1, "n1")}))
    assert token_keys(store.load("cluster:x")) == {"ns/a", "ns/b"}


def test_an_old_single_token_file_is_not_handed_to_any_cluster(tmp_path: Path) -> None:
    path = tmp_path / "session"
    path.write_text(_token({"ns/a": Version(1, "n1")}))
    assert TokenStore(path).load("cluster:spine-local") is None


def test_a_key_that_may_not_read_the_cluster_view_keys_tokens_by_urls() -> None:
    c = Client(["http://b:1", "http://a:1"], transport=_cluster_handler(None, status=403))
    assert c.cluster_key() == "urls:http://a:1,http://b:1"


@pytest.mark.parametrize("name", ["", None])
def test_a_view_without_a_name_keys_by_urls(name: str | None) -> None:
    c = Client("http://a:1", transport=_cluster_handler(name))
    assert c.cluster_key() == "urls:http://a:1"
