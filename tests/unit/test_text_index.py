"""The full-text index (DESIGN §14): the tokeniser keeps identifiers whole and in pieces, BM25
ranks a rare term first, the coordinator's estimate for a session's own write is tantivy's own
score, and through the Indexer (real LMDB, no sockets) the text index follows every commit,
is rebuilt to exactly LMDB's live records at recovery, and after a failed tantivy commit is
rebuilt from LMDB at the catch-up.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import numpy as np
import pytest

from spine.storage.indexer import Indexer
from spine.storage.lmdb_store import Store
from spine.storage.text_index import TextIndex, TextIndexSet, record_tokens, tokens
from tests.unit.test_indexer import Model, apply, caught_up, opened, random_ops, unit

pytestmark = pytest.mark.timeout(60)

NOFILTER: list[object] = [[], [], None, None, None]


def test_tokens_keep_identifiers_whole_and_in_pieces() -> None:
    assert tokens("Closed INC-48213, see parseConfigV2() and E4021.") == [
        "closed", "inc-48213", "inc", "48213", "see", "parseconfigv2", "parse", "config", "v2",
        "e4021",
    ]
    assert tokens("load_batch_rows_v3 failed") == [
        "load_batch_rows_v3", "load", "batch", "rows", "v3", "failed"]
    assert tokens("naïve café 東京") == ["naïve", "café", "東京"]
    assert tokens("  ,,, ") == []
    assert record_tokens("hi", ["Ops-Team"]) == ["hi", "ops-team", "ops-team", "ops", "team"]


def test_bm25_ranks_the_rare_identifier_first_and_estimate_is_tantivys_score() -> None:
    index = TextIndex()
    texts = {f"m{i}": f"the billing service timed out, ticket INC-{10000 + i}" for i in range(50)}
    for mid, text in texts.items():
        index.upsert(mid, tokens(text))
    assert index.search(tokens("billing"), 5) == []  # nothing is searchable before a commit
    index.commit()
    hits = index.search(tokens("what happened with INC-10017 in billing?"), 5)
    assert hits[0][0] == "m17" and hits[0][1] > 2 * hits[1][1]
    est = index.estimate(tokens("what happened with INC-10017 in billing?"), tokens(texts["m17"]))
    assert est == pytest.approx(hits[0][1], rel=1e-4)
    assert index.estimate(tokens("cocoa"), tokens(texts["m17"])) is None

    index.upsert("m17", tokens("now about something else"))  # overwrite drops the old terms
    index.delete("m18")
    index.delete("absent")
    index.commit()
    assert index.search(["inc-10017", "inc-10018"], 5) == []
    assert index.search(tokens("something"), 5)[0][0] == "m17"
    assert len(index) == index.searchable() == 49


def test_index_set_bounds_open_writers_and_keeps_every_namespace_searchable() -> None:
    texts = TextIndexSet(max_writers=2)
    for n in range(5):
        texts.upsert(f"ns{n}", "a", tokens(f"word{n} shared"))
        texts.commit()
    open_writers = [ns for ns in texts.namespaces() if (ix := texts.peek(ns)) and ix.has_writer]
    assert len(open_writers) == 2
    for n in range(5):
        ix = texts.peek(f"ns{n}")
        assert ix is not None and ix.search(tokens(f"word{n}"), 3) == [
            ("a", pytest.approx(ix.search(tokens(f"word{n}"), 3)[0][1]))]
    texts.delete("ns0", "a")  # reopens a closed writer
    texts.commit()
    ix0 = texts.peek("ns0")
    assert ix0 is not None and ix0.search(tokens("word0"), 3) == []
    texts.close()


def assert_text_matches_lmdb(indexer: Indexer, store: Store) -> None:
    """The text index holds exactly LMDB's live records, each searchable by its content."""
    live: dict[str, dict[str, str]] = {}
    for rec in store.iter_all():
        if not rec.deleted:
            live.setdefault(rec.namespace, {})[rec.id] = rec.content
    for ns in set(live) | set(indexer.texts.namespaces()):
        ix = indexer.texts.peek(ns)
        want = live.get(ns, {})
        got = set() if ix is None else ix.ids()
        assert got == set(want), (ns, sorted(got ^ set(want)))
        if ix is None:
            continue
        assert ix.searchable() == len(want), ns
        for mid, content in want.items():
            assert ix.search(tokens(content), 1)[0][0] == mid, (ns, mid)


@pytest.mark.asyncio
async def test_text_index_follows_history_and_is_rebuilt_from_lmdb_at_start(
    tmp_path: Path,
) -> None:
    rng, nrng = random.Random(7), np.random.default_rng(7)
    model = Model()
    async with opened(tmp_path) as o:
        for _ in range(6):
            await apply(o.store, o.indexer, random_ops(model, rng, nrng, 40))
            assert_text_matches_lmdb(o.indexer, o.store)
        found = await o.indexer.keyword("alpha", "alpha", 1000, NOFILTER)
        assert {r.id for r, _ in found} == {m for (ns, m) in model.live if ns == "alpha"}
        tagged = await o.indexer.keyword("alpha", "alpha", 1000, [["red"], [], None, None, None])
        assert {r.id for r, _ in tagged} == {
            m for (ns, m), r in model.live.items() if ns == "alpha" and "red" in r.tags}
        await o.indexer.persist()
        await apply(o.store, o.indexer, random_ops(model, rng, nrng, 40))  # after the snapshot
    # The text index lives in RAM: a restart after a crash and one after a clean stop both
    # rebuild it from LMDB's scan (beside the vector snapshot and its replay).
    async with opened(tmp_path) as o:
        assert o.recovered.startswith("loaded snapshot")
        assert_text_matches_lmdb(o.indexer, o.store)


@pytest.mark.asyncio
async def test_a_failed_text_commit_is_rebuilt_from_lmdb_at_catch_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nrng = np.random.default_rng(3)
    model = Model()
    async with opened(tmp_path) as o:
        await apply(o.store, o.indexer, [model.put("alpha", "a", unit(nrng))])
        real = TextIndexSet.commit
        fail = {"n": 1}

        def flaky(self: TextIndexSet) -> None:
            if fail["n"]:
                fail["n"] -= 1
                raise OSError("injected tantivy commit failure")
            real(self)

        monkeypatch.setattr(TextIndexSet, "commit", flaky)
        await o.store.apply([model.put("alpha", "b", unit(nrng))])
        # a search asks for the commit (nothing else does within TEXT_IDLE_COMMIT_S); it fails
        assert not await o.indexer.caught_up(0.2)
        deadline = time.monotonic() + 10
        while not o.indexer.behind:
            assert time.monotonic() < deadline, "the failed commit never made the indexer behind"
            await asyncio.sleep(0.005)
        assert o.indexer.update_failures == 1
        assert await o.indexer.catch_up() >= 0
        assert not o.indexer.behind
        await caught_up(o.indexer, o.store)
        assert_text_matches_lmdb(o.indexer, o.store)

