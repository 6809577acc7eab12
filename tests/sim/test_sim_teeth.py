"""The simulator's teeth: each safeguard of the real code, removed by a test-only patch
(`tests/sim/mutants.py`), is caught on a seed of the whole-cluster simulation.

Each tooth names the knobs and seeds that catch its mutant quickly, the first one catching it
today (found by running the mutant over seeds; those seeds pass on the real code, see
`test_the_teeth_seeds_pass_on_the_real_code`, marked slow); the later seeds are fallbacks, tried
only when an earlier one no longer catches it (a change to the scenario's draws moves the
seeds). The test asserts the violation is of the kind the safeguard prevents. Replay one with

    .venv/bin/python -c "import pytest; from tests.sim import mutants; \\
        from tests.sim.test_sim_teeth import TEETH; from tests.sim.scenario import run_seed; \\
        t = TEETH['no_barrier']; mp = pytest.MonkeyPatch(); mutants.MUTANTS['no_barrier'](mp); \\
        print(run_seed(t.seeds[0], t.knobs).report())"
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.sim import mutants
from tests.sim.scenario import Knobs, Outcome, run_seed

# Preloaded session keys, written while one member is cut off (so each is on two of its three
# owners), with anti-entropy slow, hints off and transfers slow: only the barrier's final sync
# with every live owner brings them to a new owner before the settle.
COLD = Knobs(preload=40, preload_cut=True, settings={
    "ring": {"transfer_max_keys_per_s": 10}, "antientropy": {"interval_ms": 20000},
    "handoff": {"enabled": False}})
# A member cut off from just before a join until well after it settles (CUT_OFF of the old
# model: cut at 0.1-0.3 s for 5-6 s), with no other partition (a heal would end the cut).
CUT_OFF = Knobs(change="join", cut_off=((0.1, 0.3), (5.0, 6.0)), kinds=("crash", "skew"),
                change_at=(0.3, 0.6))
# A member cut off the moment the first node adopts the settled map of a join, before that
# node tells anyone, for 1-1.5 s: shorter than the trailing window (drop_grace / 2 = 2 s), so
# its stale quorum reads still meet every write. 900 operations: the clients outlast the settle.
AT_SETTLE = Knobs(change="join", ops=900, cut_at_settle=(1.0, 1.5), kinds=("skew",))


@dataclass(frozen=True)
class Tooth:
    seeds: tuple[int, ...]
    knobs: Knobs
    expect: str  # a fragment of the violation the safeguard prevents


# Six session clients over a lossy network, anti-entropy comparing every shard every ~50 ms:
# shards match often (so their records can be settled by anti-entropy) while replicas lag.
LOSSY_AE = Knobs(clients=(6, 0, 0), loss=0.05,
                 settings={"antientropy": {"interval_ms": 50, "shards_per_round": 256}})

# Six strong clients on four keys with little pause: many Paxos rounds on one key at a time.
CONTENDED = Knobs(clients=(1, 6, 0), pause=(0.0005, 0.003), faults=(0, 1))

TEETH: dict[str, Tooth] = {
    # A settle before the pending owners' final sync: a new owner lacks a cold key that only
    # two old owners held, one of which the join replaced.
    "no_barrier": Tooth((9, 16, 30, 34), COLD, "is missing on"),
    # Without trailing owners, writes acked by W new owners after the settle miss a quorum of
    # the old owners the cut-off member (still on the changing map) reads from.
    "no_trailing": Tooth((2, 0, 3, 4), AT_SETTLE, "is missing on"),
    # A member cut off for the whole join is skipped; back with its old map it coordinates
    # writes acked by old owners only, short of a quorum of the settled map's owners.
    # Rare: the cut-off node must coordinate a write in the moment between its return and its
    # next ring sync. Since reads hedge per node (issue 17), seeds 0-24 miss it and 25, 29-32,
    # 42 and 43 catch it; the claimant's unit test (tests/unit/test_rebalance_claimant.py)
    # kills it on every run.
    "agree_live_only": Tooth((25, 29, 30, 31), CUT_OFF, "is missing on"),
    # Acknowledged at the first replica's ack: a quorum read misses the write.
    "early_ack": Tooth((0, 5, 1, 3), Knobs(), "is missing on"),
    # The repairs spread the OLDEST version: a strong read returns a value older than one a
    # finished write wrote.
    "repair_older": Tooth((3, 2, 0, 1), Knobs(), "not linearizable"),
    # Issue 18's mutant (a): with 2-key tokens every session client's token overflows, and a
    # forgotten key is read from one (stale) replica. Rarer since a read asks its coordinator's
    # own copy first and forwards keep the owners' order (issue 17): of seeds 0-60, 30, 45, 48
    # and 56 catch it.
    "ignore_needs_quorum": Tooth((30, 45, 48, 56), Knobs(settings={"session": {"max_keys": 2}}),
                                 "older than"),
    # Settled (left out of tokens) at W acknowledgements rather than all of the write set: a
    # session reads the version from one replica, drops it, and reads an older one elsewhere.
    "settled_at_w": Tooth((5, 6, 7, 12), Knobs(), "older than"),
    # Anti-entropy's match taken for every later record of the shard too: a fresh version read
    # at one replica is left out of the token while another replica still lacks it.
    "settled_any_seq": Tooth((1, 2, 3), LOSSY_AE, "older than"),
    # Issue 18's mutant (b): hints kept for a removed node are never delivered; the scenario
    # waits for every node's hints to drain (delivered, or rerouted to the new owners).
    "hints_not_rerouted": Tooth((2, 0, 1), Knobs(change="remove", drain_hints=True,
                                            settle_deadline=15.0), "keeps hints"),
    # Issue 10's tooth: acceptors that promise and accept stale ballots let two conditional
    # writes both succeed over the same version.
    "stale_ballot": Tooth((0, 1, 2, 5), CONTENDED, "not linearizable"),
    # A Paxos round answering once one replica committed: the acknowledged strong write is on
    # fewer owners than a quorum read needs (a strong read, ABD, could miss it). Since reads ask
    # the best-ranked replicas first and hedge per node (issue 17), these seeds catch it first
    # by that invariant (seed 8 catches it as a non-linearizable register instead).
    "paxos_early_ack": Tooth((11, 13, 15, 4), CONTENDED, "is missing on"),
    # The change feed delivering a version no quorum holds yet: a replica that logs an older
    # version late makes the consumer see its key go back in time.
    "feed_unsettled": Tooth((313, 324, 329, 335), Knobs(feed=True), "feed order"),
    # The feed's positions moving past a key it could not settle (a partition): never delivered.
    "feed_skips_held": Tooth((301, 302, 306), Knobs(feed=True), "feed lost"),
    # Any replica holding a version taken as proof the consumer has it (not only one whose
    # entry lies behind the consumer's position): a change is dropped as a repeat, then passed.
    "feed_probe_any_holder": Tooth((300, 301, 302), Knobs(feed=True), "feed lost"),
}


def caught(name: str, mp: pytest.MonkeyPatch) -> Outcome:
    """Run the tooth's seeds under its mutant; the first outcome with a violation (or the last)."""
    tooth = TEETH[name]
    mutants.MUTANTS[name](mp)
    out = None
    for seed in tooth.seeds:
        out = run_seed(seed, tooth.knobs)
        if not out.ok:
            break
    assert out is not None
    return out


@pytest.mark.parametrize("name", sorted(TEETH))
def test_removing_the_safeguard_is_caught(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    out = caught(name, monkeypatch)
    assert not out.ok, f"{name}: no seed of {TEETH[name].seeds} caught it\n{out.report()}"
    assert any(TEETH[name].expect in v for v in out.violations), out.report()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TEETH))
def test_the_teeth_seeds_pass_on_the_real_code(name: str) -> None:
    """Each tooth's first seeds pass without the mutant: what catches it is the mutant."""
    tooth = TEETH[name]
    for seed in tooth.seeds[:2]:
        out = run_seed(seed, tooth.knobs)
        assert out.ok, out.report()
