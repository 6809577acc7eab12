"""Disk faults under a real node process (issue 14, item 5).

- fsync failing with EIO (libfiu's `posix/io/sync/fdatasync` and `posix/io/sync/fsync`, turned
  on in the running node with `fiu-ctrl`): the write whose commit failed answers 503
  `storage_failed`, `/readyz` answers 503 with the reason, every later write answers 503 even once
  the disk works again (a failed fsync is never retried), reads go on from the last commit, and
  after a restart the node takes writes again with nothing acknowledged missing.
- a failed page write (`posix/io/rw/pwrite`): LMDB declares the environment fatal (MDB_PANIC),
  so reads answer 503 `storage_failed` too, until the restart.
- ENOSPC on a small tmpfs holding the node's data: writes answer 507 `insufficient_storage`
  while reads keep working, and once the filler file is deleted writes succeed again with no
  restart; with `storage.reserve_mb` the node refuses before the disk is full at all.

A single node with replication n=1 makes "acknowledged" mean "committed on this node's disk".
The Debian tools (fiu-utils) are installed when missing; mounting tmpfs needs root.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.wait import wait_until
from tests.integration.cluster import LocalCluster
from tests.integration.conftest import ClusterFactory
from tests.integration.debian import ensure

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

NS = "disk"
EIO = 5


def single_node(make_cluster: ClusterFactory, data: Path | None = None,
                **storage: Any) -> LocalCluster:
    overrides: dict[str, Any] = {"index": {"persist_interval_s": 1}}
    if data is not None:
        storage["path"] = str(data)
    if storage:
        overrides["storage"] = storage
    return make_cluster(1, sync=True, **overrides)


def put(c: LocalCluster, mid: str, content: str) -> Any:
    return c.http("n1", "PUT", f"/v1/ns/{NS}/memories/{mid}", {"content": content})


def acked_status(status: int) -> bool:
    return status in (200, 201)  # updated, created


def get(c: LocalCluster, mid: str) -> Any:
    return c.http("n1", "GET", f"/v1/ns/{NS}/memories/{mid}")


def assert_readable(c: LocalCluster, acked: dict[str, str]) -> None:
    for mid, content in acked.items():
        r = get(c, mid)
        assert r.status == 200, (mid, r.status, r.body)
        assert r.json()["content"] == content, mid


# -- fsync fails with EIO -------------------------------------------------------------------------


def _fiu_libs() -> str:
    ensure("fiu-run", "fiu-utils")
    libs = [Path("/usr/lib/fiu/fiu_run_preload.so"), Path("/usr/lib/fiu/fiu_posix_preload.so")]
    missing = [str(p) for p in libs if not p.exists()]
    if missing:
        pytest.skip(f"fiu-utils installed but its preload libraries are not at {missing}")
    return " ".join(str(p) for p in libs)


class Fiu:
    """libfiu's remote control of one process (fiu-ctrl over its named pipes)."""

    def __init__(self, prefix: Path, pid: int) -> None:
        self.prefix, self.pid = prefix, pid

    def run(self, command: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LD_PRELOAD", "FIU_"))}
        r = subprocess.run(["fiu-ctrl", "-f", str(self.prefix), "-c", command, str(self.pid)],
                           capture_output=True, text=True, env=env, timeout=30, check=False)
        assert r.returncode == 0, f"fiu-ctrl {command!r}: {r.stdout} {r.stderr}"


@contextlib.contextmanager
def preloaded(prefix: Path, libs: str) -> Iterator[None]:
    """Processes started inside get libfiu preloaded with its control pipes (as `fiu-run -x`)."""
    saved = {k: os.environ.get(k) for k in ("LD_PRELOAD", "FIU_CTRL_FIFO", "FIU_ENABLE")}
    os.environ.update(LD_PRELOAD=libs, FIU_CTRL_FIFO=str(prefix), FIU_ENABLE="")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


SYNC_FAULTS = ("posix/io/sync/fdatasync", "posix/io/sync/fsync")


def test_failed_fsync_stops_acknowledging_until_restart(
    make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    libs = _fiu_libs()
    prefix = tmp_path / "fiu"
    with preloaded(prefix, libs):
        c = single_node(make_cluster)
    fiu = Fiu(prefix, c.procs["n1"].pid)
    wait_until(lambda: Path(f"{prefix}-{fiu.pid}.in").exists(), 10, 0.05, "fiu's control pipe")
    acked: dict[str, str] = {}
    for i in range(5):
        assert acked_status(put(c, f"ok{i}", f"before {i}").status)
        acked[f"ok{i}"] = f"before {i}"
    assert c.http("n1", "GET", "/readyz").status == 200

    for name in SYNC_FAULTS:
        fiu.run(f"enable name={name},failinfo={EIO}")
    r = put(c, "lost", "written while fsync fails")
    assert r.status == 503, (r.status, r.body)
    assert r.error()["code"] == "storage_failed", r.body
    ready = c.http("n1", "GET", "/readyz")
    assert ready.status == 503, (ready.status, ready.body)
    assert ready.error()["code"] == "storage_failed" and "fsync" in ready.error()["message"]

    for name in SYNC_FAULTS:  # the disk works again: the node still acknowledges nothing
        fiu.run(f"disable name={name}")
    for i in range(3):
        r = put(c, f"after{i}", "written once the disk works again")
        assert r.status == 503 and r.error()["code"] == "storage_failed", (r.status, r.body)
    assert c.http("n1", "GET", "/readyz").status == 503
    assert_readable(c, acked)  # reads go on from the last commit
    assert get(c, "lost").status == 404
    assert c.metric("n1", "spine_storage_state") == 2

    c.kill("n1")  # the operator restarts it (without libfiu)
    c.start("n1", wait_peers=False)
    assert c.http("n1", "GET", "/readyz").status == 200
    assert_readable(c, acked)
    assert acked_status(put(c, "later", "after the restart").status)
    assert get(c, "later").status == 200


def test_failed_page_write_fails_reads_too_until_restart(
    make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    """A failed pwrite (LMDB's page and meta writes): the write is refused, and so is every
    later one until a restart. Reads then answer either what the last commit left (a page write
    failed: LMDB aborted the transaction before its meta page, so the environment is exactly as
    of the last commit) or 503 storage_failed (the meta page write failed: LMDB declared the
    environment fatal, MDB_PANIC, and refuses read transactions too); never anything else.
    Which write a commit's first pwrite is depends on how LMDB lays the dirty pages out (one
    contiguous run goes by writev, then the meta page by pwrite), so the test takes either."""
    libs = _fiu_libs()
    prefix = tmp_path / "fiu"
    with preloaded(prefix, libs):
        c = single_node(make_cluster)
    fiu = Fiu(prefix, c.procs["n1"].pid)
    wait_until(lambda: Path(f"{prefix}-{fiu.pid}.in").exists(), 10, 0.05, "fiu's control pipe")
    assert acked_status(put(c, "kept", "before the fault").status)
    fiu.run(f"enable name=posix/io/rw/pwrite,failinfo={EIO}")
    r = put(c, "lost", "written while pwrite fails")
    assert r.status == 503 and r.error()["code"] == "storage_failed", (r.status, r.body)
    fiu.run("disable name=posix/io/rw/pwrite")
    r = get(c, "kept")
    if r.status == 200:  # the page write failed: the last commit stands, readable
        assert r.json()["content"] == "before the fault", r.body
        assert get(c, "lost").status == 404
    else:
        assert r.status == 503 and r.error()["code"] == "storage_failed", (r.status, r.body)
    assert c.http("n1", "GET", "/readyz").status == 503
    r = put(c, "after", "once the disk works again")
    assert r.status == 503 and r.error()["code"] == "storage_failed", (r.status, r.body)
    c.kill("n1")
    c.start("n1", wait_peers=False)
    assert_readable(c, {"kept": "before the fault"})
    assert get(c, "lost").status == 404
    assert acked_status(put(c, "after", "after the restart").status)


# -- the disk fills up ----------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 32 MiB tmpfs, unmounted after the test."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


def fill(path: Path) -> None:
    """Write `path` until the filesystem has no byte left."""
    with open(path, "wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 12, 1 << 9):
            block = b"\0" * chunk
            while True:
                try:
                    f.write(block)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
    st = os.statvfs(path)
    assert st.f_bavail * st.f_frsize < 1 << 12, "the filler left room"


def test_full_disk_answers_507_and_recovers_without_restart(
    make_cluster: ClusterFactory, small_disk: Path
) -> None:
    c = single_node(make_cluster, small_disk, reserve_mb=0)
    acked: dict[str, str] = {}
    for i in range(20):
        content = f"before {i} " + "x" * 1000
        assert acked_status(put(c, f"pre{i}", content).status)
        acked[f"pre{i}"] = content
    filler = small_disk / "filler"
    fill(filler)

    statuses: list[int] = []
    for i in range(200):  # LMDB reuses free pages first: write until the file must grow
        content = f"full {i} " + "y" * 8000
        r = put(c, f"full{i}", content)
        statuses.append(r.status)
        assert acked_status(r.status) or r.status == 507, (r.status, r.body)
        if acked_status(r.status):
            acked[f"full{i}"] = content
        else:
            assert r.error()["code"] == "insufficient_storage", r.body
            break
    assert statuses[-1] == 507, f"no write was refused on a full disk: {statuses}"
    assert_readable(c, acked)
    assert c.http("n1", "GET", "/readyz").status == 200  # full is not failed: reads go on

    filler.unlink()

    def writes_again() -> bool:
        return acked_status(put(c, "recovered", "space is back").status)

    wait_until(writes_again, 10, 0.1, "a write to succeed once space was freed")
    acked["recovered"] = "space is back"
    for i in range(10):
        content = f"after {i} " + "z" * 8000
        r = put(c, f"post{i}", content)
        assert acked_status(r.status), (r.status, r.body)
        acked[f"post{i}"] = content
    assert_readable(c, acked)
    assert c.metric("n1", "spine_storage_state") == 0


def test_reserve_refuses_writes_before_the_disk_is_full(
    make_cluster: ClusterFactory, small_disk: Path
) -> None:
    c = single_node(make_cluster, small_disk, reserve_mb=4)
    assert acked_status(put(c, "a", "fits").status)
    filler = small_disk / "filler"
    fill(filler)
    for i in range(3):
        r = put(c, f"b{i}", "no room")
        assert r.status == 507 and r.error()["code"] == "insufficient_storage", (r.status, r.body)
    assert get(c, "a").status == 200
    filler.unlink()
    assert acked_status(put(c, "c", "room again").status)


def test_full_map_answers_507_and_reads_go_on(make_cluster: ClusterFactory) -> None:
    """MDB_MAP_FULL (storage.map_size_mb used up) answers 507 too; the node stays ready. Room
    comes back only as records are purged, or with a larger map after a restart."""
    c = single_node(make_cluster, map_size_mb=2)
    acked: dict[str, str] = {}
    refused = None
    for i in range(400):
        content = f"map {i} " + "m" * 20_000
        r = put(c, f"m{i}", content)
        if not acked_status(r.status):
            refused = r
            break
        acked[f"m{i}"] = content
    assert refused is not None, "2 MiB of map never filled"
    assert refused.status == 507 and refused.error()["code"] == "insufficient_storage", (
        refused.status, refused.body)
    assert acked and "map" in refused.error()["message"]
    assert_readable(c, acked)
    assert c.http("n1", "GET", "/readyz").status == 200
