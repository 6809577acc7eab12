"""Cluster search (DESIGN §7): embed once, ask every live node, merge, honour the session.

Each node searches its own index and returns its local top k with the records. A record in the
global top k is in the local top k of every node that holds it, so merging loses nothing but what
the ANN approximates. The coordinator keeps the newest version of each id, drops tombstones, and
then applies the caller's session token: keys the client wrote or deleted are re-read at session
level, so its own recent writes and deletes show at once even where an index lags.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import numpy as np

from spine.cluster.coordinator import Coordinator
from spine.cluster.fanout import FanOut, missing_shards
from spine.core.consistency import Level
from spine.core.errors import InvalidInput, QuorumUnavailable, SessionUnavailable
from spine.core.messages import Search
from spine.core.model import Record
from spine.core.session import SessionToken
from spine.core.validation import Limits, SearchQuery, matches, normalise, search_body
from spine.storage.indexer import Indexer

EmbedFn = Callable[[list[str]], Awaitable[list[bytes | None]]]


class SearchService:
    """Validates a search, fans it out, and merges the answers."""

    def __init__(
        self,
        indexer: Indexer,
        fanout: FanOut,
        coordinator: Coordinator,
        embed: EmbedFn,
        limits: Limits,
        dim: int,
    ) -> None:
        self.indexer = indexer
        self.fanout = fanout
        self.coordinator = coordinator
        self.embed = embed
        self.limits = limits
        self.dim = dim

    async def local(self, msg: Search) -> list[Any]:
        """This node's answer to a Search message: [[record wire without vector, score], ...]."""
        vec = np.frombuffer(msg.vector, dtype=np.float32)
        found = await self.indexer.search(msg.namespace, vec, msg.k, msg.filters)
        return [[_strip(r).to_wire(), s] for r, s in found]

    async def handle(
        self, namespace: str, body: Any, token: SessionToken | None, level: Level | None
    ) -> dict[str, Any]:
        """POST /v1/ns/{ns}/search."""
        q = search_body(body, self.limits, self.dim)
        if q.query is not None:
            (raw,) = await self.embed([q.query])
            if raw is None:
                raise InvalidInput("query has no words to search for", field="query")
        else:
            assert q.vector is not None
            raw = normalise(q.vector)
        msg = Search(namespace, raw, q.k, q.filters_wire())
        replies = await self.fanout.ask_cover(msg)
        best: dict[str, tuple[Record, float]] = {}
        for answer in replies.values():
            for wire, score in answer:
                rec = Record.from_wire(wire)
                prev = best.get(rec.id)
                if prev is None or rec.version > prev[0].version:
                    best[rec.id] = (rec, float(score))
        unchecked: set[int] = set()
        if token is not None:
            unchecked = await self._apply_session(namespace, q, raw, token, level, best)
        ranked = sorted(best.values(), key=lambda rs: (-rs[1], rs[0].id))[: q.k]
        missing = sorted(set(missing_shards(self.fanout.ring(), replies)) | unchecked)
        return {
            "results": [{"id": r.id, "score": s, "record": r.public()} for r, s in ranked],
            "partial": bool(missing),
            "missing_shards": missing,
        }

    async def _apply_session(
        self,
        namespace: str,
        q: SearchQuery,
        query_vec: bytes,
        token: SessionToken,
        level: Level | None,
        best: dict[str, tuple[Record, float]],
    ) -> set[int]:
        """Overlay the session's own writes; the shards whose keys could not be re-read."""
        unchecked: set[int] = set()
        prefix = namespace + "/"
        qv = np.frombuffer(query_vec, dtype=np.float32)
        for key, floor in list(token.entries.items()):
            if not key.startswith(prefix):
                continue
            mid = key[len(prefix):]
            have = best.get(mid)
            if have is not None and have[0].version >= floor:
                continue
            try:
                rec, _, _ = await self.coordinator.get(namespace, mid, level, token)
                if rec is not None:
                    token.observe(key, rec.version)
            except (QuorumUnavailable, SessionUnavailable):
                # No replica can say what the session wrote here: report the shard as missing
                # (partial), as a search without the token would, rather than fail the search.
                unchecked.add(self.fanout.ring().shard(namespace, mid))
                continue
            if rec is None or rec.deleted or rec.vector is None:
                best.pop(mid, None)
                continue
            if not matches(q.tags_all, q.tags_any, q.agent_id, q.metadata,
                           frozenset(rec.tags), rec.agent_id, rec.metadata):
                best.pop(mid, None)
                continue
            score = float(np.dot(qv, np.frombuffer(rec.vector, dtype=np.float32)))
            if q.min_score is not None and score < q.min_score:
                best.pop(mid, None)
                continue
            best[mid] = (_strip(rec), score)
        return unchecked


def _strip(rec: Record) -> Record:
    return replace(rec, vector=None)
