"""The checker on 70 real Jepsen etcd histories whose verdicts a reference checker gave.

The corpus (``shared/data/jepsen-etcd``, from Porcupine's test data) sits beside the repository,
not in it; the tests skip where it is absent.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from jepsen_style.checker import Verdict, check
from jepsen_style.checker.jepsen_log import KEY, parse

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "jepsen-etcd"

if not (DATA / "verdicts.tsv").is_file():
    pytest.skip(f"Jepsen etcd corpus not found at {DATA}", allow_module_level=True)

LOGS = sorted(DATA.glob("*.log"))


def _verdicts() -> dict[str, Verdict]:
    """``verdicts.tsv``: a ``file<TAB>verdict`` header, then one line per log."""
    lines = (DATA / "verdicts.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t") == ["file", "verdict"]
    rows = (line.split("\t") for line in lines[1:] if line.strip())
    return {name: Verdict(verdict) for name, verdict in rows}


EXPECTED = _verdicts()


def test_every_log_has_a_verdict() -> None:
    assert sorted(EXPECTED) == [p.name for p in LOGS]
    assert len(LOGS) == 70


@pytest.mark.parametrize("log", LOGS, ids=[p.name for p in LOGS])
def test_verdict_matches_reference(log: Path) -> None:
    # All 70 are decided within the default budget (the hardest, etcd_002, takes ≈ 450k steps);
    # "unknown" is never accepted here.
    ops = parse(log.read_text(encoding="utf-8"))
    result = check(ops)
    assert result.verdict is EXPECTED[log.name], result.keys[KEY].message
    if result.verdict is Verdict.NOT_LINEARIZABLE:
        detail = result.keys[KEY]
        assert detail.blocked is not None
        assert detail.blocked in detail.explanation
