"""Per-key Paxos (conditional and strong writes) under contention, on the real node code.

Six strong clients on four keys, with almost no pause between operations, so rounds on one key
overlap all the time: reads, blind strong writes, deletes, and conditional writes (`If-Match` the
version last seen, or `If-None-Match: *`), through random nodes, under the default faults and a
ring change drawn from the seed. The WGL checker judges each key's history as a compare-and-set
register (a 412 is a cas that saw another value). The default seeds (tests/sim/test_cluster_sim.py)
mix conditional writes in at a lower rate; `stale_ballot` in test_sim_teeth.py is this test's tooth.
"""

from __future__ import annotations

import pytest

from tests.sim.scenario import Knobs, run_seed

CONTENDED = Knobs(clients=(1, 6, 0), pause=(0.0005, 0.003))


@pytest.mark.parametrize("seed", range(100, 106))
def test_contended_conditional_writes_stay_linearizable(seed: int) -> None:
    out = run_seed(seed, CONTENDED)
    assert out.ok, out.report()
    cas = [o for o in out.history.ops if o.kind == "cas"]
    assert sum(1 for o in cas if o.ok) >= 5, f"seed={seed}: too few conditional writes landed"
    assert any(o.error == "precondition_failed" for o in cas), "no round ever lost a race"
