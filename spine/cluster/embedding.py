"""Embeddings computed off the event loop, batched under load.

While one batch is being embedded on the embedding thread, later requests queue up; when it
finishes, everything queued goes as the next batch. Under light load a request runs alone at once;
under heavy load batches grow by themselves, with no timer to tune.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence
from typing import Any

import numpy as np

from spine.storage.embedders import Embedder


class EmbedBatcher:
    """Turns texts into float32 vector bytes (None for a text with nothing to embed)."""

    def __init__(self, embedder: Embedder, max_batch: int = 1024) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="embed")
        self._pending: list[tuple[list[str], asyncio.Future[list[bytes | None]]]] = []
        self._running = False
        self.batches = 0

    async def embed(self, texts: Sequence[str]) -> list[bytes | None]:
        """Vectors for `texts`, in order."""
        if not texts:
            return []
        fut: asyncio.Future[list[bytes | None]] = asyncio.get_running_loop().create_future()
        self._pending.append((list(texts), fut))
        if not self._running:
            self._kick()
        return await fut

    def _kick(self) -> None:
        batch: list[tuple[list[str], asyncio.Future[list[bytes | None]]]] = []
        size = 0
        while self._pending and (not batch or size + len(self._pending[0][0]) <= self.max_batch):
            item = self._pending.pop(0)
            batch.append(item)
            size += len(item[0])
        texts = [t for ts, _ in batch for t in ts]
        self._running = True
        self.batches += 1
        loop = asyncio.get_running_loop()
        cf = loop.run_in_executor(self._pool, self.embedder.embed, texts)
        cf.add_done_callback(lambda f: self._done(batch, f))

    def _done(
        self,
        batch: list[tuple[list[str], asyncio.Future[list[bytes | None]]]],
        result: asyncio.Future[Any],
    ) -> None:
        self._running = False
        exc = result.exception()
        if exc is not None:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
        else:
            rows = np.asarray(result.result(), dtype=np.float32)
            i = 0
            for texts, fut in batch:
                out: list[bytes | None] = []
                for row in rows[i : i + len(texts)]:
                    out.append(row.tobytes() if np.any(row) else None)
                i += len(texts)
                if not fut.done():
                    fut.set_result(out)
        if self._pending:
            self._kick()

    def close(self) -> None:
        """Stop the embedding thread."""
        self._pool.shutdown(wait=False, cancel_futures=True)
