"""The operation model of a register history, and the pairing of raw events into operations.

A history is recorded as events (Jepsen's format): each client *process* invokes one operation at a
time and later completes it with ``ok`` (it took effect), ``fail`` (it definitely did not take
effect) or ``info`` (unknown: it may take effect at any time after its invocation, or never). The
checker works on :class:`Op`, one per invocation, with its real-time interval.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

Fn: TypeAlias = Literal["read", "write", "cas"]
Outcome: TypeAlias = Literal["ok", "fail", "info"]

#: A failed cas completion whose ``error`` is one of these (or absent) means the compare ran and the
#: register did not hold FROM; any other ``error`` means it failed before comparing.
CAS_MISMATCH_ERRORS: frozenset[str | None] = frozenset({None, "mismatch", "cas-mismatch"})


class HistoryError(ValueError):
    """The events do not form a well-formed history (e.g. a completion with no invocation)."""


@dataclass(frozen=True, slots=True)
class Op:
    """One register operation with its real-time interval ``[invoke_t, return_t]``.

    ``value``: for a read, the value read (``None`` = the initial, never-written register); for a
    write, the value written; for a cas, the ``(from, to)`` pair.
    ``outcome``: ``"ok"`` took effect; ``"fail"`` is only kept for a cas whose compare did not match
    (it changed nothing but observed that the register did not hold FROM); ``"info"`` is unknown and
    comes with ``return_t is None`` (treated as +infinity: the op may take effect at any point after
    ``invoke_t``, or never).
    """

    process: int
    key: str
    f: Fn
    value: Hashable
    invoke_t: float
    return_t: float | None
    outcome: Outcome

    def __post_init__(self) -> None:
        if self.f == "cas" and not (isinstance(self.value, tuple) and len(self.value) == 2):
            raise HistoryError(f"cas value must be a (from, to) tuple, got {self.value!r}")
        if self.return_t is not None and self.return_t < self.invoke_t:
            raise HistoryError(f"op returns before it is invoked: {self}")
        if (self.outcome == "info") != (self.return_t is None):
            raise HistoryError(f"return_t is None exactly when the outcome is info: {self}")
        if self.outcome == "fail" and self.f != "cas":
            raise HistoryError(f"only a cas may be kept with outcome fail: {self}")
        if self.f == "read" and self.outcome != "ok":
            raise HistoryError(f"a read must have outcome ok: {self}")

    @property
    def end(self) -> float:
        """Return time, +infinity when the outcome is unknown."""
        return math.inf if self.return_t is None else self.return_t

    def describe(self) -> str:
        """A short human-readable rendering, e.g. ``p3 cas(1->2) fail [4, 7]``."""
        if self.f == "read":
            what = f"read -> {self.value!r}"
        elif self.f == "write":
            what = f"write({self.value!r})"
        else:
            assert isinstance(self.value, tuple)
            what = f"cas({self.value[0]!r}->{self.value[1]!r})"
        ret = "inf" if self.return_t is None else f"{self.return_t:g}"
        return f"p{self.process} {self.key}: {what} {self.outcome} [{self.invoke_t:g}, {ret}]"


def _freeze(value: Any) -> Hashable:
    """Lists (as JSON gives a cas pair or a list value) become tuples, recursively."""
    if isinstance(value, list | tuple):
        return tuple(_freeze(v) for v in value)
    if not isinstance(value, Hashable):
        raise HistoryError(f"value is not hashable: {value!r}")
    return value


def _make_op(
    invoke: Mapping[str, Any], completion: Mapping[str, Any] | None, keep_failed_cas: bool
) -> Op | None:
    """The Op for an invocation and its completion (None: never completed), or None to drop it."""
    f = invoke["f"]
    if f not in ("read", "write", "cas"):
        raise HistoryError(f"unknown f {f!r} in {dict(invoke)!r}")
    kind = "info" if completion is None else completion["type"]
    process, key, t0 = int(invoke["process"]), str(invoke["key"]), float(invoke["time"])
    if f == "read":
        # A failed read did nothing; a read of unknown outcome observed nothing we know of.
        if kind != "ok":
            return None
        assert completion is not None
        return Op(process, key, "read", _freeze(completion.get("value")), t0,
                  float(completion["time"]), "ok")
    value = _freeze(invoke.get("value"))
    if kind == "info":
        return Op(process, key, f, value, t0, None, "info")
    assert completion is not None
    t1 = float(completion["time"])
    if kind == "ok":
        return Op(process, key, f, value, t0, t1, "ok")
    # fail: definitely no effect. A cas whose compare ran still observed "register != FROM".
    if keep_failed_cas and f == "cas" and completion.get("error") in CAS_MISMATCH_ERRORS:
        return Op(process, key, "cas", value, t0, t1, "fail")
    return None


def ops_from_events(
    events: Iterable[Mapping[str, Any]], *, keep_failed_cas: bool = True
) -> list[Op]:
    """Pair each ``invoke`` event with the next completion of the same process.

    Events are dicts ``{"process", "type": "invoke"|"ok"|"fail"|"info", "f", "key", "value",
    "time"}`` in the order recorded (a JSONL history). A failed write is removed, a failed read
    dropped; a failed cas is kept as an observation that the register did not hold FROM, unless
    its completion carries an ``"error"`` outside :data:`CAS_MISMATCH_ERRORS` (then it failed before
    comparing and is removed); ``keep_failed_cas=False`` removes every failed cas (Knossos does;
    sound but weaker). An ``info`` completion, or none by the end of the history, is an
    unknown outcome; a read of unknown outcome is dropped since it constrains nothing.
    """
    pending: dict[int, Mapping[str, Any]] = {}
    ops: list[Op] = []
    for event in events:
        process, kind = int(event["process"]), event["type"]
        if kind == "invoke":
            if process in pending:
                raise HistoryError(f"process {process} invokes twice without completing: {event}")
            pending[process] = event
        elif kind in ("ok", "fail", "info"):
            invoke = pending.pop(process, None)
            if invoke is None:
                raise HistoryError(f"completion without an invocation: {dict(event)!r}")
            if event.get("f", invoke["f"]) != invoke["f"]:
                raise HistoryError(f"completion {dict(event)!r} does not match {dict(invoke)!r}")
            op = _make_op(invoke, event, keep_failed_cas)
            if op is not None:
                ops.append(op)
        else:
            raise HistoryError(f"unknown event type {kind!r} in {dict(event)!r}")
    for invoke in pending.values():
        op = _make_op(invoke, None, keep_failed_cas)
        if op is not None:
            ops.append(op)
    return ops
