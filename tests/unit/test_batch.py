"""Unit tests for spine.core.batch: which ops of a batch create their key, and at which level
each runs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from spine.core.batch import by_level, creates
from spine.core.clock import Version
from spine.core.consistency import Level, Policy
from spine.core.model import Record
from spine.core.requests import WriteOp
from spine.core.validation import WriteBody


def put(mid: str, *tags: str) -> WriteOp:
    return WriteOp(mid, WriteBody("x", tuple(tags), {}, None, None))


def delete(mid: str) -> WriteOp:
    return WriteOp(mid, None)


def stored(mid: str, *tags: str, deleted: bool = False) -> Record:
    return Record("ns", mid, Version(1, "n1"), {"n1": 1}, tags=tags, deleted=deleted)


def test_an_upsert_creates_an_absent_or_deleted_key_only() -> None:
    ops = [put("a"), put("b"), put("c"), delete("d")]
    olds = [None, stored("b"), stored("c", deleted=True), None]
    assert creates(ops, olds) == [True, False, True, False]


def test_earlier_ops_of_the_batch_count() -> None:
    ops = [put("a"), put("a"), delete("a"), put("a")]
    assert creates(ops, [None] * 4) == [True, False, False, True]


POLICY = Policy(n=3, default=Level.SESSION,
                overrides={"pinned": Level.STRONG, "metric": Level.EVENTUAL})


def test_levels_follow_old_and_new_tags_then_the_header() -> None:
    ops = [put("a"), put("b", "pinned"), put("c"), delete("d"), put("e", "metric")]
    olds = [None, None, stored("c", "pinned"), stored("d", "pinned"), None]
    assert by_level(POLICY, ops, olds, None) == {
        Level.SESSION: [0], Level.STRONG: [1, 2, 3], Level.EVENTUAL: [4]}
    # A header strengthens, never weakens below the tags' overrides.
    assert by_level(POLICY, ops, olds, Level.EVENTUAL) == {
        Level.EVENTUAL: [0, 4], Level.STRONG: [1, 2, 3]}


def test_a_deleted_keys_old_tags_no_longer_count() -> None:
    assert by_level(POLICY, [put("a")], [stored("a", "pinned", deleted=True)], None) == {
        Level.SESSION: [0]}


@given(st.lists(st.tuples(st.sampled_from("abc"), st.booleans()), max_size=12),
       st.dictionaries(st.sampled_from("abc"), st.booleans()))
def test_creates_matches_applying_the_ops_in_order(
    script: list[tuple[str, bool]], start: dict[str, bool]
) -> None:
    """start: key → stored live (True) or as a tombstone (False); absent keys are not stored."""
    ops = [put(k) if up else delete(k) for k, up in script]
    olds = [None if k not in start else stored(k, deleted=not start[k]) for k, _ in script]
    state = dict(start)
    expected = []
    for k, up in script:
        expected.append(up and not state.get(k, False))
        state[k] = up
    assert creates(ops, olds) == expected
