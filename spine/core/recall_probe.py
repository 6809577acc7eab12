"""Recall probes: how well an approximate (HNSW) index answers, measured on live searches.

Some data defeats a graph index (i.i.d. random vectors, for one: no setting of M and ef reaches
recall@10 0.95 on them), and no parameter says so in advance. So a sample of the searches a
namespace answers from its graph is also answered exactly, and the overlap of the two top-k
lists is the graph's recall on that query. The probes' running average decides whether the
namespace is better searched exactly (Qdrant's full-scan threshold, set by measurement).

Pure: the index asks `due` before a graph search and hands both answers to `fold`.
"""

from __future__ import annotations

from collections.abc import Sequence

_FIRST = 8  # the first searches all probe, so a poor graph is found at once
_WEIGHT = 0.2  # of the newest probe in the running average (about the last five count)


class RecallProbe:
    """The measured recall of one namespace's graph, and when to measure it again."""

    def __init__(self, target_pct: int = 95, every: int = 64) -> None:
        self.target = target_pct / 100
        self.every = every  # probe every `every`-th graph search after the first ones (0: never)
        self.recall: float | None = None  # None until a probe has measured it
        self._searches = 0

    @property
    def poor(self) -> bool:
        """Whether the probes measured a recall below the target."""
        return self.recall is not None and self.recall < self.target

    def due(self, pending: int, live: int) -> bool:
        """Whether this unfiltered graph search is also run exactly: the first searches once
        the graph holds 90 % of the `live` records (`pending` are not in it yet), then every
        `every`-th."""
        if self.every <= 0 or 10 * pending > live:
            return False  # a half-built graph's answers are mostly the exact scan of its backlog
        self._searches += 1
        return self._searches <= _FIRST or self._searches % self.every == 0

    def fold(
        self, found: Sequence[tuple[str, float]], truth: Sequence[tuple[str, float]]
    ) -> None:
        """One probe: the graph's answer against the exact one, into the running average."""
        if truth:
            hit = len({key for key, _ in found} & {key for key, _ in truth}) / len(truth)
            old = hit if self.recall is None else self.recall
            self.recall = (1 - _WEIGHT) * old + _WEIGHT * hit
