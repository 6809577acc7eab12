"""The real node code under deterministic simulation (tests/sim/scenario.py), many seeds.

Each seed: 5 nodes and a spare, 6 clients (3 session, 2 strong, 1 eventual) doing 300
operations through random nodes, 2-4 faults (partitions, crashes with restarts, pauses, clock
skew), 1% loss and 1% duplication, and one ring change (none, join, decommission, or crash +
remove) drawn from the seed; the invariants (tests/sim/invariants.py) checked during and after.
The seeds run in worker processes (tests/sim/seed_pool.py) from the end of collection on; a
failure prints the seed, the violation and the tail of the trace. Replay one seed, in this
process, with

    .venv/bin/pytest tests/sim/test_cluster_sim.py --seed N
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sim.conftest import POOL
from tests.sim.scenario import RING_CHANGES, Outcome, run_seed

DEFAULT_SEEDS = 200


def _seeds(config: pytest.Config) -> list[int]:
    one = config.getoption("--seed")
    return [one] if one is not None else list(range(config.getoption("--seeds")
                                                    or DEFAULT_SEEDS))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "seed" in metafunc.fixturenames:
        metafunc.parametrize("seed", _seeds(metafunc.config))


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest) -> dict[int, Outcome]:
    pool = request.config.stash.get(POOL, None)
    if pool is not None:  # started when collection ended (tests/sim/conftest.py)
        return pool.results()
    return {s: run_seed(s) for s in _seeds(request.config)}


# The first test also waits for the module's seeds to run (about 1-2 s each per core).
@pytest.mark.timeout(1800)
def test_seed(seed: int, outcomes: dict[int, Outcome]) -> None:
    out = outcomes[seed]
    assert out.ok, out.report()
    assert len(out.history.ops) >= 300, f"seed={seed}: only {len(out.history.ops)} operations"


def test_a_seed_replays_identically() -> None:
    """Same seed, same run: the trace of two runs in one process is the same, line for line."""
    a, b = run_seed(7), run_seed(7)
    assert a.trace == b.trace, next(
        f"first difference at line {i}: {x!r} vs {y!r}"
        for i, (x, y) in enumerate(zip(a.trace, b.trace, strict=False)) if x != y)


def test_the_seeds_exercise_every_ring_change_and_fault(outcomes: dict[int, Outcome]) -> None:
    """The seeds draw every ring change and every kind of fault, and most operations complete
    (a run where nothing works would satisfy every invariant)."""
    if len(outcomes) < 8:
        pytest.skip("needs the default seeds")
    outs = list(outcomes.values())
    assert {o.change for o in outs} == set(RING_CHANGES)
    kinds = {f.split("@")[0] for o in outs for f in o.faults}
    assert {"partition", "crash", "skew", "pause"} <= kinds
    # About 190 of a seed's 300 operations are writes; faults fail some of them.
    for o in outs:
        acked = len(o.history.acked())
        assert acked >= 50, f"seed={o.seed}: only {acked} writes acknowledged"
    mean = sum(len(o.history.acked()) for o in outs) / len(outs)
    assert mean >= 120, f"only {mean:.0f} writes acknowledged per seed on average"


def test_a_seed_replays_identically_whatever_the_hash_seed() -> None:
    """A failing seed found in a worker process replays in another: nothing in the run depends
    on the string hash randomisation (set and dict orders of node ids and keys)."""
    root = Path(__file__).resolve().parents[2]
    traces = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(root)}
        run = subprocess.run([sys.executable, "-m", "tests.sim.soak", "--seed", "3", "--trace"],
                             cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
        traces.append(run.stdout.splitlines())
    assert traces[0] == traces[1], next(
        f"first difference at line {i}: {x!r} vs {y!r}"
        for i, (x, y) in enumerate(zip(*traces, strict=False)) if x != y)
