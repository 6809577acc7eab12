"""The change feed from the client side (DESIGN §15), against httpx2's MockTransport: pages as
typed values, the long-poll's read timeout, 410 as CursorExpired, `follow` keeping its cursor
across pages and node failures; and the surfaces built on it (`spine changes`, the MCP tool)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from typing import Any, ClassVar, cast

import httpx2 as httpx
import pytest
from mcp import Client as McpClient

from spine import commands as cm
from spine.cli import main
from spine.client import (
    AsyncClient,
    Change,
    ChangesPage,
    Client,
    CursorExpired,
    Forbidden,
    InvalidInput,
    QuorumUnavailable,
    Record,
    SpineHTTPError,
    Unreachable,
)
from spine.client.feed import FollowState, backoff, retry_wait
from spine.core import errors as core
from spine.mcp import McpSettings, build_server
from spine.runtime import Runtime

Handler = Callable[[httpx.Request], httpx.Response]
URLS = ["http://n1", "http://n2", "http://n3"]


def _record(mid: str, version: str) -> dict[str, Any]:
    return {"namespace": "ns", "id": mid, "content": f"text of {mid}", "tags": [],
            "metadata": {}, "agent_id": None, "created_at": "2026-12-02T00:00:00Z",
            "updated_at": "2026-12-02T00:00:00Z", "version": version, "deleted": False,
            "expires_at": None}


def _item(mid: str, version: str, deleted: bool = False) -> dict[str, Any]:
    return {"id": mid, "version": version, "deleted": deleted,
            "record": None if deleted else _record(mid, version)}


def _page(cursor: str, *items: dict[str, Any]) -> httpx.Response:
    return httpx.Response(200, json={"items": list(items), "cursor": cursor})


def _err(status: int, code: str, field: str | None = None) -> httpx.Response:
    err: dict[str, Any] = {"code": code, "message": "m"}
    if field:
        err["field"] = field
    return httpx.Response(status, json={"error": err})


class Feed:
    """A fake feed: answers from a script of replies (a Response, or an exception to raise),
    recording each request's node, query and read timeout; past the script's end it raises
    `end` (a CLI test's Ctrl-C)."""

    def __init__(self, *script: httpx.Response | BaseException,
                 end: BaseException | None = None) -> None:
        self.script = list(script)
        self.end = end or AssertionError("a request past the end of the script")
        self.seen: list[tuple[str, dict[str, str], float | None]] = []

    def __call__(self, req: httpx.Request) -> httpx.Response:
        timeout = req.extensions.get("timeout", {}).get("read")
        self.seen.append((req.url.host, dict(req.url.params), timeout))
        assert req.method == "GET" and req.url.path == "/v1/ns/ns/changes", req.url
        if not self.script:
            raise self.end
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step

    @property
    def cursors(self) -> list[str | None]:
        return [q.get("cursor") for _, q, _ in self.seen]


def _client(feed: Feed, **kw: Any) -> tuple[Client, list[float]]:
    slept: list[float] = []
    return Client(URLS, transport=httpx.MockTransport(feed), sleep=slept.append,
                  **kw), slept


def _refused() -> httpx.ConnectError:
    return httpx.ConnectError("connection refused")


# ------------------------------------------------------------------ one page


def test_a_page_is_typed_and_the_query_says_what_was_asked() -> None:
    feed = Feed(_page("c1", _item("a", "00000000000000a1.n1"),
                      _item("b", "00000000000000a2.n2", deleted=True)),
                _page("c2"), _page("c3"))
    c, _ = _client(feed, timeout=4.0)
    page = c.changes("ns")
    assert isinstance(page, ChangesPage) and page.cursor == "c1"
    a, b = page.items
    assert a == Change("a", "00000000000000a1.n1", False,
                       cast(Record, _record("a", "00000000000000a1.n1")))
    assert b.deleted and b.record is None and b.key == ("b", "00000000000000a2.n2")
    assert page.public() == {"items": [_item("a", "00000000000000a1.n1"),
                                       _item("b", "00000000000000a2.n2", deleted=True)],
                             "cursor": "c1"}
    assert c.changes("ns", "c1", limit=7, wait_s=5).cursor == "c2"
    assert c.changes("ns", from_now=True).cursor == "c3"
    queries = [q for _, q, _ in feed.seen]
    assert queries == [{"limit": "100", "wait_s": "0"},
                       {"limit": "7", "wait_s": "5", "cursor": "c1"},
                       {"limit": "100", "wait_s": "0", "from": "now"}]
    # A long-poll's read timeout outlasts its wait: the client's timeout on top of wait_s.
    assert [t for _, _, t in feed.seen] == [4.0, 9.0, 4.0]


def test_a_cursor_and_from_now_together_are_refused_before_sending() -> None:
    feed = Feed()
    c, _ = _client(feed)
    with pytest.raises(ValueError, match="not both"):
        c.changes("ns", "c1", from_now=True)
    assert feed.seen == []


def test_410_is_cursor_expired_and_never_retried() -> None:
    feed = Feed(_err(410, "cursor_expired", "cursor"))
    c, slept = _client(feed)
    with pytest.raises(CursorExpired) as info:
        c.changes("ns", "old")
    e = info.value
    assert isinstance(e, SpineHTTPError) and e.status == 410 and e.field == "cursor"
    assert e.code == "cursor_expired" and not e.retriable
    assert isinstance(e, core.CursorExpired)  # `except CursorExpired` works with either import
    assert len(feed.seen) == 1 and slept == []


def test_a_reply_that_is_not_a_page_is_a_value_error() -> None:
    bodies: list[Any] = [{"items": []}, {"items": [{"id": "a"}], "cursor": "c"}, {"cursor": "c"},
                         [], {"items": [], "cursor": ""}]
    for body in bodies:
        c, _ = _client(Feed(httpx.Response(200, json=body)))
        with pytest.raises(ValueError):
            c.changes("ns")


def test_one_page_fails_over_to_the_next_node() -> None:
    feed = Feed(_refused(), _page("c1"))
    c, _ = _client(feed)
    assert c.changes("ns", "c0").cursor == "c1"
    assert [h for h, _, _ in feed.seen] == ["n1", "n2"] and feed.cursors == ["c0", "c0"]


# ------------------------------------------------------------------ follow: the pure part


def test_backoff_doubles_to_its_cap_with_jitter_between_half_and_all() -> None:
    assert [backoff(a, 0.0, 8.0) for a in range(6)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert [backoff(a, 0.999999, 8.0) for a in range(6)] == pytest.approx(
        [0.5, 1.0, 2.0, 4.0, 8.0, 8.0])
    assert backoff(10_000, 0.5, 3.0) == 2.25  # no overflow on a long outage


def test_retry_wait_waits_out_outages_and_ends_on_refusals() -> None:
    def http(status: int, code: str, retry_after: float | None = None) -> SpineHTTPError:
        from spine.client import error_for

        return error_for(status, {"error": {"code": code, "message": "m"}}, retry_after)

    assert retry_wait(Unreachable(["http://n1"], "refused"), 0, 0.0, 10.0) == 0.25
    assert retry_wait(http(503, "quorum_unavailable"), 2, 0.0, 10.0) == 1.0
    assert retry_wait(http(503, "not_serving", retry_after=3.0), 0, 0.0, 10.0) == 3.0
    assert retry_wait(http(429, "overloaded", retry_after=60.0), 0, 0.0, 10.0) == 10.0
    assert retry_wait(http(502, ""), 0, 0.0, 10.0) == 0.25  # a proxy between us and a node
    for err in (http(410, "cursor_expired"), http(400, "invalid"), http(403, "forbidden"),
                ValueError("not a page")):
        assert retry_wait(err, 0, 0.0, 10.0) is None, err


def test_the_cursor_moves_when_a_pages_last_change_is_handed_out() -> None:
    moved: list[str] = []
    state = FollowState(None, True, moved.append)
    assert state.request() == (None, True)
    a, b = Change("a", "1.n1", True, None), Change("b", "2.n1", True, None)
    state.took(ChangesPage([a, b], "c1"))
    assert state.pop() == a and state.cursor is None  # resuming here would send b again
    assert state.pop() == b and state.cursor == "c1" and moved == ["c1"]
    assert state.request() == ("c1", False)
    state.took(ChangesPage([], "c2"))  # an empty poll moves it too
    state.took(ChangesPage([], "c2"))  # ... and only a move is reported
    assert state.cursor == "c2" and moved == ["c1", "c2"]


# ------------------------------------------------------------------ follow through a client


def test_follow_resumes_with_its_last_cursor_after_every_node_failed() -> None:
    a, b, c_, d = (_item(k, f"00000000000000{i}0.n1") for i, k in enumerate("abcd", 1))
    down = [_refused() for _ in URLS]
    feed = Feed(_page("c1", a, b), *down, _page("c2"), _page("c3", c_),
                *[_err(503, "quorum_unavailable")] * 4, _page("c4", d))
    moved: list[str] = []
    retried: list[tuple[str, float]] = []
    c, slept = _client(feed, retries=3, runtime=Runtime(rng=random.Random(1)))
    follower = c.follow("ns", wait_s=10, limit=50, on_cursor=moved.append,
                        on_retry=lambda e, w: retried.append((type(e).__name__, w)))
    got = [next(follower).id for _ in range(4)]
    assert got == ["a", "b", "c", "d"]
    assert follower.cursor == "c4" and moved == ["c1", "c2", "c3", "c4"]
    # Every poll after a failure asks for the same cursor as the one that failed.
    assert feed.cursors == [None, "c1", "c1", "c1", "c1", "c2", "c3", "c3", "c3", "c3", "c3"]
    assert all(q["wait_s"] == "10" and q["limit"] == "50" for _, q, _ in feed.seen)
    # Two outages waited out: all nodes refused; 503 past the client's own 3 retries.
    assert [name for name, _ in retried] == ["Unreachable", "QuorumUnavailable"]
    assert follower.retries == 2
    assert len(slept) == 3 + 2  # the client's 3 retries, then 2 backoffs
    assert all(0.25 <= w <= 0.5 for _, w in retried)  # both first failures: backoff(0)


def test_follow_ends_on_an_expired_cursor_or_a_refusal() -> None:
    for reply, exc in ((_err(410, "cursor_expired"), CursorExpired),
                       (_err(400, "invalid", "limit"), InvalidInput),
                       (_err(403, "forbidden"), Forbidden)):
        c, slept = _client(Feed(_page("c1", _item("a", "1.n1")), reply))
        follower = c.follow("ns", "c0")
        assert next(follower).id == "a"
        with pytest.raises(exc):
            next(follower)
        assert follower.cursor == "c1" and slept == []


def test_follow_from_now_sends_from_only_until_it_has_a_cursor() -> None:
    feed = Feed(_refused(), _refused(), _refused(), _page("c1"),
                _page("c2", _item("a", "1.n1")))
    c, _ = _client(feed)
    follower = c.follow("ns", from_now=True, on_retry=lambda e, w: None)
    assert next(follower).id == "a"
    assert [q.get("from") for _, q, _ in feed.seen] == ["now"] * 4 + [None]
    assert feed.cursors == [None] * 4 + ["c1"]
    with pytest.raises(ValueError, match="not both"):
        c.follow("ns", "c1", from_now=True)


def test_async_changes_and_follow_match_the_sync_client() -> None:
    class FakeRuntime(Runtime):
        def __init__(self) -> None:
            super().__init__()
            self.slept: list[float] = []

        async def sleep(self, seconds: float) -> None:
            self.slept.append(seconds)

    feed = Feed(_page("c1", _item("a", "1.n1")), _err(410, "cursor_expired"),
                _page("c2", _item("b", "2.n1")), _refused(), _refused(),
                _refused(), _page("c3", _item("c", "3.n1")))
    rt = FakeRuntime()
    c = AsyncClient(URLS, transport=httpx.MockTransport(feed), runtime=rt, timeout=2.0)

    async def go() -> tuple[list[str], str | None]:
        page = await c.changes("ns", wait_s=1.5)
        assert [ch.id for ch in page.items] == ["a"] and page.cursor == "c1"
        with pytest.raises(CursorExpired):
            await c.changes("ns", "c1")
        follower = c.follow("ns", "c1", on_retry=lambda e, w: None)
        got = [(await follower.__anext__()).id for _ in range(2)]
        await c.close()
        return got, follower.cursor

    assert asyncio.run(go()) == (["b", "c"], "c3")
    assert feed.seen[0][2] == 3.5  # read timeout = timeout + wait_s
    assert feed.cursors == [None, "c1", "c1", "c2", "c2", "c2", "c2"]
    assert len(rt.slept) == 1 and 0.25 <= rt.slept[0] <= 0.5


# ------------------------------------------------------------------ spine changes


def _cli(feed: Feed, monkeypatch: pytest.MonkeyPatch, argv: list[str],
         capsys: pytest.CaptureFixture[str]) -> tuple[int, list[Any], str]:
    def client(args: Any) -> Client:
        return Client(cm.urls_of(args), transport=httpx.MockTransport(feed),
                      sleep=lambda s: None, timeout=args.timeout)

    monkeypatch.setattr(cm, "client", client)
    rc = main(["changes", "ns", "--url", ",".join(URLS), *argv])
    out, err = capsys.readouterr()
    return rc, [json.loads(line) for line in out.splitlines()], err


def test_cli_prints_one_page_as_json_lines_and_the_cursor_on_stderr(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    feed = Feed(_page("c9", _item("a", "1.n1"), _item("b", "2.n1", deleted=True)))
    rc, lines, err = _cli(feed, monkeypatch, ["--cursor", "c8", "--limit", "2"], capsys)
    assert rc == 0 and lines == [_item("a", "1.n1"), _item("b", "2.n1", deleted=True)]
    assert err.strip() == "cursor: c9"
    assert feed.seen[0][1] == {"cursor": "c8", "limit": "2", "wait_s": "0"}


def test_cli_follow_survives_outages_and_ctrl_c_prints_the_cursor(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    feed = Feed(_page("c1", _item("a", "1.n1")), _refused(), _refused(),
                _refused(), _err(503, "not_serving"), _err(503, "not_serving"),
                _err(503, "not_serving"), _err(503, "not_serving"),
                _page("c2", _item("b", "2.n1")), end=KeyboardInterrupt())  # then Ctrl-C
    rc, lines, err = _cli(feed, monkeypatch, ["--from-now", "--follow"], capsys)
    assert rc == 130 and [x["id"] for x in lines] == ["a", "b"]
    assert "Traceback" not in err
    notes = err.strip().splitlines()
    assert "cannot reach" in notes[0] and "polling again" in notes[0]
    assert "503 not_serving" in notes[1] and "polling again" in notes[1]
    assert notes[-1] == "cursor: c2"
    assert feed.seen[0][1]["from"] == "now" and feed.seen[0][1]["wait_s"] == "10"
    assert feed.cursors[-2:] == ["c1", "c2"]  # after the outage: the last cursor


def test_cli_refusals_are_one_line(monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _cli(Feed(_err(410, "cursor_expired", "cursor")), monkeypatch,
                      ["--cursor", "old", "--follow"], capsys)
    assert rc == 1 and err.strip().startswith("spine changes: 410 cursor_expired")
    rc, _, err = _cli(Feed(), monkeypatch, ["--cursor", "c", "--from-now"], capsys)
    assert rc == 2 and "--from-now" in err


# ------------------------------------------------------------------ the MCP tool


class FakeSpine:
    """A Spine client whose `changes` records its arguments."""

    calls: ClassVar[list[tuple[tuple[Any, ...], dict[str, Any]]]] = []

    def __init__(self, settings: McpSettings) -> None:
        self.settings = settings

    def close(self) -> None:
        pass

    def changes(self, *a: Any, **kw: Any) -> ChangesPage:
        FakeSpine.calls.append((a, kw))
        if a[1] == "expired":
            raise CursorExpired(410, {"error": {"code": "cursor_expired", "message": "too old",
                                                "field": "cursor"}})
        return ChangesPage([Change("a", "1.n1", True, None)], "c1")


def test_mcp_changes_tool_returns_items_and_cursor_and_caps_the_wait() -> None:
    FakeSpine.calls.clear()
    server = build_server(McpSettings(urls=("http://x:1",), namespace="dflt"), FakeSpine)

    async def go() -> None:
        async with McpClient(server) as c:
            tools = {t.name: t for t in (await c.list_tools()).tools}
            assert tools["changes"].annotations is not None
            assert tools["changes"].annotations.read_only_hint
            r = await c.call_tool("changes", {"cursor": "c0", "limit": 5, "wait_s": 10})
            assert not r.is_error and r.structured_content == {
                "items": [{"id": "a", "version": "1.n1", "deleted": True, "record": None}],
                "cursor": "c1"}
            await c.call_tool("changes", {"from_now": True, "namespace": "other"})
            r = await c.call_tool("changes", {"wait_s": 11})
            assert r.is_error and "wait_s" in r.content[0].text  # type: ignore[union-attr]
            r = await c.call_tool("changes", {"cursor": "c0", "from_now": True})
            assert r.is_error and "from_now" in r.content[0].text  # type: ignore[union-attr]
            r = await c.call_tool("changes", {"cursor": "expired"})
            assert r.is_error
            assert "410 cursor_expired" in r.content[0].text  # type: ignore[union-attr]

    asyncio.run(go())
    assert FakeSpine.calls == [
        (("dflt", "c0"), {"from_now": False, "limit": 5, "wait_s": 10}),
        (("other", None), {"from_now": True, "limit": 100, "wait_s": 0}),
        (("dflt", "expired"), {"from_now": False, "limit": 100, "wait_s": 0}),
    ]


def test_quorum_unavailable_is_still_what_one_page_raises() -> None:
    # `changes` itself does not wait out outages (only follow does): the client's own retries,
    # then the error, as every other call.
    c, slept = _client(Feed(*[_err(503, "quorum_unavailable")] * 2), retries=1)
    with pytest.raises(QuorumUnavailable):
        c.changes("ns")
    assert len(slept) == 1



# ------------------------------------------------------------------ /openapi.json


def test_openapi_declares_the_feed_with_this_nodes_bounds_and_both_media_types() -> None:
    from openapi_spec_validator import validate

    from spine.api.openapi import CURSOR_FORMAT, openapi_document
    from spine.core.config import FeedSection
    from spine.core.validation import Limits

    doc = openapi_document(8, Limits(), feed=FeedSection(max_wait_s=5, max_limit=200))
    validate(doc)
    op = doc["paths"]["/v1/ns/{ns}/changes"]["get"]
    query, header = op["parameters"]
    assert (query["in"], query["style"], query["explode"]) == ("query", "form", True)
    props = query["schema"]["properties"]
    assert set(props) == {"cursor", "from", "limit", "wait_s"}
    assert query["schema"]["not"] == {"required": ["cursor", "from"]}  # one or the other
    assert props["wait_s"]["maximum"] == 5
    assert (props["limit"]["minimum"], props["limit"]["maximum"]) == (1, 200)
    assert props["from"]["enum"] == ["now"]
    assert props["cursor"]["format"] == CURSOR_FORMAT and "pattern" not in props["cursor"]
    assert (header["name"], header["in"]) == ("Last-Event-ID", "header")
    assert set(op["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert {"400", "410", "429", "503"} <= set(op["responses"])
    change = doc["components"]["schemas"]["Change"]
    assert change["required"] == ["id", "version", "deleted", "record"]
    default = openapi_document(8, Limits())["paths"]["/v1/ns/{ns}/changes"]["get"]
    assert default["parameters"][0]["schema"]["properties"]["wait_s"]["maximum"] == (
        FeedSection().max_wait_s)


def test_a_follower_drops_a_change_it_already_handed_out() -> None:
    # The feed repeats a change when another replica logs it later; per key it never goes back,
    # so a version no newer than the last handed out is a repeat.
    def ch(mid: str, hlc: int) -> Change:
        return Change(mid, f"{hlc:016x}.n1", False, None)

    state = FollowState(None, False)
    state.took(ChangesPage([ch("a", 1), ch("b", 2)], "c1"))
    assert [state.pop().id for _ in range(2)] == ["a", "b"] and state.cursor == "c1"
    state.took(ChangesPage([ch("a", 1), ch("b", 2)], "c2"))  # nothing new: the cursor moves on
    assert not state.pending and state.cursor == "c2" and state.repeats == 2
    state.took(ChangesPage([ch("a", 1), ch("a", 3), ch("b", 16)], "c3"))
    assert [(c.id, c.version) for c in state.pending] == [("a", f"{3:016x}.n1"),
                                                         ("b", f"{16:016x}.n1")]
