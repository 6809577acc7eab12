"""spine.cluster.replication: what the mutants that survived the unit tests and the simulation
seeds changed (bench/mutation.py --sample 0.1, 2026-12-03). Each test names the mutant it kills.
The fake transport of test_speculative_read."""

from __future__ import annotations

import pytest

from tests.unit.test_speculative_read import SLOW, Setup, rec

pytestmark = pytest.mark.timeout(30)


@pytest.mark.asyncio
async def test_a_failed_call_is_counted_against_its_peer() -> None:
    """`rpc_errors.inc(node)` -> `inc(None)` (_failed__mutmut_1): the failures were counted
    under no peer, so spine_rpc_errors_total{peer=...} could not say which peer fails."""
    s = Setup({"n1": rec(3), "n2": rec(3), "n3": rec(3)}, None)
    s.peers.fail.add("n2")
    got = await s.rep.read("ns", "k", ["n1", "n2", "n3"], 3, timeout=SLOW, repair=False)
    assert sorted(got) == ["n1", "n3"]
    assert s.metrics.rpc_errors.get("n2") == 1 and s.metrics.rpc_errors.get("n1") == 0
    await s.rep.stop()
