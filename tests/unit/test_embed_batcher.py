"""EmbedBatcher: batching under load, the bounded queue (429 overloaded), the query-vector LRU."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from spine.cluster.embedding import EmbedBatcher
from spine.core.errors import Overloaded
from spine.storage.embedders import HashEmbedder


class GatedEmbedder:
    """A hash embedder whose embed() waits for a gate, and which records every call."""

    def __init__(self) -> None:
        self.inner = HashEmbedder(16)
        self.name, self.dim, self.fingerprint = "gated", 16, "f"
        self.gate = threading.Event()
        self.calls: list[list[str]] = []

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls.append(list(texts))
        assert self.gate.wait(10)
        return self.inner.embed(texts)


async def _until(cond: object, deadline_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not cond():  # type: ignore[operator]
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.005)


@pytest.mark.asyncio
async def test_requests_queued_behind_a_batch_go_as_one_batch() -> None:
    emb = GatedEmbedder()
    b = EmbedBatcher(emb)
    try:
        first = asyncio.ensure_future(b.embed(["a"]))
        await _until(lambda: len(emb.calls) == 1)
        rest = [asyncio.ensure_future(b.embed([f"t{i}"])) for i in range(5)]
        await asyncio.sleep(0)
        emb.gate.set()
        await asyncio.gather(first, *rest)
        assert emb.calls == [["a"], [f"t{i}" for i in range(5)]]
    finally:
        emb.gate.set()
        b.close()


@pytest.mark.asyncio
async def test_a_full_queue_answers_overloaded_at_once() -> None:
    emb = GatedEmbedder()
    b = EmbedBatcher(emb, queue_texts=3)
    try:
        running = asyncio.ensure_future(b.embed(["busy"]))
        await _until(lambda: len(emb.calls) == 1)
        queued = asyncio.ensure_future(b.embed(["x", "y", "z"]))  # fills the queue exactly
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="queue_texts"):
            await b.embed(["one too many"])
        assert b.refused == 1
        emb.gate.set()
        assert len(await queued) == 3 and len(await running) == 1
        assert len(await b.embed(["room again"])) == 1
    finally:
        emb.gate.set()
        b.close()


@pytest.mark.asyncio
async def test_identical_queries_reuse_the_bounded_cache() -> None:
    emb = GatedEmbedder()
    emb.gate.set()
    b = EmbedBatcher(emb, cache_queries=2)
    try:
        v1 = await b.embed_query(["where are the backups"])
        v2 = await b.embed_query(["where are the backups"])
        assert v1 == v2 and v1[0] is not None
        assert len(emb.calls) == 1 and b.cache_hits == 1
        await b.embed_query(["q2", "q3", "q3"])  # duplicates in one call embed once
        assert emb.calls[-1] == ["q2", "q3"]
        assert len(b._cache) == 2  # bounded: the oldest entry went
        await b.embed_query(["where are the backups"])
        assert len(emb.calls) == 3
        # writes never go through the cache
        await b.embed(["q3"])
        assert emb.calls[-1] == ["q3"]
    finally:
        b.close()


@pytest.mark.asyncio
async def test_cache_off_embeds_every_query() -> None:
    emb = GatedEmbedder()
    emb.gate.set()
    b = EmbedBatcher(emb, cache_queries=0)
    try:
        await b.embed_query(["q"])
        await b.embed_query(["q"])
        assert len(emb.calls) == 2
    finally:
        b.close()
