"""Unit tests for spine.core.session: the bounded per-key session token (DESIGN §4)."""

from __future__ import annotations

import base64

import msgpack
import pytest

from spine.core.clock import Version
from spine.core.errors import InvalidInput
from spine.core.session import HEADER, TOKEN_FORMAT, SessionToken


def v(hlc: int, node: str = "n1") -> Version:
    return Version(hlc, node)


def raw_token(body: object) -> str:
    return base64.urlsafe_b64encode(msgpack.packb(body)).decode().rstrip("=")


def test_header_name() -> None:
    assert HEADER == "Spine-Session"


def test_empty_token_knows_nothing_and_needs_no_quorum() -> None:
    tok = SessionToken(max_keys=4)
    assert tok.floor("ns/a") is None
    assert not tok.needs_quorum("ns/a")
    assert not tok.overflowed


def test_observe_keeps_the_newest_version_per_key() -> None:
    tok = SessionToken(max_keys=4)
    tok.observe("ns/a", v(5))
    tok.observe("ns/a", v(3))  # an older read does not lower the floor
    assert tok.floor("ns/a") == v(5)
    tok.observe("ns/a", v(5, "n2"))  # same hlc, larger node: newer
    assert tok.floor("ns/a") == v(5, "n2")
    tok.observe("ns/a", v(9))
    assert tok.floor("ns/a") == v(9)
    assert tok.floor("ns/b") is None


def test_bounded_to_max_keys_keeping_the_newest_versions() -> None:
    tok = SessionToken(max_keys=3)
    for i, key in enumerate(["k1", "k2", "k3"]):
        tok.observe(key, v(10 + i))
    assert not tok.overflowed
    tok.observe("k4", v(100))
    assert tok.overflowed
    assert set(tok.entries) == {"k2", "k3", "k4"}  # k1 held the oldest version
    assert len(tok.entries) == 3
    # A new key older than everything kept is itself the one dropped.
    tok.observe("k0", v(1))
    assert set(tok.entries) == {"k2", "k3", "k4"}
    assert tok.floor("k0") is None


def test_needs_quorum_only_when_overflowed_and_the_key_is_absent() -> None:
    tok = SessionToken(max_keys=1)
    tok.observe("a", v(1))
    assert not tok.needs_quorum("b")  # not overflowed: the token forgot nothing
    tok.observe("b", v(2))
    assert tok.overflowed
    assert tok.needs_quorum("a")  # dropped: may have been forgotten
    assert tok.needs_quorum("zzz")  # never seen, but the token can't prove it
    assert not tok.needs_quorum("b")  # held: its floor is enough


def test_encode_decode_round_trip() -> None:
    tok = SessionToken(max_keys=8)
    tok.observe("ns/a", v(2**63 + 7, "n1"))
    tok.observe("ns/b:c", v(3, "node.with.dots"))
    text = tok.encode()
    assert "=" not in text
    assert all(c.isalnum() or c in "-_" for c in text)  # safe in an HTTP header
    back = SessionToken.decode(text, max_keys=8)
    assert back.entries == tok.entries
    assert back.overflowed is False
    assert back.max_keys == 8


def test_round_trip_keeps_the_overflowed_flag() -> None:
    tok = SessionToken(max_keys=1)
    tok.observe("a", v(1))
    tok.observe("b", v(2))
    back = SessionToken.decode(tok.encode(), max_keys=1)
    assert back.overflowed
    assert back.needs_quorum("a")


def test_decode_with_a_smaller_bound_trims_and_marks_overflowed() -> None:
    tok = SessionToken(max_keys=10)
    for i in range(5):
        tok.observe(f"k{i}", v(i + 1))
    back = SessionToken.decode(tok.encode(), max_keys=2)
    assert set(back.entries) == {"k3", "k4"}
    assert back.overflowed


def test_empty_token_round_trips() -> None:
    back = SessionToken.decode(SessionToken().encode(), max_keys=32)
    assert back.entries == {}
    assert not back.overflowed


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage!!",
        "%%%%",
        "AAAA",
        base64.urlsafe_b64encode(b"\xc1\xc1\xc1").decode(),  # 0xc1 is never valid msgpack
        raw_token(42),
        raw_token("a string"),
        raw_token([TOKEN_FORMAT, False]),  # too short
        raw_token([TOKEN_FORMAT, False, [], "extra"]),
        raw_token([2, False, []]),  # unknown format number
        raw_token([0, False, []]),
        raw_token([TOKEN_FORMAT, False, "not a list"]),
        raw_token([TOKEN_FORMAT, False, {"a": 1}]),
        raw_token([TOKEN_FORMAT, False, [["k", 1]]]),  # entry too short
        raw_token([TOKEN_FORMAT, False, [["k", 1, "n1", "x"]]]),  # entry too long
        raw_token([TOKEN_FORMAT, False, [[1, 1, "n1"]]]),  # key not a string
        raw_token([TOKEN_FORMAT, False, [["k", "1", "n1"]]]),  # hlc not an int
        raw_token([TOKEN_FORMAT, False, [["k", 1.5, "n1"]]]),
        raw_token([TOKEN_FORMAT, False, [["k", 1, 7]]]),  # node not a string
        raw_token([TOKEN_FORMAT, False, [["k", 1, b"n1"]]]),
        raw_token([TOKEN_FORMAT, False, [None]]),
        raw_token([TOKEN_FORMAT, False, [7]]),
    ],
)
def test_malformed_tokens_are_invalid_input_naming_the_header(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        SessionToken.decode(text, max_keys=32)
    assert info.value.field == "Spine-Session"
