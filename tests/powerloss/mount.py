"""Runs the LazyFS daemon (tests.powerloss.lazyfs) for a test: mount, crash points, power loss.

`LazyMount(backing, mount, log_dir)`; `start(crash_at=…, crash_on=…, mode=…)` mounts and waits
until the mount answers; `crash_line()` is the daemon's `CRASH …` line once it froze; `cut()`
SIGKILLs the daemon, detaches the mount (whatever it held in memory is gone) and reverts the
directory entries no directory fsync made durable; `stop()` unmounts cleanly (a clean shutdown
keeps everything). `ensure_fuse()` installs Debian fuse3 when missing, or skips the test.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.debian import ensure


def ensure_fuse() -> str:
    """fusermount3's path, after installing fuse3 if needed; skips when FUSE cannot work here."""
    if not Path("/dev/fuse").exists():
        pytest.skip("no /dev/fuse on this machine: the power-loss layer needs FUSE")
    try:
        fusermount = ensure("fusermount3", "fuse3")
    except RuntimeError as e:
        pytest.skip(f"cannot install fuse3: {e}")
    try:
        import mfusepy  # noqa: F401 (loads libfuse3)
    except (ImportError, OSError) as e:
        pytest.skip(f"mfusepy cannot load libfuse3 (pip install -e '.[dev]'): {e}")
    return fusermount


class LazyMount:
    """One LazyFS daemon at a time over `backing`, mounted at `mount`."""

    def __init__(self, backing: Path, mount: Path, log_dir: Path, fusermount: str) -> None:
        self.backing, self.mount, self.log_dir = backing, mount, log_dir
        self.fusermount = fusermount
        backing.mkdir(parents=True, exist_ok=True)
        mount.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: Path | None = None
        self.journal: Path | None = None
        self.runs = 0
        self.undone: list[str] = []  # entry operations the last power loss reverted
        self.armed = log_dir / "lazyfs.armed"

    def start(self, crash_at: int | None = None, crash_on: str = "",
              mode: str = "before") -> None:
        """Mount (a fresh daemon: nothing unsynced survives from the last one)."""
        assert self.proc is None, "already mounted"
        self.runs += 1
        self.log = self.log_dir / f"lazyfs-{self.runs:03d}.log"
        self.journal = self.log_dir / f"lazyfs-{self.runs:03d}.journal"
        self.armed = self.log_dir / f"lazyfs-{self.runs:03d}.armed"
        args = [sys.executable, "-m", "tests.powerloss.lazyfs", str(self.backing),
                str(self.mount), "--crash-mode", mode, "--journal", str(self.journal),
                "--arm", str(self.armed)]
        self.armed.unlink(missing_ok=True)
        if crash_at is not None:
            args += ["--crash-at", str(crash_at)]
        if crash_on:
            args += ["--crash-on", crash_on]
        root = Path(__file__).resolve().parents[2]
        env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)
        deadline = time.monotonic() + 15
        while not os.path.ismount(self.mount):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = self.log.read_text(errors="replace")
                self.cut()
                raise AssertionError(f"lazyfs did not mount {self.mount}:\n{text[-2000:]}")
            time.sleep(0.02)

    def arm(self) -> None:
        """From now on sync points count towards the crash point."""
        self.armed.touch()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log is not None else ""

    def crash_line(self) -> str | None:
        """`CRASH <n> <kind> <path>` once the daemon reached its crash point, else None."""
        for line in self.text().splitlines():
            if line.startswith("CRASH "):
                return line
        return None

    def syncs(self) -> list[str]:
        """The `SYNC …` lines so far."""
        return [ln for ln in self.text().splitlines() if ln.startswith("SYNC ")]

    def cut(self) -> None:
        """Power loss: SIGKILL the daemon (its overlays die with it), detach the mount, revert
        the directory entries that were not made durable."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)
            self.proc = None
        self._detach()
        if self.journal is not None:
            # Imported here: lazyfs loads libfuse3 (mfusepy) as it is imported, and the module
            # must import on a machine without it so that ensure_fuse can install it or skip.
            from tests.powerloss.lazyfs import undo
            self.undone = undo(str(self.backing), str(self.journal))
            self.journal = None

    def stop(self) -> None:
        """A clean unmount (the daemon exits)."""
        if self.proc is not None:
            subprocess.run([self.fusermount, "-u", str(self.mount)], capture_output=True,
                           check=False, timeout=30)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=20)
            self.proc = None
        self._detach()
        if self.journal is not None:
            self.journal.unlink(missing_ok=True)  # a clean unmount keeps every entry
            self.journal = None

    def _detach(self) -> None:
        deadline = time.monotonic() + 15
        while os.path.ismount(self.mount) or _dead_mount(self.mount):
            subprocess.run([self.fusermount, "-u", "-z", str(self.mount)], capture_output=True,
                           check=False, timeout=30)
            if time.monotonic() > deadline:
                raise AssertionError(f"could not unmount {self.mount}")
            time.sleep(0.02)

    def close(self) -> None:
        """Unmount whatever is left (test teardown)."""
        with contextlib.suppress(Exception):
            self.cut()
        if shutil.which("umount") and os.path.ismount(self.mount):
            subprocess.run(["umount", "-l", str(self.mount)], capture_output=True, check=False)


def _dead_mount(path: Path) -> bool:
    """A FUSE mount whose daemon died answers ENOTCONN."""
    try:
        os.stat(path)
    except OSError as e:
        return e.errno == 107  # ENOTCONN: "Transport endpoint is not connected"
    return False
