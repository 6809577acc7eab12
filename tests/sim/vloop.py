"""An asyncio event loop on virtual time, so the real node code runs unchanged and reproducibly.

The loop never waits: when no callback is ready, its selector jumps the clock to the next timer
(FoundationDB's simulation, or the `looptime` pytest plugin). Work that asks for a thread
(`run_in_executor`, `asyncio.to_thread`) runs inline, at once, on the loop; the LMDB store runs
in its "loop" writer mode. With no thread and no socket, a run is a pure function of its seed.

Every task is attributed to a simulated node through a context variable (`NODE`): tasks inherit
their creator's context, so a node's services, and the handlers its peers' calls start on it, all
belong to it, and `crash(node)` cancels exactly them.
"""

from __future__ import annotations

import asyncio
import contextvars
import selectors
from collections.abc import Callable, Coroutine, Generator
from concurrent.futures import Executor
from typing import Any, TypeVar

NODE: contextvars.ContextVar[str | None] = contextvars.ContextVar("sim_node", default=None)

T = TypeVar("T")


class Stalled(RuntimeError):
    """Nothing is ready and no timer is set: every task waits for something that cannot come."""


class _VirtualSelector(selectors.BaseSelector):
    """Holds registrations (the loop's self-pipe) but never polls them: `select` moves time."""

    def __init__(self, loop: VirtualLoop) -> None:
        self._loop = loop
        self._keys: dict[int, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return self._keys.pop(fd)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise Stalled("no callback is ready and no timer is set")
        self._loop.advance(timeout)
        return []

    def get_map(self) -> Any:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


class VirtualLoop(asyncio.SelectorEventLoop):
    """A selector loop whose `time()` is virtual and whose executors run inline."""

    def __init__(self) -> None:
        self._now = 0.0
        super().__init__(_VirtualSelector(self))
        # Each node's live tasks in creation order (a dict as an ordered set): a crash cancels
        # them in that order, the same in every process. (Sorted by name, "Task-N" from one
        # counter per process, the order hung on how many tasks the process had made before:
        # two runs of a seed in one process, or a pool worker's later seeds, could differ.)
        self.tasks: dict[str, dict[asyncio.Task[Any], None]] = {}
        self.set_task_factory(self._make_task)  # type: ignore[arg-type]

    def time(self) -> float:
        return self._now

    def advance(self, dt: float) -> None:
        """Move virtual time forward (the selector's 'wait')."""
        if dt > 0:
            self._now += dt

    def call_later(  # type: ignore[override]
        self, delay: float, callback: Callable[..., Any], *args: Any,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        # A positive delay smaller than the clock's float resolution at `now` would not move
        # time: a loop waiting `deadline - now` for a deadline a hair ahead would spin forever
        # on virtual time (on a real clock time moves by itself). One microsecond at least.
        if 0 < delay < 1e-6:
            delay = 1e-6
        # As the base class's call_later (a TimerHandle at now + delay), one call shorter: a
        # seed sets ~6,000 timers.
        return self.call_at(self._now + delay, callback, *args, context=context)

    def call_soon_threadsafe(  # type: ignore[override]
        self, callback: Callable[..., Any], *args: Any, context: contextvars.Context | None = None
    ) -> asyncio.Handle:
        return self.call_soon(callback, *args, context=context)

    def run_in_executor(  # type: ignore[override]
        self, executor: Executor | None, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        fut: asyncio.Future[T] = self.create_future()
        try:
            fut.set_result(func(*args))
        except BaseException as e: # handed to the awaiting task, as a thread would
            fut.set_exception(e)
        return fut

    def _make_task(
        self, loop: asyncio.AbstractEventLoop,
        coro: Generator[Any, None, T] | Coroutine[Any, Any, T], **kwargs: Any,
    ) -> asyncio.Task[T]:
        task: asyncio.Task[T] = asyncio.Task(coro, loop=loop, **kwargs)
        ctx = kwargs.get("context")
        node = ctx.get(NODE) if ctx is not None else NODE.get()
        if node is not None:
            owned = self.tasks.setdefault(node, {})
            owned[task] = None
            task.add_done_callback(lambda t: owned.pop(t, None))
        return task

    def cancel_node(self, node: str) -> int:
        """Cancel every task of `node` (its crash); how many."""
        owned = self.tasks.pop(node, {})
        for t in list(owned):
            t.cancel()
        return len(owned)


def node_context(node: str) -> contextvars.Context:
    """A context in which new tasks belong to `node`."""
    ctx = contextvars.copy_context()
    ctx.run(NODE.set, node)
    return ctx
