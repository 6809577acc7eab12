"""The facts /readyz gathers from a node (spine.api.readiness) before the pure decision."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, cast

from spine.api.readiness import facts, readiness, serves_clients
from spine.core.ringmap import ACTIVE, LEFT

if TYPE_CHECKING:
    from spine.node import Node


def fake_node(
    *, members: tuple[str, ...] = ("n1", "n2", "n3"), alive: tuple[str, ...] = ("n1", "n2", "n3"),
    state: str | None = ACTIVE, removed: bool = False, w: int = 2, draining: bool = False,
    disk_failure: str | None = None,
) -> Node:
    entry = None if state is None else SimpleNamespace(removed=removed)
    failure = None if disk_failure is None else SimpleNamespace(message=disk_failure)
    policy = SimpleNamespace(default="session", quorum=lambda level: SimpleNamespace(w=w))
    node: Any = SimpleNamespace(
        id="n1",
        keeper=SimpleNamespace(
            placement=SimpleNamespace(current=SimpleNamespace(members=members)),
            map=SimpleNamespace(get=lambda nid: entry if nid == "n1" else None),
            state=lambda: state,
        ),
        store=SimpleNamespace(disk=SimpleNamespace(failure=lambda: failure)),
        cfg=SimpleNamespace(policy=lambda: policy),
        liveness=SimpleNamespace(is_alive=lambda n: n in alive),
        draining=draining,
    )
    return cast("Node", node)


def test_a_healthy_member_is_ready_and_serves() -> None:
    node = fake_node()
    assert facts(node).peers_reachable == 3 and facts(node).quorum == 2
    assert readiness(node) is None
    assert serves_clients(node)


def test_reachable_peers_are_counted_among_the_ring_members_only() -> None:
    node = fake_node(alive=("n1", "x9", "x8"))
    assert facts(node).peers_reachable == 1
    verdict = readiness(node)
    assert verdict is not None and verdict.kind == "quorum"


def test_the_quorum_is_capped_by_the_ring_size() -> None:
    node = fake_node(members=("n1",), alive=("n1",), w=2)
    assert facts(node).quorum == 1
    assert readiness(node) is None


def test_draining_and_a_failed_disk_are_reported() -> None:
    verdict = readiness(fake_node(draining=True))
    assert verdict is not None and verdict.kind == "draining"
    verdict = readiness(fake_node(disk_failure="fsync failed: EIO"))
    assert verdict is not None and verdict.kind == "storage"
    assert "fsync failed: EIO" in verdict.reason


def test_a_removed_or_departed_node_serves_no_clients() -> None:
    assert not serves_clients(fake_node(removed=True))
    assert not serves_clients(fake_node(state=LEFT))
    assert not serves_clients(fake_node(state=None))
    verdict = readiness(fake_node(removed=True))
    assert verdict is not None and verdict.kind == "membership"
