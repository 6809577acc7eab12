"""Fixtures for the integration tests: real Spine clusters, always torn down.

- `make_cluster(**overrides)`: a factory; every cluster it made is closed after the test, pass
  or fail (SIGKILL, reap, ports checked free).
- `cluster`: a 3-node cluster with `storage.sync: false`, one per test.
- `shared_cluster`: one 3-node cluster per module, for tests that only add keys of their own
  (each uses its own namespace); it has a small `limits.body_bytes` for the oversize-body test,
  and honours `Spine-Consistency: eventual` on untagged records (`WEAK_OK`).

When a test fails, the tail of every node's log is attached to its report.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster import LocalCluster

# `allow_weaker`: let `Spine-Consistency: eventual` mean W=1 / R=1 on untagged records (with
# the default config it cannot go below the default level; see test_session's xfail tests).
WEAK_OK: dict[str, Any] = {"consistency": {"allow_weaker": True}}
SHARED_OVERRIDES: dict[str, Any] = {"limits": {"body_bytes": 200_000}, **WEAK_OK}


class ClusterFactory:
    """Makes LocalClusters under one directory and remembers them for teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.clusters: list[LocalCluster] = []

    def __call__(self, nodes: int = 3, **overrides: Any) -> LocalCluster:
        c = LocalCluster(self.root / f"cluster{len(self.clusters)}", nodes, start=False,
                         **overrides)
        self.clusters.append(c)
        c.start_all()
        return c

    def close(self) -> None:
        errors: list[BaseException] = []
        for c in self.clusters:
            try:
                c.close()
            except BaseException as e:  # close every cluster even if one fails to
                errors.append(e)
        if errors:
            raise errors[0]


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[ClusterFactory]:
    factory = ClusterFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def cluster(make_cluster: ClusterFactory) -> LocalCluster:
    return make_cluster()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    factory = ClusterFactory(tmp_path_factory.mktemp("shared"))
    try:
        yield factory(**SHARED_OVERRIDES)
    finally:
        factory.close()


def _clusters(value: object) -> list[LocalCluster]:
    if isinstance(value, LocalCluster):
        return [value]
    if isinstance(value, ClusterFactory):
        return list(value.clusters)
    return []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        seen: set[int] = set()
        for name, value in getattr(item, "funcargs", {}).items():
            for c in _clusters(value):
                if id(c) not in seen:
                    seen.add(id(c))
                    report.sections.append((f"spine node logs ({name}, {c.root})",
                                            c.log_tails()))
    return report
