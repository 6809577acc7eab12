"""Four whole-cluster simulation seeds run in this process, for mutation testing only
(`make mutation`, bench/mutation.py): mutmut swaps mutants in inside the test process, so the
seeds must not run in worker processes as test_cluster_sim's do. Between them they draw every ring
change (0: remove, 1: join, 2: none, 5: decommission). Skipped outside a mutmut run (mutmut sets
MUTANT_UNDER_TEST), where test_cluster_sim runs these seeds and many more.
"""

from __future__ import annotations

import os

import pytest

from tests.sim.scenario import run_seed

pytestmark = pytest.mark.skipif("MUTANT_UNDER_TEST" not in os.environ,
                                reason="mutation testing only (test_cluster_sim runs these seeds)")


@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_seed_in_process(seed: int) -> None:
    out = run_seed(seed)
    assert out.ok, out.report()
    assert len(out.history.ops) >= 300, f"seed={seed}: only {len(out.history.ops)} operations"
