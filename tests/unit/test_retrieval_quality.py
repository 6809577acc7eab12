"""Retrieval quality of the three search modes (DESIGN §14) on tests/data/retrieval_corpus.json,
through bench/retrieval.py (the node's text index, an exact cosine scan, the coordinator's RRF):
hybrid beats vector and keyword alone on recall@10 and on nDCG@10, with the hash embedder (3,000
MiniLM embeddings take minutes on a small box; `python bench/retrieval.py` prints those too:
hybrid 0.998 / 0.837 against keyword's 0.906 / 0.831 and vector's 0.773 / 0.580).
Each half's strength shows in its kind of query, so the win is not an accident of averaging.
"""

from __future__ import annotations

import pytest

from bench.retrieval import evaluate, load
from spine.storage.embedders import HashEmbedder

pytestmark = pytest.mark.timeout(120)


def test_hybrid_beats_vector_and_keyword_alone() -> None:
    corpus = load()
    assert len(corpus["memories"]) == 3000
    res = evaluate(corpus, HashEmbedder(384).embed)
    v, k, h = res["vector"], res["keyword"], res["hybrid"]
    # What each half is for: BM25 finds rare identifiers; the embedding's word pairs tell
    # "prefers tea to coffee" from "prefers coffee to tea", which BM25 scores alike.
    assert k["identifier"].recall == 1.0 and v["identifier"].recall < 0.7
    assert v["order"].ndcg > k["order"].ndcg + 0.1
    assert h["all"].recall > max(v["all"].recall, k["all"].recall)
    assert h["all"].ndcg > max(v["all"].ndcg, k["all"].ndcg)
