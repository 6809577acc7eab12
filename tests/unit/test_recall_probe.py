"""Recall probes (spine.core.recall_probe): when a graph search is also run exactly, and what
the probes conclude."""

from __future__ import annotations

from spine.core.recall_probe import RecallProbe

TRUTH = [(f"k{i}", 1.0 - i / 100) for i in range(10)]


def test_no_probe_before_the_graph_holds_nine_tenths_of_the_records() -> None:
    p = RecallProbe(95, every=4)
    assert not p.due(pending=11, live=100)
    assert p.due(pending=10, live=100)


def test_the_first_eight_searches_probe_then_every_nth() -> None:
    p = RecallProbe(95, every=4)
    due = [p.due(0, 100) for _ in range(20)]
    assert due == [True] * 8 + [False, False, False, True] * 3


def test_probing_can_be_turned_off() -> None:
    assert not RecallProbe(95, every=0).due(0, 100)


def test_a_running_average_of_the_overlap_decides_poor_recall() -> None:
    p = RecallProbe(95, every=64)
    assert p.recall is None and not p.poor
    p.fold(TRUTH, TRUTH)
    assert p.recall == 1.0 and not p.poor
    half = TRUTH[:5] + [("x", 0.1)] * 5
    p.fold(half, TRUTH)
    assert p.recall is not None and abs(p.recall - 0.9) < 1e-9 and p.poor  # 0.8 * 1 + 0.2 * 0.5
    p.fold([], [])  # nothing to compare: no change
    assert abs(p.recall - 0.9) < 1e-9
