"""The node's vector indexes, one per namespace, and their crash-safe snapshots.

`save_all` writes a snapshot directory (every index plus a manifest holding the LMDB watermark),
then switches the one-line `CURRENT` file to it atomically; `load_all` follows `CURRENT`. A crash
at any point leaves the previous snapshot, or none, never a mixture.

The manifest lists the size and xxh3-128 digest of every file of the snapshot and carries a
digest of itself, so a truncated, torn or bit-flipped snapshot (or a manifest whose watermark
changed) is refused at load and the indexes are rebuilt from LMDB, the truth.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import structlog

from spine.storage.files import bytes_digest, file_digest, fsync_dir, write_atomic
from spine.storage.vector_index import INDEX_FORMAT, IndexCorrupt, VectorIndex

log = structlog.get_logger("spine.indexer")

_MANIFEST = "manifest.json"
_CURRENT = "CURRENT"
_MANIFEST_VERSION = 2  # 2: file digests and a self-digest


class IndexSet:
    """The node's indexes, one `VectorIndex` per namespace, created on demand.

    `save_all` writes a snapshot directory (every index plus a manifest holding the LMDB
    watermark), then switches the one-line `CURRENT` file to it atomically; `load_all` follows
    `CURRENT`. A crash at any point leaves the previous snapshot, or none, never a mixture.
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
        recall_target_pct: int = 95,
        probe_every: int = 64,
        fingerprint: str = "",
    ) -> None:
        self.dim = dim
        self.fingerprint = fingerprint
        self._params: dict[str, int] = {
            "m": m,
            "ef_construction": ef_construction,
            "ef_search": ef_search,
            "initial_capacity": initial_capacity,
            "exact_max": exact_max,
            "recall_target_pct": recall_target_pct,
            "probe_every": probe_every,
        }
        self._indexes: dict[str, VectorIndex] = {}
        self._lock = threading.Lock()
        self._save_lock = threading.Lock()

    def get(self, namespace: str) -> VectorIndex:
        """The namespace's index, created empty when new."""
        index = self._indexes.get(namespace)
        if index is None:
            with self._lock:
                index = self._indexes.get(namespace)
                if index is None:
                    index = VectorIndex(self.dim, **self._params)
                    self._indexes[namespace] = index
        return index

    def peek(self, namespace: str) -> VectorIndex | None:
        """The namespace's index, or None when it has none (searching it finds nothing)."""
        return self._indexes.get(namespace)

    def holds(self, namespace: str) -> bool:
        """Whether the namespace has an index (the namespace quota counts these)."""
        return namespace in self._indexes

    def count(self) -> int:
        """Namespaces with an index."""
        return len(self._indexes)

    def namespaces(self) -> list[str]:
        """Namespaces with an index."""
        with self._lock:
            return sorted(self._indexes)

    def drop(self, namespace: str) -> None:
        """Forget a namespace's index (e.g. after its last shard moved away)."""
        with self._lock:
            self._indexes.pop(namespace, None)

    def save_all(self, directory: Path, watermark: int) -> None:
        """Snapshot every index with `watermark`, the LMDB sequence they reflect.

        Every write up to `watermark` must be in the indexes; later ones may be too, since
        replaying upserts and deletes from the watermark is idempotent.
        """
        with self._save_lock:
            directory.mkdir(parents=True, exist_ok=True)
            gen = _current_snapshot_gen(directory) + 1
            name = f"snap-{gen:08d}"
            tmp = directory / f"{name}.tmp"
            _rmtree(tmp)
            tmp.mkdir()
            with self._lock:
                indexes = dict(self._indexes)
            try:
                self._write_snapshot(tmp, indexes, watermark)
            except BaseException:
                # e.g. ENOSPC: give the space back now; the empty directory keeps its generation
                # used (names are never reused) until the next save sweeps it.
                with contextlib.suppress(OSError):
                    _rmtree(tmp)
                    tmp.mkdir()
                raise  # CURRENT still names the last whole snapshot
            os.replace(tmp, directory / name)
            fsync_dir(directory)
            write_atomic(directory / _CURRENT, f"{name}\n".encode())
            for old in directory.iterdir():
                if old.name.startswith("snap-") and old.name != name:
                    _rmtree(old)

    def _write_snapshot(self, tmp: Path, indexes: dict[str, VectorIndex], watermark: int) -> None:
        """Every index and the manifest (with the digests of every file) into `tmp`."""
        for namespace, index in sorted(indexes.items()):
            index.save(tmp / namespace)
        manifest: dict[str, Any] = {
            "format": INDEX_FORMAT,
            "manifest": _MANIFEST_VERSION,
            "watermark": watermark,
            "dim": self.dim,
            "fingerprint": self.fingerprint,
            "namespaces": sorted(indexes),
            "files": _digests(tmp),
        }
        manifest["digest"] = bytes_digest(_canonical(manifest))
        write_atomic(tmp / _MANIFEST, json.dumps(manifest).encode())

    def load_all(self, directory: Path) -> int | None:
        """Replace the indexes with the current snapshot; its watermark, or None to rebuild.

        None (indexes left empty) when there is no snapshot, it is corrupt (a digest in the
        manifest disagrees), or it was made for another dimension or embedder fingerprint.
        """
        try:
            name = (directory / _CURRENT).read_text().strip()
            snap = directory / name
            manifest = json.loads((snap / _MANIFEST).read_bytes())
            _verify(snap, manifest)
            if (
                manifest["format"] != INDEX_FORMAT
                or manifest["dim"] != self.dim
                or manifest["fingerprint"] != self.fingerprint
            ):
                raise IndexCorrupt(f"{snap}: made for another dim, embedder or format")
            watermark = int(manifest["watermark"])
            loaded = {
                ns: VectorIndex.load(
                    snap / ns,
                    ef_search=self._params["ef_search"],
                    exact_max=self._params["exact_max"],
                    recall_target_pct=self._params["recall_target_pct"],
                    probe_every=self._params["probe_every"],
                )
                for ns in manifest["namespaces"]
            }
            if any(index.dim != self.dim for index in loaded.values()):
                raise IndexCorrupt(f"{snap}: an index has the wrong dimension")
        except (IndexCorrupt, OSError, ValueError, KeyError, TypeError) as e:
            if (directory / _CURRENT).exists():
                log.warning("index_snapshot_rejected", reason=str(e), directory=str(directory))
            with self._lock:
                self._indexes = {}
            return None
        with self._lock:
            self._indexes = loaded
        return watermark


def _canonical(manifest: dict[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _digests(snap: Path) -> dict[str, list[Any]]:
    """Relative path -> [size, digest] of every file under `snap` (but the manifest)."""
    out: dict[str, list[Any]] = {}
    for p in sorted(snap.rglob("*")):
        if p.is_file() and p.name != _MANIFEST:
            size, digest = file_digest(p)
            out[p.relative_to(snap).as_posix()] = [size, digest]
    return out


def _verify(snap: Path, manifest: Any) -> None:
    """IndexCorrupt unless the manifest and every file it lists are as they were written."""
    if not isinstance(manifest, dict) or manifest.get("manifest") != _MANIFEST_VERSION:
        raise IndexCorrupt(f"{snap}: manifest without digests (an older snapshot)")
    if manifest.get("digest") != bytes_digest(_canonical(manifest)):
        raise IndexCorrupt(f"{snap}: the manifest's digest does not match its contents")
    files = manifest["files"]
    if not isinstance(files, dict):
        raise IndexCorrupt(f"{snap}: malformed file list")
    for rel, (size, digest) in files.items():
        path = snap / rel
        if not path.resolve().is_relative_to(snap.resolve()):
            raise IndexCorrupt(f"{snap}: {rel} lies outside the snapshot")
        got_size, got_digest = file_digest(path)  # OSError (missing) means corrupt too
        if got_size != size:
            raise IndexCorrupt(f"{snap}: {rel} holds {got_size} bytes, {size} were written")
        if got_digest != digest:
            raise IndexCorrupt(f"{snap}: {rel} does not match its digest")


def _current_snapshot_gen(directory: Path) -> int:
    gens = [0]
    for p in directory.glob("snap-*"):
        digits = p.name[len("snap-") :].split(".")[0]
        if digits.isdigit():
            gens.append(int(digits))
    return max(gens)


def _rmtree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
