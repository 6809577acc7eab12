"""Parse Jepsen's etcd register logs (``INFO  jepsen.util - P\\t:TYPE\\t:F\\tVALUE``) into Ops.

The format is described in ``shared/data/jepsen-etcd/README.md``: one event a line in real-time
order; ``read`` is invoked with ``nil``; ``write`` carries the integer written; ``cas`` carries
``[FROM TO]`` and fails when the register did not hold FROM; a completion whose value is
``:timed-out`` has an unknown outcome. Every operation is on the single register ``"r"``; an
event's time is its line number.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable
from typing import Any

from jepsen_style.checker.history import HistoryError, Op, ops_from_events

#: The key every operation of a Jepsen etcd log is on.
KEY = "r"

_LINE = re.compile(r"^INFO\s+jepsen\.util\s+-\s+(\d+)\s+:(invoke|ok|fail|info)\s+:(read|write|cas)"
                   r"\s+(.*?)\s*$")
_INT = re.compile(r"-?\d+")
_PAIR = re.compile(r"\[\s*(-?\d+)\s+(-?\d+)\s*\]")


def _value(text: str) -> Hashable:
    """``nil`` -> None, ``3`` -> 3, ``[1 2]`` -> (1, 2)."""
    if text == "nil":
        return None
    if _INT.fullmatch(text):
        return int(text)
    pair = _PAIR.fullmatch(text)
    if pair:
        return (int(pair.group(1)), int(pair.group(2)))
    raise HistoryError(f"unparsable value {text!r}")


def events_from_lines(lines: Iterable[str]) -> list[dict[str, Any]]:
    """The event dicts (as :func:`ops_from_events` takes them) of a log's lines; blank lines skip.

    A completion valued ``:timed-out`` (e.g. ``:fail :read :timed-out``) becomes ``info``: its
    outcome is unknown. A cas completion carries the invocation's value, not the one logged.
    """
    events: list[dict[str, Any]] = []
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        m = _LINE.match(line)
        if m is None:
            raise HistoryError(f"line {lineno}: not a jepsen.util event: {line!r}")
        process, kind, f, text = int(m.group(1)), m.group(2), m.group(3), m.group(4)
        if text.startswith(":"):  # :timed-out and any other keyword: the outcome is unknown
            if kind == "invoke":
                raise HistoryError(f"line {lineno}: an invocation without a value: {line!r}")
            kind, value = "info", None
        else:
            value = _value(text)
        events.append({"process": process, "type": kind, "f": f, "key": KEY, "value": value,
                       "time": float(lineno)})
    return events


def parse(text: str, *, keep_failed_cas: bool = True) -> list[Op]:
    """The Ops of a whole Jepsen etcd log, all on key :data:`KEY` (see :func:`ops_from_events`)."""
    return ops_from_events(events_from_lines(text.splitlines()), keep_failed_cas=keep_failed_cas)
