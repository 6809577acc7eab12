"""The local cluster: the config `spine up` writes and the test harnesses start from, N nodes on
127.0.0.1 with each node's HTTP, RPC and gossip ports laid out from one base port."""

from __future__ import annotations

import hashlib
from typing import Any


def local_cluster(
    nodes: int, base_port: int, data_dir: str, sync: bool = True, *, secret: str | None = None
) -> dict[str, Any]:
    """The config `spine up` writes: N nodes on 127.0.0.1, HTTP on base_port + i.

    `spine up` passes a random `secret`; without one (test harnesses on loopback) it is derived
    from the data directory, which anyone who knows the path can compute.
    """
    if secret is None:
        secret = hashlib.sha256(data_dir.encode()).hexdigest()
    return {
        "cluster": {"name": "spine-local", "secret": secret},
        "nodes": [
            {
                "id": f"n{i + 1}",
                "host": "127.0.0.1",
                "port": base_port + i,
                "rpc_port": base_port + 1000 + i,
                "gossip_port": base_port + 2000 + i,
            }
            for i in range(nodes)
        ],
        "seeds": [f"127.0.0.1:{base_port + 2000}"],
        "replication": {"n": min(3, nodes)},
        "consistency": {
            "overrides": {
                "critical": "strong",
                "lock": "strong",
                "analytics": "eventual",
                "metric": "eventual",
            }
        },
        "storage": {"path": data_dir, "sync": sync},
    }
