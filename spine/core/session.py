"""Session tokens: per key, the newest version a client has written or seen (DESIGN §4).

A leaderless store has no per-shard log position to carry (as Cosmos DB does), so the token carries
versions per key, bounded to `max_keys` (newest kept). A token that had to drop entries is marked
`overflowed`; from then on reads of keys it does not hold go to a quorum, so read-your-writes never
silently lapses.

A version every owner of its key holds (settled, `spine.core.settlement`) needs no entry: a node
leaves such versions out and drops the entries they cover (`forget`). A reply's token lists what
it dropped (`forgotten`), so a client that merges reply tokens into its own drops them too.

Monotonic writes: a client numbers its writes (`Spine-Write-Seq: <writer>:<seq>`, `WriteSeq`),
every version remembers its writer's number, and one session's later write outranks its earlier
ones (`spine.core.model.merge`). The token remembers its writer and, per key it wrote, the number
of its last write there (`own_seq`), so a read refuses an earlier write of the session that
happens to carry a larger HLC than the floor (`stale_for`).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import msgpack

from spine.core.clock import Version
from spine.core.errors import InvalidInput

if TYPE_CHECKING:  # the client imports this module and must not load the server's dependencies
    from spine.core.model import Record

TOKEN_FORMAT = 1
HEADER = "Spine-Session"
WRITE_SEQ_HEADER = "Spine-Write-Seq"
MAX_WRITE_SEQ = 2**53 - 1  # a JSON-safe integer
_WRITER = re.compile(r"[A-Za-z0-9._~-]{1,64}")


@dataclass(frozen=True, slots=True)
class WriteSeq:
    """A client's number for one of its writes: its session (`writer`) and a number that grows
    with every write the session makes (a retry of one write may reuse its number)."""

    writer: str
    seq: int

    def encode(self) -> str:
        """The header value."""
        return f"{self.writer}:{self.seq}"

    @classmethod
    def parse(cls, text: object) -> WriteSeq:
        """`<writer>:<seq>`; anything else is a 400 naming the header."""
        writer, sep, num = (text.strip() if isinstance(text, str) else "").rpartition(":")
        if not sep or not _WRITER.fullmatch(writer) or not num.isdigit() or len(num) > 16:
            raise InvalidInput("expected <writer>:<seq>, writer of 1-64 [A-Za-z0-9._~-]",
                               field=WRITE_SEQ_HEADER)
        seq = int(num)
        if not 1 <= seq <= MAX_WRITE_SEQ:
            raise InvalidInput(f"seq must be in 1..{MAX_WRITE_SEQ}", field=WRITE_SEQ_HEADER)
        return cls(writer, seq)


# Raw bytes a token may hold before base64 (≈ 4 KiB as a header, well under aiohttp's 8 KiB),
# and, besides, what its list of forgotten entries may take (≈ 1.4 KiB more).
MAX_TOKEN_BYTES = 3072
MAX_FORGOTTEN_BYTES = 1024


def _entry_size(key: str, v: Version) -> int:
    return len(key.encode()) + len(v.node.encode()) + 14


@dataclass
class SessionToken:
    """A mutable, bounded map key → newest version known to the client."""

    max_keys: int = 32
    entries: dict[str, Version] = field(default_factory=dict)
    overflowed: bool = False
    forgotten: dict[str, Version] = field(default_factory=dict)
    writer: str | None = None  # the session's Spine-Write-Seq writer, once it wrote with one
    own_seq: dict[str, int] = field(default_factory=dict)  # key → its last write's number here

    def floor(self, key: str) -> Version | None:
        """The version a read of `key` must at least return, if the token knows one."""
        return self.entries.get(key)

    def needs_quorum(self, key: str) -> bool:
        """Whether a read must go to a quorum because the token may have forgotten this key."""
        return self.overflowed and key not in self.entries

    def stale_for(self, key: str, rec: Record | None) -> bool:
        """Whether `rec` is an earlier write of this session than its last one to `key` (its
        version may still be above the floor: see the module)."""
        return (rec is not None and self.writer is not None and rec.writer == self.writer
                and rec.writer_seq < self.own_seq.get(key, 0))

    def wrote(self, key: str, version: Version, by: WriteSeq | None) -> None:
        """Record the client's own write of `version` (numbered `by`, if it was)."""
        self.observe(key, version)
        if by is not None:
            if by.writer != self.writer:  # a new writer: the old one's numbers mean nothing now
                self.writer, self.own_seq = by.writer, {}
            if key in self.entries:
                self.own_seq[key] = max(self.own_seq.get(key, 0), by.seq)

    def saw(self, key: str, rec: Record) -> None:
        """Record a read of `rec`: its version, and its number if this session wrote it."""
        self.observe(key, rec.version)
        if rec.writer is not None and rec.writer == self.writer and key in self.entries:
            self.own_seq[key] = max(self.own_seq.get(key, 0), rec.writer_seq)

    def observe(self, key: str, version: Version) -> None:
        """Record that the client has now written or seen `version` of `key`."""
        old = self.entries.get(key)
        if old is None or version > old:
            self.entries[key] = version
        if len(self.entries) > self.max_keys or self._size() > MAX_TOKEN_BYTES:
            # Keep the newest entries within both bounds; the header must stay sendable.
            keep = sorted(self.entries.items(), key=lambda kv: kv[1], reverse=True)
            kept: dict[str, Version] = {}
            size = 8
            for k, v in keep[: self.max_keys]:
                size += _entry_size(k, v)
                if size > MAX_TOKEN_BYTES:
                    break
                kept[k] = v
            self.entries = kept
            self.own_seq = {k: n for k, n in self.own_seq.items() if k in kept}
            self.overflowed = True

    def forget(self, key: str, settled: Version) -> None:
        """`settled` (or newer) of `key` is on every owner: drop the key's entry if it is no newer,
        and list it as forgotten for a client merging this token into its own."""
        old = self.entries.get(key)
        if old is not None and old <= settled:
            del self.entries[key]
            self.own_seq.pop(key, None)  # every owner holds it: an earlier write merges under it
            size = 8 + sum(_entry_size(k, v) for k, v in self.forgotten.items())
            if (len(self.forgotten) < self.max_keys
                    and size + _entry_size(key, old) <= MAX_FORGOTTEN_BYTES):
                self.forgotten[key] = old  # else a merging client keeps it: safe, only larger

    def merge(self, reply: SessionToken) -> None:
        """Take a reply's token in: its forgotten entries go, its entries are observed."""
        self.overflowed = self.overflowed or reply.overflowed
        for key, version in reply.forgotten.items():
            old = self.entries.get(key)
            if old is not None and old <= version:
                del self.entries[key]
                self.own_seq.pop(key, None)
        if reply.writer is not None and self.writer is None:
            self.writer = reply.writer
        for key, version in reply.entries.items():
            self.observe(key, version)
            n = reply.own_seq.get(key, 0)
            if n and reply.writer == self.writer and key in self.entries:
                self.own_seq[key] = max(self.own_seq.get(key, 0), n)

    def _size(self) -> int:
        return (8 + sum(_entry_size(k, v) for k, v in self.entries.items())
                + 9 * len(self.own_seq) + len(self.writer or ""))

    def encode(self) -> str:
        """The opaque header value (URL-safe base64 of msgpack)."""
        body: list[object] = [
            TOKEN_FORMAT,
            self.overflowed,
            [[k, v.hlc, v.node, *([self.own_seq[k]] if k in self.own_seq else [])]
             for k, v in self.entries.items()],
        ]
        if self.forgotten or self.writer is not None:
            body.append([[k, v.hlc, v.node] for k, v in self.forgotten.items()])
        if self.writer is not None:
            body.append(self.writer)
        return base64.urlsafe_b64encode(msgpack.packb(body)).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, max_keys: int) -> SessionToken:
        """Parse a header value; a malformed token is a 400 naming the header."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            fmt, overflowed, items, *rest = msgpack.unpackb(raw)
            gone = rest[0] if rest else []
            writer = rest[1] if len(rest) == 2 else None
            named = writer is None or (isinstance(writer, str) and _WRITER.fullmatch(writer))
            if (fmt != TOKEN_FORMAT or not isinstance(items, list) or len(rest) > 2
                    or not isinstance(gone, list) or not named):
                raise ValueError("format")
            tok = cls(max_keys=max_keys, overflowed=bool(overflowed), writer=writer)
            for k, hlc, node, *seq in items:
                if (not isinstance(k, str) or not isinstance(hlc, int) or not isinstance(node, str)
                        or len(seq) > 1):
                    raise ValueError("entry")
                if seq:
                    n = seq[0]
                    if writer is None or not isinstance(n, int) or not 0 < n <= MAX_WRITE_SEQ:
                        raise ValueError("entry")
                    tok.own_seq[k] = seq[0]
                tok.observe(k, Version(hlc, node))
            tok.own_seq = {k: n for k, n in tok.own_seq.items() if k in tok.entries}
            for k, hlc, node in gone[:max_keys]:
                if not isinstance(k, str) or not isinstance(hlc, int) or not isinstance(node, str):
                    raise ValueError("entry")
                tok.forgotten[k] = Version(hlc, node)
            return tok
        except (ValueError, TypeError, binascii.Error, msgpack.UnpackException):
            raise InvalidInput("malformed session token", field=HEADER) from None
