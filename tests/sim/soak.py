"""Soak the whole-cluster simulation: many seeds on every core, or one seed with its trace.

    .venv/bin/python -m tests.sim.soak --seeds 10000          # seeds 0..9999, one worker a core
    .venv/bin/python -m tests.sim.soak --seeds 500 --first 20000
    .venv/bin/python -m tests.sim.soak --seed 25 --trace      # replay one seed, print its trace
    .venv/bin/python -m tests.sim.soak --seeds 1000 --first 1000 --feed   # with a feed consumer

Prints progress, every failing seed's report, and the rate in seeds per minute; exits 1 if any
seed failed.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

from tests.sim.scenario import Knobs, Outcome, run_seed


def _one(seed: int, feed: bool = False) -> tuple[int, bool, str, float]:
    t = time.perf_counter()
    out: Outcome = run_seed(seed, Knobs(feed=feed))
    return seed, out.ok, "" if out.ok else out.report(), time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.sim.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=1000, help="how many seeds (default 1000)")
    p.add_argument("--first", type=int, default=0, help="the first seed (default 0)")
    p.add_argument("--seed", type=int, default=None, help="run only this seed, in this process")
    p.add_argument("--trace", action="store_true", help="with --seed: print the whole trace")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--feed", action="store_true",
                   help="a change-feed consumer follows the namespace in every seed, and what it"
                        " got is checked (tests/sim/feed_consumer.py)")
    a = p.parse_args(argv)
    if a.seed is not None:
        out = run_seed(a.seed, Knobs(feed=a.feed))
        if a.trace:
            print("\n".join(out.trace))
        print(f"seed={a.seed} change={out.change} faults={out.faults} ok={out.ok}"
              f" virtual={out.virtual_s:.1f}s messages={out.messages}")
        if not out.ok:
            print(out.report())
        return 0 if out.ok else 1
    seeds = range(a.first, a.first + a.seeds)
    failed: list[int] = []
    start = time.perf_counter()
    done = 0
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(a.workers, mp_context=ctx) as ex:
        for seed, ok, report, _took in ex.map(_one, seeds, [a.feed] * len(seeds), chunksize=4):
            done += 1
            if not ok:
                failed.append(seed)
                print(report, flush=True)
            if done % 100 == 0 or done == len(seeds):
                rate = done / (time.perf_counter() - start) * 60
                print(f"{done}/{len(seeds)} seeds, {len(failed)} failed, {rate:.0f} seeds/min",
                      flush=True)
    took = time.perf_counter() - start
    print(f"{len(seeds)} seeds in {took:.0f} s on {a.workers} workers:"
          f" {len(seeds) / took * 60:.0f} seeds/min; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
