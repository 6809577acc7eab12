"""The node's full-text (BM25) indexes, one per namespace, on tantivy (DESIGN §14).

Like the vector index, the text index is derived data: it holds the content and tags of the live
records this node stores and is kept in step with LMDB by the indexer's single index thread. It
lives in RAM and is rebuilt from LMDB at start (the indexer's recovery scan reads every record
anyway; the rebuild costs about 18 µs a record, 100k in 2 s: bench/hybrid_bench.py), so there is
no snapshot to keep consistent: after a crash it is whatever LMDB says.

Text is tokenised here, not by tantivy, so the index, the query and the coordinator's score
estimate for a session's own writes (`estimate`) all see the same terms. The tokeniser keeps
identifiers whole as well as in pieces: `ERR-4021` gives `err-4021`, `err` and `4021`;
`parseConfigV2()` gives `parseconfigv2`, `parse`, `config` and `v2`. A query for an identifier
then matches it exactly (a rare, high-IDF term), which is what embeddings miss.

A tantivy commit costs milliseconds, so the indexer adds documents on every LMDB commit but
commits (makes them searchable) only when no further batch is queued behind: under load one
commit covers many batches; at rest every batch is searchable as soon as it is applied. A
session's own writes are visible at once anyway (the coordinator re-reads them).

Each open writer costs a few MB and threads, so at most `max_writers` namespaces keep one open;
the least recently written commits and closes its writer when another needs one.
"""

from __future__ import annotations

import math
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

import tantivy

_ID = "id"
_TEXT = "text"
WRITER_HEAP = 15_000_000  # tantivy's minimum arena per writer thread
K1, B = 1.2, 0.75  # tantivy's BM25 parameters, used by `estimate` too
MAX_TOKEN = 64  # longer runs are noise (hashes, base64): cut, as tantivy's default tokeniser does

# Lucene's English stop set (EnglishAnalyzer): words so common that a match on them alone is
# noise; dropped from documents and queries alike.
STOP_WORDS = frozenset({
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it",
    "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these",
    "they", "this", "to", "was", "will", "with",
})
_RUN = re.compile(r"[^\W_]+(?:[-_.:/#][^\W_]+)*")  # word runs joined by identifier punctuation
_PART = re.compile(r"[^\W_]+")
_CAMEL = re.compile(r"[A-Z]+(?![a-z])\d*|[A-Z]?[a-z]+\d*|\d+")


def tokens(text: str) -> list[str]:
    """The terms of `text`: lower-cased words but stop words, and each identifier whole and in
    its pieces."""
    out: list[str] = []
    for run in _RUN.findall(text):
        low = run.lower()
        if run.isalnum() and (run[1:] == low[1:] or run.isupper()):  # a plain word: fast path
            if low not in STOP_WORDS:
                out.append(low[:MAX_TOKEN])
            continue
        parts = _PART.findall(run)
        pieces: list[str] = []
        for part in parts:
            camel = _CAMEL.findall(part)
            if len(camel) > 1 and "".join(camel) == part:
                pieces.append(part.lower())  # the camelCase name whole, then its words
                pieces.extend(c.lower() for c in camel)
            else:
                pieces.append(part.lower())
        if len(parts) > 1:
            out.append(run.lower()[:MAX_TOKEN])
        out.extend(p[:MAX_TOKEN] for p in pieces if p not in STOP_WORDS)
    return out


def record_tokens(content: str, tags: Iterable[str]) -> list[str]:
    """The terms indexed for a record: its content's and its tags' (a tag also whole)."""
    out = tokens(content)
    for tag in tags:
        out.append(tag.lower()[:MAX_TOKEN])
        out.extend(tokens(tag))
    return out


def _schema() -> tantivy.Schema:
    sb = tantivy.SchemaBuilder()
    sb.add_text_field(_ID, stored=True, tokenizer_name="raw", index_option="basic")
    sb.add_text_field(_TEXT, tokenizer_name="whitespace", index_option="freq")
    return sb.build()


_SCHEMA = _schema()


class TextIndex:
    """One namespace's BM25 index: upserts and deletes by id, committed in batches."""

    def __init__(self) -> None:
        self._index = tantivy.Index(_SCHEMA)
        # `commit` reloads the reader itself. Under tantivy's default policy (reload on commit,
        # by watching meta.json) an explicit reload waited on the watcher: ~100 ms, 0.2 ms here.
        self._index.config_reader("manual", 0)
        self._writer: tantivy.IndexWriter | None = None
        self._lengths: dict[str, int] = {}  # id -> terms indexed (live docs, and avgdl)
        self._total = 0
        self.dirty = False  # changes not yet committed (not yet searchable)

    def __len__(self) -> int:
        return len(self._lengths)

    def ids(self) -> set[str]:
        """The ids indexed (committed or not)."""
        return set(self._lengths)

    def searchable(self) -> int:
        """Documents a search sees now (committed and live)."""
        return int(self._index.searcher().num_docs)

    def holds(self, key: str) -> bool:
        """Whether a record is indexed (committed or not)."""
        return key in self._lengths

    def _w(self) -> tantivy.IndexWriter:
        if self._writer is None:
            self._writer = self._index.writer(heap_size=WRITER_HEAP, num_threads=1)
        return self._writer

    @property
    def has_writer(self) -> bool:
        """Whether a writer is open (it holds memory and threads until closed)."""
        return self._writer is not None

    def upsert(self, key: str, terms: Sequence[str]) -> None:
        """Index (or re-index) a record's terms; a record without terms is only removed."""
        self.delete(key)
        if not terms:
            return
        self._w().add_document(tantivy.Document(id=key, text=" ".join(terms)))
        self._lengths[key] = len(terms)
        self._total += len(terms)
        self.dirty = True

    def delete(self, key: str) -> None:
        """Remove a record (absent: nothing to do)."""
        n = self._lengths.pop(key, None)
        if n is None:
            return
        self._total -= n
        self._w().delete_documents_by_term(_ID, key)
        self.dirty = True

    def commit(self) -> None:
        """Make every change so far searchable."""
        if self.dirty and self._writer is not None:
            self._writer.commit()
            self._index.reload()
        self.dirty = False

    def close_writer(self) -> None:
        """Commit and release the writer (its arena and threads)."""
        self.commit()
        if self._writer is not None:
            self._writer.wait_merging_threads()
            self._writer = None

    def search(self, terms: Sequence[str], limit: int) -> list[tuple[str, float]]:
        """The ids of the committed documents that hold any of `terms`, best BM25 first."""
        distinct = list(dict.fromkeys(terms))
        if not distinct or not self._lengths:
            return []
        query = tantivy.Query.boolean_query(
            [(tantivy.Occur.Should, tantivy.Query.term_query(_SCHEMA, _TEXT, t))
             for t in distinct]
        )
        searcher = self._index.searcher()
        hits = searcher.search(query, limit, count=False).hits
        out: list[tuple[str, float]] = []
        for score, addr in hits:
            out.append((str(searcher.doc(addr)[_ID][0]), float(score)))
        return out

    def estimate(self, query_terms: Sequence[str], doc_terms: Sequence[str]) -> float | None:
        """BM25 of a document this index may not hold yet (a session's own write), with this
        index's statistics; None when it holds none of the query's terms."""
        doc_tf: dict[str, int] = {}
        for t in doc_terms:
            doc_tf[t] = doc_tf.get(t, 0) + 1
        matched = [t for t in dict.fromkeys(query_terms) if t in doc_tf]
        if not matched:
            return None
        searcher = self._index.searcher()
        n_docs = max(len(self._lengths), 1)
        avgdl = self._total / len(self._lengths) if self._lengths else float(len(doc_terms))
        return bm25(matched, doc_tf, len(doc_terms), n_docs, avgdl,
                    lambda t: searcher.doc_freq(_TEXT, t))


def bm25(
    matched: Sequence[str],
    doc_tf: dict[str, int],
    dl: int,
    n_docs: int,
    avgdl: float,
    doc_freq: Callable[[str], int],
) -> float:
    """Okapi BM25 as tantivy scores it (Lucene's idf, k1 = 1.2, b = 0.75)."""
    score = 0.0
    norm = K1 * (1 - B + B * dl / max(avgdl, 1e-9))
    for t in matched:
        df = min(doc_freq(t), n_docs)
        idf = math.log(1 + (n_docs - df + 0.5) / (df + 0.5))
        tf = doc_tf[t]
        score += idf * tf * (K1 + 1) / (tf + norm)
    return score


class TextIndexSet:
    """The node's text indexes, one per namespace, created on demand; at most `max_writers`
    hold an open writer. Written from the index thread only; searched from any thread."""

    def __init__(self, max_writers: int = 8) -> None:
        self.max_writers = max_writers
        self._indexes: dict[str, TextIndex] = {}
        self._open: OrderedDict[str, None] = OrderedDict()  # namespaces with a writer, LRU
        self._lock = threading.Lock()

    def peek(self, namespace: str) -> TextIndex | None:
        """The namespace's index, or None when it has none."""
        return self._indexes.get(namespace)

    def namespaces(self) -> list[str]:
        """Namespaces with a text index."""
        with self._lock:
            return sorted(self._indexes)

    def _for_write(self, namespace: str) -> TextIndex:
        index = self._indexes.get(namespace)
        if index is None:
            with self._lock:
                index = self._indexes.setdefault(namespace, TextIndex())
        self._open[namespace] = None
        self._open.move_to_end(namespace)
        while len(self._open) > self.max_writers:
            old, _ = self._open.popitem(last=False)
            victim = self._indexes.get(old)
            if victim is not None:
                victim.close_writer()
        return index

    def upsert(self, namespace: str, key: str, terms: Sequence[str]) -> None:
        """Index a live record's terms."""
        if terms or namespace in self._indexes:
            self._for_write(namespace).upsert(key, terms)

    def delete(self, namespace: str, key: str) -> None:
        """Remove a record (a tombstone, or a purge)."""
        index = self._indexes.get(namespace)
        if index is not None and index.holds(key):
            self._for_write(namespace).delete(key)

    def commit(self) -> None:
        """Make every change so far searchable, in every namespace."""
        for ns in list(self._open):
            index = self._indexes.get(ns)
            if index is not None and index.dirty:
                index.commit()

    def drop(self, namespace: str) -> None:
        """Forget a namespace's index."""
        with self._lock:
            index = self._indexes.pop(namespace, None)
        self._open.pop(namespace, None)
        if index is not None:
            index.close_writer()

    def close(self) -> None:
        """Close every writer (at stop)."""
        for ns in list(self._open):
            index = self._indexes.get(ns)
            if index is not None:
                index.close_writer()
        self._open.clear()
