"""Durable small files: fsync, directory fsync, atomic replace (for index snapshots)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import xxhash

# What a filesystem that cannot fsync a directory answers; any other error (EIO) is raised.
_NO_DIR_FSYNC = (errno.EINVAL, errno.ENOTSUP, errno.EBADF)


def fsync_file(path: Path) -> None:
    """fsync `path` (through a fresh descriptor: Linux syncs the file, whoever wrote it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """fsync a directory (its entries: a rename or a new file in it survives power loss)."""
    try:
        fsync_file(path)
    except OSError as e:
        if e.errno not in _NO_DIR_FSYNC:
            raise


def file_digest(path: Path) -> tuple[int, str]:
    """(size, xxh3-128 hex) of a file's contents, for snapshot manifests."""
    h = xxhash.xxh3_128()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def bytes_digest(data: bytes) -> str:
    """xxh3-128 hex of `data`."""
    return xxhash.xxh3_128_hexdigest(data)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader sees the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
