"""Retrieval quality on tests/data/paraphrase_corpus.json (issue 16): the semantic default finds
paraphrases the lexical hash embedder cannot. Figures per embedder: bench/embed_bench.py --quality.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from spine.storage.embedders import make_embedder, minilm_available

REPO = Path(__file__).resolve().parents[2]


def _bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("embed_bench", REPO / "bench/embed_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("embed_bench", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def evaluate() -> Any:
    return _bench().evaluate


def test_the_corpus_is_well_formed() -> None:
    memories, queries = _bench().load_corpus()
    assert len(memories) >= 80 and len(queries) >= 40
    for q in queries:
        assert q["relevant"] and all(r in memories for r in q["relevant"])


def test_hash_is_lexical_and_misses_the_paraphrase(evaluate: Any) -> None:
    """The baseline the issue reports: the kitten query does not find the cat."""
    r = evaluate(make_embedder("hash", 384))
    assert r["ranks"]["a kitten watching sparrows"] > 1
    assert r["ndcg@10"] < 0.5


@pytest.mark.skipif(not minilm_available(), reason="needs the default install's minilm")
def test_semantic_default_ranks_the_paraphrase_first(evaluate: Any) -> None:
    r = evaluate(make_embedder("minilm", 384, threads=1))
    assert r["ranks"]["a kitten watching sparrows"] == 1
    assert r["recall@10"] >= 0.95
    assert r["ndcg@10"] >= 0.85
