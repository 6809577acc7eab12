"""Group commit: callers queue ops, one committer carries out a group at a time (DESIGN §6).

`commit(group)` does the work (for the store, one LMDB write transaction) and returns one result
per op, or raises, which fails every op of the group. A caller's future resolves only after
`commit` returned, so nothing is acknowledged before it is durable. Two ways to run it:

- "thread": a committer thread drains the queue, up to `max_batch` ops per group (LMDB write
  transactions must stay on the thread that began them). A node.
- "loop": the ops submitted during one event-loop iteration commit as groups in a callback at
  the loop's next turn; no thread runs. The deterministic simulator, whose crash is `abandon()`:
  what was submitted and not yet committed is lost, as with a killed process.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

Op = TypeVar("Op")
WriterMode = Literal["thread", "loop"]


@dataclass(slots=True)
class _Queued(Generic[Op]):
    op: Op
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


class GroupCommit(Generic[Op]):
    """Queues ops and commits them in groups, resolving each caller after its group's commit."""

    def __init__(
        self,
        commit: Callable[[Sequence[Op]], Sequence[Any]],
        *,
        mode: WriterMode = "thread",
        max_batch: int = 512,
        name: str = "group-commit",
    ) -> None:
        self._commit = commit
        self.mode = mode
        self._max_batch = max_batch
        self._name = name
        self._queue: queue.SimpleQueue[_Queued[Op] | None] = queue.SimpleQueue()
        self._pending: list[_Queued[Op]] = []  # loop mode: submitted, to commit at the next turn
        self._thread: threading.Thread | None = None
        self._open = False
        self.groups = 0  # groups committed
        self.ops = 0  # ops committed

    @property
    def running(self) -> bool:
        """Whether `submit` is accepted."""
        return self._open

    def start(self) -> None:
        """Accept ops (and, in thread mode, start the committer thread)."""
        self._open = True
        if self._thread is None and self.mode == "thread":
            self._thread = threading.Thread(target=self._drain, name=self._name, daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Commit what is queued, then refuse further ops and stop the committer thread."""
        self._flush()
        self._open = False
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def abandon(self) -> None:
        """Drop what is submitted but not committed and refuse further ops, as a process killed
        before its next commit would (the simulator's crash, in loop mode). The dropped callers
        never resolve. In thread mode a group already being committed completes first."""
        self._pending.clear()
        if self._thread is not None:
            with contextlib.suppress(queue.Empty):
                while True:
                    self._queue.get_nowait()
            self._queue.put(None)
        self._open = False  # only now: `running` turns False once the queue is dropped
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def submit(self, op: Op) -> asyncio.Future[Any]:
        """Queue `op`; the future resolves to its result once its group has committed."""
        if not self._open:
            raise RuntimeError(f"{self._name} is not running")
        loop = asyncio.get_running_loop()
        queued = _Queued(op, loop.create_future(), loop)
        if self.mode == "loop":
            self._pending.append(queued)
            if len(self._pending) == 1:
                loop.call_soon(self._flush)
        else:
            self._queue.put(queued)
        return queued.future

    def _flush(self) -> None:
        """Loop mode: commit what was submitted since the last turn, `max_batch` ops a group."""
        batch, self._pending = self._pending, []
        for i in range(0, len(batch), self._max_batch):
            self._run(batch[i:i + self._max_batch])

    def _drain(self) -> None:
        """Thread mode: take what is queued, up to `max_batch`, commit it; until None."""
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            self._run(batch)
            if stop:
                return

    def _run(self, batch: list[_Queued[Op]]) -> None:
        try:
            results = self._commit([q.op for q in batch])
        except Exception as e:  # the whole group failed: fail every caller in it
            for q in batch:
                self._resolve(q, _set_exception, e)
            return
        self.groups += 1
        self.ops += len(batch)
        for q, res in zip(batch, results, strict=True):
            self._resolve(q, _set_result, res)

    def _resolve(self, q: _Queued[Op], how: Callable[[asyncio.Future[Any], Any], None],
                 value: Any) -> None:
        if self.mode == "loop":
            q.loop.call_soon(how, q.future, value)
        else:
            q.loop.call_soon_threadsafe(how, q.future, value)


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
