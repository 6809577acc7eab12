"""A LazyFS-style FUSE layer: what was not fsynced is lost when the "power" goes.

`python -m tests.powerloss.lazyfs BACKING MOUNT [--crash-at N] [--crash-on SUBSTRING]
[--crash-mode before|after]` mounts MOUNT (libfuse 3, through mfusepy). BACKING holds only what
has been made durable. Writes and truncations go to an in-memory overlay of dirty pages per file;
reads see the overlay over BACKING, so the process above sees an ordinary filesystem. A sync
point — fsync or fdatasync of a file, a write through an O_SYNC/O_DSYNC descriptor (LMDB writes
its meta page that way), or fsync of a directory — copies that file's overlay into BACKING.
Power loss is: SIGKILL the application and this daemon, unmount; the overlays vanish with the
daemon and the kernel's page cache of MOUNT goes with the unmount, so the next mount sees exactly
what was synced.

Crash points: sync points are numbered in the order they arrive (only those whose path contains
`--crash-on`, when given, and only once the file `--arm` names exists, so that the application
can start first). At sync point number `--crash-at` the daemon prints
`CRASH <n> <kind> <path>` and then blocks every operation forever, `before` making that sync
durable (the sync was issued, the disk never finished it) or `after` (durable, but the caller
never saw it return). The test then pulls the plug. Every sync point is printed as
`SYNC <n> <kind> <path>`.

Directory entries are held back too, as POSIX allows (fsync(2): an fsync of a file does not make
its entry in the directory durable): create, mkdir, unlink, rmdir and rename are applied to
BACKING at once, but each is written with what undoes it to `--journal` (a file outside BACKING;
a replaced or unlinked file is kept aside in `<journal>.grave/`) until its directory (the target's,
for a rename) is fsynced. After the power loss `undo(backing, journal)` reverts, newest first,
every entry operation whose directory was not fsynced since.

Soundness: LMDB reads its data file through a read-only shared mmap. Without `direct_io` the
kernel serves those pages from its page cache, filled by our `read` and updated by our `write`
(FUSE's write-through mode updates the cached page and sends the write), so the mapping sees
every write at once, as on a disk filesystem.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

import mfusepy

PAGE = 4096
_SYNC_FLAGS = os.O_SYNC | os.O_DSYNC


@dataclass
class Overlay:
    """A file's writes since its last sync: dirty pages over BACKING's bytes [0, floor)."""

    size: int  # the size the application sees
    floor: int  # BACKING's bytes at or past this read as zeros (a truncation since the sync)
    pages: dict[int, bytearray] = field(default_factory=dict)


class LazyFS(mfusepy.Operations):  # type: ignore[misc]
    """The FUSE operations: passthrough to BACKING, with file data held back until synced."""

    use_ns = True

    def __init__(self, backing: str, crash_at: int | None, crash_on: str, crash_mode: str,
                 journal: str | None = None, arm: str | None = None) -> None:
        self.backing = os.path.realpath(backing)
        self.journal = open(journal, "a") if journal else None  # noqa: SIM115 (daemon-long)
        self.grave = f"{journal}.grave"
        self.graves = 0
        self.crash_at = crash_at
        self.crash_on = crash_on
        self.crash_mode = crash_mode
        self.arm = arm
        self.overlays: dict[str, Overlay] = {}
        self.flags: dict[int, int] = {}
        self.next_fh = 1
        self.syncs = 0

    # ------------------------------------------------------------ helpers

    def _real(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    def _fh(self, flags: int) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.flags[fh] = flags
        return fh

    def _pread(self, path: str, size: int, offset: int) -> bytes:
        fd = os.open(self._real(path), os.O_RDONLY)
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def _overlay(self, path: str) -> Overlay:
        ov = self.overlays.get(path)
        if ov is None:
            size = os.stat(self._real(path)).st_size
            ov = self.overlays[path] = Overlay(size, size)
        return ov

    def _base_page(self, path: str, ov: Overlay, idx: int) -> bytearray:
        page = bytearray(PAGE)
        start = idx * PAGE
        if start < ov.floor:
            data = self._pread(path, min(PAGE, ov.floor - start), start)
            page[: len(data)] = data
        return page

    def _log(self, **entry: Any) -> None:
        """Journal an entry operation (or a directory's fsync) before it is answered."""
        if self.journal is not None:
            self.journal.write(json.dumps(entry) + "\n")
            self.journal.flush()  # the daemon dies by SIGKILL: no buffering

    def _bury(self, path: str) -> str | None:
        """Move a file or tree that is about to be replaced or unlinked aside; its new name."""
        if self.journal is None or not os.path.lexists(self._real(path)):
            return None
        os.makedirs(self.grave, exist_ok=True)
        self.graves += 1
        kept = os.path.join(self.grave, f"{os.getpid()}-{self.graves}")
        os.rename(self._real(path), kept)
        return kept

    def _sync(self, path: str, kind: str) -> None:
        """A sync point: the file's overlay becomes durable (unless the power goes first)."""
        counted = (not self.crash_on or self.crash_on in path) and (
            self.arm is None or os.path.exists(self.arm))
        if counted:
            self.syncs += 1
            print(f"SYNC {self.syncs} {kind} {path}", flush=True)
        crash = counted and self.syncs == self.crash_at
        if crash and self.crash_mode == "before":
            self._freeze(kind, path)
        self._persist(path)
        if kind == "fsyncdir":
            self._log(op="durable", dir=path)
        if crash:
            self._freeze(kind, path)

    def _freeze(self, kind: str, path: str) -> None:
        print(f"CRASH {self.syncs} {kind} {path}", flush=True)
        threading.Event().wait()  # the power is going: nothing after this reaches BACKING

    def _persist(self, path: str) -> None:
        ov = self.overlays.pop(path, None)
        if ov is None:
            return
        fd = os.open(self._real(path), os.O_WRONLY)
        try:
            if ov.floor < os.fstat(fd).st_size:
                os.ftruncate(fd, ov.floor)
            for idx in sorted(ov.pages):
                start = idx * PAGE
                if start < ov.size:
                    os.pwrite(fd, bytes(ov.pages[idx][: ov.size - start]), start)
            os.ftruncate(fd, ov.size)
        finally:
            os.close(fd)

    # ------------------------------------------------------------ metadata (durable at once)

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        try:
            st = os.lstat(self._real(path))
        except OSError as e:
            raise mfusepy.FuseOSError(e.errno) from None
        out = {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size",
                                            "st_ino")}
        out.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns, st_ctime=st.st_ctime_ns)
        ov = self.overlays.get(path)
        if ov is not None:
            out["st_size"] = ov.size
        out["st_blocks"] = (out["st_size"] + 511) // 512
        return out

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._real(path))]

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._real(path), mode)
        self._log(op="mkdir", path=path, dir=_parent(path))
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._real(path))
        self._log(op="rmdir", path=path, dir=_parent(path))
        return 0

    def unlink(self, path: str) -> int:
        kept = self._bury(path)
        if kept is None:
            os.unlink(self._real(path))
        self._log(op="unlink", path=path, kept=kept, dir=_parent(path))
        self.overlays.pop(path, None)
        return 0

    def rename(self, old: str, new: str) -> int:
        if not os.path.lexists(self._real(old)):
            raise mfusepy.FuseOSError(errno.ENOENT)
        kept = self._bury(new)
        os.rename(self._real(old), self._real(new))
        self._log(op="rename", old=old, path=new, kept=kept, dir=_parent(new))
        self.overlays.pop(new, None)
        for p in [p for p in self.overlays if p == old or p.startswith(old + "/")]:
            self.overlays[new + p[len(old):]] = self.overlays.pop(p)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._real(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._real(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        os.utime(self._real(path), ns=times)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self.backing)
        return {k: getattr(st, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree",
                                             "f_bavail", "f_files", "f_ffree", "f_favail",
                                             "f_flag", "f_namemax")}

    # ------------------------------------------------------------ file data (held back)

    def create(self, path: str, mode: int, flags: int = os.O_WRONLY) -> int:
        real = self._real(path)
        existed = os.path.lexists(real)
        fd = os.open(real, os.O_WRONLY | os.O_CREAT, mode)
        os.close(fd)
        if not existed:
            self._log(op="create", path=path, dir=_parent(path))
        if flags & os.O_TRUNC:
            self.truncate(path, 0)
        return self._fh(flags)

    def open(self, path: str, flags: int) -> int:
        if not os.path.exists(self._real(path)):
            raise mfusepy.FuseOSError(errno.ENOENT)
        return self._fh(flags)

    def release(self, path: str, fh: int) -> int:
        self.flags.pop(fh, None)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0  # close() is no sync point

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        ov = self.overlays.get(path)
        if ov is None:
            return self._pread(path, size, offset)
        end = min(offset + size, ov.size)
        if offset >= end:
            return b""
        out = bytearray(end - offset)
        base_end = min(end, ov.floor)
        if base_end > offset:
            base = self._pread(path, base_end - offset, offset)
            out[: len(base)] = base
        for idx in range(offset // PAGE, (end - 1) // PAGE + 1):
            page = ov.pages.get(idx)
            if page is not None:
                start = idx * PAGE
                s, e = max(offset, start), min(end, start + PAGE)
                out[s - offset : e - offset] = page[s - start : e - start]
        return bytes(out)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        ov = self._overlay(path)
        end = offset + len(data)
        for idx in range(offset // PAGE, (end - 1) // PAGE + 1):
            page = ov.pages.get(idx)
            if page is None:
                page = ov.pages[idx] = self._base_page(path, ov, idx)
            start = idx * PAGE
            s, e = max(offset, start), min(end, start + PAGE)
            page[s - start : e - start] = data[s - offset : e - offset]
        ov.size = max(ov.size, end)
        if self.flags.get(fh, 0) & _SYNC_FLAGS:
            self._sync(path, "dsync-write")
        return len(data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        ov = self._overlay(path)
        if length < ov.size:
            for idx in [i for i in ov.pages if i * PAGE >= length]:
                del ov.pages[idx]
            tail = ov.pages.get(length // PAGE)
            if tail is not None and length % PAGE:
                tail[length % PAGE :] = bytes(PAGE - length % PAGE)
            ov.floor = min(ov.floor, length)
        ov.size = length
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        self._sync(path, "fdatasync" if datasync else "fsync")
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        self._sync(path, "fsyncdir")
        return 0


def _parent(path: str) -> str:
    return os.path.dirname(path.rstrip("/")) or "/"


def undo(backing: str, journal: str) -> list[str]:
    """After the power loss: revert every entry operation whose directory was not fsynced after
    it, newest first. What it reverted, for the test's log."""
    pending: list[dict[str, Any]] = []
    try:
        with open(journal) as f:
            lines = [json.loads(line) for line in f if line.endswith("\n")]
    except FileNotFoundError:
        return []
    for entry in lines:
        if entry["op"] == "durable":
            pending = [e for e in pending if e["dir"] != entry["dir"]]
        else:
            pending.append(entry)

    def real(p: str) -> str:
        return os.path.join(backing, p.lstrip("/"))

    def remove(p: str) -> None:
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        elif os.path.lexists(p):
            os.unlink(p)

    done: list[str] = []
    for e in reversed(pending):
        path = real(e["path"])
        if e["op"] in ("create", "mkdir"):
            remove(path)
        elif e["op"] == "rmdir" and os.path.isdir(os.path.dirname(path)):
            os.makedirs(path, exist_ok=True)
        elif e["op"] == "unlink" and e["kept"] and os.path.isdir(os.path.dirname(path)):
            os.rename(e["kept"], path)
        elif e["op"] == "rename":
            if os.path.lexists(path) and os.path.isdir(os.path.dirname(real(e["old"]))):
                os.rename(path, real(e["old"]))
            if e["kept"]:
                os.rename(e["kept"], path)
        done.append(f"{e['op']} {e['path']}")
    os.unlink(journal)
    return done


def main(argv: list[str] | None = None) -> None:
    """Mount and serve until unmounted or killed."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("backing")
    p.add_argument("mount")
    p.add_argument("--crash-at", type=int, default=None)
    p.add_argument("--crash-on", default="")
    p.add_argument("--crash-mode", choices=("before", "after"), default="before")
    p.add_argument("--journal", default=None, help="hold directory entries back (see undo)")
    p.add_argument("--arm", default=None, help="count sync points only once this file exists")
    a = p.parse_args(argv)
    ops = LazyFS(a.backing, a.crash_at, a.crash_on, a.crash_mode, a.journal, a.arm)
    print(f"MOUNTING {a.mount}", flush=True)
    mfusepy.FUSE(ops, a.mount, foreground=True, nothreads=True, fsname="lazyfs")
    sys.exit(0)


if __name__ == "__main__":
    main()
