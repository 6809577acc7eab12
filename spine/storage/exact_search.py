"""Exact (brute-force) k-nearest-neighbour search over a vector index's slots (DESIGN §6, §7).

`VectorIndex` scores exactly a namespace that has not outgrown `exact_max`, a predicate that
matches few records, the labels its HNSW graph does not hold yet (so a fresh write is found at
once), and the truth its recall probes measure HNSW against. Recall is 1.0 by construction.

Pure numpy over the index's arrays (slot `label` holds `vecs[label]`, the L2-normalised vector of
memory id `keys[label]`, or None for a free slot): the caller holds its lock, and nothing here
changes them. Scores are inner products of normalised vectors, i.e. cosine similarities.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence

import numpy as np
import numpy.typing as npt

Predicate = Callable[[str], bool]
FloatArray = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]
Hits = list[tuple[str, float]]


def top_k(
    vecs: FloatArray,
    keys: Sequence[str | None],
    free: Sequence[int],
    live: int,
    q: FloatArray,
    k: int,
    labels: Labels | None,
) -> Hits:
    """Brute force over `labels` (None: every live label; `free` lists the others, `live`
    counts them), best k first.

    A contiguous matmul over every slot costs a fifth of a gather of the same rows
    (`vecs[labels]` copies them), so a large share of the slots is scored whole and
    the wanted rows picked from the scores; a small share is gathered.
    """
    n = len(keys)
    if labels is not None and labels.shape[0] == 0:
        return []
    if labels is None or 4 * labels.shape[0] > n:
        every = vecs[:n] @ q
        if labels is None:
            if free:
                every[np.asarray(free, dtype=np.int64)] = -np.inf
            labels = np.arange(n, dtype=np.int64)
            scores = every
        else:
            scores = every[labels]
    else:
        scores = vecs[labels] @ q
    live = live if labels.shape[0] == n else labels.shape[0]
    k = min(k, live)
    if k <= 0:
        return []
    if scores.shape[0] > k:
        top = np.argpartition(-scores, k - 1)[:k]
        order = top[np.argsort(-scores[top], kind="stable")]
    else:
        order = np.argsort(-scores, kind="stable")
    return [(keys[int(labels[i])] or "", min(1.0, max(-1.0, float(scores[i])))) for i in order]


def best_of(a: Hits, b: Hits, k: int) -> Hits:
    """The k best of two result lists (no key is in both), best first."""
    if not b:
        return a
    return sorted(a + b, key=lambda hit: -hit[1])[:k]


def pending_labels(
    pending: Collection[int], keys: Sequence[str | None], predicate: Predicate | None
) -> Labels:
    """The `pending` labels (those the graph does not hold) whose key matches `predicate`."""
    if predicate is None:
        return np.fromiter(pending, dtype=np.int64, count=len(pending))
    return np.fromiter(
        (label for label in pending if predicate(keys[label] or "")), dtype=np.int64
    )


def matching_labels(labels: Mapping[str, int], predicate: Predicate) -> Labels:
    """The labels of every live key (`labels`: key -> label) that matches `predicate`."""
    return np.fromiter(
        (label for key, label in labels.items() if predicate(key)), dtype=np.int64
    )


def estimate_matches(keys: Sequence[str | None], live: int, predicate: Predicate) -> float:
    """Live records matching `predicate`, estimated from an evenly strided sample of ~512 slots."""
    step = max(1, len(keys) // 512)
    sample = [key for key in keys[::step] if key is not None]
    if not sample:
        return 0.0
    hits = sum(1 for key in sample if predicate(key))
    return hits / len(sample) * live
