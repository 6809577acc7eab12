"""Property tests for spine.core.abd: run strong reads, and writes that land on random subsets
of the replicas (as a Paxos commit, or a write that timed out, does), against replicas that
answer and acknowledge in random subsets, and check ABD's promise: once a write acknowledged by
W replicas or a read has returned a version, a quorum holds it, and every later successful read
returns it or a newer one."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from spine.core.abd import Failed, StrongRead, WriteQuorum
from spine.core.clock import Version
from spine.core.model import Record, merge

NODES = ("a", "b", "c", "d", "e")

SHAPES = [(3, 2, 2), (5, 3, 3), (5, 2, 4), (5, 4, 2)]  # (n, r, w) with r + w > n


@st.composite
def scripts(draw: st.DrawFn) -> tuple[tuple[int, int, int], list[tuple[bool, set[str], set[str]]]]:
    """A quorum shape and operations: (is_write, who answers the read phase, who acknowledges
    the write phase), the subsets drawn from the key's owners."""
    n, r, w = draw(st.sampled_from(SHAPES))
    some = st.sets(st.sampled_from(NODES[:n]))
    return (n, r, w), draw(st.lists(st.tuples(st.booleans(), some, some), min_size=1,
                                    max_size=25))


def store(replicas: dict[str, Record | None], node: str, rec: Record) -> None:
    old = replicas[node]
    replicas[node] = rec if old is None else merge(old, rec)


def holding(replicas: dict[str, Record | None], v: Version) -> int:
    """How many replicas hold `v` or a newer version."""
    return sum(1 for x in replicas.values() if x is not None and x.version >= v)


def write_phase(replicas: dict[str, Record | None], step: WriteQuorum, acking: set[str]) -> int:
    acks = 0
    for node in step.nodes:
        if node in acking:  # a replica that applies the version acknowledges it
            store(replicas, node, step.record)
            acks += 1
    return acks


def answers_of(replicas: dict[str, Record | None], nodes: tuple[str, ...],
               answering: set[str]) -> dict[str, Record | None]:
    return {n: replicas[n] for n in nodes if n in answering}


@settings(deadline=None, max_examples=300)
@given(scripts())
def test_a_returned_version_is_never_lost_by_later_strong_reads(
    case: tuple[tuple[int, int, int], list[tuple[bool, set[str], set[str]]]]
) -> None:
    (n, r, w), script = case
    owners = NODES[:n]
    replicas: dict[str, Record | None] = {x: None for x in owners}
    hlc = 0
    floor: Version | None = None  # the newest version any operation has returned
    for is_write, answering, acking in script:
        if is_write:  # a version newer than any, committed by the replicas in `acking`
            hlc += 1
            rec = Record("ns", "k", Version(hlc, "a"), clock={"a": hlc})
            acks = write_phase(replicas, WriteQuorum(rec, owners, w), acking)
            if acks >= w:
                floor = rec.version if floor is None else max(floor, rec.version)
            # A failed write may still land, like a real one: it is neither promised nor lost.
        else:
            rm = StrongRead(owners, r, w)
            step = rm.on_answers(answers_of(replicas, rm.start().nodes, answering), (owners, 0))
            if isinstance(step, WriteQuorum):
                step = rm.on_acks(write_phase(replicas, step, acking))
            if isinstance(step, Failed):
                continue
            got = step.record
            if got is not None:  # ABD's second phase: what a read returns, a quorum holds
                assert holding(replicas, got.version) >= w
            if floor is not None:
                assert got is not None and got.version >= floor
            if got is not None:
                floor = got.version if floor is None else max(floor, got.version)
