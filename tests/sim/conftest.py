"""`pytest tests/sim --seed N` replays one seed of the whole-cluster simulation exactly;
`--seeds K` runs K seeds (the default run's count is `DEFAULT_SEEDS` in test_cluster_sim).
With more than one seed collected, they start in a worker as soon as collection ends
(`tests/sim/seed_pool.py`)."""

from __future__ import annotations

import pytest

from tests.sim.seed_pool import SeedPool

POOL = pytest.StashKey[SeedPool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sim", "whole-cluster simulation")
    group.addoption("--seed", type=int, default=None,
                    help="run only this seed of the cluster simulation (replays it exactly)")
    group.addoption("--seeds", type=int, default=None,
                    help="how many seeds of the cluster simulation to run")


def pytest_collection_finish(session: pytest.Session) -> None:
    seeds = [item.callspec.params["seed"] for item in session.items
             if item.nodeid.startswith("tests/sim/test_cluster_sim.py::test_seed[")]
    if len(seeds) > 1:
        session.config.stash[POOL] = SeedPool(sorted(seeds))


def pytest_sessionfinish(session: pytest.Session) -> None:
    pool = session.config.stash.get(POOL, None)
    if pool is not None:
        pool.close()
