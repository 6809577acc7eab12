"""One namespace's vector index on disk: the snapshot format that `VectorIndex.save` writes and
`VectorIndex.load` reads (and `IndexSet` gathers under a manifest with the LMDB watermark).

A snapshot directory holds `meta.json` (the sidecar: format, parameters, the memory id of every
label, attrs, pending labels) and the data files it names, `graph-<gen>.hnsw` (hnswlib's graph,
once built) and `vectors-<gen>.npy` (the normalised vectors). Data files carry a fresh generation
number and `meta.json` is replaced atomically, last, so a crash mid-save leaves the previous save
readable; the files of older generations are removed after.

Format 2 adds the pending labels (live records the graph does not hold yet); format 1 (every live
label in the graph) still loads, with none pending.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import hnswlib
import numpy as np
import numpy.typing as npt

from spine.core.errors import SpineError
from spine.storage.files import fsync_file, write_atomic

__all__ = ["INDEX_FORMAT", "IndexCorrupt", "IndexState", "load_snapshot", "save_snapshot"]

INDEX_FORMAT = 2  # 2 adds the pending labels; 1 (every live label in the graph) still loads
_META = "meta.json"


class IndexCorrupt(SpineError):
    """A saved index is missing, truncated or inconsistent; rebuild it from LMDB."""

    code = "index_corrupt"


@dataclass(frozen=True, slots=True)
class IndexState:
    """What a snapshot holds of one index: its parameters and contents, label by label.

    `vectors` and `graphed` have one row per label of `keys` (None: a free label); `graph` is the
    hnswlib index (None before the namespace outgrew exact search) sized for `capacity`,
    `graphed[label]` whether it holds the label at all (live or marked deleted); `pending` lists
    the live labels the graph does not hold as live points yet (`VectorIndex`'s invariants).
    """

    dim: int
    m: int
    ef_construction: int
    capacity: int
    graph: Any
    vectors: npt.NDArray[np.float32]
    graphed: npt.NDArray[np.bool_]
    keys: Sequence[str | None]
    attrs: dict[str, object]
    pending: Sequence[int]


class Snapshotable(Protocol):
    """An index that can hold its state still while a snapshot of it is written."""

    def frozen(self) -> AbstractContextManager[IndexState]:
        """The state, unchanging until the context exits (writers wait; searches may go on)."""
        ...


def save_snapshot(index: Snapshotable, directory: Path) -> None:
    """Persist `index` into `directory`: the graph (if built), the vectors, then `meta.json`.

    The graph and vectors are written while the index is frozen; fsync and the atomic switch of
    `meta.json` come after, with the index free again.
    """
    directory.mkdir(parents=True, exist_ok=True)
    gen = _generation(directory / _META) + 1
    graph_name, vecs_name = f"graph-{gen:08d}.hnsw", f"vectors-{gen:08d}.npy"
    with index.frozen() as state:
        meta = {
            "format": INDEX_FORMAT,
            "generation": gen,
            "dim": state.dim,
            "m": state.m,
            "ef_construction": state.ef_construction,
            "capacity": state.capacity,
            "graph": graph_name if state.graph is not None else None,
            "vectors": vecs_name,
            "keys": list(state.keys),
            "attrs": state.attrs,
            "pending": sorted(state.pending),
        }
        try:
            body = json.dumps(meta, separators=(",", ":")).encode()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"index attrs are not JSON-serialisable: {exc}") from exc
        if state.graph is not None:
            state.graph.save_index(str(directory / graph_name))
        with open(directory / vecs_name, "wb") as f:
            np.save(f, state.vectors, allow_pickle=False)
    if state.graph is not None:
        fsync_file(directory / graph_name)
    fsync_file(directory / vecs_name)
    write_atomic(directory / _META, body)
    for stale in directory.iterdir():
        if stale.name.startswith(("graph-", "vectors-")) and stale.name not in (
            graph_name,
            vecs_name,
        ):
            stale.unlink(missing_ok=True)


def load_snapshot(directory: Path) -> IndexState:
    """Read what `save_snapshot` wrote; IndexCorrupt when it is missing or malformed.

    Checks what `VectorIndex.restore` relies on: the format, types and shapes, one label per
    memory id, pending labels live, graph labels within the sidecar's, and every live label
    either in the graph or pending.
    """
    try:
        meta = json.loads((directory / _META).read_bytes())
        if meta["format"] not in (1, INDEX_FORMAT):
            raise IndexCorrupt(f"{directory}: unknown index format {meta['format']!r}")
        keys: list[str | None] = meta["keys"]
        attrs: dict[str, object] = meta["attrs"]
        if not isinstance(keys, list) or not isinstance(attrs, dict):
            raise IndexCorrupt(f"{directory}: malformed sidecar")
        if not all(key is None or isinstance(key, str) for key in keys):
            raise IndexCorrupt(f"{directory}: a memory id is not a string")
        n = len(keys)
        if len({key for key in keys if key is not None}) + keys.count(None) != n:
            raise IndexCorrupt(f"{directory}: a memory id appears under two labels")
        dim = int(meta["dim"])
        capacity = max(int(meta["capacity"]), n, 1)
        pending = meta.get("pending", [])  # format 1: none
        if not isinstance(pending, list) or not all(
            isinstance(label, int) and 0 <= label < n and keys[label] is not None
            for label in pending
        ):
            raise IndexCorrupt(f"{directory}: malformed pending labels")
        graph: Any = None
        graphed = np.zeros(n, dtype=np.bool_)
        if meta["graph"] is not None:
            graph = hnswlib.Index(space="ip", dim=dim)
            graph.load_index(str(directory / meta["graph"]), max_elements=capacity)
            ids = np.asarray(graph.get_ids_list(), dtype=np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= n):
                raise IndexCorrupt(f"{directory}: the graph holds a label past the sidecar's")
            graphed[ids] = True
            ungraphed = set(np.flatnonzero(~graphed).tolist()).difference(pending)
            if any(keys[label] is not None for label in ungraphed):
                raise IndexCorrupt(f"{directory}: a live label is in no graph and not pending")
        vecs = np.load(directory / meta["vectors"], allow_pickle=False)
        if vecs.shape != (n, dim) or vecs.dtype != np.float32:
            raise IndexCorrupt(f"{directory}: vectors have shape {vecs.shape}, {vecs.dtype}")
        return IndexState(
            dim=dim,
            m=int(meta["m"]),
            ef_construction=int(meta["ef_construction"]),
            capacity=capacity,
            graph=graph,
            vectors=vecs,
            graphed=graphed,
            keys=keys,
            attrs=attrs,
            pending=pending,
        )
    except IndexCorrupt:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise IndexCorrupt(f"{directory}: cannot load index: {exc}") from exc


def _generation(meta_path: Path) -> int:
    try:
        return int(json.loads(meta_path.read_bytes())["generation"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0
