"""Property tests for spine.core.session: bounded tokens keep what read-your-writes needs, and the
header codec round-trips."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from spine.core.clock import Version
from spine.core.session import SessionToken

keys = st.sampled_from([f"ns/k{i}" for i in range(8)])
versions = st.builds(Version, st.integers(0, 2**64 - 1), st.text(min_size=1, max_size=6))
observations = st.lists(st.tuples(keys, versions), max_size=40)
bounds = st.integers(1, 6)


def token_of(max_keys: int, obs: list[tuple[str, Version]]) -> SessionToken:
    tok = SessionToken(max_keys=max_keys)
    for k, ver in obs:
        tok.observe(k, ver)
    return tok


@settings(deadline=None)
@given(bounds, observations)
def test_token_round_trips_through_its_header_form(
    max_keys: int, obs: list[tuple[str, Version]]
) -> None:
    tok = token_of(max_keys, obs)
    back = SessionToken.decode(tok.encode(), max_keys)
    assert back.entries == tok.entries
    assert back.overflowed == tok.overflowed


@settings(deadline=None)
@given(bounds, observations)
def test_token_is_bounded_and_never_invents_versions(
    max_keys: int, obs: list[tuple[str, Version]]
) -> None:
    tok = token_of(max_keys, obs)
    newest: dict[str, Version] = {}
    for k, ver in obs:
        newest[k] = max(newest.get(k, ver), ver)
    assert len(tok.entries) <= max_keys
    assert tok.overflowed == (len(newest) > max_keys)
    for k, ver in tok.entries.items():
        assert (k, ver) in obs
        assert ver <= newest[k]
    if not tok.overflowed:
        assert tok.entries == newest  # nothing dropped: exactly the newest per key
    for k in newest:
        # The guarantee never silently lapses: either the token knows k, or reads go to a quorum.
        assert (k in tok.entries) != tok.needs_quorum(k)


@settings(deadline=None)
@given(bounds, observations, keys, st.integers(1, 1000))
def test_the_latest_write_is_always_kept(
    max_keys: int, obs: list[tuple[str, Version]], key: str, bump: int
) -> None:
    # A write's HLC is larger than everything the client saw, so the token must keep it.
    tok = token_of(max_keys, obs)
    top = max((ver.hlc for _, ver in obs), default=0)
    write = Version(top + bump, "n1")
    tok.observe(key, write)
    assert tok.floor(key) == write
    assert not tok.needs_quorum(key)
