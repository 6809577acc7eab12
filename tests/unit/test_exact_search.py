"""spine.storage.exact_search: brute-force k-NN over an index's slots, checked against a plain
sort of every score, on both of its paths (a gather of few labels, a whole-array matmul for many),
with free slots and a label subset."""

from __future__ import annotations

import numpy as np
import pytest

from spine.storage.exact_search import (
    best_of,
    estimate_matches,
    matching_labels,
    pending_labels,
    top_k,
)

DIM = 16


def _slots(n: int, free: set[int], seed: int = 7) -> tuple[np.ndarray, list[str | None]]:
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((n + 8, DIM)).astype(np.float32)  # rows past n: spare capacity
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    keys: list[str | None] = [None if i in free else f"m{i}" for i in range(n)]
    return vecs, keys


def _truth(vecs: np.ndarray, keys: list[str | None], q: np.ndarray, k: int,
           labels: list[int]) -> list[str]:
    scored = sorted(((float(vecs[i] @ q), i) for i in labels), key=lambda s: (-s[0], s[1]))
    return [keys[i] or "" for _, i in scored[:k]]


@pytest.mark.parametrize("k", [1, 5, 40])
def test_top_k_over_every_live_slot_skips_the_free_ones(k: int) -> None:
    free = {3, 10, 11, 30}
    vecs, keys = _slots(40, free)
    q = vecs[5].copy()
    live = [i for i in range(40) if i not in free]
    hits = top_k(vecs, keys, sorted(free), len(live), q, k, None)
    assert [h[0] for h in hits] == _truth(vecs, keys, q, k, live)
    assert len(hits) == min(k, len(live))  # k past the live count: every live slot, no free one
    assert hits[0] == ("m5", pytest.approx(1.0, abs=1e-6))
    assert all(-1.0 <= s <= 1.0 for _, s in hits)
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)


@pytest.mark.parametrize("share", ["few", "many"])  # a gather, or the whole matmul then a pick
def test_top_k_over_a_label_subset_scores_only_those(share: str) -> None:
    vecs, keys = _slots(64, set())
    wanted = [2, 9, 17] if share == "few" else list(range(0, 64, 2))
    labels = np.asarray(wanted, dtype=np.int64)
    q = vecs[1].copy()  # label 1 is not wanted: it must not come back though it scores 1.0
    hits = top_k(vecs, keys, [], 64, q, 5, labels)
    assert [h[0] for h in hits] == _truth(vecs, keys, q, 5, wanted)
    assert "m1" not in {h[0] for h in hits}


def test_top_k_with_no_labels_or_no_room_returns_nothing() -> None:
    vecs, keys = _slots(8, set())
    q = vecs[0].copy()
    assert top_k(vecs, keys, [], 8, q, 3, np.asarray([], dtype=np.int64)) == []
    assert top_k(vecs, keys, [], 8, q, 0, None) == []


def test_best_of_merges_by_score_and_keeps_k() -> None:
    a = [("x", 0.9), ("y", 0.5)]
    b = [("z", 0.7), ("w", 0.1)]
    assert best_of(a, b, 3) == [("x", 0.9), ("z", 0.7), ("y", 0.5)]
    assert best_of(a, [], 1) == a  # nothing to merge: the first list as it is


def test_pending_and_matching_labels_follow_the_predicate() -> None:
    keys: list[str | None] = ["a1", "b1", None, "a2"]
    assert sorted(pending_labels({0, 1, 3}, keys, None).tolist()) == [0, 1, 3]
    assert sorted(pending_labels({0, 1, 3}, keys, lambda k: k.startswith("a")).tolist()) == [0, 3]
    assert sorted(matching_labels({"a1": 0, "b1": 1, "a2": 3},
                                  lambda k: k.startswith("b")).tolist()) == [1]


def test_estimate_matches_scales_the_sampled_share_to_the_live_count() -> None:
    rng = np.random.default_rng(3)  # a quarter "a", spread at random (a stride would alias)
    keys: list[str | None] = [f"{'a' if rng.random() < 0.25 else 'b'}{i}" for i in range(4096)]
    est = estimate_matches(keys, 4096, lambda k: k.startswith("a"))
    true = sum(1 for k in keys if k is not None and k.startswith("a"))
    sigma = 4096 * (0.25 * 0.75 / 512) ** 0.5  # a 512-slot sample's standard error, in records
    assert abs(est - true) < 3 * sigma, (est, true)
    assert estimate_matches(keys, 4096, lambda k: False) == 0.0
    assert estimate_matches([None, None], 0, lambda k: True) == 0.0
