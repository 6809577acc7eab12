"""The change feed (DESIGN §15) on the real node code, under faults, on virtual time.

Each seed runs the default clients (session, strong with conditional writes, eventual), 2-4
faults and a ring change drawn from the seed, and one consumer following the feed through a
different random node at every poll; after the heal it drains the feed. Every acknowledged
write and delete must have been delivered (or a newer version of its key), per key in version
order (tests/sim/feed_consumer.py)."""

from __future__ import annotations

import pytest

from tests.sim.scenario import Knobs, run_seed

FEED = Knobs(feed=True)


@pytest.mark.parametrize("seed", range(300, 306))
def test_a_consumer_moved_between_nodes_misses_nothing_and_sees_keys_in_order(
    seed: int,
) -> None:
    out = run_seed(seed, FEED)
    assert out.ok, out.report()
    assert any("feed:" in line for line in out.trace), "the consumer never drained"
