"""Embeddings computed off the event loop, batched under load, bounded, and cached for queries.

While one batch is being embedded on the embedding thread, later requests queue up; when it
finishes, everything queued goes as the next batch. Under light load a request runs alone at once;
under heavy load batches grow by themselves, with no timer to tune. The queue is bounded in texts
(`embedder.queue_texts`): past it a request is refused with 429 overloaded at once rather than
waiting behind seconds of model work. Query texts repeat (agents ask the same things), so their
vectors are kept in a bounded LRU (`embedder.cache_queries`); writes are embedded once by their
coordinator and never cached.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from spine.core.errors import Overloaded
from spine.storage.embedders import Embedder

_Item = tuple[list[str], "asyncio.Future[list[bytes | None]]"]


class EmbedBatcher:
    """Turns texts into float32 vector bytes (None for a text with nothing to embed)."""

    def __init__(self, embedder: Embedder, max_batch: int = 1024, *, queue_texts: int = 4096,
                 cache_queries: int = 4096) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self.queue_texts = queue_texts
        self.cache_queries = cache_queries
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="embed")
        self._pending: list[_Item] = []
        self._queued = 0  # texts in _pending
        self._running = False
        self._cache: OrderedDict[str, bytes | None] = OrderedDict()
        self.batches = 0
        self.texts = 0
        self.refused = 0
        self.cache_hits = 0
        self.cache_misses = 0
        load = getattr(embedder, "load", None)
        # A model loads on the embedding thread at once: the first request waits behind it
        # instead of paying for it, and the event loop never does.
        self._loading = self._pool.submit(load) if callable(load) else None

    async def ready(self) -> None:
        """Wait until the model has loaded (at once for a model-free embedder); raises if the
        load failed."""
        if self._loading is not None:
            await asyncio.wrap_future(self._loading)

    async def embed(self, texts: Sequence[str]) -> list[bytes | None]:
        """Vectors for `texts`, in order; Overloaded if the queue is full."""
        if not texts:
            return []
        if self._queued and self._queued + len(texts) > self.queue_texts:
            self.refused += 1
            raise Overloaded(f"{self._queued} texts are waiting to be embedded "
                             f"(embedder.queue_texts {self.queue_texts})")
        fut: asyncio.Future[list[bytes | None]] = asyncio.get_running_loop().create_future()
        self._pending.append((list(texts), fut))
        self._queued += len(texts)
        if not self._running:
            self._kick()
        return await fut

    async def embed_query(self, texts: Sequence[str]) -> list[bytes | None]:
        """As `embed`, through the bounded LRU of query vectors."""
        if self.cache_queries <= 0:
            return await self.embed(texts)
        out: list[bytes | None] = []
        missing: list[str] = []
        for text in texts:
            if text in self._cache:
                self._cache.move_to_end(text)
                self.cache_hits += 1
            else:
                missing.append(text)
        if missing:
            self.cache_misses += len(missing)
            uniq = list(dict.fromkeys(missing))
            for text, vec in zip(uniq, await self.embed(uniq), strict=True):
                self._cache[text] = vec
                self._cache.move_to_end(text)
            while len(self._cache) > self.cache_queries:
                self._cache.popitem(last=False)
        for text in texts:
            if text in self._cache:
                out.append(self._cache[text])
            else:  # evicted while we waited (a tiny cache under heavy load): embed it again
                (vec,) = await self.embed([text])
                out.append(vec)
        return out

    def _kick(self) -> None:
        batch: list[_Item] = []
        size = 0
        while self._pending and (not batch or size + len(self._pending[0][0]) <= self.max_batch):
            item = self._pending.pop(0)
            batch.append(item)
            size += len(item[0])
        self._queued -= size
        texts = [t for ts, _ in batch for t in ts]
        self._running = True
        self.batches += 1
        self.texts += len(texts)
        loop = asyncio.get_running_loop()
        cf = loop.run_in_executor(self._pool, self.embedder.embed, texts)
        cf.add_done_callback(lambda f: self._done(batch, f))

    def _done(self, batch: list[_Item], result: asyncio.Future[Any]) -> None:
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
