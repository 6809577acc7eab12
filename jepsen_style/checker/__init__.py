"""A per-key linearizability checker for register histories (read / write / compare-and-set)."""

from jepsen_style.checker.history import HistoryError, Op, ops_from_events
from jepsen_style.checker.linearizability import KeyResult, Result, Verdict, check, check_key

__all__ = [
    "HistoryError",
    "KeyResult",
    "Op",
    "Result",
    "Verdict",
    "check",
    "check_key",
    "ops_from_events",
]
