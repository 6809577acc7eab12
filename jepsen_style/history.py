"""Recording a run: the operation history (Jepsen's event format) and the nemesis timeline.

Every time in a run is seconds since one ``time.monotonic()`` origin taken by the runner, so
client operations and fault windows line up. A :class:`History` is safe to use from several
threads and from asyncio tasks at once (appends take a lock; nothing awaits while holding it).

An event is a dict ``{"process", "type": "invoke"|"ok"|"fail"|"info", "f", "key", "value",
"time", "node", "level", "error"?, ...}``: ``jepsen_style.checker.ops_from_events`` reads it as is.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

EventType: TypeAlias = Literal["invoke", "ok", "fail", "info"]
COMPLETIONS: Final = frozenset({"ok", "fail", "info"})


class _Same:
    """Default of ``complete(value=...)``: the completion repeats the invocation's value."""

    def __repr__(self) -> str:
        return "SAME"


SAME: Final = _Same()


def _jsonable(value: Any) -> Any:
    """Sets become sorted lists, tuples lists, anything else unknown its ``str``."""
    if isinstance(value, set | frozenset):
        try:
            return sorted(value)
        except TypeError:
            return sorted(value, key=repr)
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def dumps(obj: Any) -> str:
    """One JSON line (no NaN, sets as sorted lists)."""
    return json.dumps(obj, default=_jsonable, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True, slots=True)
class Handle:
    """An invocation not yet completed; pass it to :meth:`History.complete`."""

    process: int
    f: str
    key: Any
    value: Any
    node: str | None
    level: str | None
    time: float
    index: int


class History:
    """An append-only, thread-safe list of Jepsen-format events.

    ``origin``: the ``time.monotonic()`` value that is time 0 (default: now). Several histories
    of one run (one per workload) share the runner's origin. ``tags`` are added to every event
    (e.g. ``{"workload": "register"}``); ``default_level`` is recorded on invocations that name
    no level.
    """

    def __init__(self, origin: float | None = None, *, default_level: str | None = None,
                 **tags: Any) -> None:
        self.origin = time.monotonic() if origin is None else origin
        self.tags = dict(tags)
        #: Recorded as ``level`` on invocations that name none (the workload's level).
        self.default_level = default_level
        self._events: list[dict[str, Any]] = []
        self._open: dict[int, Handle] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ recording

    def now(self) -> float:
        """Seconds since the origin."""
        return time.monotonic() - self.origin

    def invoke(
        self,
        process: int,
        f: str,
        key: Any = None,
        value: Any = None,
        node: str | None = None,
        *,
        level: str | None = None,
        **extra: Any,
    ) -> Handle:
        """Record that ``process`` starts operation ``f`` on ``key``; a process has at most one
        operation open at a time (ValueError otherwise)."""
        with self._lock:
            if process in self._open:
                raise ValueError(
                    f"process {process} invokes {f} while {self._open[process].f} is open"
                )
            t = self.now()
            event = {**self.tags, **extra, "process": process, "type": "invoke", "f": f,
                     "key": key, "value": value, "time": t, "node": node,
                     "level": level or self.default_level}
            handle = Handle(process, f, key, value, node, level or self.default_level, t,
                            len(self._events))
            self._events.append(event)
            self._open[process] = handle
            return handle

    def complete(
        self,
        handle: Handle,
        type: str,  # Jepsen's field name: "ok" | "fail" | "info"
        value: Any = SAME,
        error: str | None = None,
        *,
        node: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Record the completion of ``handle``: ``ok`` (it took effect), ``fail`` (it certainly
        did not), ``info`` (unknown). ``value`` defaults to the invocation's value (pass the
        value read for a read). ``node``: who answered, when it differs from the node asked.
        Returns the event."""
        if type not in COMPLETIONS:
            raise ValueError(f"not a completion type: {type!r}")
        with self._lock:
            if self._open.get(handle.process) is not handle:
                raise ValueError(f"handle {handle} is not open (completed twice?)")
            del self._open[handle.process]
            event: dict[str, Any] = {
                **self.tags, **extra, "process": handle.process, "type": type, "f": handle.f,
                "key": handle.key, "value": handle.value if value is SAME else value,
                "time": self.now(), "node": handle.node if node is None else node,
                "level": handle.level,
            }
            if error is not None:
                event["error"] = error
            self._events.append(event)
            return event

    def open_handles(self) -> list[Handle]:
        """Invocations not completed yet (they count as ``info`` to the checkers)."""
        with self._lock:
            return list(self._open.values())

    def close_open(self, error: str = "never completed") -> int:
        """Complete every open invocation as ``info`` (e.g. clients cancelled at the end);
        the number closed."""
        handles = self.open_handles()
        for h in handles:
            try:
                self.complete(h, "info", error=error)
            except ValueError:  # completed meanwhile
                continue
        return len(handles)

    # ------------------------------------------------------------------ reading

    @property
    def events(self) -> list[dict[str, Any]]:
        """A snapshot of the events, in the order recorded."""
        with self._lock:
            return [dict(e) for e in self._events]

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.events)

    def write_jsonl(self, path: str | Path) -> None:
        """One event per line."""
        write_jsonl(path, self.events)

    @staticmethod
    def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
        """The events of a history file."""
        return load_jsonl(path)


def write_jsonl(path: str | Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write ``rows`` as JSON lines (atomically: a temp file renamed into place)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(dumps(row))
            fh.write("\n")
    tmp.replace(p)


def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The dicts of a JSON-lines file (blank lines skipped)."""
    out: list[dict[str, Any]] = []
    with Path(path).open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{n}: not a JSON object")
            out.append(row)
    return out


def merge(histories: Iterable[History]) -> list[dict[str, Any]]:
    """The events of several histories (sharing one origin) in time order (stable)."""
    rows = [e for h in histories for e in h.events]
    rows.sort(key=lambda e: float(e["time"]))
    return rows


def pair_ops(events: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each invocation with its completion: dicts ``{invoke, complete, type, latency}`` (an
    invocation never completed: type ``info``, complete ``None``, latency ``None``). Processes
    are told apart per ``workload`` tag, so merged histories pair correctly."""
    pending: dict[tuple[Any, Any], Mapping[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for e in events:
        who = (e.get("workload"), e.get("process"))
        if e.get("type") == "invoke":
            pending[who] = e
        elif e.get("type") in COMPLETIONS:
            inv = pending.pop(who, None)
            if inv is None:
                continue
            out.append({"invoke": dict(inv), "complete": dict(e), "type": e["type"],
                        "latency": float(e["time"]) - float(inv["time"])})
    for inv in pending.values():
        out.append({"invoke": dict(inv), "complete": None, "type": "info", "latency": None})
    return out


# ---------------------------------------------------------------------------- the nemesis


@dataclass(frozen=True, slots=True)
class Window:
    """A fault's active interval ``[start, stop]`` (stop ``None``: never healed)."""

    fault: str
    start: float
    stop: float | None
    detail: Mapping[str, Any]


class Timeline:
    """The nemesis's events ``{time, kind: start|stop, fault, detail}`` on the run's clock."""

    def __init__(self, origin: float | None = None) -> None:
        self.origin = time.monotonic() if origin is None else origin
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.monotonic() - self.origin

    def _add(self, kind: str, fault: str, detail: Mapping[str, Any] | None) -> dict[str, Any]:
        with self._lock:
            event = {"time": self.now(), "kind": kind, "fault": fault,
                     "detail": dict(detail or {})}
            self._events.append(event)
            return event

    def start(self, fault: str, detail: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Record that ``fault`` begins (call it before injecting)."""
        return self._add("start", fault, detail)

    def stop(self, fault: str, detail: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Record that ``fault`` has ended (call it once healed)."""
        return self._add("stop", fault, detail)

    @property
    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self._events]

    def windows(self) -> list[Window]:
        return windows(self.events)

    def write_jsonl(self, path: str | Path) -> None:
        write_jsonl(path, self.events)

    @staticmethod
    def load_jsonl(path: str | Path) -> list[dict[str, Any]]:
        return load_jsonl(path)


def windows(events: Iterable[Mapping[str, Any]]) -> list[Window]:
    """Pair each ``start`` with the next ``stop`` of the same fault (FIFO), in start order."""
    open_: dict[str, list[Mapping[str, Any]]] = {}
    out: list[Window] = []
    for e in events:
        fault = str(e["fault"])
        if e["kind"] == "start":
            open_.setdefault(fault, []).append(e)
        elif e["kind"] == "stop" and open_.get(fault):
            s = open_[fault].pop(0)
            out.append(Window(fault, float(s["time"]), float(e["time"]), s.get("detail", {})))
    for fault, starts in open_.items():
        out.extend(Window(fault, float(s["time"]), None, s.get("detail", {})) for s in starts)
    out.sort(key=lambda w: w.start)
    return out
