"""Unit tests for spine.core.consistency: levels, tag overrides, header rules, quorums."""

from __future__ import annotations

import pytest

from spine.core.consistency import Level, Policy, Quorum, majority
from spine.core.errors import InvalidInput

E, S, X = Level.EVENTUAL, Level.SESSION, Level.STRONG
OVERRIDES = {"critical": X, "lock": X, "analytics": E, "metric": E}


def policy(**kw: object) -> Policy:
    return Policy(overrides=OVERRIDES, **kw)  # type: ignore[arg-type]


# --- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "level"),
    [
        ("eventual", E), ("session", S), ("strong", X),
        ("STRONG", X), ("Session", S), ("  eventual\t", E),
    ],
)
def test_parse_accepts_the_three_levels_case_insensitively(text: str, level: Level) -> None:
    assert Level.parse(text) is level


@pytest.mark.parametrize(
    "text", ["", "linearizable", "quorum", "strongest", "1", "eventual,strong"]
)
def test_parse_rejects_anything_else_naming_the_header(text: str) -> None:
    with pytest.raises(InvalidInput) as info:
        Level.parse(text)
    assert info.value.field == "Spine-Consistency"
    assert info.value.code == "invalid"  # a 400


def test_parse_can_name_another_field() -> None:
    with pytest.raises(InvalidInput) as info:
        Level.parse("nope", field="consistency.default")
    assert info.value.field == "consistency.default"


def test_levels_are_ordered_and_labelled() -> None:
    assert E < S < X
    assert [lv.label for lv in Level] == ["eventual", "local_session", "session",
                                          "local_strong", "strong"]
    assert all(Level.parse(lv.label) is lv for lv in Level)


def test_local_forms_rank_below_their_global_forms_and_keep_the_old_wire_codes() -> None:
    assert E < Level.LOCAL_SESSION < S < Level.LOCAL_STRONG < X
    assert Level.LOCAL_SESSION.base is S and Level.LOCAL_STRONG.base is X and S.base is S
    assert [lv.local for lv in Level] == [False, True, False, True, False]
    # the codes messages carry: unchanged for the three levels older nodes know
    assert (E.code, S.code, X.code) == (0, 1, 2)
    assert all(Level.from_code(lv.code) is lv for lv in Level)
    for bad in (5, -1, "1", None, True):
        with pytest.raises(InvalidInput):
            Level.from_code(bad)
    pol = Policy(n=5)
    assert pol.quorum(Level.LOCAL_SESSION) == pol.quorum(S)  # the coordinator takes its region's


# --- tags ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "level"),
    [
        ((), S),  # no tags: the default
        (("misc", "other"), S),  # no overriding tag: the default
        (("critical",), X),
        (("lock", "misc"), X),
        (("analytics",), E),  # an override may also be weaker than the default
        (("metric", "misc"), E),
        (("analytics", "critical"), X),  # strongest wins
        (("metric", "lock", "analytics"), X),
    ],
)
def test_for_tags_is_the_strongest_override_else_the_default(
    tags: tuple[str, ...], level: Level
) -> None:
    assert policy().for_tags(tags) is level


def test_for_tags_uses_the_configured_default() -> None:
    assert policy(default=X).for_tags(["misc"]) is X
    assert policy(default=E).for_tags([]) is E
    assert policy(default=X).for_tags(["analytics"]) is E


def test_write_level_takes_the_strongest_of_old_and_new_tags() -> None:
    p = policy()
    # Re-tagging a critical memory as analytics must not quietly drop to eventual.
    assert p.write_level(["critical"], ["analytics"], None) is X
    assert p.write_level(["analytics"], ["critical"], None) is X
    assert p.write_level(["analytics"], ["metric"], None) is E
    # An untagged side is governed by the default, so it counts as the default's level.
    assert p.write_level([], ["analytics"], None) is S
    assert p.write_level(["analytics"], [], None) is S
    assert p.write_level([], [], None) is S
    assert p.write_level(["misc"], ["lock"], None) is X


def test_a_create_uses_only_the_new_tags() -> None:
    p = policy()
    assert p.write_level(None, ["analytics"], None) is E  # type: ignore[arg-type]


# --- the request header -------------------------------------------------------------------------


def test_header_can_strengthen() -> None:
    p = policy()
    assert p.apply_request(E, E, S) is S
    assert p.apply_request(S, E, X) is X
    assert p.write_level([], ["analytics"], X) is X
    assert p.read_level(X) is X


def test_header_cannot_go_below_the_tags_overrides_unless_allowed() -> None:
    p = policy()
    assert p.apply_request(X, X, E) is X
    assert p.write_level(["critical"], [], E) is X
    assert p.write_level(None, ["lock"], S) is X
    lax = policy(allow_weaker=True)
    assert lax.apply_request(X, X, E) is E
    assert lax.write_level(["critical"], [], E) is E
    assert lax.read_level(E) is E


def test_the_default_is_only_a_default_the_header_may_choose_below_it() -> None:
    # DESIGN §4: the header may not go weaker than the *tags* require; an untagged record
    # requires nothing, so `eventual` is honoured for it even though the default is session.
    p = policy()
    assert p.write_level([], [], E) is E
    assert p.write_level(None, ["misc"], E) is E
    assert p.read_level(E) is E
    assert p.floor(["misc"]) is E
    assert p.floor(["analytics", "lock"]) is X


def test_no_header_keeps_the_base_level() -> None:
    p = policy()
    for lv in Level:
        assert p.apply_request(lv, E, None) is lv
    assert p.read_level(None) is S
    assert policy(default=X).read_level(None) is X


# --- escalation ---------------------------------------------------------------------------------


def test_escalate_to_a_stronger_level_the_found_tags_require() -> None:
    p = policy()
    assert p.escalate(S, ("critical",)) is X
    assert p.escalate(E, ("lock", "analytics")) is X
    assert p.escalate(S, ("misc",)) is None  # no override: nothing to escalate to
    assert p.escalate(X, ("critical",)) is None  # already strong enough
    assert p.escalate(S, ("analytics",)) is None  # never de-escalates
    assert p.escalate(S, ()) is None


def test_escalate_does_not_escalate_to_the_default_without_an_override() -> None:
    # A read that started weaker (by header, with allow_weaker) stays there unless a tag asks.
    p = policy(default=X, allow_weaker=True)
    assert p.escalate(E, ("misc",)) is None
    assert p.escalate(E, ("critical",)) is X


def test_escalate_accepts_any_iterable_of_tags() -> None:
    p = policy()
    assert p.escalate(S, (t for t in ("critical",))) is X


# --- quorums ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "m"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)])
def test_majority(n: int, m: int) -> None:
    assert majority(n) == m


def test_quorum_defaults() -> None:
    p = Policy(n=3)
    assert p.quorum(E) == Quorum(1, 1)
    assert p.quorum(S) == Quorum(2, 2)
    assert p.quorum(X) == Quorum(2, 2)
    p5 = Policy(n=5)
    assert p5.quorum(S) == Quorum(3, 3)
    assert p5.quorum(E) == Quorum(1, 1)


def test_configured_quorums_override_the_defaults() -> None:
    p = Policy(n=5, quorums={X: Quorum(4, 2), E: Quorum(2, 1)})
    assert p.quorum(X) == Quorum(4, 2)
    assert p.quorum(E) == Quorum(2, 1)
    assert p.quorum(S) == Quorum(3, 3)  # not configured: majority
