"""Unit tests for spine.core.expiry and the expiry parts of validation, versioning and config
(DESIGN §13): pure, no sockets, no clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from spine.core.clock import Version, hlc_from_ms, hlc_ms
from spine.core.config import from_dict
from spine.core.errors import ConfigError, InvalidInput
from spine.core.expiry import (
    HARD_MAX_TTL_S,
    Lifecycle,
    expires_hlc,
    is_expired,
    masked,
    sweep_due,
    sweep_tombstone,
    sweeper_of,
)
from spine.core.model import Record, merge
from spine.core.requests import WriteOp
from spine.core.validation import Limits, WriteBody, write_body
from spine.core.versioning import mint

T0 = 1_700_000_000_000
DIM = 4


def live(ttl_s: int | None, at_ms: int = T0, node: str = "n1", **kw: object) -> Record:
    hlc = hlc_from_ms(at_ms) + 3
    return Record("ns", "k", Version(hlc, node), clock={node: 1}, content="hello",
                  tags=("a",), expires_hlc=expires_hlc(hlc, ttl_s), **kw)  # type: ignore[arg-type]


# --- when a version expires -------------------------------------------------------------------


def test_expiry_is_ttl_seconds_of_wall_time_after_the_version() -> None:
    v = hlc_from_ms(T0) + 7
    assert expires_hlc(v, 60) == hlc_from_ms(T0 + 60_000)
    assert expires_hlc(v, 1) > v
    assert expires_hlc(v, None) == 0
    assert expires_hlc(v, 0) == 0


def test_a_record_is_expired_from_its_expiry_on_and_never_before() -> None:
    r = live(10)
    assert not is_expired(r, r.expires_hlc - 1)
    assert is_expired(r, r.expires_hlc)
    assert is_expired(r, r.expires_hlc + hlc_from_ms(1))
    assert not is_expired(live(None), hlc_from_ms(T0 + 10**12))  # no TTL: never
    assert not is_expired(replace(r, deleted=True), r.expires_hlc + 1)  # already absent
    assert not is_expired(None, r.expires_hlc)


def test_masked_hides_the_payload_but_keeps_the_version_clock_tags_and_fences() -> None:
    r = live(10, fences={"lock": 4})
    assert masked(r, r.expires_hlc - 1) is r
    m = masked(r, r.expires_hlc)
    assert m is not None and m.deleted
    assert (m.version, dict(m.clock), m.tags, dict(m.fences)) == (
        r.version, dict(r.clock), r.tags, {"lock": 4})
    assert (m.content, dict(m.metadata), m.vector) == ("", {}, None)
    assert masked(None, 1) is None


# --- lifecycle defaults -----------------------------------------------------------------------


def test_a_write_gets_its_own_ttl_else_the_shortest_of_its_tags_defaults() -> None:
    lc = Lifecycle({"scratch": 60, "session": 3600})
    assert lc.ttl_s(5, ("scratch",)) == 5  # asked for: wins, even longer than a default
    assert lc.ttl_s(None, ("scratch", "session")) == 60
    assert lc.ttl_s(None, ("session", "other")) == 3600
    assert lc.ttl_s(None, ("other",)) is None
    assert Lifecycle().ttl_s(None, ("scratch",)) is None


def test_config_lifecycle_section_and_its_checks() -> None:
    cfg = from_dict({"lifecycle": {"ttl_s_by_tag": {"scratch": 60}, "max_ttl_s": 3600}})
    assert cfg.lifecycle.value() == Lifecycle({"scratch": 60}, 3600)
    assert cfg.limits_value().max_ttl_s == 3600
    bad = [
        ({"ttl_s_by_tag": {"scratch": 0}}, "lifecycle.ttl_s_by_tag.scratch"),
        ({"ttl_s_by_tag": {"Not-A-Tag": 5}}, "lifecycle.ttl_s_by_tag.Not-A-Tag"),
        ({"ttl_s_by_tag": {"a": 7200}, "max_ttl_s": 3600}, "lifecycle.ttl_s_by_tag.a"),
        ({"ttl_s_by_tag": {"a": "1h"}}, "lifecycle.ttl_s_by_tag.a"),
        ({"max_ttl_s": 0}, "lifecycle.max_ttl_s"),
        ({"max_ttl_s": HARD_MAX_TTL_S + 1}, "lifecycle.max_ttl_s"),
        ({"sweep_interval_ms": 0}, "lifecycle.sweep_interval_ms"),
        ({"sweep_keys_per_s": 0}, "lifecycle.sweep_keys_per_s"),
        ({"ttl": 5}, "lifecycle.ttl"),
    ]
    for section, where in bad:
        with pytest.raises(ConfigError) as e:
            from_dict({"lifecycle": section})
        assert e.value.field == where, section


# --- validation ---------------------------------------------------------------------------------


def test_ttl_s_is_whole_seconds_in_range_else_a_400_naming_it() -> None:
    lim = Limits(max_ttl_s=3600)
    assert write_body({"content": "x"}, lim, DIM).ttl_s is None
    assert write_body({"content": "x", "ttl_s": None}, lim, DIM).ttl_s is None
    assert write_body({"content": "x", "ttl_s": 1}, lim, DIM).ttl_s == 1
    assert write_body({"content": "x", "ttl_s": 3600}, lim, DIM).ttl_s == 3600
    assert write_body({"content": "x", "ttl_s": 5.0}, lim, DIM).ttl_s == 5  # one number type
    for bad in (0, -1, 3601, 1.5, "60", True, [], float("inf"), float("nan"), 10**30):
        with pytest.raises(InvalidInput) as e:
            write_body({"content": "x", "ttl_s": bad}, lim, DIM)
        assert e.value.field == "ttl_s", bad
    with pytest.raises(InvalidInput) as e:  # a batch item names its place
        write_body({"content": "x", "ttl_s": 0}, lim, DIM, "items[3].")
    assert e.value.field == "items[3].ttl_s"


# --- minting ------------------------------------------------------------------------------------


def body(ttl_s: int | None = None) -> WriteBody:
    return WriteBody("hi", ("a",), {}, None, None, ttl_s)


def test_mint_sets_the_expiry_a_later_write_replaces_it_and_a_delete_carries_none() -> None:
    hlc = hlc_from_ms(T0)
    first = mint("ns", WriteOp("k", body()), None, None, hlc=hlc, node_id="n1", agent=None,
                 ttl_s=30)
    assert first.expires_hlc == hlc_from_ms(T0 + 30_000)
    second = mint("ns", WriteOp("k", body()), first, None, hlc=hlc + 1, node_id="n1",
                  agent=None)
    assert second.expires_hlc == 0  # a later write without a TTL: never expires
    third = mint("ns", WriteOp("k", body()), second, None, hlc=hlc + 2, node_id="n1",
                 agent=None, ttl_s=5)
    assert third.expires_hlc == hlc_from_ms(T0 + 5_000)
    gone = mint("ns", WriteOp("k", None), third, None, hlc=hlc + 3, node_id="n1", agent=None,
                ttl_s=5)
    assert gone.deleted and gone.expires_hlc == 0


def test_a_write_over_a_masked_expired_record_is_a_new_memory() -> None:
    old = live(10)
    now = old.expires_hlc + 5
    new = mint("ns", WriteOp("k", body()), masked(old, now), None, hlc=now, node_id="n2",
               agent=None)
    assert new.created_hlc == now  # created anew, not at the expired record's creation
    assert new.clock["n1"] == 1 and new.clock["n2"] == 1  # built on the expired clock


# --- the sweep ------------------------------------------------------------------------------------


def test_sweep_waits_for_the_margin_after_expiry() -> None:
    r = live(10)
    e_ms = hlc_ms(r.expires_hlc)
    assert not sweep_due(r, hlc_from_ms(e_ms + 2_499), 2_500)
    assert sweep_due(r, hlc_from_ms(e_ms + 2_500), 2_500)
    assert not sweep_due(live(None), hlc_from_ms(e_ms + 10**9), 0)


def test_the_sweep_tombstone_beats_the_expired_version_and_loses_to_a_later_write() -> None:
    expired = live(10, node="n2")
    tomb = sweep_tombstone(expired, "n1")
    assert tomb is not None and tomb.deleted and tomb.expires_hlc == 0
    assert tomb.version == Version(expired.expires_hlc, "n1")
    assert tomb.tags == expired.tags
    # Newer than the expired version, whatever order they meet in (read repair, hints, AE):
    for a, b in ((expired, tomb), (tomb, expired)):
        assert merge(a, b).deleted and merge(a, b).version == tomb.version
    # A client's write minted after the instant of expiry wins over the sweep's tombstone.
    later = live(None, at_ms=hlc_ms(expired.expires_hlc) + 1, node="n3")
    for a, b in ((later, tomb), (tomb, later)):
        assert not merge(a, b).deleted and merge(a, b).version == later.version
    assert sweep_tombstone(tomb, "n1") is None  # a tombstone: nothing to retire
    assert sweep_tombstone(live(None), "n1") is None  # never expires


def test_one_sweeper_per_key_the_first_live_owner() -> None:
    up = {"n1": False, "n2": True, "n3": True}
    assert sweeper_of(("n1", "n2", "n3"), lambda n: up[n]) == "n2"
    assert sweeper_of(("n3", "n1"), lambda n: up[n]) == "n3"
    assert sweeper_of(("n1",), lambda n: up[n]) is None
