"""Whole-cluster SWIM on virtual time: join, crash, pause, loss, partition, leave; 30 seeds each.

Every scenario is a plain function of its seed that asserts as it goes, and every assertion
message starts with `seed=N`. Replay a failure with:

    .venv/bin/python -c "from tests.sim.test_swim_sim import run_scenario; run_scenario('kill', 17)"

After every step of every node its new events are checked against SWIM's precedence: in no view
does a member's (incarnation, state) ever move backwards.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import pytest

from spine.core.swim import (
    Member,
    MemberState,
    Swim,
    SwimConfig,
    Transition,
    failure_detection_bound,
)
from tests.sim.network import Network, SimNode, uniform_delay

A, S, D, L = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD, MemberState.LEFT
N = 8
CFG = SwimConfig()
SEEDS = range(30)
RANK = {A: 0, S: 1, D: 2, L: 3}
SETTLE = 5.0  # a fresh cluster is converged by then in every seed (join scenario asserts it)

KILL_BOUND = failure_detection_bound(CFG, N)  # 14 periods (7 s) + 6 × 2.0 s = 19.0 s
PAUSE = 2.0  # four protocol periods: long enough to be suspected, shorter than any timeout
LOSS = 0.10
LOSSY_FOR = 60.0  # seconds of 10% loss: 120 protocol periods
PARTITION_FOR = 20.0
HEAL_BOUND = CFG.push_pull_interval + 5.0  # every node push-pulls a DEAD one within a round


def address(i: int) -> str:
    return f"10.0.0.{i}:7946"


def same_cluster(m: Member) -> str | None:
    return None if m.meta_dict().get("cluster") == "sim" else "not in cluster 'sim'"


def build(seed: int, *, loss: float = 0.0, latency: tuple[float, float] = (0.001, 0.010),
          n: int = N) -> Network:
    """n nodes, n0 first, the others joining through it 50 ms apart."""
    net = Network(seed, loss=loss, delay=uniform_delay(*latency))
    net.after_step.append(PrecedenceCheck(seed))
    for i in range(n):
        meta = {"cluster": "sim", "zone": f"z{i % 3}", "ring": "active"}
        net.add(Swim(f"n{i}", address(i), rng=random.Random(seed * 1000 + i), meta=meta,
                     config=CFG, accept=same_cluster))
    for i in range(n):
        net.join(address(i), [] if i == 0 else [address(0)], 0.05 * i)
    return net


def live(net: Network) -> list[SimNode]:
    return [node for node in net.nodes.values() if not node.killed]


def view(node: SimNode) -> dict[str, MemberState]:
    return {m.node_id: m.state for m in node.swim.members()}


def all_alive(net: Network, ids: Iterable[str]) -> bool:
    want = dict.fromkeys(ids, A)
    return all(view(node) == want for node in live(net))


def run_until_converged(net: Network, ids: list[str], until: float) -> float | None:
    """Step 0.1 s at a time until every live view is all ids ALIVE; the time, or None."""
    while net.now < until:
        net.run_until(min(net.now + 0.1, until))
        if all_alive(net, ids):
            return net.now
    return None


def transitions(node: SimNode, about: str) -> list[Transition]:
    return [e for e in node.events if isinstance(e, Transition) and e.node_id == about]


def first(node: SimNode, about: str, state: MemberState) -> float | None:
    return next((e.at for e in transitions(node, about) if e.new is state), None)


class PrecedenceCheck:
    """Run after every step of every node: in its view, each member's (incarnation, state)
    only ever moves forward (SWIM's precedence; nothing is reaped within a scenario)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.seen: dict[str, int] = {}  # events checked so far, per node
        self.last: dict[tuple[str, str], tuple[int, int]] = {}

    def __call__(self, node: SimNode) -> None:
        me = node.swim.self_id
        for e in node.events[self.seen.get(me, 0):]:
            if isinstance(e, Transition) and e.new is not None:
                now = (e.incarnation, RANK[e.new])
                before = self.last.get((me, e.node_id), (-1, -1))
                assert now >= before, f"seed={self.seed}: {me} moved {e.node_id} back to {now}"
                self.last[(me, e.node_id)] = now
        self.seen[me] = len(node.events)


def start(seed: int, **kw: object) -> tuple[Network, list[str], random.Random]:
    net = build(seed, **kw)  # type: ignore[arg-type]
    ids = [f"n{i}" for i in range(N)]
    converged = run_until_converged(net, ids, SETTLE)
    assert converged is not None, f"seed={seed}: not converged by t={SETTLE}"
    return net, ids, random.Random(seed)


# ------------------------------------------------------------------------------------ scenarios


def scenario_join(seed: int) -> None:
    """(a) 8 nodes join through one seed: every view converges to all ALIVE, nobody suspected."""
    net = build(seed)
    ids = [f"n{i}" for i in range(N)]
    converged = run_until_converged(net, ids, SETTLE)
    assert converged is not None, f"seed={seed}: views not all ALIVE by t={SETTLE}: " + str(
        {node.swim.self_id: node.swim.alive_ids() for node in live(net)})
    net.run_until(SETTLE + 10.0)
    assert all_alive(net, ids), f"seed={seed}: views diverged after converging"
    for node in live(net):
        for other in ids:
            assert first(node, other, S) is None, f"seed={seed}: {other} suspected, no fault"


def scenario_kill(seed: int) -> None:
    """(b) A crashed node is DEAD in every other view within failure_detection_bound."""
    net, ids, rng = start(seed)
    victim = rng.randrange(N)
    killed_at = SETTLE + rng.uniform(0, CFG.protocol_period)
    net.kill(address(victim), killed_at)
    net.run_until(killed_at + KILL_BOUND + 1.0)
    for node in live(net):
        dead_at = first(node, f"n{victim}", D)
        assert dead_at is not None, f"seed={seed}: {node.swim.self_id} never marked n{victim} DEAD"
        assert dead_at - killed_at <= KILL_BOUND, (
            f"seed={seed}: {node.swim.self_id} took {dead_at - killed_at:.2f}s > {KILL_BOUND}s")
        for other in ids:
            if other != f"n{victim}":
                assert first(node, other, S) is None, f"seed={seed}: live {other} suspected"


def scenario_pause(seed: int) -> bool:
    """(c) A node paused (SIGSTOP) for 2 s ends ALIVE everywhere: if it was suspected (or even
    declared DEAD) meanwhile, it refuted on resume. Returns whether it was suspected."""
    net, ids, rng = start(seed)
    victim = rng.randrange(N)
    paused_at = SETTLE + rng.uniform(0, CFG.protocol_period)
    net.pause(address(victim), paused_at, paused_at + PAUSE)
    net.run_until(paused_at + PAUSE)
    converged = run_until_converged(net, ids, paused_at + PAUSE + 20.0)
    assert converged is not None, f"seed={seed}: not all ALIVE 20 s after the resume"
    suspected = any(first(n, f"n{victim}", S) is not None for n in live(net))
    refuted = net.node(f"n{victim}").swim.incarnation >= 1
    assert refuted == suspected, f"seed={seed}: suspected={suspected} but refuted={refuted}"
    return suspected


def scenario_loss(seed: int) -> None:
    """(d) 60 s of 10% datagram loss and 1–30 ms delays: suspicions happen and are refuted,
    no live node is ever declared DEAD; once loss stops every view is all ALIVE.

    Zero false DEAD is a statistical claim, so it was measured on more seeds than the suite
    runs: 0 in 300 seeds × 60 s at 10% loss (13 in 100 at 20%)."""
    net = build(seed, loss=LOSS, latency=(0.001, 0.030))
    ids = [f"n{i}" for i in range(N)]
    net.run_until(LOSSY_FOR)
    for node in live(net):
        for other in ids:
            dead_at = first(node, other, D)
            assert dead_at is None, (
                f"seed={seed}: {node.swim.self_id} declared live {other} DEAD at t={dead_at:.2f}")
    suspicions = sum(1 for node in live(net) for o in ids if first(node, o, S) is not None)
    assert suspicions > 0, f"seed={seed}: no suspicion under loss (the test proves nothing)"
    net.set_loss(0.0, LOSSY_FOR)
    converged = run_until_converged(net, ids, LOSSY_FOR + 10.0)
    assert converged is not None, f"seed={seed}: not all ALIVE 10 s after loss stopped"


def scenario_partition(seed: int) -> None:
    """(e) Halves cut apart for 20 s declare each other DEAD; after the heal, push-pull (with
    its reconnect to one DEAD member per round) brings every view back to all ALIVE."""
    net, ids, _ = start(seed)
    left, right = [address(i) for i in range(N // 2)], [address(i) for i in range(N // 2, N)]
    net.partition([left, right], SETTLE)
    healed_at = SETTLE + PARTITION_FOR
    net.heal(healed_at)
    net.run_until(healed_at)
    for node in live(net):
        mine = left if node.address in left else right
        for i in range(N):
            if address(i) not in mine:
                assert view(node)[f"n{i}"] is D, (
                    f"seed={seed}: {node.swim.self_id} sees cut-off n{i} as {view(node)[f'n{i}']}")
    converged = run_until_converged(net, ids, healed_at + HEAL_BOUND)
    assert converged is not None, f"seed={seed}: not all ALIVE {HEAL_BOUND}s after the heal"


def scenario_leave(seed: int) -> None:
    """A graceful leave: LEFT (never DEAD) in every other view within two protocol periods."""
    net, _, rng = start(seed)
    leaver = net.node(f"n{rng.randrange(N)}")
    left_at = SETTLE + rng.uniform(0, 1)
    net.leave(leaver.address, left_at)
    net.kill(leaver.address, left_at + 0.05)  # the shell stops shortly after
    net.run_until(left_at + 2 * CFG.protocol_period)
    for node in live(net):
        assert view(node)[leaver.swim.self_id] is L, f"seed={seed}: {node.swim.self_id} missed it"
    net.run_until(left_at + 30.0)
    for node in live(net):
        assert first(node, leaver.swim.self_id, D) is None, f"seed={seed}: LEFT became DEAD"
        assert first(node, leaver.swim.self_id, S) is None, f"seed={seed}: LEFT was suspected"


SCENARIOS: dict[str, Callable[[int], object]] = {
    "join": scenario_join,
    "kill": scenario_kill,
    "pause": scenario_pause,
    "loss": scenario_loss,
    "partition": scenario_partition,
    "leave": scenario_leave,
}


def run_scenario(name: str, seed: int) -> object:
    """Run one scenario with one seed; raises AssertionError("seed=N: ...") on failure."""
    return SCENARIOS[name](seed)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_swim_scenario(name: str, seed: int) -> None:
    run_scenario(name, seed)


def test_a_two_second_pause_is_noticed_in_most_seeds() -> None:
    """Else scenario (c) would pass without exercising refutation. A pause can slip by unseen
    when no probe of the victim happens to fall in it (about 1 seed in 30 here)."""
    noticed = [seed for seed in SEEDS if scenario_pause(seed)]
    assert len(noticed) >= 0.8 * len(SEEDS), f"only seeds {noticed} noticed the pause"
