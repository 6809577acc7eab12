"""Calls to this node itself, answered from its own handler table without a socket.

The data path asks "every replica of the key", "every pending owner", "every live member", and
this node is often one of them. `Loopback` wraps the node's `Transport` so those callers need no
`if node == self.node_id` branch: a call to this node runs the handler its peers would reach
(`RpcServer`'s table), and any other call goes to the wrapped transport (TCP, or the simulator's
in-memory network).

What a caller sees is what a remote call would give: the handler's return value, or the
SpineError it raised. Two differences are on purpose. The reply is the handler's value itself,
not a msgpack round trip of it (the callers read both alike). A PeerUnavailable that a local
handler raises always carries a `code` detail, as one relayed from a peer does, so no caller
reports this node to the failure detector or drops a connection to it. A local call has no
timeout (it never waited on the network before either), and an exception that is not a
SpineError (a bug) propagates as itself, with its traceback.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from spine.cluster.rpc import Handler
from spine.core.errors import InvalidInput, PeerUnavailable
from spine.core.messages import Message, Tag
from spine.ports import Transport


class Loopback:
    """A `Transport` that answers calls to `node_id` from `handlers()` and passes every other
    call to `inner`. `handlers` is looked up at each call: a node builds its table last."""

    def __init__(
        self, node_id: str, inner: Transport, handlers: Callable[[], Mapping[Tag, Handler]]
    ) -> None:
        self.node_id = node_id
        self.inner = inner
        self._handlers = handlers

    async def call(self, node: str, msg: Message, timeout: float) -> Any:
        """The reply of `node`'s handler for `msg` (this node's own, when `node` is this one)."""
        if node != self.node_id:
            return await self.inner.call(node, msg, timeout)
        handler = self._handlers().get(msg.TAG)
        if handler is None:
            raise InvalidInput(f"this node serves no {msg.TAG.name} requests", field="tag")
        try:
            return await handler(self.node_id, msg)
        except PeerUnavailable as e:
            # Relayed from our own handler (it could not reach someone else): an answer, so
            # this node is never the one blamed for it.
            if "code" not in e.details:
                e.details = {**e.details, "code": e.code}
            raise

    def drop(self, node: str) -> None:
        """Forget the connection to `node` (there is none to this node)."""
        if node != self.node_id:
            self.inner.drop(node)

    async def close(self) -> None:
        """Close the wrapped transport's connections."""
        await self.inner.close()
