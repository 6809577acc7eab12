"""swim_admission: the identity check is asked once per version of a member."""

from __future__ import annotations

from dataclasses import replace

from spine.core.swim_admission import Admission
from spine.core.swim_messages import Member, MemberState

M = Member("n2", "127.0.0.1:9000", 1, MemberState.ALIVE, (("cluster", "other"),))


def test_no_check_admits_everyone() -> None:
    assert Admission(None).verdict(M) == (None, False)
    assert Admission(None).refusal("n2") is None


def test_the_check_is_asked_once_per_version_and_remembered() -> None:
    asked: list[Member] = []

    def check(m: Member) -> str | None:
        asked.append(m)
        return None if dict(m.meta).get("cluster") == "ours" else "another cluster"

    a = Admission(check)
    assert a.verdict(M) == ("another cluster", True)
    assert a.verdict(M) == ("another cluster", False)  # the same version: not asked again
    assert a.verdict(replace(M, state=MemberState.SUSPECT)) == ("another cluster", False)
    assert len(asked) == 1 and a.refusal("n2") == "another cluster"
    fixed = replace(M, incarnation=2, meta=(("cluster", "ours"),))
    assert a.verdict(fixed) == (None, False) and len(asked) == 2
    assert a.refusal("n2") is None and a.refusal("n9") is None
