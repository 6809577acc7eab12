"""Unit tests for spine.core.ids: minted ids are RFC 9562 UUIDv7 and sort by time."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spine.core.ids import uuid7
from spine.core.validation import memory_id

T0 = 1_700_000_000_123
rand10 = st.binary(min_size=10, max_size=10)
millis = st.integers(0, 2**48 - 1)


def test_known_value() -> None:
    text = uuid7(0x0190C0DE7B1E, bytes(10))
    assert text == "0190c0de-7b1e-7000-8000-000000000000"
    assert uuid7(0, b"\xff" * 10) == "00000000-0000-7fff-bfff-ffffffffffff"


@settings(deadline=None)
@given(millis, rand10)
def test_uuid7_is_version_7_rfc_variant_with_the_timestamp_on_top(ms: int, rand: bytes) -> None:
    text = uuid7(ms, rand)
    u = uuid.UUID(text)
    assert str(u) == text  # canonical lowercase, hyphenated form
    assert u.variant == uuid.RFC_4122
    assert u.version == 7
    assert u.int >> 80 == ms
    memory_id(text)  # a minted id is a valid memory id


@settings(deadline=None)
@given(millis, millis, rand10, rand10)
def test_uuid7_sorts_by_time(a: int, b: int, ra: bytes, rb: bytes) -> None:
    if a < b:
        assert uuid7(a, ra) < uuid7(b, rb)
    elif a > b:
        assert uuid7(a, ra) > uuid7(b, rb)


def kept_bits(rand: bytes) -> tuple[int, int]:
    """The 12 + 62 random bits a UUIDv7 has room for (rand_a, rand_b)."""
    return int.from_bytes(rand[:2], "big") & 0x0FFF, int.from_bytes(rand[2:10], "big") & (
        (1 << 62) - 1
    )


@settings(deadline=None)
@given(rand10, rand10)
def test_ids_in_one_millisecond_differ_exactly_when_their_random_bits_do(
    ra: bytes, rb: bytes
) -> None:
    assert (uuid7(T0, ra) == uuid7(T0, rb)) == (kept_bits(ra) == kept_bits(rb))
    u = uuid.UUID(uuid7(T0, ra))
    assert ((u.int >> 64) & 0x0FFF, u.int & ((1 << 62) - 1)) == kept_bits(ra)


def test_too_little_randomness_is_refused() -> None:
    with pytest.raises(ValueError):
        uuid7(T0, bytes(9))
