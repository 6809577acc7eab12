"""Session-wide setup for the whole suite.

Debian tools some integration tests drive for real (`tests.integration.debian.ensure`: haproxy,
docker-compose, fiu-utils, fuse3) are apt-get installed the first time a test needs one. On a
fresh machine (a clean CI box) that was about a minute and a half of the run spent waiting on
apt inside two tests. When the run has collected a test that needs one, the installs start in a
background thread as soon as collection ends, in the order the tests will need them, while the
tests before them run; a test's own `ensure` call then finds the tool, or waits on the same lock
for the install under way. A failed install here is left for that call to retry and report.

Under pytest-xdist every worker is a process of its own, and dpkg refuses a second apt-get
instead of waiting for the first: so every install, in any worker, waits its turn on one file
lock (`apt_turn`), and a test of a module that needs a tool takes its turn before it starts
(installing what is still missing), so that its own `ensure` finds the tool in place.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.integration.debian import ensure

# Hypothesis' default 200 ms deadline per example is a speed check, and the suite runs on a
# shared 2-core box beside hundreds of node processes: a slow example there fails the test as
# "Flaky" (a helper's mutation run hit it in tests/property/test_merkle_props.py). No property
# here is about speed, so no example has a deadline; tests that set their own settings keep them.
settings.register_profile("spine", deadline=None)
settings.load_profile("spine")

# (test module, [(command, Debian package), ...]) for every module that calls `ensure`.
NEEDS: dict[str, list[tuple[str, str]]] = {
    "tests/integration/test_deploy_files.py": [("docker-compose", "docker-compose"),
                                               ("haproxy", "haproxy")],
    "tests/integration/test_disk_faults.py": [("fiu-run", "fiu-utils")],
    "tests/integration/test_haproxy.py": [("haproxy", "haproxy")],
    # tests/powerloss/mount.py skips without /dev/fuse, and then needs no fuse3
    "tests/integration/test_power_loss.py": ([("fusermount3", "fuse3")]
                                             if Path("/dev/fuse").exists() else []),
}

_PREFETCH = pytest.StashKey[threading.Thread]()
APT_LOCK = Path(tempfile.gettempdir()) / "spine-tests-apt.lock"


def tools_needed(nodeids: list[str]) -> list[tuple[str, str]]:
    """The (command, package) pairs the collected tests will ask for, in the order they will
    ask, each once."""
    out: list[tuple[str, str]] = []
    for nodeid in nodeids:
        for tool in NEEDS.get(nodeid.split("::", 1)[0], []):
            if tool not in out:
                out.append(tool)
    return out


@contextlib.contextmanager
def apt_turn() -> Iterator[None]:
    """Exclusive among every process on the machine (flock on a fresh descriptor, so threads
    of one process exclude each other too): one apt-get at a time."""
    fd = os.open(APT_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _install(tools: list[tuple[str, str]]) -> None:
    for command, package in tools:
        # The test's own ensure() retries and reports a failure.
        with apt_turn(), contextlib.suppress(Exception):
            ensure(command, package)


def pytest_collection_finish(session: pytest.Session) -> None:
    tools = tools_needed([item.nodeid for item in session.items])
    if tools and not session.config.option.collectonly:
        t = threading.Thread(target=_install, args=(tools,), name="apt-prefetch", daemon=True)
        t.start()
        session.config.stash[_PREFETCH] = t


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test that needs a tool waits for any install under way, here or in another worker."""
    _install(NEEDS.get(item.nodeid.split("::", 1)[0], []))


def pytest_sessionfinish(session: pytest.Session) -> None:
    t = session.config.stash.get(_PREFETCH, None)
    if t is not None:  # an install under way is left to finish, not cut off mid-dpkg
        t.join(timeout=600)
