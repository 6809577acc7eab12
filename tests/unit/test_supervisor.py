"""`spine up`'s restart backoff and port list (pure parts of spine.supervisor)."""

from __future__ import annotations

import socket

from spine.core.local_cluster import local_cluster
from spine.supervisor import RESTART_MAX_S, RESTART_MIN_S, STABLE_S, listeners, restart_delay


def test_restart_delay_doubles_while_a_node_keeps_dying_and_resets_after_a_stable_run() -> None:
    d = restart_delay(0.0, 0.5)
    assert d == RESTART_MIN_S
    seen = [d]
    for _ in range(10):
        d = restart_delay(d, 0.5)
        seen.append(d)
    assert seen[:4] == [1.0, 2.0, 4.0, 8.0]
    assert max(seen) == RESTART_MAX_S and seen[-1] == RESTART_MAX_S
    assert restart_delay(RESTART_MAX_S, STABLE_S) == RESTART_MIN_S


def test_listeners_name_every_port_of_every_node() -> None:
    cfg = local_cluster(3, 7000, "/tmp/x")
    got = {(lst.node, lst.what, lst.port, lst.kind) for lst in listeners(cfg)}
    assert len(got) == 12
    assert ("n2", "RPC", 8001, socket.SOCK_STREAM) in got
    assert ("n3", "gossip", 9002, socket.SOCK_DGRAM) in got
