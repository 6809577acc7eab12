"""Property tests for spine.core.model: the LWW merge is a CRDT join, and the wire form
round-trips."""

from __future__ import annotations

from functools import reduce
from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from spine.core.clock import Version, vv_merge
from spine.core.model import Record, is_concurrent, merge

NODES = ["n1", "n2", "n3", "n4"]
node_ids = st.sampled_from(NODES)
# Counters start at 1: clocks are built by vv_increment, which never stores a zero.
vclocks = st.dictionaries(node_ids, st.integers(1, 20), max_size=4)
# A small hlc range, so ties on the hlc (broken by the node id) are common.
versions = st.builds(Version, st.integers(0, 40), node_ids)
texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
json_scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | texts | st.floats(
    allow_nan=False
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
payloads = st.fixed_dictionaries(
    {
        "content": st.sampled_from(["", "hello", "world"]),
        "tags": st.lists(st.sampled_from(["a", "b", "critical", "x:y"]), unique=True).map(
            lambda t: tuple(sorted(t))
        ),
        "metadata": st.dictionaries(st.sampled_from(["k", "j"]), st.integers(0, 3), max_size=2),
        "agent_id": st.none() | st.sampled_from(["agent-1", "agent-2"]),
        "vector": st.none() | st.sampled_from([b"\x00\x00\x80?", b"\x00\x00\x00@"]),
        "created_hlc": st.integers(0, 40),
        "deleted": st.booleans(),
    }
)


@st.composite
def replicas(draw: st.DrawFn, count: int) -> list[Record]:
    """`count` versions of one key as replicas may hold them.

    A version names exactly one write, so records with the same version carry the same payload;
    only their clocks may differ (a replica joins the clocks of the losers it has merged).
    """
    writes: dict[Version, dict[str, Any]] = draw(
        st.dictionaries(versions, payloads, min_size=1, max_size=count)
    )
    chosen = list(writes)
    out = []
    for _ in range(count):
        v = draw(st.sampled_from(chosen))
        out.append(Record("ns", "m1", v, clock=draw(vclocks), **writes[v]))
    return out


@settings(deadline=None)
@given(replicas(2))
def test_merge_is_commutative(rs: list[Record]) -> None:
    a, b = rs
    assert merge(a, b) == merge(b, a)


@settings(max_examples=60, deadline=None)
@given(replicas(3))
def test_merge_is_associative(rs: list[Record]) -> None:
    a, b, c = rs
    assert merge(merge(a, b), c) == merge(a, merge(b, c))


@settings(deadline=None)
@given(replicas(2))
def test_merge_is_idempotent(rs: list[Record]) -> None:
    a, b = rs
    assert merge(a, a) == a
    ab = merge(a, b)
    assert merge(ab, b) == ab
    assert merge(ab, a) == ab
    assert merge(ab, ab) == ab


@settings(max_examples=50, deadline=None)
@given(replicas(5), st.randoms(use_true_random=False))
def test_every_merge_order_converges_to_the_newest_payload_and_joined_clock(
    rs: list[Record], rnd: Any
) -> None:
    expected = reduce(merge, rs)
    shuffled = list(rs)
    rnd.shuffle(shuffled)
    assert reduce(merge, shuffled) == expected
    newest = max(rs, key=lambda r: r.version)
    assert expected.version == newest.version
    assert (expected.content, expected.tags, expected.deleted, expected.vector) == (
        newest.content, newest.tags, newest.deleted, newest.vector,
    )
    assert dict(expected.clock) == reduce(vv_merge, (r.clock for r in rs), {})


@settings(deadline=None)
@given(replicas(2))
def test_is_concurrent_is_symmetric(rs: list[Record]) -> None:
    a, b = rs
    assert is_concurrent(a, b) == is_concurrent(b, a)
    assert not is_concurrent(a, a)


any_records = st.builds(
    Record,
    namespace=texts,
    id=texts,
    version=st.builds(Version, st.integers(0, 2**64 - 1), texts),
    clock=st.dictionaries(texts, st.integers(0, 2**63 - 1), max_size=4),
    content=st.text(st.characters(blacklist_categories=("Cs",))),
    tags=st.lists(texts, max_size=5).map(tuple),
    metadata=st.dictionaries(texts, json_values, max_size=4),
    agent_id=st.none() | texts,
    vector=st.none() | st.binary(max_size=64),
    created_hlc=st.integers(0, 2**64 - 1),
    deleted=st.booleans(),
)


@settings(max_examples=50, deadline=None)
@given(any_records)
def test_wire_form_round_trips(r: Record) -> None:
    assert Record.from_wire(r.to_wire()) == r


@settings(max_examples=50, deadline=None)
@given(any_records)
def test_wire_form_round_trips_through_msgpack(r: Record) -> None:
    assert Record.from_wire(msgpack.unpackb(msgpack.packb(r.to_wire()))) == r


# --- one session's writes rank by their number (monotonic writes, DESIGN §4) ---------------------

session_writes = st.lists(
    st.tuples(st.integers(0, 40), st.sampled_from(NODES), st.sampled_from([None, "s1", "s2"]),
              st.integers(1, 4)),
    min_size=1, max_size=6, unique_by=lambda t: (t[0], t[1]),  # one HLC reading per node
).map(lambda ws: [Record("ns", "k", Version(h, n), content=f"{w}#{q}@{h}", writer=w,
                         writer_seq=q if w else 0) for h, n, w, q in ws])


@settings(max_examples=300, deadline=None)
@given(session_writes)
def test_merge_with_writers_is_commutative_and_idempotent(rs: list[Record]) -> None:
    for a in rs:
        assert merge(a, a) == a
        for b in rs:
            assert merge(a, b) == merge(b, a)


@settings(max_examples=300, deadline=None)
@given(session_writes, st.randoms(use_true_random=False))
def test_replicas_that_met_writes_in_any_order_converge_by_anti_entropy(
    rs: list[Record], rnd: Any
) -> None:
    # three replicas, each met some of the writes in its own order
    states = []
    met: list[Record] = []
    for _ in range(3):
        mine = [r for r in rs if rnd.random() < 0.7] or [rs[0]]
        rnd.shuffle(mine)
        met += mine
        states.append(reduce(merge, mine))
    for _ in range(30):  # anti-entropy: pairs merge what the other holds, until nothing moves
        before = list(states)
        for i in range(3):
            for j in range(3):
                states[i] = merge(states[i], states[j])
        if states == before:
            break
    assert states[0] == states[1] == states[2]
    top = states[0]
    # every write that met a later write of its own session is outranked by it
    for a in rs:
        for b in rs:
            if a.writer and a.writer == b.writer and a.writer_seq < b.writer_seq:
                assert merge(a, b).content == b.content
    assert top.version >= max(r.version for r in met)  # nothing met is lost to an older one
