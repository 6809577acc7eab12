"""The ports between a node's logic and the world (hexagonal style, as memberlist's Transport).

The cluster services reach peers only through a `Transport`, gossip only through a `GossipNet`
and their records only through a `RecordStore`; the real implementations are
`spine.cluster.rpc.RpcClient` (TCP, authenticated frames; wrapped in
`spine.cluster.loopback.Loopback` so that a call to this node is answered by its own handlers),
`spine.cluster.gossip_transport.GossipSockets` (UDP + TCP push-pull) and
`spine.storage.lmdb_store.Store`. The
deterministic simulator (tests/sim) passes in-memory ones, so the same node code runs on virtual
time over a network whose faults a seed decides.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from spine.core.messages import Message
from spine.core.model import Record
from spine.core.swim_messages import Message as GossipMessage
from spine.core.swim_messages import PushPull

if TYPE_CHECKING:  # the store's result values; the port itself pulls in no storage code
    from spine.storage.lmdb_store import Applied, Hint, HistoryEntry


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


class RecordStore(Protocol):
    """What the cluster services need from a node's storage: versioned records (merged on
    apply), their kept history, hints for absent replicas, meta values, and scans by shard (the
    hash trees, shard transfers and drops) and by namespace (listing). Reads are synchronous
    and see every completed write; writes resolve once they are durable."""

    @property
    def seq(self) -> int:
        """The change-log position of the last committed apply."""
        ...

    def check_writable(self) -> None:
        """Raise StorageFailed or InsufficientStorage when a write cannot be tried now."""
        ...

    def key_of(self, namespace: str, mid: str) -> bytes:
        """The records key of (namespace, id): its shard (2 bytes, big-endian) first."""
        ...

    def get(self, namespace: str, mid: str) -> Record | None:
        """The stored version of a key (tombstones included), or None."""
        ...

    def get_many(self, keys: Sequence[tuple[str, str]]) -> list[Record | None]:
        """Several keys at once, in order."""
        ...

    def history(self, namespace: str, mid: str) -> list[HistoryEntry]:
        """Superseded and concurrent-losing versions of a key, newest first."""
        ...

    def list_namespace(
        self,
        namespace: str,
        after: str | None,
        limit: int,
        predicate: Callable[[Record], bool] | None = None,
        *,
        include_deleted: bool = False,
        max_scan: int = 100_000,
        max_bytes: int = 0,
    ) -> list[Record]:
        """Records of a namespace with id > `after`, in id order, up to `limit` that match and
        until their stored size reaches `max_bytes` (0: no bound; at least one record)."""
        ...

    def scan_shard(
        self, shard: int, after: bytes | None = None, limit: int = 1000
    ) -> list[tuple[bytes, Record]]:
        """Up to `limit` (records key, record) pairs of one shard with key > `after`."""
        ...

    def feed_since(
        self, namespace: str, after: int, limit: int, max_bytes: int = 0
    ) -> tuple[list[tuple[int, Record]], int]:
        """The namespace's feed log after change seq `after` (each key once, at its stored
        version, in seq order), and the store's last change seq."""
        ...

    def feed_entries(
        self, namespace: str, ids: Sequence[str]
    ) -> list[tuple[Record | None, int]]:
        """Per id: its stored version and the seq of its feed-log entry (None, 0: not stored)."""
        ...

    def hint_counts(self) -> dict[str, int]:
        """Pending hints per target node."""
        ...

    def hints_for(self, target: str, limit: int) -> list[Hint]:
        """The oldest `limit` hints kept for `target`."""
        ...

    def meta_get(self, name: str) -> bytes | None:
        """A raw meta value."""
        ...

    def ballots_get(self, namespace: str, mid: str) -> bytes | None:
        """A key's stored Paxos acceptor state (spine.core.paxos), or None."""
        ...

    async def ballots_put(self, namespace: str, mid: str, value: bytes) -> None:
        """Replace a key's Paxos acceptor state durably."""
        ...

    async def apply(self, records: Sequence[Record]) -> list[Applied]:
        """Merge incoming versions in (LWW, history kept); one `Applied` per record."""
        ...

    async def add_hints(self, hints: Sequence[tuple[str, int, Record]]) -> None:
        """Keep (target, created_ms, record) hints durably."""
        ...

    async def delete_hints(self, keys: Sequence[bytes]) -> None:
        """Drop delivered or expired hints."""
        ...

    async def meta_put(self, name: str, value: bytes) -> None:
        """Set a raw meta value."""
        ...

    async def purge(self, keys: Sequence[bytes]) -> None:
        """Remove records by records key (expired tombstones, shards no longer owned)."""
        ...
