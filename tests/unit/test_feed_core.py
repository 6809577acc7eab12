"""spine.core.feed: the cursor's codec (hostile text refused, naming `cursor`), which keys the
pages show on a quorum, how positions advance around held keys, cursor expiry; and the FeedRead
message's bounds."""

from __future__ import annotations

import base64

import msgpack
import pytest

from spine.core import feed as rules
from spine.core.clock import Version
from spine.core.errors import InvalidInput
from spine.core.messages import (
    FeedProbe,
    FeedRead,
    decode,
    feed_page_from_wire,
    feed_probe_from_wire,
)
from spine.core.model import Record


def rec(mid: str, hlc: int, node: str = "n1") -> Record:
    return Record("ns", mid, Version(hlc, node), {node: hlc}, content=f"{mid}@{hlc}")


def test_a_cursor_round_trips_and_is_url_safe() -> None:
    c = rules.Cursor({"n1": (7, 12), "n2": (9, 0)}, issued_hlc=123456)
    text = c.encode()
    assert all(ch.isalnum() or ch in "-_" for ch in text)
    assert rules.Cursor.decode(text) == c


@pytest.mark.parametrize("text", [
    "", "!!!", "A" * 5000, "not-a-cursor",
    base64.urlsafe_b64encode(msgpack.packb([2, 1, []])).decode(),  # another format
    base64.urlsafe_b64encode(msgpack.packb([1, -1, []])).decode(),
    base64.urlsafe_b64encode(msgpack.packb([1, 1, [["n1", 1]]])).decode(),
    base64.urlsafe_b64encode(msgpack.packb([1, 1, [["n1", 1, -5]]])).decode(),
    base64.urlsafe_b64encode(msgpack.packb([1, 1, [["", 1, 5]]])).decode(),
    base64.urlsafe_b64encode(msgpack.packb([1, 1, [[1, 1, 5]]])).decode(),
    base64.urlsafe_b64encode(msgpack.packb([1, 1, [["n1", 2**64 - 1, 5]]])).decode(),
    base64.urlsafe_b64encode(msgpack.packb([1, 1, [["n1", 1, 5]] * 300])).decode(),
    base64.urlsafe_b64encode(msgpack.packb({"a": 1})).decode(),
    base64.urlsafe_b64encode(msgpack.packb([1, True, []])).decode(),
])
def test_hostile_cursors_are_refused_naming_the_field(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        rules.Cursor.decode(text)
    assert info.value.field == "cursor"


def test_start_positions_keep_members_and_start_new_ones_at_their_beginning() -> None:
    c = rules.Cursor({"n1": (7, 12), "gone": (1, 3)})
    assert rules.start_positions(c, ["n1", "n4"]) == {"n1": (7, 12), "n4": (0, 0)}
    assert rules.start_positions(None, ["n1"]) == {"n1": (0, 0)}
    assert rules.after((7, 12), 7) == 12
    assert rules.after((7, 12), 8) == 0  # the node's log was rebuilt: from its beginning
    assert rules.after((0, 0), 8) == 0


def test_newest_per_key_counts_only_the_holders_of_the_newest() -> None:
    pages = {
        "n1": rules.Page(1, [(1, rec("a", 5)), (2, rec("b", 3))], 2),
        "n2": rules.Page(1, [(4, rec("a", 5))], 4),
        "n3": rules.Page(1, [(9, rec("a", 4)), (10, rec("b", 6))], 10),
    }
    states = rules.newest_per_key(pages)
    assert states["a"].newest.version.hlc == 5 and states["a"].holders == {"n1", "n2"}
    assert states["b"].newest.version.hlc == 6 and states["b"].holders == {"n3"}
    assert rules.on_quorum(states["a"], ["n1", "n2", "n3"], 2)
    assert not rules.on_quorum(states["b"], ["n1", "n2", "n3"], 2)
    assert not rules.on_quorum(states["a"], ["n2", "n3", "n4"], 2)  # n1 left the write set


def test_positions_advance_to_each_page_end_but_stop_before_a_held_key() -> None:
    start = {"n1": (1, 0), "n2": (1, 10), "n3": (1, 5)}
    pages = {
        "n1": rules.Page(1, [(1, rec("a", 5)), (2, rec("b", 3)), (3, rec("c", 3))], 3),
        "n2": rules.Page(1, [], 40),
    }
    out = rules.advance(start, pages, held={"b"})
    assert out == {"n1": (1, 1), "n2": (1, 40), "n3": (1, 5)}  # n3 did not answer: stays
    assert rules.advance(start, pages, set())["n1"] == (1, 3)
    # A rebuilt log (new epoch): the position is in the new log only.
    assert rules.advance({"n1": (1, 50)}, {"n1": rules.Page(2, [], 3)}, set()) == {"n1": (2, 3)}


def test_a_cursor_older_than_the_grace_is_expired() -> None:
    assert rules.expired(rules.Cursor({}, 100), now_hlc=250, grace_hlc=100)
    assert not rules.expired(rules.Cursor({}, 100), now_hlc=200, grace_hlc=100)
    assert not rules.expired(rules.Cursor({}, 0), now_hlc=10**12, grace_hlc=1)


def test_items_carry_no_record_for_a_delete() -> None:
    gone = Record("ns", "a", Version(5, "n1"), {"n1": 5}, deleted=True)
    assert rules.item(gone) == {"id": "a", "version": f"{5:016x}.n1", "deleted": True,
                                "record": None}
    live = rules.item(rec("b", 6))
    assert live["record"] is not None and live["deleted"] is False


@pytest.mark.parametrize("body,field", [
    (["ns", -1, 10, 0, 0, 0], "after"),
    (["ns", 0, 1001, 0, 0, 0], "limit"),
    (["ns", 0, 10, -1, 0, 0], "max_bytes"),
    (["ns", 0, 10, 0, 10**9, 0], "wait_ms"),
    (["ns", 0, 10, 0, 0, "x"], "epoch"),
    (["", 0, 10, 0, 0, 0], "namespace"),
    (["n" * 65, 0, 10, 0, 0, 0], "namespace"),
    (["ns", True, 10, 0, 0, 0], "after"),
])
def test_feed_reads_out_of_bounds_are_refused(body: list[object], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        decode(int(FeedRead.TAG), body)
    assert info.value.field == field


def test_a_feed_read_round_trips() -> None:
    msg = FeedRead("ns", 5, 100, 1024, 2000, 77)
    assert decode(int(FeedRead.TAG), msg.to_wire()) == msg


@pytest.mark.parametrize("reply", [
    {"epoch": 1, "entries": [[1, rec("a", 1).to_wire()]] * 3, "next": 1},  # past the limit
    {"epoch": 1, "entries": [[2, rec("a", 1).to_wire()], [1, rec("b", 1).to_wire()]], "next": 2},
    {"epoch": 0, "entries": [], "next": 1},
    {"epoch": 1, "entries": [], "next": -1},
    {"epoch": 1, "entries": [[1, "junk"]], "next": 1},
    {"entries": [], "next": 1},
    ["not", "a", "dict"],
])
def test_hostile_feed_pages_are_refused(reply: object) -> None:
    with pytest.raises(InvalidInput):
        feed_page_from_wire(reply, 2)


def test_a_feed_page_decodes() -> None:
    epoch, entries, nxt = feed_page_from_wire(
        {"epoch": 3, "entries": [[1, rec("a", 1).to_wire()], [4, rec("b", 2).to_wire()]],
         "next": 4}, 10)
    assert epoch == 3 and [s for s, _ in entries] == [1, 4] and nxt == 4


def test_a_version_is_a_repeat_only_behind_the_consumers_position() -> None:
    v5, v6 = Version(5, "n1"), Version(6, "n1")
    start = {"n1": (7, 10), "n2": (8, 3)}
    # n1 stores v5 at seq 9 <= its position 10: the consumer has v5 (or newer) already.
    assert rules.delivered_before(v5, {"n1": (7, v5, 9)}, start)
    assert rules.delivered_before(v5, {"n1": (7, v6, 10)}, start)  # a newer one: also had
    assert not rules.delivered_before(v6, {"n1": (7, v5, 9)}, start)  # older than the candidate
    assert not rules.delivered_before(v5, {"n1": (7, v5, 11)}, start)  # not read yet
    assert not rules.delivered_before(v5, {"n1": (9, v5, 9)}, start)  # another log (rebuilt)
    assert not rules.delivered_before(v5, {"n1": (7, None, 0)}, start)  # not stored
    assert not rules.delivered_before(v5, {"n3": (1, v5, 1)}, start)  # not in the cursor
    assert not rules.delivered_before(v5, {}, start)
    assert rules.delivered_before(v5, {"n1": (7, v5, 11), "n2": (8, v5, 2)}, start)


def test_a_feed_probe_round_trips_and_hostile_ones_are_refused() -> None:
    msg = FeedProbe("ns", ["a", "b"])
    assert decode(int(FeedProbe.TAG), msg.to_wire()) == msg
    for body, field in [(["ns", ["a"] * 1001], "ids"), (["ns", [""]], "ids"),
                        (["ns", ["x" * 513]], "ids"), (["ns", "a"], "ids"),
                        (["", []], "namespace")]:
        with pytest.raises(InvalidInput) as info:
            decode(int(FeedProbe.TAG), body)
        assert info.value.field == field
    epoch, entries = feed_probe_from_wire({"epoch": 4, "entries": [[[5, "n1"], 9], [None, 0]]}, 2)
    assert epoch == 4 and entries == [(Version(5, "n1"), 9), (None, 0)]
    for reply, n in (({"epoch": 4, "entries": [[None, 0]]}, 2), ({"epoch": 0, "entries": []}, 0),
                     ({"epoch": 4, "entries": [[[5, 7], 1]]}, 1),
                     ({"epoch": 4, "entries": [[None, -1]]}, 1), ({"entries": []}, 0)):
        with pytest.raises(InvalidInput):
            feed_probe_from_wire(reply, n)
