"""Search modes and the recency blend as pure logic (DESIGN §13, §14): which mode a body means,
the 400s naming the field, merging the nodes' answers (newest version wins), RRF fusion and its
normalisation, and recency re-ranking."""

from __future__ import annotations

from typing import Any

import pytest

from spine.cluster.search import Candidate, blend_recency, fuse, merge_answer
from spine.core.clock import Version, hlc_from_ms
from spine.core.errors import InvalidInput
from spine.core.model import Record
from spine.core.validation import Limits, Recency, search_body

DIM = 4
VEC = [1.0, 0.0, 0.0, 0.0]
LIMITS = Limits()


def body(**kw: Any) -> Any:
    return search_body(kw, LIMITS, DIM)


def test_default_mode_follows_what_the_body_gives() -> None:
    assert body(query="hi").mode == "hybrid"
    assert body(vector=VEC).mode == "vector"
    assert body(query="hi", vector=VEC).mode == "hybrid"
    assert body(query="hi", min_score=0.8).mode == "vector"  # min_score bounds a similarity
    assert body(query="hi", mode="keyword").mode == "keyword"
    q = body(query="hi", mode="hybrid", recency={"half_life_s": 60, "weight": 0.25})
    assert q.recency == Recency(60.0, 0.25)
    assert len(q.filters_wire()) == 5  # mode and text travel in the Search message


def test_the_search_message_carries_mode_and_text_and_reads_an_older_form() -> None:
    from spine.core.errors import InvalidInput
    from spine.core.messages import Search, decode
    msg = Search("ns", b"v", 3, [[], [], None, None, None], "hybrid", "hi")
    assert decode(int(msg.TAG), msg.to_wire()) == msg
    old = decode(int(msg.TAG), ["ns", b"v", 3, []])  # a node from before modes
    assert isinstance(old, Search) and (old.mode, old.text) == ("vector", None)
    with pytest.raises(InvalidInput):
        decode(int(msg.TAG), ["ns", b"v", 3, [], "fuzzy", None])


@pytest.mark.parametrize(("kw", "field"), [
    ({"query": "hi", "mode": "fuzzy"}, "mode"),
    ({"query": "hi", "mode": 3}, "mode"),
    ({"vector": VEC, "mode": "keyword"}, "query"),
    ({"query": "hi", "vector": VEC, "mode": "keyword"}, "vector"),
    ({"query": "hi", "mode": "keyword", "min_score": 0.5}, "min_score"),
    ({"vector": VEC, "mode": "hybrid"}, "query"),
    ({"query": "hi", "vector": VEC, "mode": "vector"}, "query"),
    ({"k": 3}, "query"),
    ({"query": "hi", "recency": 5}, "recency"),
    ({"query": "hi", "recency": {"half_life_s": 0, "weight": 0.5}}, "recency.half_life_s"),
    ({"query": "hi", "recency": {"half_life_s": -1, "weight": 0.5}}, "recency.half_life_s"),
    ({"query": "hi", "recency": {"half_life_s": "1", "weight": 0.5}}, "recency.half_life_s"),
    ({"query": "hi", "recency": {"half_life_s": 10, "weight": 1.5}}, "recency.weight"),
    ({"query": "hi", "recency": {"half_life_s": 10, "weight": -0.1}}, "recency.weight"),
    ({"query": "hi", "recency": {"half_life_s": 10}}, "recency.weight"),
    ({"query": "hi", "recency": {"half_life_s": 10, "weight": 0.1, "x": 1}}, "recency.x"),
])
def test_bad_mode_and_recency_are_400s_naming_the_field(kw: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as e:
        search_body(kw, LIMITS, DIM)
    assert e.value.field == field


def rec(mid: str, hlc: int = 1, node: str = "n1") -> Record:
    return Record("ns", mid, Version(hlc, node))


def test_merge_keeps_the_newest_version_and_the_best_scores_of_equal_ones() -> None:
    best: dict[str, Candidate] = {}
    merge_answer(best, [rec("a", 1).to_wire(), 0.5])  # a vector-mode pair
    merge_answer(best, [rec("a", 1).to_wire(), None, 3.0])
    merge_answer(best, [rec("a", 1).to_wire(), 0.4, 2.0])
    assert (best["a"].vector, best["a"].keyword) == (0.5, 3.0)
    merge_answer(best, [rec("a", 2).to_wire(), None, 1.0])  # newer: its scores alone
    assert (best["a"].record.version.hlc, best["a"].vector, best["a"].keyword) == (2, None, 1.0)
    merge_answer(best, [rec("a", 1).to_wire(), 0.9, 9.0])  # older: ignored
    assert best["a"].keyword == 1.0


def test_rrf_fuses_ranks_and_scores_one_for_first_in_both() -> None:
    cands = {
        "a": Candidate(rec("a"), vector=0.9, keyword=5.0),   # 1st, 1st
        "b": Candidate(rec("b"), vector=0.8),                 # 2nd vector only
        "c": Candidate(rec("c"), keyword=4.0),                # 2nd keyword only
        "d": Candidate(rec("d"), vector=0.1, keyword=0.5),    # 3rd, 3rd
    }
    fused = fuse(cands, "hybrid", 10)
    scores = {c.record.id: s for c, s in fused}
    top = 2 / 61
    assert scores["a"] == pytest.approx(1.0)
    assert scores["b"] == pytest.approx((1 / 62) / top)
    assert scores["d"] == pytest.approx((2 / 63) / top)
    # b and c tie (second of one ranking each): the keyword hit first, whatever the ids say
    assert [c.record.id for c, _ in fused] == ["a", "d", "c", "b"]
    assert [c.record.id for c, _ in fuse(cands, "keyword", 10)] == ["a", "c", "d"]
    assert [c.record.id for c, _ in fuse(cands, "vector", 2)] == ["a", "b"]
    # depth cuts each ranking before fusion: d is third in both, so absent at depth 2
    assert "d" not in {c.record.id for c, _ in fuse(cands, "hybrid", 2)}
    assert fuse(cands, "hybrid", 10, rankings=1)[0][1] == pytest.approx(2.0)


def test_recency_blend_re_ranks_by_age() -> None:
    now = 1_000_000
    old = Candidate(rec("old", hlc_from_ms(now - 3_600_000)), keyword=10.0)  # an hour old
    new = Candidate(rec("new", hlc_from_ms(now - 60_000)), keyword=8.0)     # a minute old
    ranked = [(old, 10.0), (new, 8.0)]
    out = blend_recency(ranked, "keyword", Recency(600.0, 0.5), now)
    assert [c.record.id for c, _ in out] == ["new", "old"]
    s = {c.record.id: v for c, v in out}
    assert s["old"] == pytest.approx(0.5 * 1.0 + 0.5 * 0.5 ** 6)
    assert s["new"] == pytest.approx(0.5 * 0.8 + 0.5 * 0.5 ** 0.1)
    same = blend_recency(ranked, "keyword", Recency(600.0, 0.0), now)
    assert [c.record.id for c, _ in same] == ["old", "new"]
    vec = blend_recency([(old, 0.7)], "vector", Recency(600.0, 1.0), now)
    assert vec[0][1] == pytest.approx(0.5 ** 6)
