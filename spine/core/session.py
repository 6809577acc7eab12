"""Session tokens: per key, the newest version a client has written or seen (DESIGN §4).

A leaderless store has no per-shard log position to carry (as Cosmos DB does), so the token carries
versions per key, bounded to `max_keys` (newest kept). A token that had to drop entries is marked
`overflowed`; from then on reads of keys it does not hold go to a quorum, so read-your-writes never
silently lapses.
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


# Raw bytes a token may hold before base64 (≈ 4 KiB as a header, well under aiohttp's 8 KiB).
MAX_TOKEN_BYTES = 3072


def _entry_size(key: str, v: Version) -> int:
    return len(key.encode()) + len(v.node.encode()) + 14


@dataclass
class SessionToken:
    """A mutable, bounded map key → newest version known to the client."""

    max_keys: int = 32
    entries: dict[str, Version] = field(default_factory=dict)
    overflowed: bool = False

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

    def _size(self) -> int:
        return 8 + sum(_entry_size(k, v) for k, v in self.entries.items())

    def encode(self) -> str:
        """The opaque header value (URL-safe base64 of msgpack)."""
        body = [
            TOKEN_FORMAT,
            self.overflowed,
            [[k, v.hlc, v.node] for k, v in self.entries.items()],
        ]
        return base64.urlsafe_b64encode(msgpack.packb(body)).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, max_keys: int) -> SessionToken:
        """Parse a header value; a malformed token is a 400 naming the header."""
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            fmt, overflowed, items = msgpack.unpackb(raw)
            if fmt != TOKEN_FORMAT or not isinstance(items, list):
                raise ValueError("format")
            tok = cls(max_keys=max_keys, overflowed=bool(overflowed))
            for k, hlc, node in items:
                if not isinstance(k, str) or not isinstance(hlc, int) or not isinstance(node, str):
                    raise ValueError("entry")
                tok.observe(k, Version(hlc, node))
            return tok
        except (ValueError, TypeError, binascii.Error, msgpack.UnpackException):
            raise InvalidInput("malformed session token", field=HEADER) from None
