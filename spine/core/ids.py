"""Minted memory ids: UUIDv7 (RFC 9562), time-ordered so new ids sort after old ones."""

from __future__ import annotations

import uuid


def uuid7(ms: int, rand: bytes) -> str:
    """A UUIDv7 string from a millisecond timestamp and 10 random bytes."""
    if len(rand) < 10:
        raise ValueError("uuid7 needs 10 random bytes")
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= (int.from_bytes(rand[:2], "big") & 0x0FFF) << 64
    value |= 0b10 << 62
    value |= int.from_bytes(rand[2:10], "big") & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))
