"""What `/readyz` and the client routes ask of a node: the facts it holds now (ring state,
removal, reachable peers, the default level's write quorum, draining, the disk's verdict),
handed to the pure decision in `spine.core.readiness`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from spine.core import readiness as decide
from spine.core.readiness import Facts, NotReady

if TYPE_CHECKING:
    from spine.node import Node


def facts(node: Node) -> Facts:
    """What `node` knows about itself now."""
    members = node.keeper.placement.current.members
    entry = node.keeper.map.get(node.id)
    failure = node.store.disk.failure()
    policy = node.cfg.policy()
    return Facts(
        ring_state=node.keeper.state(), removed=entry is not None and entry.removed,
        peers_reachable=sum(1 for n in members if node.liveness.is_alive(n)),
        quorum=min(policy.quorum(policy.default).w, len(members)),
        draining=node.draining,
        storage_problem=failure.message if failure is not None else None,
    )


def readiness(node: Node) -> NotReady | None:
    """Why `node` should take no client traffic now, or None when it should."""
    return decide.not_ready(facts(node))


def serves_clients(node: Node) -> bool:
    """False once `node` has left the ring or was removed."""
    entry = node.keeper.map.get(node.id)
    return decide.serves_clients(node.keeper.state(), entry is not None and entry.removed)
