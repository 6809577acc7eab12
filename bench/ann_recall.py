"""ANN recall and speed of Spine's HNSW index against exact numpy brute force, plus the
HashEmbedder's throughput. Prints figures; asserts nothing.

    .venv/bin/python bench/ann_recall.py                    # 100k × 384-d random unit vectors
    .venv/bin/python bench/ann_recall.py --n 20000 --data clustered --ef-search 32,64,128

`--data random` (the default) draws i.i.d. unit vectors: no structure, HNSW's worst case.
`--data clustered` draws vectors near a random `--intrinsic-dim`-dimensional subspace, closer to
what sentence embedders produce. Query timings are single-threaded (BLAS pinned to one thread
unless --blas-threads says otherwise); the build uses `--build-threads` hnswlib threads.
"""

from __future__ import annotations

import argparse
import os
import sys


def _pin_blas(threads: int) -> None:
    # Must run before numpy is imported: BLAS reads these once.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--n", type=int, default=100_000, help="indexed vectors")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--m", type=int, default=16, help="HNSW M (config index.m)")
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument(
        "--ef-search", default="64,128,256,512", help="comma-separated ef values to sweep"
    )
    p.add_argument("--data", choices=("random", "clustered"), default="random")
    p.add_argument("--intrinsic-dim", type=int, default=32, help="for --data clustered")
    p.add_argument("--build-threads", type=int, default=-1, help="-1: every core")
    p.add_argument("--blas-threads", type=int, default=1)
    p.add_argument("--texts", type=int, default=20_000, help="texts for the embedder figures")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _args(argv)
    _pin_blas(args.blas_threads)

    import time

    import numpy as np

    from spine.storage.embedders import HashEmbedder
    from spine.storage.vector_index import VectorIndex

    rng = np.random.default_rng(args.seed)
    n, dim, k = args.n, args.dim, args.k

    def unit(m: np.ndarray) -> np.ndarray:
        m = m.astype(np.float32)
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        return m

    def draw(rows: int, basis: np.ndarray | None) -> np.ndarray:
        if basis is None:
            return unit(rng.standard_normal((rows, dim)))
        low = rng.standard_normal((rows, basis.shape[0])) @ basis
        return unit(low + 0.1 * rng.standard_normal((rows, dim)))

    basis = rng.standard_normal((args.intrinsic_dim, dim)) if args.data == "clustered" else None
    data = draw(n, basis)
    queries = draw(args.queries, basis)
    keys = [f"m{i}" for i in range(n)]
    print(
        f"data: {n} × {dim}-d {args.data} unit vectors, {args.queries} queries, k={k}, "
        f"M={args.m}, ef_construction={args.ef_construction}, build threads="
        f"{args.build_threads if args.build_threads > 0 else os.cpu_count()}, "
        f"BLAS threads={args.blas_threads}, python {sys.version.split()[0]}, "
        f"numpy {np.__version__}"
    )

    index = VectorIndex(
        dim, m=args.m, ef_construction=args.ef_construction, exact_max=0, initial_capacity=n
    )
    t0 = time.perf_counter()
    index.upsert_many(keys, data, num_threads=args.build_threads)
    build_s = time.perf_counter() - t0
    print(f"build: {build_s:.1f} s ({n / build_s:,.0f} vectors/s)")

    # Exact answers, and brute-force speed measured the way a node would answer one query.
    truth = np.empty((len(queries), k), dtype=np.int64)
    t0 = time.perf_counter()
    for i, q in enumerate(queries):
        scores = data @ q
        top = np.argpartition(-scores, k - 1)[:k]
        truth[i] = top[np.argsort(-scores[top])]
    brute_s = (time.perf_counter() - t0) / len(queries)
    brute_qps = 1.0 / brute_s
    print(
        f"brute force (numpy matmul + argpartition): {brute_qps:,.0f} QPS, {brute_s * 1e3:.2f} ms"
    )

    truth_sets = [set(row.tolist()) for row in truth]
    print(f"{'ef':>6} {'recall@' + str(k):>10} {'QPS':>10} {'ms/query':>9} {'vs brute':>9}")
    for ef in (int(x) for x in args.ef_search.split(",")):
        index.set_ef_search(ef)
        index.search(queries[0], k)  # warm
        hits = 0
        t0 = time.perf_counter()
        results = [index.search(q, k) for q in queries]
        dt = (time.perf_counter() - t0) / len(queries)
        for got, want in zip(results, truth_sets, strict=True):
            hits += len({int(key[1:]) for key, _ in got} & want)
        recall = hits / (k * len(queries))
        qps = 1.0 / dt
        print(f"{ef:>6} {recall:>10.4f} {qps:>10,.0f} {dt * 1e3:>9.3f} {qps / brute_qps:>8.1f}x")

    # Filtered search: a broad predicate (HNSW with hnswlib's filter) and a selective one
    # (exact over the matches). Recall of these is measured against filtered brute force.
    index.set_ef_search(int(args.ef_search.split(",")[0]))
    for share in (0.5, 0.005):
        cut = int(n * share)

        def keep(key: str, cut: int = cut) -> bool:
            return int(key[1:]) < cut

        hits = 0
        t0 = time.perf_counter()
        results = [index.search(q, k, keep) for q in queries]
        dt = (time.perf_counter() - t0) / len(queries)
        for q, got in zip(queries, results, strict=True):
            scores = data[:cut] @ q
            want = set(np.argpartition(-scores, k - 1)[:k].tolist())
            hits += len({int(key[1:]) for key, _ in got} & want)
        print(
            f"filtered ({share:.1%} match, ef={index.ef_search}): recall@{k} "
            f"{hits / (k * len(queries)):.4f}, {1.0 / dt:,.0f} QPS, {dt * 1e3:.2f} ms"
        )

    # HashEmbedder: batches of 1,000 (the _batch endpoint's limit) and one text per call.
    words = [
        "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(2, 10)))
        for _ in range(5000)
    ]
    texts = [
        " ".join(words[j] for j in rng.integers(0, len(words), rng.integers(5, 25)))
        for _ in range(args.texts)
    ]
    mean_words = sum(len(t.split()) for t in texts) / len(texts)
    embedder = HashEmbedder(dim)
    embedder.embed(texts[:10])  # builds the Unicode token pattern once
    t0 = time.perf_counter()
    for i in range(0, len(texts), 1000):
        embedder.embed(texts[i : i + 1000])
    batch_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for t in texts[:2000]:
        embedder.embed([t])
    single_s = (time.perf_counter() - t0) / 2000
    print(
        f"HashEmbedder(dim={dim}), texts of {mean_words:.1f} words on average: "
        f"{len(texts) / batch_s:,.0f} texts/s in batches of 1,000; "
        f"{1.0 / single_s:,.0f} texts/s one at a time"
    )


if __name__ == "__main__":
    main()
