"""The store's view of its disk: OK, FULL or FAILED, and the errors callers see for each.

The decisions are spine.core.disk_health's; this shell reads `statvfs`, reads LMDB's errors and
keeps the state. The writer thread changes it, the event loop reads it (one attribute swap at a
time, so a reader sees a whole verdict).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import lmdb
import structlog

from spine.core.disk_health import DiskState, Failure, Verdict, admit, judge
from spine.core.errors import InsufficientStorage, StorageFailed

log = structlog.get_logger("spine.store")

_NO_SPACE = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))


class DiskGuard:
    """Disk health of one LMDB environment: refuses writes while FULL or after a failure."""

    def __init__(self, path: Path, reserve_bytes: int) -> None:
        self.path = path
        self.reserve_bytes = reserve_bytes
        self._verdict = Verdict(DiskState.OK, "")
        self.failures: dict[str, int] = {}  # failed write transactions, by Failure value

    @property
    def state(self) -> DiskState:
        """OK, FULL or FAILED."""
        return self._verdict.state

    @property
    def reason(self) -> str:
        """Why the state is not OK (empty when it is)."""
        return self._verdict.reason

    def free_bytes(self) -> int | None:
        """Bytes free to an unprivileged writer on the store's filesystem (None if unknown)."""
        try:
            st = os.statvfs(self.path)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def check_writable(self) -> None:
        """Raise StorageFailed (503) or InsufficientStorage (507) when a write cannot be tried."""
        v = self._verdict
        refused = admit(v.state, v.reason, self.free_bytes(), self.reserve_bytes)
        if refused is None:
            return
        if refused.state is DiskState.FAILED:
            raise StorageFailed(f"storage failed, writes are refused: {refused.reason}")
        raise InsufficientStorage(f"not enough disk space for writes: {refused.reason}")

    def failure(self) -> StorageFailed | None:
        """Why this store takes no write until restart (for /readyz), or None.

        A full disk is not reported here: the node still serves reads and recovers by itself.
        """
        if self._verdict.state is not DiskState.FAILED:
            return None
        return StorageFailed(f"not ready: storage failed: {self._verdict.reason}")

    def commit_failed(self, exc: lmdb.Error, batch_bytes: int) -> Exception:
        """Judge a failed write transaction; the error to give its callers."""
        failure = failure_of(exc)
        if failure is None:
            return exc  # not the disk (e.g. a key LMDB cannot hold): callers see it as it is
        verdict = judge(failure, str(exc), self.free_bytes(), self.reserve_bytes, batch_bytes)
        self.failures[failure.value] = self.failures.get(failure.value, 0) + 1
        log.error("storage_write_failed", failure=failure.value, state=verdict.state.value,
                  error=str(exc))
        self._set(verdict)
        if self.state is DiskState.FAILED:
            return StorageFailed(f"storage failed, nothing was written: {self.reason}")
        return InsufficientStorage(f"no room for the write, nothing was written: {verdict.reason}")

    def panicked(self, exc: lmdb.Error) -> StorageFailed:
        """LMDB refused a read transaction with MDB_PANIC: FAILED; the error for the reader."""
        self._set(Verdict(DiskState.FAILED, f"LMDB declared the environment unusable: {exc}"))
        return StorageFailed(f"storage failed, reads are refused too: {self.reason}")

    def committed(self) -> None:
        """A write transaction committed: a FULL disk has room again."""
        if self._verdict.state is DiskState.FULL:
            self._set(Verdict(DiskState.OK, ""))

    def _set(self, verdict: Verdict) -> None:
        if self._verdict.state is DiskState.FAILED:
            return  # sticky until restart
        if verdict.state is not self._verdict.state:
            emit = log.info if verdict.state is DiskState.OK else log.warning
            emit("storage_state", state=verdict.state.value, reason=verdict.reason)
        self._verdict = verdict


def failure_of(exc: lmdb.Error) -> Failure | None:
    """What a write transaction's LMDB error says about the disk; None when it is not the disk."""
    text = str(exc)
    if isinstance(exc, lmdb.PanicError):
        return Failure.PANIC
    if isinstance(exc, lmdb.MapFullError):
        return Failure.MAP_FULL
    if isinstance(exc, lmdb.DiskError) or any(m in text for m in _NO_SPACE):
        return Failure.NO_SPACE
    if text.startswith(("mdb_txn_commit", "mdb_env_sync")):  # page writes or sync failed
        return Failure.IO_ERROR
    return None
