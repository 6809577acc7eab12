"""What a failed LMDB commit says about the disk, and whether the next write may be tried.

Pure decisions; the store (spine.storage.lmdb_store) feeds them what LMDB raised and what
`statvfs` says, and carries them out. Measured with libfiu and a small tmpfs (LMDB 0.9.36):

- `fdatasync` failing with EIO: `mdb_txn_commit` raises EIO and aborts the transaction; the
  environment stays open, reads see the last commit, and LMDB would happily commit the next
  write. We never let it: a failed sync is PostgreSQL's fsyncgate — the kernel may have dropped
  the dirty pages and a later fsync can succeed without them — so the store turns FAILED and
  begins no write transaction again until the process restarts (LMDB then opens at the last meta
  page that reached the disk).
- a failed meta page write (`pwrite`, EIO): LMDB marks the environment fatal and every later
  transaction, reads included, fails with MDB_PANIC: FAILED, and reads fail too. A failed data
  page write (also `pwrite` when the dirty pages are not one contiguous run, which `writev`
  writes) aborts the commit before its meta page: the environment stays as of the last commit
  and reads go on (seen 2026-12-02), while the store turns FAILED for writes as after a failed
  sync.
- a full filesystem: the commit raises ENOSPC (`DiskError`) and aborts; nothing is lost and the
  same environment commits again once space is freed. A page write that came up short is
  reported by LMDB as EIO, not ENOSPC, so an EIO while the filesystem is (nearly) full counts as
  FULL: it happened before the sync, on pages no committed state refers to (LMDB copies on
  write), so no durable data can depend on them.
- MDB_MAP_FULL (the map size is used up): the transaction aborts; FULL until records are purged.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# An EIO while less than this much (beyond the reserve) is free is taken for a short write.
SHORT_WRITE_SLACK = 4 * 1024 * 1024


class DiskState(enum.Enum):
    """The store's verdict on its disk."""

    OK = "ok"
    FULL = "full"  # writes refused until space is freed (recovers by itself)
    FAILED = "failed"  # a write or sync failed: no write until restart


class Failure(enum.Enum):
    """What kind of error a write transaction ended with."""

    NO_SPACE = "no_space"  # ENOSPC / EDQUOT
    MAP_FULL = "map_full"  # MDB_MAP_FULL
    IO_ERROR = "io_error"  # EIO (or another errno) from the commit's writes or sync
    PANIC = "panic"  # MDB_PANIC: LMDB declared the environment unusable


@dataclass(frozen=True, slots=True)
class Verdict:
    """The state a failure leaves the store in, with a sentence for /readyz and the logs."""

    state: DiskState
    reason: str


def judge(failure: Failure, detail: str, free_bytes: int | None, reserve_bytes: int,
          batch_bytes: int) -> Verdict:
    """The state a failed write transaction leaves the store in."""
    if failure is Failure.NO_SPACE:
        return Verdict(DiskState.FULL, f"the filesystem is full: {detail}")
    if failure is Failure.MAP_FULL:
        return Verdict(DiskState.FULL, f"LMDB's map (storage.map_size_mb) is full: {detail}")
    if (
        failure is Failure.IO_ERROR
        and free_bytes is not None
        and free_bytes < reserve_bytes + max(SHORT_WRITE_SLACK, 2 * batch_bytes)
    ):
        return Verdict(DiskState.FULL, f"a short write on a nearly full filesystem: {detail}")
    return Verdict(DiskState.FAILED, f"a disk write or fsync failed; restart the node: {detail}")


def admit(state: DiskState, reason: str, free_bytes: int | None,
          reserve_bytes: int) -> Verdict | None:
    """None when a write may be tried now, else why not.

    FAILED holds until restart (never retry a failed fsync). Below the reserve the write is
    refused before LMDB sees it; FULL otherwise lets the write try again, so the store recovers
    as soon as enough space is free.
    """
    if state is DiskState.FAILED:
        return Verdict(DiskState.FAILED, reason)
    if free_bytes is not None and free_bytes < reserve_bytes:
        return Verdict(DiskState.FULL, f"{free_bytes} bytes free, below storage.reserve_mb")
    return None
