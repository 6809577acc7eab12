"""Session tokens: per key, the newest version a client has written or seen (DESIGN §4).

A leaderless store has no per-shard log position to carry (as Cosmos DB does), so the token carries
versions per key, bounded to `max_keys` (newest kept). A token that had to drop entries is marked
`overflowed`; from then on reads of keys it does not hold go to a quorum, so read-your-writes never
silently lapses.

A version every owner of its key holds (settled, `spine.core.settlement`) needs no entry: a node
leaves such versions out and drops the entries they cover (`forget`). A reply's token lists what
it dropped (`forgotten`), so a client that merges reply tokens into its own drops them too.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

import msgpack

from spine.core.clock import Version
from spine.core.errors import InvalidInput

TOKEN_FORMAT = 1
HEADER = "Spine-Session"


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

    def floor(self, key: str) -> Version | None:
        """The version a read of `key` must at least return, if the token knows one."""
        return self.entries.get(key)

    def needs_quorum(self, key: str) -> bool:
        """Whether a read must go to a quorum because the token may have forgotten this key."""
        return self.overflowed and key not in self.entries

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
            self.overflowed = True

    def forget(self, key: str, settled: Version) -> None:
        """`settled` (or newer) of `key` is on every owner: drop the key's entry if it is no newer,
        and list it as forgotten for a client merging this token into its own."""
        old = self.entries.get(key)
        if old is not None and old <= settled:
            del self.entries[key]
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
        for key, version in reply.entries.items():
            self.observe(key, version)

    def _size(self) -> int:
        return 8 + sum(_entry_size(k, v) for k, v in self.entries.items())

    def encode(self) -> str:
        """The opaque header value (URL-safe base64 of msgpack)."""
        body: list[object] = [
            TOKEN_FORMAT,
            self.overflowed,
            [[k, v.hlc, v.node] for k, v in self.entries.items()],
        ]
        if self.forgotten:
            body.append([[k, v.hlc, v.node] for k, v in self.forgotten.items()])
        return base64.urlsafe_b64encode(msgpack.packb(body)).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, max_keys: int) -> SessionToken:
        """Parse a header value; a malformed token is a 400 naming the header."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            fmt, overflowed, items, *rest = msgpack.unpackb(raw)
            gone = rest[0] if len(rest) == 1 else []
            if (fmt != TOKEN_FORMAT or not isinstance(items, list) or len(rest) > 1
                    or not isinstance(gone, list)):
                raise ValueError("format")
            tok = cls(max_keys=max_keys, overflowed=bool(overflowed))
            for k, hlc, node in items:
                if not isinstance(k, str) or not isinstance(hlc, int) or not isinstance(node, str):
                    raise ValueError("entry")
                tok.observe(k, Version(hlc, node))
            for k, hlc, node in gone[:max_keys]:
                if not isinstance(k, str) or not isinstance(hlc, int) or not isinstance(node, str):
                    raise ValueError("entry")
                tok.forgotten[k] = Version(hlc, node)
            return tok
        except (ValueError, TypeError, binascii.Error, msgpack.UnpackException):
            raise InvalidInput("malformed session token", field=HEADER) from None
