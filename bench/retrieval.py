"""Retrieval quality of vector, keyword and hybrid search (DESIGN §14) on
tests/data/retrieval_corpus.json: recall@10 and nDCG@10 per mode and per kind of query.

    python bench/retrieval.py            # hash embedder, and MiniLM where installed
    python bench/retrieval.py --embedder hash

It runs Spine's own ranking code in one process, without a cluster: the node's text index
(spine.storage.text_index, tantivy BM25), an exact cosine scan (what a node does for a namespace
of this size) and the coordinator's fusion (spine.cluster.search.fuse, RRF k = 60).
tests/unit/test_retrieval_quality.py asserts from it that hybrid beats both halves alone.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from spine.cluster.search import Candidate, fuse  # noqa: E402
from spine.core.clock import ZERO  # noqa: E402
from spine.core.model import Record  # noqa: E402
from spine.storage.embedders import HashEmbedder, make_embedder, minilm_available  # noqa: E402
from spine.storage.text_index import TextIndex, record_tokens, tokens  # noqa: E402

CORPUS = REPO / "tests" / "data" / "retrieval_corpus.json"
K = 10
DEPTH = K  # candidates per ranking that fusion sees
MODES = ("vector", "keyword", "hybrid")


@dataclass(frozen=True)
class Scores:
    """Mean recall@10 and nDCG@10 of one mode over a set of queries."""

    recall: float
    ndcg: float


def load(path: Path = CORPUS) -> dict[str, Any]:
    """The corpus file."""
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def ndcg(ranked: list[str], relevant: set[str], k: int = K) -> float:
    """Binary-relevance nDCG@k."""
    dcg = sum(1 / math.log2(i + 2) for i, m in enumerate(ranked[:k]) if m in relevant)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(len(relevant), k)))
    return dcg / ideal if ideal else 0.0


def recall(ranked: list[str], relevant: set[str], k: int = K) -> float:
    """Share of the relevant memories in the top k (of at most k of them)."""
    return len(set(ranked[:k]) & relevant) / min(len(relevant), k)


def rankings(corpus: dict[str, Any], embed: Any, depth: int) -> dict[str, list[list[str]]]:
    """Each mode's top-10 ids for every query, in the corpus's query order."""
    ids = list(corpus["memories"])
    texts = [corpus["memories"][i] for i in ids]
    mat = np.asarray(embed(texts), dtype=np.float32)
    text = TextIndex()
    for mid, t in zip(ids, texts, strict=True):
        text.upsert(mid, record_tokens(t, ()))
    text.commit()
    out: dict[str, list[list[str]]] = {m: [] for m in MODES}
    queries = [q["query"] for q in corpus["queries"]]
    qmat = np.asarray(embed(queries), dtype=np.float32)
    for qv, query in zip(qmat, queries, strict=True):
        sims = mat @ qv
        top = np.argsort(-sims, kind="stable")[:depth]
        cands: dict[str, Candidate] = {}
        for j in top:
            mid = ids[int(j)]
            cands[mid] = Candidate(Record("bench", mid, ZERO), vector=float(sims[j]))
        for mid, score in text.search(tokens(query), depth):
            cands.setdefault(mid, Candidate(Record("bench", mid, ZERO))).keyword = score
        for mode in MODES:
            out[mode].append([c.record.id for c, _ in fuse(cands, mode, depth)][:K])
    return out


def evaluate(
    corpus: dict[str, Any], embed: Any, depth: int | None = None
) -> dict[str, dict[str, Scores]]:
    """mode -> kind of query ("all", "identifier", "order", "paraphrase") -> scores."""
    ranked = rankings(corpus, embed, DEPTH if depth is None else depth)
    kinds = ["all", *sorted({q["kind"] for q in corpus["queries"]})]
    out: dict[str, dict[str, Scores]] = {}
    for mode in MODES:
        out[mode] = {}
        for kind in kinds:
            pairs = [(r, set(q["relevant"])) for r, q in zip(ranked[mode], corpus["queries"],
                                                             strict=True)
                     if kind in ("all", q["kind"])]
            out[mode][kind] = Scores(
                sum(recall(r, rel) for r, rel in pairs) / len(pairs),
                sum(ndcg(r, rel) for r, rel in pairs) / len(pairs),
            )
    return out


def report(name: str, res: dict[str, dict[str, Scores]], seconds: float) -> str:
    """A table of the scores."""
    kinds = list(res["vector"])
    lines = [f"embedder {name} ({seconds:.1f} s)",
             f"{'mode':<8} " + " ".join(f"{k + ' R@10':>16} {'nDCG':>6}" for k in kinds)]
    for mode in MODES:
        lines.append(f"{mode:<8} " + " ".join(
            f"{res[mode][k].recall:>16.3f} {res[mode][k].ndcg:>6.3f}" for k in kinds))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Print the table for each embedder asked for (default: hash, and MiniLM if installed)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--embedder", action="append", choices=["hash", "minilm", "minilm-int8",
                                                               "minilm-static"])
    args = ap.parse_args(argv)
    names = args.embedder or (["hash", "minilm"] if minilm_available() else ["hash"])
    corpus = load()
    print(f"{len(corpus['memories'])} memories, {len(corpus['queries'])} queries")
    for name in names:
        emb = HashEmbedder(384) if name == "hash" else make_embedder(name, 384, threads=2)
        t0 = time.perf_counter()
        res = evaluate(corpus, emb.embed)
        print(report(name, res, time.perf_counter() - t0))


if __name__ == "__main__":
    main()
