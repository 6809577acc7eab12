"""The change feed's decisions (DESIGN §15). Pure: no I/O, no clock.

A leaderless store has no single log to follow. Every node keeps a feed log per namespace (each
stored key once, at the change seq of its last replacement: `spine.storage.feed_log`), and a
feed cursor is a position in the log of every member: `{node: seq}`. A poll, at any node, reads
each live member's log after its position and delivers what it finds. That is complete: an
acknowledged write is stored by at least one replica, which logs it (a hinted one is logged when
its hint is handed off), and a position only moves past an entry that was read (or past the end
of the log as it was read). A down member keeps its position until it is back; a member the
cursor does not name (it joined since) is read from its beginning, which may repeat old changes
(duplicates are allowed; `(id, version)` names a change).

What the logs alone cannot give is per-key order: a replica that receives an old version late
(a hint, a repair) logs it after a newer one was delivered from another replica. So no version
is delivered until it is on a quorum of its key's replicas, as a strong read's value is (ABD):
a version every log read showed on a quorum of the key's write set is delivered as it is; any
other is first read at the strong level, seeded with the versions the logs showed, which writes
the newest back to a quorum. A later poll then reads at least that version from any quorum,
so delivered versions of a key only increase. A key whose strong read fails (no quorum) is held:
it is not delivered, and the positions of the members whose logs showed it stay before it.

Most versions a lagging replica logs late were delivered already, from the replicas that logged
them first: before settling one, the poll asks the key's replicas for their stored version and
where its entry sits in their log, and drops it when the consumer's position shows it has that
version or a newer one (`delivered_before`).

A cursor older than the tombstone grace is refused (`cursor_expired`): deletes it has not seen
may have been purged, so "at least once" could no longer hold.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import msgpack

from spine.core.clock import Version
from spine.core.errors import InvalidInput
from spine.core.model import Record

CURSOR_FORMAT = 1
MAX_CURSOR_CHARS = 4096
MAX_CURSOR_NODES = 256
MAX_NODE_ID = 128
MAX_SEQ = 2**63 - 1


Position = tuple[int, int]  # (the member's log epoch, the last change seq read from it)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a consumer is: a position in each member's feed log, and the HLC when it was made
    (its age decides whether it is still valid). A position names the log's epoch, drawn when
    the node's store was created: a node that lost its disk and came back under the same id
    starts a new log, and a position in its old one then means its beginning."""

    positions: Mapping[str, Position] = field(default_factory=dict)
    issued_hlc: int = 0

    def encode(self) -> str:
        """The cursor as URL-safe text (no padding), valid at any node."""
        body = [CURSOR_FORMAT, self.issued_hlc,
                [[n, e, s] for n, (e, s) in sorted(self.positions.items())]]
        raw: bytes = msgpack.packb(body, use_bin_type=True)
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, field: str = "cursor") -> Cursor:
        """Inverse of `encode`; InvalidInput naming `field` for anything else, bounded before
        it is unpacked."""
        if not isinstance(text, str) or not text or len(text) > MAX_CURSOR_CHARS:
            raise InvalidInput(f"{field} must be a cursor this API returned", field=field)
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            body = msgpack.unpackb(raw, raw=False, max_array_len=MAX_CURSOR_NODES,
                                   max_str_len=MAX_NODE_ID, max_bin_len=0, max_map_len=0)
        except (binascii.Error, ValueError, msgpack.ExtraData, msgpack.FormatError,
                msgpack.StackError):
            raise InvalidInput(f"{field} is not a cursor this API returned", field=field) from None
        if (not isinstance(body, list) or len(body) != 3 or body[0] != CURSOR_FORMAT
                or not _seq(body[1]) or not isinstance(body[2], list)):
            raise InvalidInput(f"{field} is not a cursor this API returned", field=field)
        positions: dict[str, Position] = {}
        for entry in body[2]:
            if (not isinstance(entry, list) or len(entry) != 3 or not isinstance(entry[0], str)
                    or not entry[0] or not _seq(entry[1]) or not _seq(entry[2])):
                raise InvalidInput(f"{field} holds a malformed position", field=field)
            positions[entry[0]] = (entry[1], entry[2])
        return cls(positions, body[1])


def _seq(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_SEQ


def start_positions(cursor: Cursor | None, members: Sequence[str]) -> dict[str, Position]:
    """Where to read each member's log from: the cursor's position, or its beginning (epoch 0:
    any) for a member the cursor does not name. Nodes no longer members are dropped."""
    known = {} if cursor is None else cursor.positions
    return {m: known.get(m, (0, 0)) for m in members}


def after(position: Position, epoch: int) -> int:
    """The seq to read a log of `epoch` after: the position's, or 0 when it is in another
    epoch's log (the node was rebuilt) or none (epoch 0, a member the cursor did not name)."""
    return position[1] if position[0] == epoch else 0


@dataclass(frozen=True, slots=True)
class Page:
    """What one member's log answered: its epoch, its entries after the position asked for
    (seq, stored record) in seq order, and where the next read of it starts (the last entry's
    seq, or the end of its log when it had nothing after the position)."""

    epoch: int
    entries: Sequence[tuple[int, Record]]
    next_seq: int


@dataclass(frozen=True, slots=True)
class KeyState:
    """One key as the logs showed it: its newest version and the members holding exactly that."""

    newest: Record
    holders: frozenset[str]


def newest_per_key(pages: Mapping[str, Page]) -> dict[str, KeyState]:
    """Per key id, the newest version the pages hold and which members hold it (a member whose
    log shows an older version is not a holder)."""
    out: dict[str, KeyState] = {}
    for node, page in pages.items():
        for _, rec in page.entries:
            cur = out.get(rec.id)
            if cur is None or rec.version > cur.newest.version:
                out[rec.id] = KeyState(rec, frozenset((node,)))
            elif rec.version == cur.newest.version:
                out[rec.id] = KeyState(cur.newest, cur.holders | {node})
    return out


def on_quorum(state: KeyState, write_set: Sequence[str], need: int) -> bool:
    """Whether the logs showed the key's newest version on `need` members of its write set (so
    any later quorum read returns it or something newer): deliverable without a strong read."""
    return len(state.holders & set(write_set)) >= need


Probe = tuple[int, Version | None, int]  # a member's (log epoch, stored version, its entry's seq)


def delivered_before(
    candidate: Version, probes: Mapping[str, Probe], start: Mapping[str, Position]
) -> bool:
    """Whether the consumer already has `candidate` or something newer of its key: some member
    stores a version at least as new whose feed-log entry lies at or before the consumer's
    position in that member's log. An entry stays at its seq until the record changes, and a
    position only passes an entry that a poll read and delivered (a version at least as new),
    or did not hold; so that version reached the consumer, and this one is a repeat (a replica
    that logged the change late). Delivering it again would add nothing; not delivering it
    breaks no promise."""
    for node, (epoch, version, seq) in probes.items():
        position = start.get(node)
        if (position is not None and version is not None and version >= candidate
                and 0 < seq <= after(position, epoch)):
            return True
    return False


def advance(
    start: Mapping[str, Position], pages: Mapping[str, Page], held: set[str]
) -> dict[str, Position]:
    """The next cursor's positions: each member that answered moves to its page's `next_seq`,
    or to just before its first entry of a held key; the others stay where they were."""
    out = dict(start)
    for node, page in pages.items():
        seq = page.next_seq
        for entry_seq, rec in page.entries:
            if rec.id in held:
                seq = entry_seq - 1
                break
        out[node] = (page.epoch, max(after(start.get(node, (0, 0)), page.epoch), seq))
    return out


def order_items(records: Sequence[Record]) -> list[Record]:
    """The records to deliver, oldest version first (one per key)."""
    return sorted(records, key=lambda r: r.version)


def expired(cursor: Cursor, now_hlc: int, grace_hlc: int) -> bool:
    """Whether `cursor` is older than the tombstone grace (deletes after it may be purged)."""
    return cursor.issued_hlc != 0 and now_hlc - cursor.issued_hlc > grace_hlc


def item(rec: Record) -> dict[str, object]:
    """One delivered change as JSON: deletes (and expiries, as their tombstone views) carry no
    record."""
    return {"id": rec.id, "version": rec.version.encode(), "deleted": rec.deleted,
            "record": None if rec.deleted else rec.public()}
