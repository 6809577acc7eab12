"""A readers–writer lock for the vector index (hnswlib queries run beside each other; resizes
and updates must run alone)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

__all__ = ["RWLock"]


class RWLock:
    """Many readers or one writer; a waiting writer holds back new readers (no starvation).

    Not reentrant: code holding it (a search predicate included) must not call back into the
    index, or it deadlocks as soon as a writer is waiting.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
