"""The register linearizability checker: hand-built histories, and a brute-force oracle."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Hashable, Sequence
from pathlib import Path

import pytest

from jepsen_style.checker import HistoryError, Op, Verdict, check, check_key, ops_from_events
from jepsen_style.checker.__main__ import main
from jepsen_style.checker.history import Outcome
from jepsen_style.checker.jepsen_log import parse
from jepsen_style.checker.linearizability import step

LIN = Verdict.LINEARIZABLE
BAD = Verdict.NOT_LINEARIZABLE

# --- helpers: one op per call, each on its own process unless told -------------------------------

_next_process = iter(range(10**6))


def r(value: Hashable, t0: float, t1: float, key: str = "x") -> Op:
    return Op(next(_next_process), key, "read", value, t0, t1, "ok")


def w(value: Hashable, t0: float, t1: float | None, key: str = "x") -> Op:
    """A write; ``t1=None`` is an unknown outcome."""
    return Op(next(_next_process), key, "write", value, t0, t1, "ok" if t1 is not None else "info")


def cas(old: Hashable, new: Hashable, t0: float, t1: float | None, outcome: Outcome = "ok",
        key: str = "x") -> Op:
    """A cas; ``t1=None`` is an unknown outcome, whatever ``outcome`` says."""
    out: Outcome = "info" if t1 is None else outcome
    return Op(next(_next_process), key, "cas", (old, new), t0, t1, out)


def verdict(*ops: Op) -> Verdict:
    return check(list(ops)).verdict


# --- basic register semantics -------------------------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    result = check([])
    assert result.verdict is LIN
    assert result.keys == {}


def test_sequential_history() -> None:
    assert verdict(r(None, 0, 1), w(1, 2, 3), r(1, 4, 5), w(2, 6, 7), r(2, 8, 9),
                   cas(2, 3, 10, 11), r(3, 12, 13)) is LIN


@pytest.mark.parametrize("seen", [1, 2])
def test_concurrent_writes_then_a_read_of_either(seen: int) -> None:
    assert verdict(w(1, 0, 10), w(2, 0, 10), r(seen, 11, 12)) is LIN


def test_concurrent_writes_cannot_be_read_in_both_orders_sequentially() -> None:
    # 1 then 2 (or 2 then 1) — but once a later read has seen 2, a yet later read cannot see 1.
    assert verdict(w(1, 0, 10), w(2, 0, 10), r(2, 11, 12), r(1, 13, 14)) is BAD


def test_read_concurrent_with_a_write_may_see_old_or_new() -> None:
    assert verdict(w(1, 0, 1), w(2, 2, 10), r(1, 3, 4)) is LIN
    assert verdict(w(1, 0, 1), w(2, 2, 10), r(2, 3, 4)) is LIN


def test_stale_read_after_a_completed_write() -> None:
    stale = r(1, 4, 5)
    result = check([w(1, 0, 1), w(2, 2, 3), stale])
    assert result.verdict is BAD
    assert result.keys["x"].blocked == stale
    assert stale in result.keys["x"].explanation
    assert "holds 2" in result.keys["x"].message


def test_read_of_a_never_written_value() -> None:
    assert verdict(w(1, 0, 1), r(7, 2, 3)) is BAD
    assert verdict(r(7, 0, 1)) is BAD


def test_read_of_the_initial_value_after_a_completed_write() -> None:
    assert verdict(r(None, 0, 1)) is LIN
    assert verdict(w(1, 0, 1), r(None, 2, 3)) is BAD


def test_intervals_are_closed() -> None:
    # The read is invoked at the instant the write returns: they are concurrent.
    assert verdict(w(1, 0, 5), r(None, 5, 6)) is LIN
    assert verdict(w(1, 0, 5), r(1, 5, 6)) is LIN
    assert verdict(w(1, 0, 5), r(None, 5.5, 6)) is BAD


# --- unknown outcomes --------------------------------------------------------------------------


def test_unknown_write_that_surfaces_later() -> None:
    assert verdict(w(1, 0, None), r(None, 1, 2), r(1, 50, 51)) is LIN


def test_unknown_write_that_surfaces_after_a_later_known_write() -> None:
    assert verdict(w(1, 0, None), w(2, 1, 2), r(2, 3, 4), r(1, 5, 6)) is LIN


def test_unknown_write_that_never_surfaces() -> None:
    assert verdict(w(1, 0, None), r(None, 1, 2), r(None, 50, 51)) is LIN
    assert verdict(w(0, 0, 1), w(1, 2, None), w(2, 3, None), r(0, 50, 51)) is LIN


def test_unknown_write_cannot_take_effect_before_its_invocation() -> None:
    assert verdict(r(1, 0, 1), w(1, 2, None)) is BAD


def test_unknown_write_takes_effect_at_most_once() -> None:
    assert verdict(w(1, 0, None), w(2, 1, 2), r(1, 3, 4), r(2, 5, 6)) is BAD
    assert verdict(w(1, 0, None), w(2, 1, 2), r(1, 3, 4), w(2, 5, 6), r(1, 7, 8)) is BAD


def test_only_unknown_ops() -> None:
    assert verdict(w(1, 0, None), cas(1, 2, 0, None), cas(3, 4, 1, None)) is LIN


# --- compare-and-set ---------------------------------------------------------------------------


def test_cas_that_swapped() -> None:
    assert verdict(w(1, 0, 1), cas(1, 2, 2, 3), r(2, 4, 5)) is LIN
    assert verdict(cas(None, 5, 0, 1), r(5, 2, 3)) is LIN


def test_cas_that_swapped_without_holding_from() -> None:
    assert verdict(w(1, 0, 1), cas(0, 2, 2, 3)) is BAD


def test_cas_that_swapped_must_be_visible() -> None:
    assert verdict(w(1, 0, 1), cas(1, 2, 2, 3), r(1, 4, 5)) is BAD


def test_failed_cas_observes_that_the_register_did_not_hold_from() -> None:
    assert verdict(w(1, 0, 1), cas(0, 2, 2, 3, "fail"), r(1, 4, 5)) is LIN
    assert verdict(w(1, 0, 1), cas(1, 2, 2, 3, "fail")) is BAD
    # Concurrent with a write away from FROM, the failed compare may come after it.
    assert verdict(w(1, 0, 1), w(3, 2, 10), cas(1, 2, 2, 3, "fail")) is LIN


def test_unknown_cas() -> None:
    assert verdict(w(1, 0, 1), cas(1, 2, 2, None), r(2, 4, 5)) is LIN
    assert verdict(w(1, 0, 1), cas(1, 2, 2, None), r(1, 4, 5)) is LIN
    # It can only swap if FROM was held: 2 never appears here.
    assert verdict(w(1, 0, 1), cas(0, 2, 2, None), r(2, 4, 5)) is BAD


def test_cas_chain_order_is_forced() -> None:
    # Two concurrent cas ops only compose one way round: 0 -> 1 -> 2.
    assert verdict(w(0, 0, 1), cas(1, 2, 2, 5), cas(0, 1, 2, 5), r(2, 6, 7)) is LIN
    assert verdict(w(0, 0, 1), cas(1, 2, 2, 5), cas(0, 1, 2, 5), r(1, 6, 7)) is BAD


def test_step_model() -> None:
    assert step(cas(1, 2, 0, 1), 1) == (True, 2)
    assert step(cas(1, 2, 0, 1), 3) == (False, 2)
    assert step(cas(1, 2, 0, 1, "fail"), 3) == (True, 3)
    assert step(cas(1, 2, 0, 1, "fail"), 1)[0] is False
    assert step(cas(1, 2, 0, None), 1) == (True, 2)
    assert step(cas(1, 2, 0, None), 3) == (True, 3)


# --- keys, budget, results -----------------------------------------------------------------------


def test_only_the_bad_key_is_named() -> None:
    bad_read = r(1, 4, 5, key="b")
    result = check([w(1, 0, 1, key="a"), r(1, 2, 3, key="a"),
                    w(1, 0, 1, key="b"), w(2, 2, 3, key="b"), bad_read,
                    w(9, 0, 1, key="c"), r(9, 4, 5, key="c")])
    assert result.verdict is BAD
    assert result.failing_keys == ["b"]
    assert result.keys["a"].verdict is LIN
    assert result.keys["c"].verdict is LIN
    assert result.keys["b"].blocked == bad_read
    assert "'b'" in result.keys["b"].message


def test_keys_are_independent_registers() -> None:
    # Read on "b" of a value written only on "a".
    assert verdict(w(1, 0, 1, key="a"), r(1, 2, 3, key="b")) is BAD


def _hard_bad_history(width: int) -> list[Op]:
    """``width`` concurrent writes, then a read of a value none wrote: 2**width subsets to try."""
    return [w(v, 0, 100) for v in range(width)] + [r(-1, 101, 102)]


def test_budget_exhaustion_is_unknown_never_a_pass() -> None:
    history = _hard_bad_history(12)
    assert check(history).verdict is BAD
    small = check(history, budget=1_000)
    assert small.verdict is Verdict.UNKNOWN
    assert small.unknown_keys == ["x"]
    assert small.keys["x"].steps == 1_000


def test_budget_exhaustion_on_a_good_history_is_unknown() -> None:
    history = [w(v, 0, 100) for v in range(12)] + [r(5, 101, 102)]
    assert check(history).verdict is LIN
    assert check(history, budget=3).verdict is Verdict.UNKNOWN


def test_unknown_key_and_bad_key_make_bad() -> None:
    history = [*_hard_bad_history(12), w(1, 0, 1, key="y"), r(2, 2, 3, key="y")]
    result = check(history, budget=1_000)
    assert result.verdict is BAD
    assert result.failing_keys == ["y"]
    assert result.unknown_keys == ["x"]


def test_check_key_rejects_other_keys() -> None:
    with pytest.raises(ValueError):
        check_key("x", [r(None, 0, 1, key="y")])


# --- against a brute-force oracle ----------------------------------------------------------------


def _brute_force(ops: Sequence[Op]) -> bool:
    """Try every order of every subset holding all known-outcome ops (exponential; tiny inputs)."""

    def extend(remaining: list[Op], state: Hashable) -> bool:
        if all(op.return_t is None for op in remaining):
            return True
        for x in remaining:
            # x may go next unless a remaining known op returned strictly before x was invoked.
            if any(y.return_t is not None and y.return_t < x.invoke_t for y in remaining):
                continue
            ok, after = step(x, state)
            if ok and extend([y for y in remaining if y is not x], after):
                return True
        return False

    return extend(list(ops), None)


def _random_history(rng: random.Random, size: int) -> list[Op]:
    ops: list[Op] = []
    for _ in range(size):
        f = rng.choice(["read", "write", "cas"])
        t0 = float(rng.randint(0, 10))
        t1 = t0 + rng.randint(0, 4)  # integer times: many ties, to exercise closed intervals
        if f == "read":
            ops.append(r(rng.choice([None, 0, 1, 2]), t0, t1))
        elif f == "write":
            ops.append(w(rng.randint(0, 2), t0, rng.choice([t1, t1, None])))
        else:
            outcome: Outcome = rng.choice(["ok", "fail", "info"])
            ops.append(cas(rng.randint(0, 2), rng.randint(0, 2), t0,
                           None if outcome == "info" else t1, outcome))
    return ops


@pytest.mark.parametrize("seed", range(4))
def test_agrees_with_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    seen = {True: 0, False: 0}
    for _ in range(800):
        ops = _random_history(rng, rng.randint(1, 8))
        expected = _brute_force(ops)
        seen[expected] += 1
        got = check(ops).verdict
        assert got is (LIN if expected else BAD), [op.describe() for op in ops]
    assert min(seen.values()) > 100  # both verdicts were exercised


# --- events → ops --------------------------------------------------------------------------------


def _ev(process: int, type_: str, f: str, value: object, time: float, **extra: object
        ) -> dict[str, object]:
    return {"process": process, "type": type_, "f": f, "key": "k", "value": value, "time": time,
            **extra}


def test_ops_from_events_pairs_and_classifies() -> None:
    events = [
        _ev(1, "invoke", "write", 1, 0), _ev(1, "ok", "write", 1, 1),
        _ev(2, "invoke", "read", None, 2), _ev(2, "ok", "read", 1, 3),
        _ev(3, "invoke", "write", 2, 4), _ev(3, "fail", "write", 2, 5),      # removed
        _ev(4, "invoke", "read", None, 6), _ev(4, "fail", "read", None, 7),  # dropped
        _ev(5, "invoke", "write", 3, 8), _ev(5, "info", "write", 3, 9),      # unknown
        _ev(6, "invoke", "cas", [1, 4], 10), _ev(6, "fail", "cas", [1, 4], 11),  # observation
        _ev(7, "invoke", "cas", [1, 5], 12),
        _ev(7, "fail", "cas", [1, 5], 13, error="not-leader"),               # removed
        _ev(8, "invoke", "read", None, 14), _ev(8, "info", "read", None, 15),  # dropped
        _ev(9, "invoke", "cas", [3, 6], 16),                                  # never completes
        _ev(1, "invoke", "cas", [1, 7], 17), _ev(1, "ok", "cas", [1, 7], 18),
    ]
    ops = ops_from_events(events)
    assert ops == [
        Op(1, "k", "write", 1, 0, 1, "ok"),
        Op(2, "k", "read", 1, 2, 3, "ok"),
        Op(5, "k", "write", 3, 8, None, "info"),
        Op(6, "k", "cas", (1, 4), 10, 11, "fail"),
        Op(1, "k", "cas", (1, 7), 17, 18, "ok"),
        Op(9, "k", "cas", (3, 6), 16, None, "info"),
    ]
    without = ops_from_events(events, keep_failed_cas=False)
    assert [op.f for op in without if op.outcome == "fail"] == []
    assert len(without) == len(ops) - 1


def test_ops_from_events_rejects_malformed_histories() -> None:
    with pytest.raises(HistoryError):
        ops_from_events([_ev(1, "ok", "read", 1, 0)])
    with pytest.raises(HistoryError):
        ops_from_events([_ev(1, "invoke", "read", None, 0), _ev(1, "invoke", "read", None, 1)])
    with pytest.raises(HistoryError):
        ops_from_events([_ev(1, "invoke", "read", None, 0), _ev(1, "ok", "write", 1, 1)])
    with pytest.raises(HistoryError):
        ops_from_events([_ev(1, "invoke", "cas", 3, 0)])
    with pytest.raises(HistoryError):
        ops_from_events([_ev(1, "invoke", "read", None, 1), _ev(1, "ok", "read", 1, 0)])


# --- the Jepsen log format and the command line ------------------------------------------------

_LOG = """\
INFO  jepsen.util - 0\t:invoke\t:write\t1
INFO  jepsen.util - 1\t:invoke\t:read\tnil
INFO  jepsen.util - 0\t:ok\t:write\t1
INFO  jepsen.util - 1\t:ok\t:read\tnil
INFO  jepsen.util - 2\t:invoke\t:cas\t[1 2]
INFO  jepsen.util - 2\t:fail\t:cas\t[1 2]
INFO  jepsen.util - 3\t:invoke\t:read\tnil
INFO  jepsen.util - 3\t:fail\t:read\t:timed-out
INFO  jepsen.util - 4\t:invoke\t:write\t3
INFO  jepsen.util - 4\t:info\t:write\t:timed-out
INFO  jepsen.util - 5\t:invoke\t:read\tnil
INFO  jepsen.util - 5\t:ok\t:read\t3
"""


def test_parse_jepsen_log() -> None:
    assert parse(_LOG) == [
        Op(0, "r", "write", 1, 1, 3, "ok"),
        Op(1, "r", "read", None, 2, 4, "ok"),
        Op(2, "r", "cas", (1, 2), 5, 6, "fail"),
        Op(4, "r", "write", 3, 9, None, "info"),
        Op(5, "r", "read", 3, 11, 12, "ok"),
    ]
    # The failed cas saw 1 at some point in [5, 6]: but the register held 1 then. Not linearizable.
    assert check(parse(_LOG)).verdict is BAD
    assert check(parse(_LOG, keep_failed_cas=False)).verdict is LIN


def test_parse_rejects_other_lines() -> None:
    with pytest.raises(HistoryError):
        parse("INFO  jepsen.core - something else\n")


@pytest.mark.parametrize(
    ("text", "code", "printed"),
    [(_LOG, 1, "not-linearizable"),
     (_LOG.replace(":fail\t:cas", ":ok\t:cas").replace(":read\t3", ":read\t2"), 0,
      "linearizable")],
)
def test_main(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, code: int,
              printed: str) -> None:
    path = tmp_path / "h.log"
    path.write_text(text)
    assert main([str(path)]) == code
    assert capsys.readouterr().out.strip() == printed


def test_main_unknown_and_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = [_ev(p, kind, "write", p, 0 if kind == "invoke" else 100)
              for kind in ("invoke", "ok") for p in range(12)]
    events += [_ev(99, "invoke", "read", None, 101), _ev(99, "ok", "read", -1, 102)]
    path = tmp_path / "h.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    assert main([str(path), "--budget", "1000"]) == 2
    assert capsys.readouterr().out.strip() == "unknown"
    assert main([str(path)]) == 1
    assert capsys.readouterr().out.strip() == "not-linearizable"


def test_module_entry_point(tmp_path: Path) -> None:
    path = tmp_path / "h.log"
    path.write_text(_LOG)
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "jepsen_style.checker", str(path)], cwd=repo,
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout.strip()) == (1, "not-linearizable")
    assert "cannot take effect" in done.stderr
