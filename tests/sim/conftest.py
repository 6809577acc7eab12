"""`pytest tests/sim --seed N` replays one seed of the whole-cluster simulation exactly;
`--seeds K` runs K seeds (the default run's count is `DEFAULT_SEEDS` in test_cluster_sim)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sim", "whole-cluster simulation")
    group.addoption("--seed", type=int, default=None,
                    help="run only this seed of the cluster simulation (replays it exactly)")
    group.addoption("--seeds", type=int, default=None,
                    help="how many seeds of the cluster simulation to run")
