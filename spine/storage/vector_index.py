"""HNSW index per namespace (DESIGN §6, §7), over hnswlib.

HNSW: Malkov & Yashunin, "Efficient and robust approximate nearest neighbor search using
Hierarchical Navigable Small World graphs" (2016). The index is derived data: LMDB is the truth,
and the index is persisted with the LMDB watermark it reflects so that start-up only replays what
came after (`IndexSet.save_all` / `load_all`).

A namespace costs little until it outgrows exact search: it holds its vectors in a numpy array
(brute force, recall 1.0: `spine.storage.exact_search`) and gets an hnswlib graph only once it
has more than `exact_max` live records, so a node can hold many small namespaces (an empty
hnswlib graph preallocates its whole capacity: ~2.6 MiB per namespace at 1,024 slots and 384
dimensions).

Indexing is off the write path (as Qdrant's appendable segments and Milvus's growing segments):
an upsert only stores the vector and marks its label *pending*; `build` inserts pending labels
into the graph later, in batches, on hnswlib's threads (the indexer's builder calls it, throttled).
A search asks the graph for what it holds and scans the pending labels exactly, so a fresh write
is found at once with recall 1.0 for it, whatever the graph's backlog.

Invariants kept by `VectorIndex` (all under its lock):
- `_index` is None (no graph yet) or holds every label in `[0, len(_keys))` with the capacity of
  `_vecs`; `_keys[label]` is its memory id, or None when the label is free (marked deleted in
  hnswlib, if there is a graph) and waits in `_free` for reuse;
- `_labels` is the exact inverse of the non-None part of `_keys`;
- `_vecs[label]` is the (L2-normalised) vector of a live label. The copy costs `4 * dim` bytes
  per slot and buys exact brute force for selective filters and the pending labels without
  `get_items` (which round-trips through Python lists);
- `_pending` holds the live labels whose current vector the graph does not hold as a live point
  (every live label while there is no graph); `_graphed[label]` says hnswlib has the label at all
  (live, or marked deleted). A live label not pending is in the graph, unmarked, with `_vecs`'s
  vector; every other label hnswlib has is marked deleted.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hnswlib
import numpy as np
import numpy.typing as npt

from spine.core.errors import InvalidInput
from spine.core.recall_probe import RecallProbe
from spine.storage.exact_search import (
    FloatArray,
    Hits,
    Labels,
    Predicate,
    best_of,
    estimate_matches,
    matching_labels,
    pending_labels,
    top_k,
)
from spine.storage.index_snapshot import (
    INDEX_FORMAT,
    IndexCorrupt,
    IndexState,
    load_snapshot,
    save_snapshot,
)
from spine.storage.rwlock import RWLock

# INDEX_FORMAT and IndexCorrupt belong to index_snapshot; re-exported for existing importers.
__all__ = ["INDEX_FORMAT", "IndexCorrupt", "VectorIndex"]

_MAX_K = 10_000


class VectorIndex:
    """One hnswlib graph (inner product on L2-normalised vectors) for one namespace.

    Scores are cosine similarities in [-1, 1], higher is better. Memory ids map to integer labels;
    a deleted id's label is marked deleted in hnswlib and reused by a later insert (hnswlib's
    `add_items` on a deleted label unmarks it and replaces its vector in place).

    Thread safety: a readers–writer lock. `search`, `save`, `len`, `keys` share it (hnswlib
    queries are safe beside each other and release the GIL); `upsert`, `delete` and the resize
    inside `upsert` take it exclusively, because hnswlib's resize and updates are not safe beside
    queries. `search` predicates run under the shared lock and must not call back into the index.

    The hnswlib graph is created only when the namespace first holds more than `exact_max` live
    records (and kept after); `build` fills it. Search is exact brute force (numpy) while the
    namespace has at most `exact_max` live records, and for a predicate estimated to match at
    most `max(exact_max, 2k)` of them; otherwise HNSW over the graph (with hnswlib's in-graph
    filter) merged with an exact scan of the pending labels, falling back to exact over every
    match whenever HNSW finds fewer than k. So a filtered search returns k results whenever k
    live records match.
    """

    def __init__(
        self,
        dim: int,
        *,
        m: int = 16,
        ef_construction: int = 200,
        ef_search: int = 64,
        initial_capacity: int = 1,
        exact_max: int = 2048,
        seed: int = 100,
        recall_target_pct: int = 95,
        probe_every: int = 64,
    ) -> None:
        if dim < 1 or m < 2 or ef_construction < 1 or ef_search < 1 or initial_capacity < 1:
            raise ValueError("dim, ef_* and initial_capacity must be ≥ 1 and m ≥ 2")
        self.dim = dim
        self.m = m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.exact_max = exact_max
        self.probe = RecallProbe(recall_target_pct, probe_every)
        self._seed = seed
        self._lock = RWLock()
        self._index: Any = None  # created once the namespace outgrows exact_max; `build` fills it
        self._vecs: FloatArray = np.zeros((initial_capacity, dim), dtype=np.float32)
        self._graphed: npt.NDArray[np.bool_] = np.zeros(initial_capacity, dtype=np.bool_)
        self._pending: set[int] = set()
        self._keys: list[str | None] = []
        self._labels: dict[str, int] = {}
        self._free: list[int] = []
        self._attrs: dict[str, object] = {}

    # -- reading ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Live records."""
        with self._lock.read():
            return len(self._labels)

    def __contains__(self, key: object) -> bool:
        with self._lock.read():
            return key in self._labels

    def keys(self) -> list[str]:
        """The live memory ids (a copy, in no particular order)."""
        with self._lock.read():
            return list(self._labels)

    def attrs(self, key: str) -> object | None:
        """The attrs stored with `key` by `upsert`, or None."""
        with self._lock.read():
            return self._attrs.get(key)

    @property
    def capacity(self) -> int:
        """Vector slots allocated (grows by doubling); hnswlib's graph, once built, matches."""
        with self._lock.read():
            return int(self._vecs.shape[0])

    @property
    def has_graph(self) -> bool:
        """Whether the hnswlib graph exists (the namespace outgrew exact search once)."""
        with self._lock.read():
            return self._index is not None

    @property
    def pending(self) -> int:
        """Live records the graph does not hold yet (searched exactly meanwhile). Read without
        the lock (a set's length is one atomic read), so /metrics never waits for a build."""
        return len(self._pending)

    @property
    def needs_build(self) -> bool:
        """Whether `build` has work: a graph exists and some live labels wait for it."""
        return self._index is not None and bool(self._pending)

    def vector(self, key: str) -> FloatArray | None:
        """A copy of the normalised vector indexed for `key`, or None."""
        with self._lock.read():
            label = self._labels.get(key)
            return None if label is None else self._vecs[label].copy()

    # -- writing ---------------------------------------------------------------------------------

    def upsert(self, key: str, vector: npt.ArrayLike, attrs: object | None = None) -> None:
        """Insert or replace `key`'s vector (normalised here) and attrs (None clears them).

        attrs must be JSON-serialisable for `save` (e.g. tags and agent id for predicates).
        """
        self._apply([key], self._prepare_rows(vector, 1), [attrs])

    def upsert_many(
        self,
        keys: Sequence[str],
        vectors: npt.ArrayLike,
        attrs: Sequence[object | None] | None = None,
    ) -> None:
        """Upsert a batch in one exclusive section; a repeated key keeps its last row. The rows
        are searchable at once and wait, pending, for `build` to enter the graph."""
        if attrs is not None and len(attrs) != len(keys):
            raise ValueError(f"{len(keys)} keys but {len(attrs)} attrs")
        if len(keys) == 0:
            return
        self._apply(keys, self._prepare_rows(vectors, len(keys)), attrs)

    def _apply(
        self,
        keys: Sequence[str],
        mat: FloatArray,
        attrs: Sequence[object | None] | None,
    ) -> None:
        last = {key: i for i, key in enumerate(keys)}
        rows = np.fromiter(last.values(), dtype=np.int64, count=len(last))
        with self._lock.write():
            # Plan labels first and commit only after hnswlib accepted them, so a failure
            # leaves the invariants intact. New keys take freed labels, then fresh ones.
            labels = np.empty(len(last), dtype=np.int64)
            n_free, reused, fresh = len(self._free), 0, 0
            for j, key in enumerate(last):
                label = self._labels.get(key)
                if label is None:
                    if reused < n_free:
                        reused += 1
                        label = self._free[n_free - reused]
                    else:
                        label = len(self._keys) + fresh
                        fresh += 1
                labels[j] = label
            capacity = self._vecs.shape[0]
            if len(self._keys) + fresh > capacity:
                self._grow(max(2 * capacity, len(self._keys) + fresh))
            new_keys = sum(1 for key in last if key not in self._labels)
            if self._index is None and len(self._labels) + new_keys > self.exact_max:
                self._new_graph()
            if self._index is not None:
                # A replaced vector leaves the graph until `build` inserts the new one.
                for key in last:
                    label = self._labels.get(key)
                    if label is not None and self._graphed[label] and label not in self._pending:
                        self._index.mark_deleted(label)
            del self._free[n_free - reused :]
            self._keys.extend([None] * fresh)
            for j, key in enumerate(last):
                label = int(labels[j])
                self._keys[label] = key
                self._labels[key] = label
                value = None if attrs is None else attrs[int(rows[j])]
                if value is None:
                    self._attrs.pop(key, None)
                else:
                    self._attrs[key] = value
            self._vecs[labels] = mat[rows]
            self._pending.update(labels.tolist())

    def delete(self, key: str) -> bool:
        """Remove `key`; False when it was not there (replays during catch-up are no-ops)."""
        with self._lock.write():
            label = self._labels.get(key)
            if label is None:
                return False
            if self._graphed[label] and label not in self._pending:
                self._index.mark_deleted(label)
            self._pending.discard(label)
            del self._labels[key]
            self._keys[label] = None
            self._free.append(label)
            self._attrs.pop(key, None)
            self._vecs[label] = 0.0
            return True

    def set_ef_search(self, ef_search: int) -> None:
        """Change the search beam width (recall against latency); hnswlib uses max(ef, k)."""
        if ef_search < 1:
            raise ValueError(f"ef_search must be ≥ 1, got {ef_search}")
        with self._lock.write():
            if self._index is not None:
                self._index.set_ef(ef_search)
            self.ef_search = ef_search

    def build(self, max_items: int | None = None, num_threads: int = 1) -> int:
        """Insert up to `max_items` pending labels (all when None) into the graph, on
        `num_threads` hnswlib threads (1 builds the same graph every time); how many it inserted.

        Holds the write lock throughout (hnswlib inserts are not safe beside queries), so a
        caller that must keep searches flowing passes a small `max_items` and calls again.
        """
        with self._lock.write():
            if self._index is None or not self._pending:
                return 0
            if max_items is None or max_items >= len(self._pending):
                chosen = sorted(self._pending)
            else:
                chosen = sorted(itertools.islice(self._pending, max(1, max_items)))
            labels = np.asarray(chosen, dtype=np.int64)
            # hnswlib's add_items on a label it holds (marked deleted) replaces and unmarks it.
            self._index.add_items(self._vecs[labels], labels.astype(np.uint64),
                                  num_threads=num_threads)
            self._graphed[labels] = True
            self._pending.difference_update(chosen)
            return len(chosen)

    def _new_graph(self) -> None:
        """Under the write lock: an empty hnswlib graph; every live label is pending already."""
        index: Any = hnswlib.Index(space="ip", dim=self.dim)
        index.init_index(max_elements=int(self._vecs.shape[0]), M=self.m,
                         ef_construction=self.ef_construction, random_seed=self._seed)
        # hnswlib searches with max(ef, k), so one global ef serves every k without set_ef races.
        index.set_ef(self.ef_search)
        index.set_num_threads(1)
        self._index = index

    def _grow(self, capacity: int) -> None:
        """Under the write lock: resize hnswlib (if built) and the vector copy to `capacity`."""
        if self._index is not None:
            self._index.resize_index(capacity)
        vecs = np.zeros((capacity, self.dim), dtype=np.float32)
        vecs[: self._vecs.shape[0]] = self._vecs
        self._vecs = vecs
        graphed = np.zeros(capacity, dtype=np.bool_)
        graphed[: self._graphed.shape[0]] = self._graphed
        self._graphed = graphed

    def _prepare_rows(self, vectors: npt.ArrayLike, n: int) -> FloatArray:
        """Validate n vectors of `dim` floats and L2-normalise a private copy (zero rows stay)."""
        try:
            mat = np.array(vectors, dtype=np.float32, ndmin=2)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"vector is not an array of numbers: {exc}", field="vector") from exc
        if mat.shape != (n, self.dim):
            want = f"({self.dim},)" if n == 1 else f"({n}, {self.dim})"
            got = mat.shape[1:] if n == 1 and mat.shape[0] == 1 else mat.shape
            raise InvalidInput(f"vector has shape {got}, expected {want}", field="vector")
        if not np.all(np.isfinite(mat)):
            raise InvalidInput("vector has a NaN or infinite component", field="vector")
        norms = np.linalg.norm(mat, axis=1, keepdims=True)
        np.divide(mat, norms, out=mat, where=norms > 0.0)
        return mat

    # -- search ----------------------------------------------------------------------------------

    def search(
        self, vector: npt.ArrayLike, k: int, predicate: Predicate | None = None
    ) -> list[tuple[str, float]]:
        """The k live records most similar to `vector` (and matching `predicate`), best first.

        Returns `(memory id, cosine similarity)` pairs; fewer than k only when fewer match.
        """
        if k < 0 or k > _MAX_K:
            raise InvalidInput(f"k must be in [0, {_MAX_K}], got {k}", field="k")
        q = self._prepare_rows(vector, 1)[0]
        if k == 0:
            return []
        with self._lock.read():
            live = len(self._labels)
            if live == 0:
                return []
            in_graph = live - len(self._pending)
            if predicate is None:
                if live <= self.exact_max or in_graph == 0:
                    return self._exact(q, k, None)
                probe = self.probe.due(len(self._pending), live)
                if self.poor_recall and not probe:
                    return self._exact(q, k, None)
                found = self._hnsw(q, min(k, in_graph), None)
                if found is None:
                    return self._exact(q, k, None)
                pending = pending_labels(self._pending, self._keys, None)
                found = best_of(found, self._exact(q, k, pending), k)
                if not probe:
                    return found
                truth = self._exact(q, k, None)
                self.probe.fold(found, truth)
                return truth
            if (live <= self.exact_max or in_graph == 0 or self.poor_recall
                    or estimate_matches(self._keys, live, predicate)
                    <= max(self.exact_max, 2 * k)):
                return self._exact(q, k, matching_labels(self._labels, predicate))
            found = self._hnsw(q, k, predicate)
            if found is None:
                return self._exact(q, k, matching_labels(self._labels, predicate))
            pending = pending_labels(self._pending, self._keys, predicate)
            return best_of(found, self._exact(q, k, pending), k)

    @property
    def recall(self) -> float | None:
        """The graph's recall@k as probes measured it (None before the first probe)."""
        return self.probe.recall

    @property
    def poor_recall(self) -> bool:
        """Whether probes measured the graph's recall below the target: the namespace is then
        searched exactly (`spine.core.recall_probe`)."""
        return self.probe.poor

    def _exact(self, q: FloatArray, k: int, labels: Labels | None) -> Hits:
        """Brute force over `labels` (None: every live label), best k first (`top_k`)."""
        return top_k(self._vecs, self._keys, self._free, len(self._labels), q, k, labels)

    def _hnsw(
        self, q: FloatArray, k: int, predicate: Predicate | None
    ) -> list[tuple[str, float]] | None:
        """HNSW search; None when hnswlib cannot find k (deleted or filtered-out neighbourhoods)."""
        keys = self._keys
        failure: list[BaseException] = []
        allow: Callable[[int], bool] | None = None
        if predicate is not None:
            pred = predicate

            def allow(label: int) -> bool:
                # An exception must not unwind through hnswlib's C++ frames: keep it for later.
                if failure:
                    return False
                key = keys[label]
                try:
                    return key is not None and bool(pred(key))
                except BaseException as exc:
                    failure.append(exc)
                    return False

        try:
            labels, dists = self._index.knn_query(q[None, :], k=k, num_threads=1, filter=allow)
        except RuntimeError:
            if failure:
                raise failure[0] from None
            return None
        if failure:
            raise failure[0]
        out: list[tuple[str, float]] = []
        for label, dist in zip(labels[0].tolist(), dists[0].tolist(), strict=True):
            key = keys[label]
            if key is None:  # cannot happen: hnswlib skips deleted labels
                return None
            out.append((key, min(1.0, max(-1.0, 1.0 - float(dist)))))
        return out

    # -- persistence (the format is index_snapshot's) -------------------------------------------

    @contextmanager
    def frozen(self) -> Iterator[IndexState]:
        """The state for a snapshot, held still until the context exits: under the shared lock,
        so writers wait and searches go on. Arrays and graph are the live ones: read only."""
        with self._lock.read():
            n = len(self._keys)
            yield IndexState(
                dim=self.dim, m=self.m, ef_construction=self.ef_construction,
                capacity=int(self._vecs.shape[0]), graph=self._index, vectors=self._vecs[:n],
                graphed=self._graphed[:n], keys=list(self._keys), attrs=dict(self._attrs),
                pending=sorted(self._pending),
            )

    def save(self, directory: Path) -> None:
        """Persist into `directory` (`index_snapshot.save_snapshot`)."""
        save_snapshot(self, directory)

    @classmethod
    def load(
        cls, directory: Path, *, ef_search: int = 64, exact_max: int = 2048,
        recall_target_pct: int = 95, probe_every: int = 64,
    ) -> VectorIndex:
        """Load what `save` wrote; IndexCorrupt when it is missing or inconsistent."""
        state = load_snapshot(directory)
        try:
            return cls.restore(state, ef_search=ef_search, exact_max=exact_max,
                               recall_target_pct=recall_target_pct, probe_every=probe_every)
        except ValueError as exc:  # parameters the constructor refuses (m < 2, say)
            raise IndexCorrupt(f"{directory}: {exc}") from exc

    @classmethod
    def restore(
        cls, state: IndexState, *, ef_search: int = 64, exact_max: int = 2048,
        recall_target_pct: int = 95, probe_every: int = 64,
    ) -> VectorIndex:
        """An index that takes over `state`, consistent as `load_snapshot` checks it. Without a
        graph every live record is pending, and past `exact_max` an empty graph waits for
        `build` (the snapshot was saved under a larger exact_max)."""
        out = cls(state.dim, m=state.m, ef_construction=state.ef_construction,
                  ef_search=ef_search, initial_capacity=state.capacity, exact_max=exact_max,
                  recall_target_pct=recall_target_pct, probe_every=probe_every)
        n = len(state.keys)
        out._vecs[:n] = state.vectors
        out._graphed[:n] = state.graphed
        out._keys = list(state.keys)
        out._labels = {key: label for label, key in enumerate(out._keys) if key is not None}
        out._free = [label for label, key in enumerate(out._keys) if key is None]
        out._attrs = {k: v for k, v in state.attrs.items() if k in out._labels}
        if state.graph is None:
            out._pending = set(out._labels.values())
            if len(out._labels) > exact_max:
                out._new_graph()
        else:
            out._pending = set(state.pending)
            state.graph.set_ef(ef_search)
            state.graph.set_num_threads(1)
            out._index = state.graph
        return out
