"""Unit tests for spine.core.model: keys, the LWW merge, the wire form and the public shape."""

from __future__ import annotations

import datetime as dt
import itertools
import re
from dataclasses import replace

import msgpack
import numpy as np
import orjson
import pytest

from spine.core.clock import Version, hlc_from_ms
from spine.core.model import Key, Record, is_concurrent, merge, rfc3339, vector_to_list

T0 = 1_700_000_000_123  # 2023-11-14T22:13:20.123Z
RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
PUBLIC_FIELDS = {
    "namespace", "id", "content", "tags", "metadata", "agent_id", "created_at", "updated_at",
    "version", "deleted", "expires_at",
}


def rec(hlc: int, node: str = "n1", **kw: object) -> Record:
    return Record("ns", "m1", Version(hlc, node), **kw)  # type: ignore[arg-type]


def test_key_is_namespace_slash_id_and_hashable() -> None:
    k = Key("ns", "abc")
    assert str(k) == "ns/abc"
    assert k == Key("ns", "abc")
    assert len({k, Key("ns", "abc"), Key("ns", "abd")}) == 2
    assert rec(1).key == Key("ns", "m1")


# --- merge --------------------------------------------------------------------------------------


def test_merge_keeps_the_payload_of_the_larger_version_and_joins_clocks() -> None:
    old = rec(10, content="old", tags=("a",), clock={"n1": 1}, metadata={"x": 1})
    new = rec(20, node="n2", content="new", tags=("b",), clock={"n2": 1})
    for got in (merge(old, new), merge(new, old)):
        assert got.content == "new"
        assert got.tags == ("b",)
        assert got.metadata == {}
        assert got.version == Version(20, "n2")
        assert dict(got.clock) == {"n1": 1, "n2": 1}


def test_merge_breaks_hlc_ties_by_node_id() -> None:
    a = rec(10, node="n1", content="from n1")
    b = rec(10, node="n2", content="from n2")
    assert merge(a, b).content == "from n2"
    assert merge(b, a).content == "from n2"


def test_a_newer_tombstone_wins_and_an_older_one_loses() -> None:
    live = rec(10, content="hello", clock={"n1": 1})
    tomb = rec(11, content="", deleted=True, clock={"n1": 2})
    assert merge(live, tomb).deleted
    assert merge(tomb, live).deleted
    stale_tomb = rec(9, deleted=True)
    assert not merge(live, stale_tomb).deleted
    assert merge(stale_tomb, live).content == "hello"


def test_merge_with_itself_is_itself() -> None:
    a = rec(10, content="x", clock={"n1": 3})
    assert merge(a, a) == a


def test_merge_of_the_same_version_with_different_clocks_joins_them() -> None:
    a = rec(10, content="x", clock={"n1": 2})
    b = rec(10, content="x", clock={"n1": 1, "n3": 4})
    assert merge(a, b) == merge(b, a)
    assert dict(merge(a, b).clock) == {"n1": 2, "n3": 4}


def test_merge_does_not_mutate_its_inputs() -> None:
    a = rec(10, clock={"n1": 1})
    b = rec(20, node="n2", clock={"n2": 1})
    merge(a, b)
    assert dict(a.clock) == {"n1": 1}
    assert dict(b.clock) == {"n2": 1}


def test_is_concurrent_only_when_neither_clock_dominates() -> None:
    base = rec(1, clock={"n1": 1})
    assert not is_concurrent(base, rec(2, clock={"n1": 2}))
    assert not is_concurrent(base, base)
    assert is_concurrent(rec(2, clock={"n1": 2}), rec(3, node="n2", clock={"n1": 1, "n2": 1}))


# --- wire form ----------------------------------------------------------------------------------


def full_record() -> Record:
    vec = np.array([0.6, 0.8, 0.0], dtype=np.float32).tobytes()
    return Record(
        namespace="ns",
        id="m1",
        version=Version(hlc_from_ms(T0) + 5, "n2"),
        clock={"n1": 3, "n2": 1},
        content="héllo 🌍",
        tags=("a", "b:c"),
        metadata={"k": [1, 2.5, None, {"nested": True}], "s": "v"},
        agent_id="agent-7",
        vector=vec,
        created_hlc=hlc_from_ms(T0 - 1_000),
        deleted=False,
    )


def test_wire_form_round_trips_directly_and_through_msgpack() -> None:
    r = full_record()
    assert Record.from_wire(r.to_wire()) == r
    packed = msgpack.packb(r.to_wire())
    assert Record.from_wire(msgpack.unpackb(packed)) == r


def test_wire_form_round_trips_a_tombstone_without_vector() -> None:
    r = Record("ns", "m1", Version(7, "n1"), clock={"n1": 2}, deleted=True)
    back = Record.from_wire(msgpack.unpackb(msgpack.packb(r.to_wire())))
    assert back == r
    assert back.deleted is True
    assert back.vector is None
    assert back.agent_id is None


def test_wire_form_is_positional_and_append_only() -> None:
    w = full_record().to_wire()
    assert len(w) == 16
    assert w[:4] == ["ns", "m1", hlc_from_ms(T0) + 5, "n2"]
    assert w[11] is False
    assert w[12] == {}  # fences, appended (DESIGN §12)
    assert w[13] == 0  # expires_hlc, appended (DESIGN §13): never
    assert Record.from_wire(w[:12]) == full_record()  # a 12-field form from before still reads
    assert Record.from_wire(w[:13]) == full_record()  # and a 13-field one
    assert w[14:] == [None, 0]  # writer and writer_seq, appended (DESIGN §4): none
    assert Record.from_wire(w[:14]) == full_record()


# --- one session's writes (monotonic writes, DESIGN §4) ---------------------------------------


def by(hlc: int, writer: str | None, seq: int, node: str = "n1", content: str = "") -> Record:
    return rec(hlc, node, content=content or f"{writer}#{seq}", writer=writer, writer_seq=seq)


def test_a_sessions_later_write_wins_over_its_earlier_one_minted_with_a_larger_hlc() -> None:
    early = by(500, "s1", 1, "n1")  # minted late by a node that sat on the request
    late = by(100, "s1", 2, "n2")
    for a, b in ((early, late), (late, early)):
        m = merge(a, b)
        assert m.content == "s1#2"
        assert m.version == Version(501, "n2")  # restamped one tick above the earlier write
        assert m.version > early.version
    assert merge(merge(early, late), early) == merge(early, late)  # idempotent, stable


def test_a_sessions_writes_in_order_merge_as_plain_lww() -> None:
    a, b = by(100, "s1", 1), by(200, "s1", 2, "n2")
    assert merge(a, b) == merge(b, a) == b


def test_different_writers_or_no_writer_merge_by_version_alone() -> None:
    early = by(500, "s1", 1)
    other = by(100, "s2", 2, "n2")
    anon = rec(100, "n3", content="anon")
    assert merge(early, other).content == "s1#1"
    assert merge(anon, early).content == "s1#1"
    assert merge(early, replace(other, writer=None)).content == "s1#1"


def test_a_third_writer_between_them_still_converges_whatever_the_order() -> None:
    writes = [by(500, "s1", 1, "n1"), by(100, "s1", 2, "n2"), by(300, "s2", 1, "n3")]
    finals = []
    for order in itertools.permutations(writes):  # one replica per order of arrival
        state = order[0]
        for w in order[1:]:
            state = merge(state, w)
        finals.append(state)
    # anti-entropy then merges replicas pairwise, in any order: all end on one record
    ends = []
    for order in itertools.permutations(finals, 3):
        state = order[0]
        for other in order[1:]:
            state = merge(state, other)
        ends.append(state)
    assert all(e == ends[0] for e in ends)
    assert all(merge(ends[0], f) == ends[0] for f in finals)
    assert ends[0].content == "s1#2"  # some replica met both of s1's writes and ordered them


def test_equal_versions_rank_by_the_writers_number() -> None:
    a = by(100, "s1", 3, "n1", "three")
    b = by(100, "s1", 1, "n1", "one")
    b = replace(b, version=a.version)  # only a restamp can make two records of one version
    assert merge(a, b).content == merge(b, a).content == "three"


def test_expiry_travels_on_the_wire_and_shows_as_expires_at() -> None:
    r = replace(full_record(), expires_hlc=hlc_from_ms(T0 + 60_000))
    back = Record.from_wire(msgpack.unpackb(msgpack.packb(r.to_wire())))
    assert back == r
    assert back.public()["expires_at"] == "2023-11-14T22:14:20.123Z"
    assert full_record().public()["expires_at"] is None


def test_merge_joins_fences_whichever_payload_wins() -> None:
    old = replace(full_record(), fences={"lock": 5, "other": 2})
    new = replace(full_record(), version=Version(old.version.hlc + 1, "n3"), fences={"lock": 3})
    for a, b in ((old, new), (new, old)):
        m = merge(a, b)
        assert m.version == new.version
        assert dict(m.fences) == {"lock": 5, "other": 2}


# --- public shape -------------------------------------------------------------------------------


def test_public_has_exactly_the_design_fields_and_no_vector_by_default() -> None:
    r = full_record()
    out = r.public()
    assert set(out) == PUBLIC_FIELDS
    assert out["namespace"] == "ns"
    assert out["id"] == "m1"
    assert out["content"] == "héllo 🌍"
    assert out["tags"] == ["a", "b:c"]
    assert out["metadata"] == {"k": [1, 2.5, None, {"nested": True}], "s": "v"}
    assert out["agent_id"] == "agent-7"
    assert out["version"] == r.version.encode()
    assert out["deleted"] is False
    orjson.dumps(out)  # JSON-encodable as is


def test_public_timestamps_are_rfc3339_utc_from_the_hlc() -> None:
    out = full_record().public()
    assert out["updated_at"] == "2023-11-14T22:13:20.123Z"
    assert out["created_at"] == "2023-11-14T22:13:19.123Z"
    for name in ("created_at", "updated_at"):
        assert RFC3339.fullmatch(out[name])
        parsed = dt.datetime.fromisoformat(out[name])
        assert parsed.tzinfo is not None
        assert parsed.utcoffset() == dt.timedelta(0)


def test_public_created_at_falls_back_to_the_version_when_unknown() -> None:
    r = Record("ns", "m1", Version(hlc_from_ms(T0), "n1"))
    out = r.public()
    assert out["created_at"] == out["updated_at"] == "2023-11-14T22:13:20.123Z"


def test_public_includes_the_vector_only_when_asked() -> None:
    r = full_record()
    out = r.public(include_vector=True)
    assert set(out) == PUBLIC_FIELDS | {"vector"}
    assert out["vector"] == pytest.approx([0.6, 0.8, 0.0], abs=1e-6)
    assert Record("ns", "m1", Version(1, "n1")).public(include_vector=True)["vector"] is None


def test_public_returns_copies_not_the_records_own_containers() -> None:
    r = full_record()
    out = r.public()
    out["metadata"]["s"] = "changed"
    out["tags"].append("zzz")
    assert r.metadata["s"] == "v"
    assert r.tags == ("a", "b:c")


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (1, "1970-01-01T00:00:00.001Z"),
        (999, "1970-01-01T00:00:00.999Z"),
        (1_000, "1970-01-01T00:00:01.000Z"),
        (T0, "2023-11-14T22:13:20.123Z"),
        (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
    ],
)
def test_rfc3339(ms: int, text: str) -> None:
    assert rfc3339(ms) == text


def test_vector_to_list() -> None:
    assert vector_to_list(None) is None
    raw = np.array([1.0, -2.5, 0.25], dtype=np.float32).tobytes()
    assert vector_to_list(raw) == [1.0, -2.5, 0.25]
    assert all(type(x) is float for x in vector_to_list(raw) or [])


@pytest.mark.parametrize("ms", [0, 1, 999, 1000, 1001, T0, T0 + 876, 4_102_444_799_999])
def test_rfc3339_names_the_millisecond_it_is_given(ms: int) -> None:
    text = rfc3339(ms)
    assert RFC3339.fullmatch(text)
    parsed = dt.datetime.fromisoformat(text)
    assert round(parsed.timestamp() * 1000) == ms
    assert rfc3339(ms) == text  # the second's cached prefix gives the same text again
