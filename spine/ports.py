"""The ports between a node's logic and the world (hexagonal style, as memberlist's Transport).

The cluster services reach peers only through a `Transport` and gossip only through a
`GossipNet`; the real implementations are `spine.cluster.rpc.RpcClient` (TCP, authenticated
frames) and `spine.cluster.gossip_transport.GossipSockets` (UDP + TCP push-pull). The
deterministic simulator (tests/sim) passes in-memory ones, so the same node code runs on virtual
time over a network whose faults a seed decides.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from spine.core.messages import Message
from spine.core.swim_messages import Message as GossipMessage
from spine.core.swim_messages import PushPull


class Transport(Protocol):
    """Calls to peers by node id."""

    async def call(self, node: str, msg: Message, timeout: float) -> Any:
        """Send `msg` to `node` and return its handler's reply. Raises PeerUnavailable when the
        peer cannot be reached or does not answer within `timeout` (with no `code` in its
        details), or the SpineError the peer's handler raised (with its `code`)."""
        ...

    def drop(self, node: str) -> None:
        """Forget any connection to `node` (the next call opens a new one)."""
        ...

    async def close(self) -> None:
        """Close every connection."""
        ...


class GossipNet(Protocol):
    """Where SWIM's packets go: datagrams and push-pull exchanges, sealed by the net's codec."""

    async def start(self) -> None:
        """Start receiving."""
        ...

    async def close(self) -> None:
        """Stop receiving and cancel exchanges in flight."""
        ...

    def send(self, address: str, msg: GossipMessage) -> None:
        """Send one datagram (best effort)."""
        ...

    def push_pull(self, address: str, msg: PushPull, local_host: str | None) -> None:
        """Start a push-pull with `address`; its reply goes to the owner's `on_message`."""
        ...


# Builds the gossip net of a node: (on_message, on_request) -> GossipNet, where on_message takes
# (source address, message) and on_request answers a push-pull (or returns None to hang up).
GossipNetFactory = Callable[
    [Callable[[str, GossipMessage], None], Callable[[str, PushPull], GossipMessage | None]],
    GossipNet,
]
