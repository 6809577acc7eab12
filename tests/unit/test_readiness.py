"""The /readyz decision: who should take client traffic."""

from __future__ import annotations

from dataclasses import replace

import pytest

from spine.core.readiness import Facts, NotReady, not_ready, serves_clients
from spine.core.ringmap import ACTIVE, JOINING, LEAVING, LEFT

READY = Facts(ring_state=ACTIVE, removed=False, peers_reachable=3, quorum=2)


def test_an_active_member_with_a_quorum_is_ready() -> None:
    assert not_ready(READY) is None
    assert not_ready(replace(READY, ring_state=LEAVING)) is None  # still streams and serves


@pytest.mark.parametrize(("change", "kind", "reason"), [
    ({"draining": True}, "draining", "shutting down"),
    ({"storage_problem": "fsync failed: EIO"}, "storage", "storage failed: fsync failed: EIO"),
    ({"removed": True}, "membership", "removed from the ring"),
    ({"ring_state": None}, "membership", "not in the ring map"),
    ({"ring_state": LEFT}, "membership", "left the ring"),
    ({"ring_state": JOINING}, "membership", "joining"),
    ({"peers_reachable": 1}, "quorum", "too few peers reachable (1 of the 2 needed)"),
])
def test_each_reason_not_to_take_traffic_is_named(
    change: dict[str, object], kind: str, reason: str
) -> None:
    got = not_ready(replace(READY, **change))  # type: ignore[arg-type]
    assert got is not None and got.kind == kind and got.reason.startswith(reason)


def test_draining_wins_over_everything_else() -> None:
    f = replace(READY, draining=True, ring_state=LEFT, peers_reachable=0)
    assert not_ready(f) == NotReady("draining", "shutting down")


def test_only_members_serve_clients() -> None:
    assert serves_clients(ACTIVE, False) and serves_clients(JOINING, False)
    assert serves_clients(LEAVING, False)
    assert not serves_clients(LEFT, False)
    assert not serves_clients(None, False)
    assert not serves_clients(ACTIVE, True)
