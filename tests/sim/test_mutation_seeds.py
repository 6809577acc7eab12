"""Whole-cluster simulation seeds run in this process, for mutation testing only
(`make mutation`, bench/mutation.py): mutmut swaps mutants in inside the test process, so the
seeds must not run in worker processes as test_cluster_sim's do. Between them the four default
seeds draw every ring change (0: remove, 1: join, 2: none, 5: decommission). Skipped outside a
mutmut run (mutmut sets MUTANT_UNDER_TEST), where test_cluster_sim and test_sim_teeth run these
seeds and many more.

With default knobs anti-entropy repairs whatever hinted handoff leaves undone, so the default
seeds cannot see handoff at all; the tooth seed below (a remove whose convergence waits for
every node's hints to drain) can: it costs ≈ 2.7 s per mutant it reaches (the four default
seeds ≈ 10 s), measured on the real code on this 2-core box.
"""

from __future__ import annotations

import os

import pytest

from tests.sim.scenario import run_seed
from tests.sim.test_sim_teeth import TEETH

pytestmark = pytest.mark.skipif("MUTANT_UNDER_TEST" not in os.environ,
                                reason="mutation testing only (test_cluster_sim runs these seeds)")


@pytest.mark.parametrize("seed", [0, 1, 2, 5])
def test_seed_in_process(seed: int) -> None:
    out = run_seed(seed)
    assert out.ok, out.report()
    assert len(out.history.ops) >= 300, f"seed={seed}: only {len(out.history.ops)} operations"


@pytest.mark.parametrize("name", ["hints_not_rerouted"])
def test_tooth_seed_in_process(name: str) -> None:
    """A tooth's knobs and first seed, on the code as it is (here: the mutant under test)."""
    tooth = TEETH[name]
    out = run_seed(tooth.seeds[0], tooth.knobs)
    assert out.ok, out.report()
