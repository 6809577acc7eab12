"""Settled versions (spine.core.settlement): what a node may leave out of session tokens."""

from __future__ import annotations

import pytest

from spine.client.session import merge_tokens
from spine.core.clock import Version
from spine.core.errors import InvalidInput
from spine.core.messages import Apply, Tag, decode
from spine.core.session import MAX_FORGOTTEN_BYTES, SessionToken
from spine.core.settlement import (
    MAX_NOTICES,
    Settlement,
    notices_from_wire,
    notices_to_wire,
)

OWNERS = ("n1", "n2", "n3")
V1, V2, V3 = Version(10, "n1"), Version(20, "n2"), Version(30, "n1")


def test_a_notice_settles_its_version_and_older_ones_not_newer() -> None:
    s = Settlement()
    s.note("ns/a", V2)
    assert s.noticed("ns/a", V1) and s.noticed("ns/a", V2)
    assert not s.noticed("ns/a", V3)
    assert not s.noticed("ns/b", V1)
    s.note("ns/a", V1)  # an older notice arriving late keeps the newer one
    assert s.noticed("ns/a", V2)


def test_notices_are_kept_for_the_last_max_keys_keys() -> None:
    s = Settlement(max_keys=3)
    for k in "abcd":
        s.note(f"ns/{k}", V1)
    assert len(s) == 3
    assert not s.noticed("ns/a", V1)  # the oldest went
    s.note("ns/b", V2)  # noticed again: now the newest
    s.note("ns/e", V1)
    assert s.noticed("ns/b", V2) and not s.noticed("ns/c", V1)


def test_a_matching_anti_entropy_round_settles_records_up_to_its_seq() -> None:
    s = Settlement()
    s.note_shard(7, OWNERS, 100)
    assert s.settled("ns/a", V1, 7, OWNERS, OWNERS, lambda: 100)
    assert s.settled("ns/a", V1, 7, OWNERS, OWNERS, lambda: 1)
    assert not s.settled("ns/a", V1, 7, OWNERS, OWNERS, lambda: 101)  # written after the match
    assert not s.settled("ns/a", V1, 7, OWNERS, OWNERS, lambda: 0)  # no change seq: never
    assert not s.settled("ns/a", V1, 8, OWNERS, OWNERS, lambda: 5)  # another shard
    other = ("n1", "n2", "n4")
    assert not s.settled("ns/a", V1, 7, other, other, lambda: 5)  # other owners
    # A ring change under way (pending owners in the write set): the match proves nothing.
    assert not s.settled("ns/a", V1, 7, OWNERS, (*OWNERS, "n4"), lambda: 5)
    # A notice holds whatever the ring does (it counted the whole write set).
    s.note("ns/a", V1)
    assert s.settled("ns/a", V1, 7, OWNERS, (*OWNERS, "n4"), lambda: 500)


def test_the_seq_is_read_only_when_a_match_could_vouch() -> None:
    s = Settlement()
    s.note("ns/a", V2)

    def never() -> int:
        raise AssertionError("the seq was read")
    assert s.settled("ns/a", V1, 7, OWNERS, OWNERS, never)  # noticed
    assert not s.settled("ns/b", V1, 7, OWNERS, OWNERS, never)  # no match for the shard
    s.note_shard(7, OWNERS, 10)
    assert not s.settled("ns/b", V1, 7, OWNERS, (*OWNERS, "n4"), never)  # a ring change


def test_shard_matches_only_move_forward_for_the_same_owners() -> None:
    s = Settlement()
    s.note_shard(1, OWNERS, 50)
    s.note_shard(1, OWNERS, 40)  # a later round whose tree was read earlier: keep 50
    assert s.settled("ns/a", V1, 1, OWNERS, OWNERS, lambda: 50)
    s.note_shard(1, ("n1", "n2", "n4"), 10)  # other owners: start over
    assert not s.settled("ns/a", V1, 1, OWNERS, OWNERS, lambda: 5)
    assert not s.settled("ns/a", V1, 1, ("n1", "n2", "n4"), ("n1", "n2", "n4"), lambda: 11)
    assert s.settled("ns/a", V1, 1, ("n1", "n2", "n4"), ("n1", "n2", "n4"), lambda: 10)


def test_prune_drops_noticed_entries_and_lists_them_for_a_merging_client() -> None:
    tok = SessionToken(max_keys=8)
    tok.observe("ns/a", V1)
    tok.observe("ns/b", V3)
    tok.observe("ns/c", V1)
    s = Settlement()
    s.note("ns/a", V2)  # newer than the entry: the entry goes
    s.note("ns/b", V2)  # older than the entry: it stays
    s.prune(tok)
    assert tok.entries == {"ns/b": V3, "ns/c": V1}
    assert tok.forgotten == {"ns/a": V1}
    # The client's own token still holds ns/a; merging the reply drops it, keeps the rest.
    mine = SessionToken(max_keys=8)
    mine.observe("ns/a", V1)
    mine.observe("ns/z", V2)
    merged = merge_tokens(mine.encode(), tok.encode())
    assert merged is not None
    back = SessionToken.decode(merged, 8)
    assert back.entries == {"ns/b": V3, "ns/c": V1, "ns/z": V2}
    assert back.forgotten == {}  # a merged token carries no list of its own


def test_a_forgotten_entry_newer_than_the_clients_stays_with_the_client() -> None:
    reply = SessionToken(max_keys=8)
    reply.observe("ns/a", V1)
    reply.forget("ns/a", V1)
    mine = SessionToken(max_keys=8)
    mine.observe("ns/a", V3)  # the client wrote a newer version meanwhile
    mine.merge(reply)
    assert mine.entries == {"ns/a": V3}


def test_forget_leaves_a_newer_entry_alone() -> None:
    tok = SessionToken(max_keys=8)
    tok.observe("ns/a", V3)
    tok.forget("ns/a", V2)
    assert tok.entries == {"ns/a": V3} and tok.forgotten == {}


def test_the_forgotten_list_is_bounded_in_bytes() -> None:
    tok = SessionToken(max_keys=64)
    for i in range(64):
        key = f"ns/{i:03d}" + "x" * 100
        tok.observe(key, V1)
        tok.forget(key, V1)
    assert tok.entries == {}
    size = 8 + sum(len(k) + len(v.node) + 14 for k, v in tok.forgotten.items())
    assert 0 < size <= MAX_FORGOTTEN_BYTES
    assert len(tok.forgotten) < 64
    back = SessionToken.decode(tok.encode(), 64)
    assert back.forgotten == tok.forgotten


def test_a_token_of_the_old_shape_still_decodes() -> None:
    tok = SessionToken(max_keys=4)
    tok.observe("ns/a", V1)
    assert SessionToken.decode(tok.encode(), 4).entries == {"ns/a": V1}


def test_notices_round_trip_on_apply() -> None:
    notices = [("ns", "a", V1), ("ns", "b", V3)]
    msg = decode(int(Tag.APPLY), Apply([], notices).to_wire())
    assert isinstance(msg, Apply)
    assert msg.records == [] and msg.notices == notices
    # An Apply of an older node (records only) still decodes, with no notices.
    old = decode(int(Tag.APPLY), [[]])
    assert isinstance(old, Apply) and old.notices == []


@pytest.mark.parametrize("bad", [
    "x",
    [["ns", "a", 1]],
    [["", "a", 1, "n1"]],
    [["n" * 65, "a", 1, "n1"]],
    [["ns", "", 1, "n1"]],
    [["ns", "a" * 513, 1, "n1"]],
    [["ns", "a", -1, "n1"]],
    [["ns", "a", 2**64, "n1"]],
    [["ns", "a", "1", "n1"]],
    [["ns", "a", 1, "n" * 257]],
    [["ns", "a", 1, None]],
    [["ns", "a", 1, "n1"]] * (MAX_NOTICES + 1),
])
def test_hostile_notices_are_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        notices_from_wire(bad)
    with pytest.raises(InvalidInput):
        decode(int(Tag.APPLY), [[], bad])


def test_notices_at_the_bounds_are_taken() -> None:
    assert notices_from_wire(notices_to_wire([])) == []
    edge = [["n" * 64, "a" * 512, 2**64 - 1, "n" * 256]] * MAX_NOTICES
    assert len(notices_from_wire(edge)) == MAX_NOTICES
