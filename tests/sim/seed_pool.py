"""Seeds of the cluster simulation in worker processes, started as early as possible.

When the default run collects `test_cluster_sim.py::test_seed`, one worker starts on the seeds
at the end of collection: the tests before it (integration, jepsen) mostly wait on processes
and sockets, so the seeds use a core that would idle. When the seeds' tests are reached, what
has not started yet moves to a pool with a worker per core.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor

from tests.sim.scenario import Outcome, run_seed


def run_compact(seed: int) -> Outcome:
    """One seed in a worker; a passing seed's trace is cut to its tail (it travels back)."""
    out = run_seed(seed)
    if out.ok:
        out.trace = out.trace[-100:]
    return out


def _pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


class SeedPool:
    """Runs `seeds` from now on one worker; `results()` adds the other cores and waits."""

    def __init__(self, seeds: list[int]) -> None:
        self.seeds = seeds
        self._pools = [_pool(1)]
        self._futures: dict[int, Future[Outcome]] = {
            s: self._pools[0].submit(run_compact, s) for s in seeds}

    def results(self) -> dict[int, Outcome]:
        cores = len(os.sched_getaffinity(0))
        waiting = [s for s, f in self._futures.items() if f.cancel()]
        if waiting:
            late = _pool(cores)
            self._pools.append(late)
            self._futures.update((s, late.submit(run_compact, s)) for s in waiting)
        try:
            return {s: self._futures[s].result() for s in self.seeds}
        finally:
            self.close()

    def close(self) -> None:
        for p in self._pools:
            p.shutdown(wait=True, cancel_futures=True)
        self._pools.clear()
