"""Internal RPC messages: one dataclass per message, a stable tag each, a positional msgpack body.

Tags are append-only: never reuse or renumber one. Records travel in their compact `to_wire` form.
The frame around a body (kind, request id, tag, sender HLC) is `spine.cluster.rpc`'s business.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from spine.core.clock import Version
from spine.core.errors import InvalidInput, SpineError
from spine.core.model import Record
from spine.core.paxos import ballot_from_wire  # a malformed ballot: ValueError -> InvalidInput
from spine.core.settlement import Notice, notices_from_wire, notices_to_wire

PROTOCOL_VERSION = 1


class Tag(enum.IntEnum):
    """Stable message tags (append-only)."""

    PING = 1
    APPLY = 2
    READ = 3
    FORWARD = 4
    LIST = 5
    HISTORY = 6
    SEARCH = 7
    SHARD_TREE = 8
    SHARD_FETCH = 9
    RING = 10
    TRANSFER = 11
    PAXOS_PREPARE = 12
    PAXOS_ACCEPT = 13
    PAXOS_COMMIT = 14
    FEED = 15
    FEED_PROBE = 16


@dataclass(frozen=True, slots=True)
class Ping:
    """Liveness probe; the reply carries the responder's id."""

    TAG: ClassVar[Tag] = Tag.PING
    node: str = ""

    def to_wire(self) -> list[Any]:
        return [self.node]

    @classmethod
    def from_wire(cls, w: list[Any]) -> Ping:
        return cls(w[0])


@dataclass(frozen=True, slots=True)
class Apply:
    """Store these versions (merged by LWW); the reply says, per record, what is now stored."""

    TAG: ClassVar[Tag] = Tag.APPLY
    records: list[Record] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)  # versions settled (spine.core.settlement)

    def to_wire(self) -> list[Any]:
        return [[r.to_wire() for r in self.records], notices_to_wire(self.notices)]

    @classmethod
    def from_wire(cls, w: list[Any]) -> Apply:
        notices = notices_from_wire(w[1]) if len(w) > 1 else []
        return cls([Record.from_wire(x) for x in w[0]], notices)


@dataclass(frozen=True, slots=True)
class Read:
    """Return the stored version (or None) of each key."""

    TAG: ClassVar[Tag] = Tag.READ
    keys: list[tuple[str, str]] = field(default_factory=list)

    def to_wire(self) -> list[Any]:
        return [[list(k) for k in self.keys]]

    @classmethod
    def from_wire(cls, w: list[Any]) -> Read:
        return cls([(k[0], k[1]) for k in w[0]])


@dataclass(frozen=True, slots=True)
class Forward:
    """Coordinate a client request on a replica: `op` is get|put|delete|history|batch."""

    TAG: ClassVar[Tag] = Tag.FORWARD
    op: str = ""
    namespace: str = ""
    id: str = ""
    body: Any = None
    level: int | None = None
    token: str | None = None
    agent: str | None = None
    deadline: int | None = None  # an HLC value: mint no version after it (a late delivery)
    by: str | None = None  # the client's Spine-Write-Seq of a write

    def to_wire(self) -> list[Any]:
        return [self.op, self.namespace, self.id, self.body, self.level, self.token, self.agent,
                self.deadline, self.by]

    @classmethod
    def from_wire(cls, w: list[Any]) -> Forward:
        return cls(*w[:9])


@dataclass(frozen=True, slots=True)
class ListPage:
    """Records of a namespace after `after`, in id order, filtered by tag and agent."""

    TAG: ClassVar[Tag] = Tag.LIST
    namespace: str = ""
    after: str | None = None
    limit: int = 100
    tag: str | None = None
    agent_id: str | None = None
    max_bytes: int = 0  # stop once the records reach this many stored bytes (0: no bound)

    def to_wire(self) -> list[Any]:
        return [self.namespace, self.after, self.limit, self.tag, self.agent_id, self.max_bytes]

    @classmethod
    def from_wire(cls, w: list[Any]) -> ListPage:
        return cls(*w[:6])


@dataclass(frozen=True, slots=True)
class History:
    """The stored version and the history kept for one key."""

    TAG: ClassVar[Tag] = Tag.HISTORY
    namespace: str = ""
    id: str = ""

    def to_wire(self) -> list[Any]:
        return [self.namespace, self.id]

    @classmethod
    def from_wire(cls, w: list[Any]) -> History:
        return cls(w[0], w[1])


@dataclass(frozen=True, slots=True)
class Search:
    """Search this node's indexes of a namespace: float32 query vector, k, filters, and (DESIGN
    §14) the mode (vector | keyword | hybrid) and the query text the keyword half ranks."""

    TAG: ClassVar[Tag] = Tag.SEARCH
    namespace: str = ""
    vector: bytes = b""
    k: int = 10
    filters: list[Any] = field(default_factory=list)
    mode: str = "vector"
    text: str | None = None

    def to_wire(self) -> list[Any]:
        return [self.namespace, self.vector, self.k, self.filters, self.mode, self.text]

    @classmethod
    def from_wire(cls, w: list[Any]) -> Search:
        mode = w[4] if len(w) > 4 else "vector"  # appended fields: a node of an older release
        text = w[5] if len(w) > 5 else None  # sends none, and searches by vector
        if mode not in ("vector", "keyword", "hybrid"):
            raise InvalidInput(f"unknown search mode {mode!r}", field="mode")
        if text is not None and (not isinstance(text, str) or len(text) > 65536):
            raise InvalidInput("the query text must be a string of at most 64 KiB", field="text")
        return cls(w[0], w[1], w[2], w[3], mode, text)


@dataclass(frozen=True, slots=True)
class ShardTreeQuery:
    """Hash-tree values for anti-entropy (DESIGN §10), several shards per call.

    Each query is ``(shard, level, parents)``: the root when ``parents`` is empty, else
    ``ShardTree.frontier_children(level, parents)``. The reply holds one list per query, or None
    for a shard whose tree the answering node has not built yet. ``fanout``/``depth`` must match
    the answering node's tree shape.
    """

    TAG: ClassVar[Tag] = Tag.SHARD_TREE
    fanout: int = 16
    depth: int = 3
    queries: list[tuple[int, int, list[int]]] = field(default_factory=list)

    def to_wire(self) -> list[Any]:
        return [self.fanout, self.depth, [[s, lv, list(p)] for s, lv, p in self.queries]]

    @classmethod
    def from_wire(cls, w: list[Any]) -> ShardTreeQuery:
        return cls(w[0], w[1], [(int(q[0]), int(q[1]), [int(i) for i in q[2]]) for q in w[2]])


@dataclass(frozen=True, slots=True)
class ShardFetch:
    """Compare the listings of some leaves of a shard (anti-entropy, DESIGN §10).

    ``pairs`` is the asker's ``[key, packed version, deleted]`` list for ``leaves``. The reply is
    ``[the answerer's pairs for those leaves, up to `limit` records it holds newer]``.
    """

    TAG: ClassVar[Tag] = Tag.SHARD_FETCH
    shard: int = 0
    leaves: list[int] = field(default_factory=list)
    pairs: list[list[Any]] = field(default_factory=list)
    limit: int = 1000

    def to_wire(self) -> list[Any]:
        return [self.shard, self.leaves, self.pairs, self.limit]

    @classmethod
    def from_wire(cls, w: list[Any]) -> ShardFetch:
        return cls(int(w[0]), [int(i) for i in w[1]], list(w[2]), int(w[3]))


@dataclass(frozen=True, slots=True)
class RingSync:
    """Exchange ring maps (DESIGN §9): the asker's entries; the reply is the answerer's map
    after merging them in (so one call brings both sides up to the join)."""

    TAG: ClassVar[Tag] = Tag.RING
    entries: list[list[Any]] = field(default_factory=list)

    def to_wire(self) -> list[Any]:
        return [self.entries]

    @classmethod
    def from_wire(cls, w: list[Any]) -> RingSync:
        return cls(list(w[0]))


@dataclass(frozen=True, slots=True)
class Transfer:
    """Ask a pending owner about its shard copies for the ring change `transition` (a ring-map
    digest). ``op`` is ``"status"`` (report progress) or ``"finish"`` (sync every pending shard
    with every live owner once more, starting after this call; reported done under
    ``barrier``)."""

    TAG: ClassVar[Tag] = Tag.TRANSFER
    op: str = "status"
    transition: str = ""
    barrier: int = 0

    def to_wire(self) -> list[Any]:
        return [self.op, self.transition, self.barrier]

    @classmethod
    def from_wire(cls, w: list[Any]) -> Transfer:
        return cls(str(w[0]), str(w[1]), int(w[2]))


def _key(ns: Any, mid: Any) -> tuple[str, str]:
    if not isinstance(ns, str) or not isinstance(mid, str) or len(ns) > 256 or len(mid) > 512:
        raise InvalidInput("a key is two short strings", field="key")
    return ns, mid


def _keyed_record(w: list[Any]) -> tuple[str, str, Version, Record]:
    """An accept's or commit's body: the key, the ballot, and a record of that key."""
    ns, mid = _key(w[0], w[1])
    rec = Record.from_wire(w[3])
    if (rec.namespace, rec.id) != (ns, mid):
        raise InvalidInput("the record is of another key", field="record")
    return ns, mid, ballot_from_wire(w[2]), rec


def _warm_to_wire(after: Version | None, expect: Version | None) -> list[Any]:
    if after is None or expect is None:
        return []
    return [[after.hlc, after.node], [expect.hlc, expect.node]]


def _warm_from_wire(w: list[Any], at: int) -> tuple[Version | None, Version | None]:
    """A warm round's guard (`after`, `expect`), appended at `w[at:]`, or none."""
    if len(w) == at:
        return None, None
    if len(w) != at + 2:
        raise InvalidInput("a warm round's guard is two ballots", field="body")
    return ballot_from_wire(w[at]), ballot_from_wire(w[at + 1])


@dataclass(frozen=True, slots=True)
class PaxosPrepare:
    """Phase 1 of a key's Paxos round (spine.core.paxos): promise `ballot`, answer a Promise.
    A warm round (`after` and `expect` given) promises only while the key is settled at `after`
    and the stored record's version is `expect`."""

    TAG: ClassVar[Tag] = Tag.PAXOS_PREPARE
    namespace: str = ""
    id: str = ""
    ballot: Version = field(default_factory=lambda: Version(0, ""))
    after: Version | None = None
    expect: Version | None = None

    def to_wire(self) -> list[Any]:
        return [self.namespace, self.id, [self.ballot.hlc, self.ballot.node],
                *_warm_to_wire(self.after, self.expect)]

    @classmethod
    def from_wire(cls, w: list[Any]) -> PaxosPrepare:
        return cls(*_key(w[0], w[1]), ballot_from_wire(w[2]), *_warm_from_wire(w, 3))


@dataclass(frozen=True, slots=True)
class PaxosAccept:
    """Phase 2: accept `record` under `ballot`; the reply is [accepted, highest promised]. A warm
    round's accept (`after` and `expect` given) stands for its prepare too: taken only while the
    key is settled at `after` and the stored record's version is `expect` (spine.core.paxos)."""

    TAG: ClassVar[Tag] = Tag.PAXOS_ACCEPT
    namespace: str = ""
    id: str = ""
    ballot: Version = field(default_factory=lambda: Version(0, ""))
    record: Record | None = None
    after: Version | None = None
    expect: Version | None = None

    def to_wire(self) -> list[Any]:
        rec = None if self.record is None else self.record.to_wire()
        return [self.namespace, self.id, [self.ballot.hlc, self.ballot.node], rec,
                *_warm_to_wire(self.after, self.expect)]

    @classmethod
    def from_wire(cls, w: list[Any]) -> PaxosAccept:
        return cls(*_keyed_record(w), *_warm_from_wire(w, 4))


@dataclass(frozen=True, slots=True)
class PaxosCommit:
    """Phase 3: merge `record` into the store and note `ballot` committed."""

    TAG: ClassVar[Tag] = Tag.PAXOS_COMMIT
    namespace: str = ""
    id: str = ""
    ballot: Version = field(default_factory=lambda: Version(0, ""))
    record: Record | None = None

    def to_wire(self) -> list[Any]:
        rec = None if self.record is None else self.record.to_wire()
        return [self.namespace, self.id, [self.ballot.hlc, self.ballot.node], rec]

    @classmethod
    def from_wire(cls, w: list[Any]) -> PaxosCommit:
        return cls(*_keyed_record(w))


MAX_FEED_LIMIT = 1000  # entries in one feed page
MAX_FEED_WAIT_MS = 60_000
MAX_FEED_BYTES = 64 * 1024 * 1024
_MAX_SEQ = 2**63 - 1


def _bounded_int(v: Any, lo: int, hi: int, name: str) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise InvalidInput(f"{name} must be an integer in {lo}..{hi}", field=name)
    return v


@dataclass(frozen=True, slots=True)
class FeedRead:
    """A page of this node's feed log of `namespace` after change seq `after` (DESIGN §15):
    up to `limit` entries or `max_bytes` stored bytes (0: no bound), waiting up to `wait_ms`
    for one when there is none. `after` counts in the log of `epoch` (0: from the beginning of
    whichever log the node has; another epoch than the node's: its log was rebuilt, so from its
    beginning too). The reply: `{"epoch": e, "entries": [[seq, record], ...], "next": seq}`."""

    TAG: ClassVar[Tag] = Tag.FEED
    namespace: str = ""
    after: int = 0
    limit: int = 100
    max_bytes: int = 0
    wait_ms: int = 0
    epoch: int = 0

    def to_wire(self) -> list[Any]:
        return [self.namespace, self.after, self.limit, self.max_bytes, self.wait_ms,
                self.epoch]

    @classmethod
    def from_wire(cls, w: list[Any]) -> FeedRead:
        if not isinstance(w[0], str) or not 0 < len(w[0]) <= 64:
            raise InvalidInput("namespace must be a string of 1..64 characters", field="namespace")
        return cls(w[0], _bounded_int(w[1], 0, _MAX_SEQ, "after"),
                   _bounded_int(w[2], 0, MAX_FEED_LIMIT, "limit"),
                   _bounded_int(w[3], 0, MAX_FEED_BYTES, "max_bytes"),
                   _bounded_int(w[4], 0, MAX_FEED_WAIT_MS, "wait_ms"),
                   _bounded_int(w[5], 0, _MAX_SEQ, "epoch"))


def feed_page_from_wire(reply: Any, limit: int) -> tuple[int, list[tuple[int, Record]], int]:
    """A peer's FeedRead reply, checked: its log's epoch, at most `limit` entries of (seq,
    record) with rising seqs, and the seq its next page starts after. InvalidInput for anything
    else."""
    try:
        epoch, entries, nxt = reply["epoch"], reply["entries"], reply["next"]
        if not isinstance(entries, list) or len(entries) > limit:
            raise InvalidInput("a feed page holds too many entries", field="entries")
        out: list[tuple[int, Record]] = []
        last = -1
        for seq, rec in entries:
            seq = _bounded_int(seq, 0, _MAX_SEQ, "seq")
            if seq <= last:
                raise InvalidInput("feed page seqs must rise", field="seq")
            last = seq
            out.append((seq, Record.from_wire(rec)))
        return (_bounded_int(epoch, 1, _MAX_SEQ, "epoch"), out,
                _bounded_int(nxt, 0, _MAX_SEQ, "next"))
    except SpineError:
        raise
    except Exception as e:  # KeyError, TypeError, ValueError, ...
        raise InvalidInput(f"bad feed page: {type(e).__name__}", field="body") from None


MAX_PROBE_IDS = 1000
MAX_PROBE_ID = 512


@dataclass(frozen=True, slots=True)
class FeedProbe:
    """Per id of `namespace`: the version this node stores and the seq of its feed-log entry,
    so a change-feed poll can tell a change the consumer already has (see spine.core.feed).
    The reply: `{"epoch": e, "entries": [[[hlc, node] | None, seq], ...]}`, one per id."""

    TAG: ClassVar[Tag] = Tag.FEED_PROBE
    namespace: str = ""
    ids: list[str] = field(default_factory=list)

    def to_wire(self) -> list[Any]:
        return [self.namespace, self.ids]

    @classmethod
    def from_wire(cls, w: list[Any]) -> FeedProbe:
        if not isinstance(w[0], str) or not 0 < len(w[0]) <= 64:
            raise InvalidInput("namespace must be a string of 1..64 characters", field="namespace")
        ids = w[1]
        if (not isinstance(ids, list) or len(ids) > MAX_PROBE_IDS
                or not all(isinstance(i, str) and 0 < len(i) <= MAX_PROBE_ID for i in ids)):
            raise InvalidInput(f"ids must be at most {MAX_PROBE_IDS} ids", field="ids")
        return cls(w[0], ids)


def feed_probe_from_wire(reply: Any, n: int) -> tuple[int, list[tuple[Version | None, int]]]:
    """A peer's FeedProbe reply for `n` ids, checked: its log's epoch and, per id, the version
    it stores (None: none) and its feed-log seq. InvalidInput for anything else."""
    try:
        epoch, entries = reply["epoch"], reply["entries"]
        if not isinstance(entries, list) or len(entries) != n:
            raise InvalidInput("a feed probe answers one entry per id", field="entries")
        out: list[tuple[Version | None, int]] = []
        for version, seq in entries:
            v = None if version is None else ballot_from_wire(version)
            out.append((v, _bounded_int(seq, 0, _MAX_SEQ, "seq")))
        return _bounded_int(epoch, 1, _MAX_SEQ, "epoch"), out
    except SpineError:
        raise
    except Exception as e:  # KeyError, TypeError, ValueError, ...
        raise InvalidInput(f"bad feed probe: {type(e).__name__}", field="body") from None


Message = (
    Ping | Apply | Read | Forward | ListPage | History | Search | ShardTreeQuery | ShardFetch
    | RingSync | Transfer | PaxosPrepare | PaxosAccept | PaxosCommit | FeedRead | FeedProbe
)

_MESSAGES: tuple[Any, ...] = (
    Ping, Apply, Read, Forward, ListPage, History, Search, ShardTreeQuery, ShardFetch, RingSync,
    Transfer, PaxosPrepare, PaxosAccept, PaxosCommit, FeedRead, FeedProbe,
)


def _guarded(cls: Any) -> Callable[[Any], Message]:
    """`cls.from_wire`, raising only InvalidInput on a body of the wrong shape or types."""

    def from_wire(body: Any) -> Message:
        if not isinstance(body, list):
            raise InvalidInput(f"a {cls.__name__} body must be a list", field="body")
        try:
            msg: Message = cls.from_wire(body)
        except SpineError:
            raise
        except Exception as e:  # IndexError, TypeError, ValueError, OverflowError, ...
            raise InvalidInput(f"bad {cls.__name__} body: {type(e).__name__}: {e}"[:300],
                               field="body") from None
        return msg

    return from_wire


# Every decoder raises only SpineError (InvalidInput) whatever a peer sends.
DECODERS: dict[int, Callable[[Any], Message]] = {int(c.TAG): _guarded(c) for c in _MESSAGES}


def decode(tag: int, body: Any) -> Message:
    """Decode a request body by its tag; InvalidInput for an unknown tag or a malformed body."""
    decoder = DECODERS.get(tag)
    if decoder is None:
        raise InvalidInput(f"unknown message tag {tag}", field="tag")
    return decoder(body)


def records_to_wire(records: list[Record | None]) -> list[Any]:
    """A list of optional records as wire lists (None stays None)."""
    return [None if r is None else r.to_wire() for r in records]


def records_from_wire(w: list[Any]) -> list[Record | None]:
    """Inverse of `records_to_wire`."""
    return [None if x is None else Record.from_wire(x) for x in w]
