"""Tests the mutation run (`make mutation`) showed missing for the pure session token and read
tally: the token's byte bound holds whatever the node names' length, a token exactly at the bound
is kept whole, an encoding ending in a letter round-trips, and the client-facing messages of a
malformed token and of a read below the session's floor are the documented ones."""

from __future__ import annotations

import base64

import msgpack
import pytest

from spine.core.clock import Version
from spine.core.errors import InvalidInput, SessionUnavailable
from spine.core.model import Record
from spine.core.quorum import tally_read
from spine.core.session import MAX_TOKEN_BYTES, SessionToken


def raw_size(tok: SessionToken) -> int:
    text = tok.encode()
    return len(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


def test_long_node_names_count_against_the_byte_bound() -> None:
    """32 entries of 10-byte keys written by a node with a 100-byte name are ~3.9 KiB raw: the
    token must drop entries (and say so) to stay within MAX_TOKEN_BYTES."""
    tok = SessionToken(max_keys=32)
    node = "n" * 100
    for i in range(32):
        tok.observe(f"key-{i:06d}", Version(1_000 + i, node))
    assert raw_size(tok) <= MAX_TOKEN_BYTES
    assert tok.overflowed
    assert len(tok.entries) < 32
    # the newest entries are the ones kept
    assert "key-000031" in tok.entries and "key-000000" not in tok.entries


def test_a_token_exactly_at_the_byte_bound_is_kept_whole() -> None:
    """The bound is inclusive: an entry whose estimated size brings the token to exactly
    MAX_TOKEN_BYTES is kept and the token is not marked overflowed."""
    tok = SessionToken(max_keys=32)
    # _size() = 8 + len(key) + len(node) + 14
    key = "k" * (MAX_TOKEN_BYTES - 8 - 14 - 1)
    tok.observe(key, Version(1, "a"))
    assert tok.entries == {key: Version(1, "a")}
    assert not tok.overflowed


def test_a_malformed_token_says_so() -> None:
    bad = base64.urlsafe_b64encode(msgpack.packb([99, False, []])).decode()
    with pytest.raises(InvalidInput) as info:
        SessionToken.decode(bad, max_keys=32)
    assert str(info.value) == "malformed session token"


def test_a_read_below_the_floor_says_why() -> None:
    t = tally_read({"a": Record("ns", "m1", Version(1, "n1"))}, 1, Version(2, "n1"))
    assert isinstance(t.error, SessionUnavailable)
    assert str(t.error) == "no reachable replica holds the version this session has seen"


def test_a_token_whose_encoding_ends_in_letters_round_trips() -> None:
    """encode() strips only base64's '=' padding: a token whose text ends in a letter (here an
    'X', which a sloppier strip would also eat) decodes to the same entries."""
    for i in range(1, 10_000):
        tok = SessionToken(max_keys=32)
        tok.observe("k" * (1 + i % 3), Version(i, f"node-{chr(65 + i % 58)}"))
        if tok.encode().endswith("X"):
            break
    else:
        pytest.fail("no token's encoding ends in X")
    back = SessionToken.decode(tok.encode(), max_keys=32)
    assert back.entries == tok.entries
